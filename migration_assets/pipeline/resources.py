"""Dagster resources: thin configuration wrappers around the plain libraries."""

import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl
from dagster import ConfigurableIOManager, ConfigurableResource, EnvVar, InputContext, OutputContext
from pydantic import Field

from migration_assets import config
from migration_assets.active import PROFILE
from migration_assets.elements.base import DataElement, SourceSystem, read_element_tables
from migration_assets.ledger.manifest import Manifest
from migration_assets.medplum import MedplumClient, RetryPolicy, Target
from migration_assets.paths import DEFAULT_LEGACY_DB_URL, DEFAULT_MANIFEST_URL, EVIDENCE_DIR, FRAMES_DIR
from migration_assets.phases import load_phases
from migration_assets.pipeline.frame_parts import FrameParts
from migration_assets.pipeline.loader import LoadSettings
from migration_assets.source import redact_url


class MedplumResource(ConfigurableResource):
    """A Medplum server; the client secret comes from the environment (EnvVar) and is never logged."""

    base_url: str = Field(description="Medplum base URL, e.g. https://api.medplum.com/")
    client_id: str
    client_secret: str
    timeout_seconds: float = 120.0
    max_attempts: int = 6
    # At most this long, in all, waiting on the FHIR quota to resend one batch's refused entries (or one
    # refused request); past it those units stay pending with the reason "quota" and the next run sends them.
    max_quota_wait_seconds: float = 600.0

    @contextmanager
    def open_client(self) -> Iterator[MedplumClient]:
        client = MedplumClient(
            self.base_url,
            self.client_id,
            self.client_secret,
            timeout_seconds=self.timeout_seconds,
            retry=RetryPolicy(max_attempts=self.max_attempts, max_quota_wait_seconds=self.max_quota_wait_seconds),
        )
        try:
            yield client
        finally:
            client.close()

    def target(self) -> Target:
        """The server and project this resource's credential writes to (asks Medplum once)."""
        with self.open_client() as client:
            return client.target


class LegacySource(ConfigurableResource):
    """The legacy EHR database (sqlite:///, postgresql://, csv:/// or parquet:/// folder)."""

    url: str

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    def read_tables(self, element: DataElement, absent: list[str] | None = None) -> dict[str, pl.DataFrame]:
        """The element's source tables (of a lookup table, only the rows the others name; an optional table
        the source does not hold read as empty and appended to `absent`)."""
        return read_element_tables(element, self.url, absent)


class ManifestStore(ConfigurableResource):
    """The run ledger's database (sqlite:/// by default, postgresql:// in production)."""

    url: str

    def open(self, target: Target) -> Manifest:
        """The books of `target` (the Medplum a client writes to), to use in a `with` block."""
        return Manifest(self.url, target.key)


class MigrationSettings(ConfigurableResource):
    # IDENTIFIER_BASE_URI read here too: a launch that configures this resource (launchpad, GraphQL) replaces
    # the values it was built with by the fields' defaults, and another base URI would write other identifiers.
    identifier_base_uri: str = Field(
        default=config.identifier_base_uri() or PROFILE.identifier_base_uri,
        description="Base URI of the legacy system: identifier and local code systems derive from it.",
    )
    batch_size: int | None = Field(
        default=None,
        description="Entries (or transactions) per batch bundle for every element; unset: each element's own.",
    )
    concurrency: int | None = Field(
        default=None,
        description="The most bundles in flight at once for every element; unset: each element's own (4 unless it "
        "says). With adaptive_concurrency this is the ceiling the load climbs to while the server answers without "
        "pushback.",
    )
    transaction_size: int = Field(
        default=50,
        description="Entries with no conditional URL (creates by POST, updates by id) of an element without "
        "transactions of its own go inside each batch as transactions of this many (at most 50): Medplum writes "
        "each in one database transaction (2-17% faster on a real Medplum); a refused transaction is resent as plain "
        "entries, so only its bad entry fails. 1: plain batch entries.",
    )
    adaptive_concurrency: bool = Field(
        default=True,
        description="Start with the bundles in flight the last load to the same target settled at (two on a target "
        "never loaded) and add one while each more answers entries faster "
        "(step back when it does not); halve on a 409 (Medplum's serializable transactions colliding), 429 or "
        "5xx. Off: always `concurrency`.",
    )
    load_mode: str | None = Field(
        default=None,
        description="'sync' (batch bundles), 'async' (Prefer: respond-async jobs, not charged to hosted Medplum's "
        "FHIR quota) or 'mixed' (sync bundles and, beside them, one async job at a time: fewer quota points, and a "
        "load on a spent quota keeps moving); unset: the LOAD_MODE environment variable, else 'sync'.",
    )
    direct_references: bool = Field(
        default=True,
        description="Write a reference to a resource the ledger records as written by `Type/id` (its id there) "
        "instead of a conditional reference: Medplum then skips a search per reference. Off: always conditional.",
    )
    creates: str = Field(
        default="phase",
        description="How the load creates a resource its census did not find in the target (the ones it finds "
        "are updated by id): 'phase', as the element's adoption phase says (phases.yaml): plain POSTs in "
        "initial_load, where the platform is Medplum's one writer, else conditional PUTs, because the old services "
        "may create the same record meanwhile; 'conditional' or 'post' to say it for every element. A plain POST "
        "costs 100 quota points instead of 140 and writes faster on a real Medplum.",
    )
    shard_count: int = Field(
        default=1,
        description="Key-hash shards of the load: medplum_resources runs one shard step per shard in "
        "this run (in parallel on the multiprocess or celery executor), each loading the rows whose "
        "crc32(bundle_group) % shard_count is its index; the checks then see the whole element.",
    )
    prerequisite_wait_seconds: float = Field(
        default=1800,
        description="How long the blocking check prerequisites_loaded waits, before judging, while another "
        "started run is still loading an element this one references (a backfill of every element starts "
        "them together). 0: judge at once.",
    )
    quarantine_threshold: float = Field(
        default=0.05, description="Share of quarantined rows above which the schema check fails and blocks."
    )
    idempotency_sample_size: int = Field(
        default=200,
        description="Bundle groups the idempotent_reload check resubmits: the whole partition when it has at most "
        "this many, else a sample of this many drawn with idempotency_sample_seed (0 = always the whole partition). "
        "Every resubmitted entry is a write (and costs quota on a hosted Medplum): 200 keep the check at a fifth "
        "of a 1,000-group load's writes or less, and find a fault in 2% of the groups 98 times in 100.",
    )
    idempotency_sample_seed: int = 20261121
    idempotency_by_reading: bool = Field(
        default=True,
        description="The idempotent_reload check first reads the sampled resources back (a search of 100 costs 20 "
        "quota points) and resubmits, as updates by id, only those Medplum does not hold exactly as the load would "
        "send them: Medplum answers a resubmission of identical content without a change. Off: every sampled "
        "resource is resubmitted (a write each, 100 quota points), which exercises the write path itself.",
    )
    idempotency_skip_verified: bool = Field(
        default=True,
        description="The idempotent_reload check resubmits nothing when the run wrote nothing and the partition's "
        "content (every unit's content hash) is exactly what its latest passing evaluation verified: an unchanged "
        "rerun then makes no write at all. Off: every run resubmits.",
    )
    incremental_census: bool = Field(
        default=True,
        description="The checks' census of Medplum reads only the resources created or changed since the last "
        "census (and takes a whole one when Medplum's count disagrees). Off: every run reads every resource.",
    )
    evidence_dir: str = Field(default=str(EVIDENCE_DIR), description="Where reconciliation evidence files go.")

    @property
    def source_system(self) -> SourceSystem:
        return SourceSystem(self.identifier_base_uri)

    def load_settings(self, element: DataElement, resend_unchanged: bool = False) -> LoadSettings:
        """The settings of a load of the whole element (a shard step narrows them to its shard)."""
        return LoadSettings(
            batch_size=self.batch_size or element.batch_size,
            concurrency=self.concurrency or element.concurrency,
            adaptive=self.adaptive_concurrency,
            transaction_size=self.transaction_size,
            resend_unchanged=resend_unchanged,
            compare_before_resend=resend_unchanged and self.idempotency_by_reading,
            mode=self.load_mode or config.load_mode() or "sync",
            direct_references=self.direct_references,
            creates=load_phases().of(element.name).behaviour.creates if self.creates == "phase" else self.creates,
        )


class PolarsParquetIOManager(ConfigurableIOManager):
    """Frames as Parquet, one file per asset and partition (dagster-polars is broken on polars 2), or
    one directory of parts for a frame built in parts (frame_parts.py).

    An input annotated `pl.LazyFrame` is scanned, one annotated `FrameParts` is handed over as parts
    (read one at a time by the step), and a `pl.DataFrame` is read whole."""

    base_dir: str

    def _path(self, context: OutputContext | InputContext) -> Path:
        key = "/".join(context.asset_key.path)
        partition = context.asset_partition_key if context.has_asset_partitions else "all"
        return Path(self.base_dir) / key / partition

    def handle_output(self, context: OutputContext, obj: pl.DataFrame | FrameParts) -> None:
        stored = self._path(context)
        file = stored.with_suffix(".parquet")
        if isinstance(obj, FrameParts):
            file.unlink(missing_ok=True)
            parts = obj.move_to(stored)
            context.add_output_metadata({"path": str(stored), "rows": parts.height, "parts": len(parts)})
            return
        if stored.is_dir():
            shutil.rmtree(stored)
        file.parent.mkdir(parents=True, exist_ok=True)
        obj.write_parquet(file)
        context.add_output_metadata({"path": str(file), "rows": obj.height})

    def load_input(self, context: InputContext) -> pl.DataFrame | pl.LazyFrame | FrameParts:
        stored = self._path(context)
        wanted = context.dagster_type.typing_type
        if stored.is_dir():
            parts = FrameParts(stored)
            if wanted is FrameParts:
                return parts
            return parts.scan() if wanted is pl.LazyFrame else parts.read()
        file = stored.with_suffix(".parquet")
        if wanted is FrameParts:
            raise TypeError(f"{file} is one frame, not parts: materialize {context.asset_key.to_user_string()} again")
        return pl.scan_parquet(file) if wanted is pl.LazyFrame else pl.read_parquet(file)


def keeping_built_values(run_config: Mapping[str, Any], resources: Mapping[str, object]) -> dict[str, Any]:
    """`run_config` with, under the `migration_settings` config it gives, the values that resource was built
    with (build_resources: the environment's IDENTIFIER_BASE_URI, the evidence folder, a test's settings):
    Dagster replaces them all by the fields' defaults otherwise, whatever fields the run config names. Only
    the settings: the other resources hold credentials, which never enter a run's config."""
    given = run_config.get("resources") or {}
    merged = dict(given)
    for name, section in given.items():
        built = resources.get(name)
        if isinstance(built, MigrationSettings) and isinstance(section, Mapping) and "config" in section:
            merged[name] = {**section, "config": {**built.model_dump(exclude_unset=True), **section["config"]}}
    return {**run_config, "resources": merged} if given else dict(run_config)


def build_resources(
    *,
    medplum: MedplumResource | None = None,
    legacy_db_url: str | None = None,
    manifest_db_url: str | None = None,
    work_dir: Path | None = None,
    **settings: Any,
) -> dict[str, object]:
    """The resources of every caller (definitions.py, make demo, the tests, bench and soak): what is not
    given comes from the environment (config.py), and the Medplum credentials through EnvVar, so they
    never enter the run config. `work_dir` puts the frames and the evidence there instead of .demo/;
    `settings` are fields of MigrationSettings."""
    frames = work_dir / "frames" if work_dir else FRAMES_DIR
    evidence = work_dir / "evidence" if work_dir else EVIDENCE_DIR
    base_uri = config.identifier_base_uri()
    fields: dict[str, Any] = {
        "evidence_dir": str(evidence),
        **({"identifier_base_uri": base_uri} if base_uri else {}),
        **settings,
    }
    return {
        "medplum": medplum
        or MedplumResource(
            base_url=EnvVar("MEDPLUM_BASE_URL"),
            client_id=EnvVar("MEDPLUM_CLIENT_ID"),
            client_secret=EnvVar("MEDPLUM_CLIENT_SECRET"),
        ),
        "legacy_db": LegacySource(url=legacy_db_url or config.legacy_db_url() or DEFAULT_LEGACY_DB_URL),
        "manifest": ManifestStore(url=manifest_db_url or config.manifest_db_url() or DEFAULT_MANIFEST_URL),
        "migration_settings": MigrationSettings(**fields),
        "frames_io_manager": PolarsParquetIOManager(base_dir=str(frames)),
    }
