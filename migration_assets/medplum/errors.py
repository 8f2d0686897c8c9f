"""Errors the Medplum client raises. Messages never carry secrets or tokens."""


class MedplumError(RuntimeError):
    """A request to Medplum failed for good (after the retries it was allowed)."""


class MedplumAuthError(MedplumError):
    """The token endpoint refused the client credentials."""


class MedplumResponseError(MedplumError):
    """Medplum answered something that is not a usable FHIR answer (bad JSON, wrong entry count)."""
