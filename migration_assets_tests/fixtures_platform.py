"""A whole migration platform for a test: a fresh local Medplum server, the session profile's sample as the
legacy source, a manifest and a real (temporary, SQLite) Dagster instance, wired exactly as definitions.py
wires them.

The modules that load the profile (migration_assets.active and what imports it) are imported inside the
functions: this module is loaded with conftest.py, before conftest picks the session's profile."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from dagster import DagsterInstance, Definitions

from migration_assets.devtools.local_medplum import LocalMedplum, running_local_medplum
from migration_assets.ledger.manifest import Manifest
from migration_assets.medplum import MedplumClient, Target

if TYPE_CHECKING:
    from migration_assets.commands.demo import ElementSummary


@dataclass
class Platform:
    server: LocalMedplum
    source_url: str
    manifest_url: str
    instance: DagsterInstance
    defs: Definitions
    work: Path

    def run(self, element: str) -> ElementSummary:
        from migration_assets.commands.demo import migrate_element

        return migrate_element(element, self.instance, self.defs)

    def run_all(self) -> list[ElementSummary]:
        from migration_assets.active import LOAD_ORDER

        return [self.run(element) for element in LOAD_ORDER]

    def client(self) -> MedplumClient:
        return MedplumClient(self.server.base_url, self.server.client_id, self.server.client_secret)

    def through(self, client_id: str, client_secret: str) -> Platform:
        """The same platform (source, ledger, Dagster instance, folders) writing through another credential
        of its server (one of `more_clients`): another project, another target."""
        return build_platform(
            self.work,
            self.server.as_client(client_id, client_secret),
            self.source_url,
            self.instance,
            self.manifest_url,
        )

    def manifest(self, through: str | None = None) -> Manifest:
        """The books of this platform's Medplum (its server and project); `through`: of the same project
        reached at another base URL (a proxy in front of the server), which is another target."""
        with self.client() as client:
            target = client.target
        if through is not None:
            target = Target(through.rstrip("/") + "/", target.project_id)
        return Manifest(self.manifest_url, target.key)


def build_platform(
    work: Path, server: LocalMedplum, source_url: str, instance: DagsterInstance, manifest_url: str | None = None
) -> Platform:
    from migration_assets.definitions import make_definitions
    from migration_assets.pipeline.resources import MedplumResource, build_resources

    manifest_url = manifest_url or f"sqlite:///{work / 'manifest.db'}"
    resources = build_resources(
        medplum=MedplumResource(
            base_url=server.base_url, client_id=server.client_id, client_secret=server.client_secret
        ),
        legacy_db_url=source_url,
        manifest_db_url=manifest_url,
        work_dir=work,
    )
    return Platform(server, source_url, manifest_url, instance, make_definitions(resources), work)


@pytest.fixture
def platform_factory(tmp_path: Path) -> Iterator[PlatformFactory]:
    """Builds platforms on fresh servers; everything it started is stopped at the end of the test."""
    factory = PlatformFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


class PlatformFactory:
    def __init__(self, work: Path) -> None:
        self.work = work
        self._stack = ExitStack()

    def new(
        self,
        patients: int = 60,
        source_url: str | None = None,
        name: str = "p",
        manifest_url: str | None = None,
        more_clients: dict[str, str] | None = None,
        fhir_quota: int = 0,
        quota_window_seconds: int = 60,
        transaction_bundles: bool = True,
        points_per_second: float = 0,
    ) -> Platform:
        """A platform on a server of its own, its source the session profile's sample of `patients` (unless
        `source_url` is given); `fhir_quota`, `quota_window_seconds`, `transaction_bundles` and
        `points_per_second` configure that server as running_local_medplum does (a stock Medplum project:
        quota 50,000 a minute, transaction_bundles False)."""
        from migration_assets.active import write_sample

        work = self.work / name
        work.mkdir(parents=True)
        if source_url is None:
            source_url = f"sqlite:///{work / 'legacy.db'}"
            write_sample(source_url, patients=patients)
        server = self._stack.enter_context(
            running_local_medplum(
                log_path=work / "medplum.log",
                more_clients=more_clients,
                fhir_quota=fhir_quota,
                quota_window_seconds=quota_window_seconds,
                transaction_bundles=transaction_bundles,
                points_per_second=points_per_second,
            )
        )
        (work / "dagster_home").mkdir()
        instance = DagsterInstance.local_temp(tempdir=str(work / "dagster_home"))
        self._stack.callback(instance.dispose)
        return build_platform(work, server, source_url, instance, manifest_url)

    def close(self) -> None:
        self._stack.close()
