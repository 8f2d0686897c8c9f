"""Which Medplum a client writes to: the server's base URL and the project its credential acts in.

Two projects on one server hold different resources, and a server restored from a backup is not
the one a run wrote to yesterday, so the run ledger keeps its books per target (ledger/manifest.py)."""

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    base_url: str  # with a trailing slash, never a credential
    project_id: str  # Medplum's Project id; "" when the server does not say (then the base URL alone)

    @property
    def key(self) -> str:
        """How the ledger names this target."""
        return f"{self.base_url}#{self.project_id}"

    @property
    def slug(self) -> str:
        """A short name for this target's folders (census files)."""
        return hashlib.sha256(self.key.encode()).hexdigest()[:12]

    @classmethod
    def from_key(cls, key: str) -> "Target":
        base_url, _, project_id = key.partition("#")
        return cls(base_url, project_id)

    def __str__(self) -> str:
        if not self.base_url:
            return "(no target named)"
        return f"{self.base_url} project {self.project_id or '(not named by the server)'}"


def project_of(answer: object) -> str | None:
    """The project id in a token response (`project.reference` = `Project/<id>`) or in `/auth/me`'s
    answer (`project.id`), else None."""
    if not isinstance(answer, dict) or not isinstance(answer.get("project"), dict):
        return None
    project = answer["project"]
    reference = project.get("reference")
    if isinstance(reference, str) and reference.startswith("Project/"):
        return reference.removeprefix("Project/")
    found = project.get("id")
    return found if isinstance(found, str) else None
