"""Medplum client library: auth, bundles, throttling, retries and results. No Dagster import."""

from migration_assets.medplum.client import MedplumClient, RetryPolicy
from migration_assets.medplum.errors import MedplumAuthError, MedplumError, MedplumResponseError
from migration_assets.medplum.responses import EntryResponse
from migration_assets.medplum.search import conditional_url, escape_search_value, identifier_token
from migration_assets.medplum.target import Target

__all__ = [
    "EntryResponse",
    "MedplumAuthError",
    "MedplumClient",
    "MedplumError",
    "MedplumResponseError",
    "RetryPolicy",
    "Target",
    "conditional_url",
    "escape_search_value",
    "identifier_token",
]
