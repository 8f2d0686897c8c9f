"""Writing a FHIR frame to Medplum: conditional PUTs in batch bundles (or batches of transactions),
every entry response read, every attempt and disposition written to the manifest.

Unchanged rows (same content hash as their last successful write) are not sent at all.
"""

import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import accumulate, pairwise
from typing import Any

import polars as pl

from migration_assets.elements.base import DataElement
from migration_assets.elements.fhir_json import conditional_reference
from migration_assets.ledger.files import FileUploader
from migration_assets.ledger.manifest import Attempt, Manifest
from migration_assets.medplum import EntryResponse, MedplumClient
from migration_assets.medplum.ratelimit import POINTS_PER_SEARCH, POINTS_PER_WRITE
from migration_assets.pipeline.attachments import attaches_files, uploader_for, with_uploaded_files
from migration_assets.pipeline.frame_parts import REFERENCE_COLUMNS, FrameParts, shard_of
from migration_assets.verify.census import Censuses
from migration_assets.verify.prerequisites import (
    PrerequisiteReport,
    RunPrerequisites,
    check_prerequisites,
    quarantine_unloadable,
)
from migration_assets.verify.readback import held_as_sent
from migration_assets.verify.reconcile import RECONCILE_UNIT_COLUMNS, lost_in_target

log = logging.getLogger(__name__)

# `pending_quota`: still refused by the FHIR quota when its wait ran out; `half_written`: written while
# a partner of its transaction was not (transaction-bundles off). Both stay pending: the next run sends them.
# `quota_points`: what the bundles sent cost of Medplum's FHIR quota (quota_cost; resent entries not counted;
# an async job's nothing, as hosted Medplum charges it).
# `in_flight_decreased`: how often the load took bundles in flight away (pushback, or no gain: InFlight).
# `sent_async`: the entries sent in async jobs (load mode async or mixed), which hosted Medplum does not charge.
COUNT_NAMES = (
    "source_rows",
    "quarantined",
    "not_sent_unchanged",
    "lost_in_target",
    "sent",
    "created",
    "updated",
    "unchanged",
    # Not resent: read back exactly as it would be sent (compare_before_resend).
    "held_as_sent",
    "failed",
    "pending_quota",
    "half_written",
    "quota_points",
    "in_flight_decreased",
    "sent_async",
)

# What a project without the `transaction-bundles` feature means for a load, said once per run.
TRANSACTIONS_OFF = (
    "the Medplum project's transaction-bundles feature is off: Medplum processes each transaction like a batch, "
    "so an encounter and its notes are not written atomically. A unit written while a partner of its "
    "transaction was refused stays pending (half_written) and the next run sends the whole transaction again. "
    "Turn the feature on for atomic writes."
)


CREATE_MODES = ("conditional", "post")
LOAD_MODES = ("sync", "async", "mixed")
# Medplum writes at most this many entries in one transaction (MEDPLUM_FACTS.md).
MAX_TRANSACTION_WRITES = 50


@dataclass(frozen=True)
class LoadSettings:
    batch_size: int = 100
    # The most bundles in flight at once. With `adaptive` the load starts where the last load to the
    # target settled (FIRST_IN_FLIGHT on a target never loaded) and adds one while that answers entries
    # faster and the server does not push back (InFlight): a real Medplum answers overlapping batches with
    # 409 serialization conflicts, and a quota with 429.
    concurrency: int = 4
    adaptive: bool = True
    # Send rows even when their content hash matches their last successful write (the idempotency
    # check uses this to prove that a resubmission changes nothing).
    resend_unchanged: bool = False
    # With resend_unchanged and the target's census: read first what the target holds, and resend only
    # the rows (whole groups in a transactional element) whose resource differs from what would be sent.
    # Medplum answers a resend of identical content without a change, so a read shows it for 20 quota
    # points a hundred, where resending costs 100 a resource.
    compare_before_resend: bool = False
    # "sync": batch bundles answered in the request. "async": `Prefer: respond-async` jobs, polled
    # (hosted Medplum does not charge async work to the FHIR quota, so there is no pacing). "mixed": sync
    # bundles as InFlight allows and, beside them, one async job at a time: the jobs' writes spare the
    # quota, and a load whose quota is spent keeps moving through them while the sync bundles wait.
    mode: str = "sync"
    # Key-hash shards: this load handles only the rows whose crc32(bundle_group) % shard_count equals
    # shard_index, so several runs (processes, machines) can share one data element.
    shard_count: int = 1
    shard_index: int = 0
    # Write a conditional reference to a resource this platform already wrote as `Type/id`, the id
    # its ledger recorded: Medplum then skips a search per reference (20 quota points, and about half
    # of a Condition's write time on a real server, MEDPLUM_FACTS.md). Targets not in the ledger keep
    # their conditional reference.
    direct_references: bool = True
    # How a resource the target does not hold yet is created when the load knows what the target holds
    # (migrate() with a census of it; otherwise every write is a conditional PUT): "conditional", by a
    # conditional PUT, safe when another writer may create the same resource meanwhile (a create with
    # If-None-Exist is as safe, and was slower on a real Medplum); "post", a plain create with no search
    # inside the write, for a load nothing else races.
    creates: str = "conditional"
    # The entries of an element without transactions of its own that hold no conditional URL (creates by
    # POST, updates by id, direct references) go inside each batch as transactions of this many: Medplum
    # then writes them in one database transaction instead of one each (2-17% faster on a real Medplum,
    # docs/benchmark.md); a transaction it refuses is sent again as plain entries, so only the
    # bad entry fails. Medplum allows 50 writes a transaction (8 when any is conditional). 1: plain entries.
    transaction_size: int = 50

    def __post_init__(self) -> None:
        if self.mode not in LOAD_MODES:
            raise ValueError(f"load mode must be one of {', '.join(LOAD_MODES)}, got {self.mode!r}")
        if self.creates not in CREATE_MODES:
            raise ValueError(f"creates must be one of {', '.join(CREATE_MODES)}, got {self.creates!r}")
        if self.shard_count < 1 or not 0 <= self.shard_index < self.shard_count:
            raise ValueError(f"shard_index must be in 0..shard_count-1, got {self.shard_index} of {self.shard_count}")
        if self.batch_size < 1 or self.concurrency < 1:
            raise ValueError("batch_size and concurrency must be at least 1")
        if not 1 <= self.transaction_size <= MAX_TRANSACTION_WRITES:
            raise ValueError(f"transaction_size must be in 1..{MAX_TRANSACTION_WRITES}, got {self.transaction_size}")


# Bundles answered at one level of bundles in flight before the load judges it; doubled after each step
# back (up to PROBE_MAX) so that a level that does not pay is not tried again and again.
PROBE_BUNDLES = 4
PROBE_MAX = 64
# One more bundle in flight must answer this much faster than one fewer did, or the load steps back: a
# server that is already busy answers the extra bundle no sooner (a real Medplum on two cores).
GAIN_NEEDED = 1.05
# Where the first load to a target starts (adaptive). Two, not one: on a real Medplum (500 patients and
# their conditions) plain writes went 1.3-1.4x faster starting at two than at one, as fast as starting at
# four, and a small element is over before the probe climbs from one. Conditional writes go alone anyway.
FIRST_IN_FLIGHT = 2


def in_flight_start(manifest: Manifest) -> int:
    """The bundles in flight a load to the manifest's target starts with: where the last load to it settled
    (recorded with its run), else FIRST_IN_FLIGHT."""
    return manifest.settled_in_flight() or FIRST_IN_FLIGHT


class InFlight:
    """How many bundles may be in flight, found while loading: start at `start` (in_flight_start: where
    an earlier load to the same target settled); after `probe` bundles answered at a level, keep the level
    and try one more if entries were answered at least GAIN_NEEDED times faster than one fewer did, else step
    back. Any pushback (entries resent for a 409, 429 or 5xx, or whole requests retried: the client's
    counts since the last answer) halves it at once: a real Medplum answers overlapping batches with 409
    serialization conflicts. Only bundles that may share the server are judged (one that goes alone says
    nothing of a level). Without `adaptive` it is the ceiling all along."""

    def __init__(self, client: MedplumClient, ceiling: int, adaptive: bool, start: int = FIRST_IN_FLIGHT) -> None:
        self.client, self.ceiling, self.adaptive = client, ceiling, adaptive
        self.limit = min(max(1, start), ceiling) if adaptive else ceiling
        self.highest = self.limit
        self.decreases = 0
        self.probe = PROBE_BUNDLES
        self.rates: dict[int, float] = {}  # entries answered a second, at each level judged
        self.seen = self._pushback()
        self._new_window()

    def _pushback(self) -> int:
        return self.client.stats.entries_resent + self.client.stats.retries

    def _new_window(self) -> None:
        self.window_started, self.window_bundles, self.window_entries = time.monotonic(), 0, 0

    def _step_back(self, to: int) -> None:
        self.limit = max(1, to)
        self.decreases += 1
        self.probe = min(PROBE_MAX, self.probe * 2)

    @property
    def settled(self) -> int | None:
        """The level to start the next load to this target at: None until a level was judged."""
        return self.limit if self.adaptive and self.rates else None

    def answered(self, entries: int, judged: bool = True) -> None:
        """After each answered bundle of `entries` entries (`judged`: it may have shared the server)."""
        now = self._pushback()
        pushed, self.seen = now > self.seen, now
        if not self.adaptive or not judged:
            return
        if pushed:
            if self.limit > 1:
                self._step_back(self.limit // 2)
            self._new_window()
            return
        self.window_bundles += 1
        self.window_entries += entries
        if self.window_bundles < self.probe:
            return
        rate = self.window_entries / max(time.monotonic() - self.window_started, 1e-6)
        self.rates[self.limit] = rate
        fewer = self.rates.get(self.limit - 1)
        if fewer is not None and rate < fewer * GAIN_NEEDED:
            self._step_back(self.limit - 1)
        elif self.limit < self.ceiling:
            self.limit += 1
            self.highest = max(self.highest, self.limit)
        self._new_window()


@dataclass
class LoadResult:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_NAMES, 0))
    failures: list[dict[str, Any]] = field(default_factory=list)
    bundles: int = 0
    # Whether the project writes transactions atomically; None when not asked (no transactional element,
    # async mode) or the server's answer said neither.
    transaction_bundles: bool | None = None
    # The most bundles the load had in flight at once, and the level it settled at (InFlight.settled).
    most_in_flight: int = 0
    settled_in_flight: int | None = None

    def add(self, name: str, amount: int = 1) -> None:
        self.counts[name] += amount

    def merge(self, other: "LoadResult") -> None:
        for name, amount in other.counts.items():
            self.add(name, amount)
        self.failures.extend(other.failures)
        self.bundles += other.bundles
        self.most_in_flight = max(self.most_in_flight, other.most_in_flight)
        self.settled_in_flight = other.settled_in_flight or self.settled_in_flight
        if other.transaction_bundles is not None:
            self.transaction_bundles = other.transaction_bundles


def held_in_target(censuses: Censuses) -> pl.DataFrame:
    """Per identifier the target holds (by the census): the id of its one resource as `held_id`, or
    `held_many` when several resources carry it (a duplicate: written by conditional PUT, which Medplum
    refuses, so that the load never adds a copy)."""
    return pl.concat(
        [
            pl.DataFrame(
                schema={
                    "resource_type": pl.String,
                    "identifier_system": pl.String,
                    "identifier_value": pl.String,
                    "held_id": pl.String,
                    "held_many": pl.Boolean,
                }
            ),
            *(
                found.group_by("identifier_value")
                .agg(copies=pl.len(), held_id=pl.col("resource_id").first())
                .select(
                    pl.lit(resource_type).alias("resource_type"),
                    pl.lit(system).alias("identifier_system"),
                    "identifier_value",
                    held_id=pl.when(pl.col("copies") == 1).then("held_id"),
                    held_many=pl.col("copies") > 1,
                )
                for (resource_type, system), found in censuses.items()
            ),
        ],
        how="vertical_relaxed",
    )


def entry_texts(frame: pl.DataFrame, creates: str | None = None) -> pl.Series:
    """One bundle entry (JSON text) per row: a conditional PUT on the row's identifier, which Medplum
    answers with a search before it writes. With `creates` the frame has the columns of held_in_target
    (null: the target does not hold the row's resource): a held one goes as `PUT Type/id`, with no search
    inside the write, an absent one as `creates` says (CREATE_MODES), a duplicate as a conditional PUT."""
    url = conditional_reference(pl.col("resource_type"), pl.col("identifier_system"), pl.col("identifier_value"))
    resource = pl.col("resource")
    request = pl.struct(pl.lit("PUT").alias("method"), url.alias("url")).struct.json_encode()
    if creates is not None:
        held = pl.col("held_id").is_not_null()
        by_id = pl.struct(pl.lit("PUT").alias("method"), pl.format("{}/{}", "resource_type", "held_id").alias("url"))
        create = (
            pl.struct(pl.lit("POST").alias("method"), pl.col("resource_type").alias("url")).struct.json_encode()
            if creates == "post"
            else request
        )
        request = (
            pl.when(pl.col("held_many").fill_null(False))
            .then(request)
            .when(held)
            .then(by_id.struct.json_encode())
            .otherwise(create)
        )
        # An update by id carries the id in the resource too (Medplum refuses it otherwise).
        resource = (
            pl.when(held)
            .then(pl.concat_str(pl.lit('{"id":"'), "held_id", pl.lit('",'), resource.str.slice(1)))
            .otherwise(resource)
        )
    opening = pl.when(pl.col("full_url").is_not_null()).then(
        pl.concat_str(pl.lit('{"fullUrl":"'), pl.col("full_url"), pl.lit('",'))
    )
    return frame.select(
        pl.concat_str(
            opening.otherwise(pl.lit("{")),
            pl.lit('"request":'),
            request,
            pl.lit(',"resource":'),
            resource,
            pl.lit("}"),
        )
    ).to_series()


def with_direct_references(rows: pl.DataFrame, target_ids: pl.DataFrame) -> pl.DataFrame:
    """`rows` (with their `references`) whose resources write each conditional reference to a target
    in `target_ids` (LOADED_ID_SCHEMA) as `Type/id` instead. The content hash stays that of the
    conditional form: it says what the source made, and a rerun must not see a change in it."""
    keys = ["resource_type", "identifier_system", "identifier_value"]
    pairs = (
        rows.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"), "references")
        .explode("references")
        .drop_nulls("references")
        .unnest("references")
        .join(target_ids, on=keys, how="inner")
        .select(
            "_row",
            # As the JSON text holds them; a reference written otherwise is left as it is.
            conditional=pl.format('"reference":"{}"', conditional_reference(*(pl.col(key) for key in keys))),
            direct=pl.format('"reference":"{}/{}"', pl.col("resource_type"), pl.col("resource_id")),
        )
        .unique(maintain_order=True)
        .with_columns(_nth=pl.int_range(pl.len()).over("_row"))
    )
    resources = rows.select("resource").with_row_index("_row")
    # A resource holds a few references: replaced one position at a time (a pattern per row can only
    # be given to polars' split and join, not to its replace).
    for nth in range(pairs["_nth"].n_unique()):
        resources = resources.join(
            pairs.filter(pl.col("_nth") == nth), on="_row", how="left", maintain_order="left"
        ).select(
            "_row",
            resource=pl.when(pl.col("conditional").is_not_null())
            .then(pl.col("resource").str.split(pl.col("conditional")).list.join(pl.col("direct")))
            .otherwise(pl.col("resource")),
        )
    return rows.with_columns(resource=resources["resource"])


def transaction_entry(inner_entries: list[str]) -> str:
    """A batch entry holding one transaction: Medplum processes it atomically."""
    return (
        '{"request":{"method":"POST","url":"/"},"resource":{"resourceType":"Bundle","type":"transaction","entry":['
        + ",".join(inner_entries)
        + "]}}"
    )


def submit_packed(client: MedplumClient, entries: list[str], size: int) -> list[EntryResponse]:
    """One batch holding `entries`, those without a conditional URL packed in transactions of `size`
    (see LoadSettings.transaction_size); the response of each entry, in order. A transaction that failed
    as a whole (one bad entry makes Medplum refuse all of it) is sent once more as plain entries, so each
    entry gets its own answer."""
    plain = [i for i, entry in enumerate(entries) if holds_conditional_url(entry)]
    packable = [i for i, entry in enumerate(entries) if not holds_conditional_url(entry)]
    groups = [packable[start : start + size] for start in range(0, len(packable), size)]
    sent = [transaction_entry([entries[i] for i in group]) for group in groups] + [entries[i] for i in plain]
    responses = client.submit_batch(sent)
    answers: dict[int, EntryResponse] = dict(zip(plain, responses[len(groups) :], strict=True))
    refused: list[int] = []
    for group, response in zip(groups, responses, strict=False):
        inner = response.inner_responses() if response.ok or response.refused_by_quota else []
        if len(inner) == len(group):
            answers.update(zip(group, inner, strict=True))
        elif response.refused_by_quota:
            answers.update((i, response) for i in group)
        else:
            refused.extend(group)
    if refused:
        answers.update(zip(refused, client.submit_batch([entries[i] for i in refused]), strict=True))
    return [answers[i] for i in range(len(entries))]


def in_shard(frame: pl.DataFrame, settings: LoadSettings) -> pl.DataFrame:
    """The rows of `frame` this load is responsible for (all of them without sharding)."""
    if settings.shard_count == 1:
        return frame
    return frame.filter(shard_of(frame["bundle_group"], settings.shard_count) == settings.shard_index)


LOAD_COLUMNS = (
    "source_table",
    "unit_key",
    "resource_type",
    "identifier_system",
    "identifier_value",
    "bundle_group",
    "full_url",
    "resource",
    "content_hash",
    "quarantine_rule",
    "quarantine_reason",
)

# What the loader needs of the ledger: whether a unit changed since its last success, and its version.
LEDGER_COLUMNS = ("source_table", "unit_key", "disposition", "content_hash", "version_id")

# Units registered per manifest statement: bounded memory for the Python records of a large element.
REGISTER_CHUNK = 50_000


def rows_to_send(frame: pl.DataFrame, ledger: pl.DataFrame, settings: LoadSettings) -> pl.Series:
    """True for the rows to send: not quarantined and, unless resending, changed since their last
    successful write. In a transactional element a group goes whole or not at all."""
    last_success = ledger.filter(pl.col("disposition") == "successful").select(
        "source_table", "unit_key", last_hash=pl.col("content_hash")
    )
    marked = frame.select("source_table", "unit_key", "content_hash", "quarantine_rule").join(
        last_success, on=["source_table", "unit_key"], how="left", maintain_order="left"
    )
    changed = settings.resend_unchanged | (marked["last_hash"] != marked["content_hash"]).fill_null(True)
    eligible = marked["quarantine_rule"].is_null()
    send = (eligible & changed).alias("send")
    group_changes = (
        pl.DataFrame({"g": frame["bundle_group"], "send": send}).select(pl.col("send").any().over("g")).to_series()
    )
    return eligible & group_changes


@dataclass(frozen=True)
class Known:
    """What the caller of load_frame already knows, so that a load in several parts reads it once.

    `prerequisites`: the run's prerequisite report (made by load_frame when None); `ledger`: the
    element's ledger (LEDGER_COLUMNS); `held` (held_in_target): what the target holds of the frame's own
    resources, by its census (with it a resource is updated by id or created as settings.creates says,
    not written by conditional PUT); `bundle_offset` and `units_before`: the bundles and the units sent by
    the parts loaded before this one in the same run (this part's bundles are numbered after them, and its
    progress counts on from them); `in_flight_start`: the bundles in flight to start with (adaptive), where
    the load before this one settled."""

    prerequisites: PrerequisiteReport | None = None
    ledger: pl.DataFrame | None = None
    held: pl.DataFrame | None = None
    bundle_offset: int = 0
    units_before: int = 0
    in_flight_start: int = FIRST_IN_FLIGHT


@dataclass
class _Flight:
    """A bundle sent and, once answered, its responses."""

    number: int
    rows: pl.DataFrame
    future: Future[list[EntryResponse]]
    cost: int
    alone: bool
    is_async: bool
    responses: list[EntryResponse] | None = None


def load_frame(
    client: MedplumClient,
    manifest: Manifest,
    run_id: str,
    element: DataElement,
    frame: pl.DataFrame,
    settings: LoadSettings,
    on_progress: Callable[[int, int], None] | None = None,
    known: Known = Known(),
) -> LoadResult:
    """Send every eligible row of `frame` (of this load's shard), the bundles in flight as InFlight
    allows, record each outcome in submission order, and count what happened. A shard registers and
    counts only its own units. Rows referencing a resource the ledger says was not loaded are
    quarantined first, by the run's prerequisite report."""
    element_name, transactional = element.name, element.transactional
    bundle_offset, held = known.bundle_offset, known.held
    prerequisites = known.prerequisites
    if prerequisites is None:
        prerequisites = check_prerequisites(client, manifest, element_name, frame)
    # fhir_frames does not quarantine rows pointing at a quarantined patient (that is known only at load
    # time): sent, Medplum would refuse them and the ledger would turn them from quarantined into rejected.
    frame = quarantine_unloadable(frame, prerequisites)
    # The targets written as `Type/id` in this load (the ledger has their ids), when the settings allow it.
    target_ids = prerequisites.loaded_ids
    direct_ids = target_ids if settings.direct_references and not target_ids.is_empty() else None
    # Only the columns the load needs: the joins and filters below copy what they are given, and the
    # references lists and element columns of a large frame weigh hundreds of megabytes.
    frame = in_shard(frame.select(*LOAD_COLUMNS, *(["references"] if direct_ids is not None else [])), settings)
    result = LoadResult()
    result.add("source_rows", frame.height)
    ledger = manifest.units(element_name, LEDGER_COLUMNS) if known.ledger is None else known.ledger
    send = rows_to_send(frame, ledger, settings)
    if attaches_files(frame.filter(send)):
        # Legacy files and BLOBs go up as Binaries (booked before their resources are sent) just before
        # sending; a unit whose bytes are refused now is quarantined with the refusal, not sent.
        frame, send = _with_uploads(frame, send, uploader_for(client, manifest))
    result.add("quarantined", int(frame["quarantine_rule"].is_not_null().sum()))
    result.add("not_sent_unchanged", int((~send & frame["quarantine_rule"].is_null()).sum()))
    # A resubmission of what is loaded (the idempotency check) leaves the dispositions as they are until
    # its answers settle them: the run's other checks read them meanwhile, on other processes or workers
    # (multiprocess, Celery), and would find the whole element pending.
    if not settings.resend_unchanged:
        for start in range(0, frame.height, REGISTER_CHUNK):
            manifest.register_units(
                run_id, element_name, frame.slice(start, REGISTER_CHUNK), send.slice(start, REGISTER_CHUNK)
            )

    previous_versions = ledger.select("source_table", "unit_key", previous_version=pl.col("version_id"))
    outgoing = frame.filter(send).join(
        previous_versions, on=["source_table", "unit_key"], how="left", maintain_order="left"
    )
    if direct_ids is not None:
        outgoing = with_direct_references(outgoing, direct_ids).drop("references")
    if held is not None:
        outgoing = outgoing.join(
            held, on=["resource_type", "identifier_system", "identifier_value"], how="left", maintain_order="left"
        )
        if settings.resend_unchanged and settings.compare_before_resend:
            as_sent, searches = held_as_sent(client, outgoing)
            result.add("quota_points", searches * POINTS_PER_SEARCH)
            whole_group = pl.DataFrame({"g": outgoing["bundle_group"], "same": as_sent}).select(
                pl.col("same").all().over("g")
            )
            result.add("held_as_sent", int(whole_group.to_series().sum()))
            outgoing = outgoing.filter(~whole_group.to_series())
    bundles = Bundles(outgoing, transactional, settings.batch_size, settings.creates if held is not None else None)
    result.bundles = len(bundles)
    in_flight: deque[_Flight] = deque()
    answered: deque[tuple[int, pl.DataFrame, list[EntryResponse]]] = deque()
    # Async jobs and an element's own transactions keep their bundles as they are.
    packs = settings.transaction_size > 1 and not transactional
    units = (known.units_before, known.units_before + outgoing.height)
    recorder = _Recorder(manifest, run_id, element_name, units, on_progress)

    limit = InFlight(client, settings.concurrency, settings.adaptive, known.in_flight_start)

    def wait_for_oldest(is_async: bool | None = None) -> None:
        """Wait for the oldest bundle still unanswered (of one kind: async jobs or sync bundles; None: any)."""
        wait_for(unanswered(is_async)[0])

    def wait_for(flight: _Flight) -> None:
        """Wait for `flight`'s answer, then hand every answered bundle at the front over for recording, in
        submission order."""
        flight.responses = flight.future.result()
        # InFlight judges the bundles that may share the server; in mixed mode not the async job beside them.
        limit.answered(
            flight.rows.height, judged=not flight.alone and not (flight.is_async and settings.mode == "mixed")
        )
        while in_flight and in_flight[0].responses is not None:
            done = in_flight.popleft()
            assert done.responses is not None  # for the type checker: the loop's condition
            answered.append((done.number, done.rows, done.responses))

    def unanswered(is_async: bool | None = None) -> list[_Flight]:
        return [f for f in in_flight if f.responses is None and is_async in (None, f.is_async)]

    def charged() -> int:
        """The quota points of the sync bundles in flight, which the header does not show yet."""
        return sum(f.cost for f in unanswered(False))

    def blocking(alone: bool, is_async: bool) -> list[_Flight]:
        """The bundles in flight the next one waits for, oldest first (none: it goes now)."""
        if alone or any(f.alone for f in unanswered()):
            return unanswered()
        if settings.mode == "mixed" and is_async:
            return unanswered(True)  # one job at a time, beside the sync bundles and in no place of theirs
        lane = unanswered(is_async)
        return lane if len(lane) >= limit.limit else []

    def goes_async(alone: bool, sync_cost: int, bundles_after: int) -> bool:
        """Whether the next bundle goes as an async job: each one in async mode. In mixed mode, one job at a
        time and no bundle that goes alone: beside the sync bundles while at least twice those in flight remain
        after it (they have work while it runs, and the load does not end waiting for a job), and instead of
        a sync bundle the quota would hold back (hosted Medplum does not charge a job): then it waits for the
        job in flight rather than for the quota's reset."""
        if settings.mode != "mixed" or alone:
            return settings.mode == "async"
        while True:
            held_back = client.quota_wait(sync_cost) > 0 or not client.quota_allows(sync_cost + charged())
            if not unanswered(True):
                return held_back or bundles_after >= 2 * limit.limit
            if not held_back:
                return False
            wait_for_oldest(True)

    def record_answered() -> None:
        # In submission order, while the next bundle is already in flight.
        while answered:
            number, rows, responses = answered.popleft()
            _record(
                recorder,
                bundle_offset + number,
                rows,
                _row_responses(rows, responses, transactional),
                result,
                transactional,
            )

    try:
        with ThreadPoolExecutor(max_workers=settings.concurrency + 1, thread_name_prefix="bundle") as pool:
            for number, (rows, entries) in enumerate(bundles, start=1):
                # A bundle holding a conditional URL (a conditional PUT or reference: Medplum searches, then
                # writes, in a serializable transaction) goes alone: overlapping ones collide with 409s and
                # were slower on a real Medplum than one at a time (docs/benchmark.md).
                alone = any(holds_conditional_url(entry) for entry in entries)
                sync_cost = quota_cost(len(rows), entries)
                is_async = goes_async(alone, sync_cost, len(bundles) - number)
                cost = 0 if is_async else sync_cost
                result.add("quota_points", cost)
                result.add("sent_async", len(rows) if is_async else 0)
                if not is_async:
                    # The bundles in flight will be charged too, and the header does not show them yet:
                    # while the quota has no room for them and this one, wait for answers; then for the
                    # quota's reset if even this bundle alone does not fit.
                    while charged() and not client.quota_allows(cost + charged()):
                        wait_for_oldest(False)
                    client.pace(cost=cost)
                while waiting := blocking(alone, is_async):
                    wait_for(waiting[0])
                if packs and not is_async:
                    future = pool.submit(submit_packed, client, entries, settings.transaction_size)
                else:
                    future = pool.submit(client.submit_batch, entries, respond_async=is_async)
                in_flight.append(_Flight(number, rows, future, cost, alone, is_async))
                result.most_in_flight = max(result.most_in_flight, len(unanswered()))
                record_answered()
            while unanswered():
                wait_for_oldest()
    finally:
        record_answered()
        recorder.flush()
    result.add("in_flight_decreased", limit.decreases)
    result.settled_in_flight = limit.settled
    return result


def _with_uploads(frame: pl.DataFrame, send: pl.Series, uploader: FileUploader) -> tuple[pl.DataFrame, pl.Series]:
    """The frame with the Binaries of the rows to send in their attachments, and those rows still to
    send: a row whose bytes the uploader refused is quarantined with its rule and reason instead."""
    numbered = frame.with_row_index("_row")
    uploaded = with_uploaded_files(numbered.filter(send), uploader)
    frame = numbered.update(
        uploaded.select("_row", "resource", "quarantine_rule", "quarantine_reason"), on="_row", how="left"
    ).drop("_row")
    return frame, send & frame["quarantine_rule"].is_null()


# Outcomes are written to the manifest this many rows (or seconds) at a time: one commit per bundle
# cost more than the bundle itself on a fast server.
RECORD_FLUSH_ROWS = 2_000
RECORD_FLUSH_SECONDS = 1.0
# Bundle entries are rendered as JSON this many rows at a time (one polars call per bundle is slow).
ENTRY_TEXT_CHUNK_ROWS = 5_000


class _Recorder:
    """Attempts and dispositions stored a few bundles at a time, at most RECORD_FLUSH_ROWS rows or
    RECORD_FLUSH_SECONDS behind; progress (units sent and recorded, of all the element's units to send)
    is reported for a bundle once its outcomes are stored. A crash loses at most that much of the
    record: those units stay pending and the next run sends them again (the next census finds what
    was written)."""

    def __init__(
        self,
        manifest: Manifest,
        run_id: str,
        element_name: str,
        units: tuple[int, int],
        on_progress: Callable[[int, int], None] | None,
    ) -> None:
        self.manifest, self.run_id, self.element_name = manifest, run_id, element_name
        (self.done, self.total), self.on_progress = units, on_progress
        self.columns: tuple[list[Any], ...] = ([], [], [], [], [])
        self.bundle_units: list[int] = []
        self.last_flush = time.monotonic()

    def add(self, *columns: list[Any]) -> None:
        for stored, new in zip(self.columns, columns, strict=True):
            stored.extend(new)
        self.bundle_units.append(len(columns[0]))
        if len(self.columns[0]) >= RECORD_FLUSH_ROWS or time.monotonic() - self.last_flush >= RECORD_FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.columns[0]:
            self.manifest.record_results(self.run_id, self.element_name, *self.columns)
        self.columns = ([], [], [], [], [])
        self.last_flush = time.monotonic()
        bundle_units, self.bundle_units = self.bundle_units, []
        for units in bundle_units:
            self.done += units
            if self.on_progress:
                self.on_progress(self.done, self.total)


# A conditional PUT searched twice when it created inside a batch (140 measured); each conditional
# reference in a resource (`Patient?identifier=…`) is resolved by a search.
_CONDITIONAL_PUT = re.compile(r'"url":"[A-Za-z]+\?identifier=')
# How every conditional URL the load writes begins its query (search.conditional_url, conditional_reference).
CONDITIONAL_QUERY = "?identifier="


def holds_conditional_url(entry: str) -> bool:
    """Whether a bundle entry's text holds a conditional URL: a conditional PUT, or a conditional
    reference in its resource. Medplum resolves either by a search inside the write."""
    return CONDITIONAL_QUERY in entry


def quota_cost(rows: int, entries: list[str]) -> int:
    """What a bundle of `rows` writes costs of the FHIR quota: the writes, two searches for each
    conditional write and one for every conditional reference."""
    text = "".join(entries)
    conditional_puts = len(_CONDITIONAL_PUT.findall(text))
    references = text.count(CONDITIONAL_QUERY) - conditional_puts
    return rows * POINTS_PER_WRITE + (2 * conditional_puts + references) * POINTS_PER_SEARCH


class Bundles:
    """The bundles to send, built one at a time so a large element never holds all its JSON at once:
    (rows, batch entries) per bundle; for a transactional element each entry is one bundle group's
    transaction and carries all rows of that group."""

    def __init__(
        self, outgoing: pl.DataFrame, transactional: bool, batch_size: int, creates: str | None = None
    ) -> None:
        self.transactional = transactional
        self.batch_size = batch_size
        self.creates = creates
        if transactional:
            # Groups made contiguous; within a group the element's own row order is kept.
            self.rows = outgoing.sort("bundle_group", maintain_order=True)
            self.group_sizes = self.rows.group_by("bundle_group", maintain_order=True).len()["len"]
        else:
            self.rows = outgoing
            self.group_sizes = pl.Series("len", [1] * outgoing.height, dtype=pl.UInt32)

    def __len__(self) -> int:
        return math.ceil(len(self.group_sizes) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[pl.DataFrame, list[str]]]:
        groups_per_chunk = self.batch_size * max(1, ENTRY_TEXT_CHUNK_ROWS // self.batch_size)
        first_row = 0
        for chunk_start in range(0, len(self.group_sizes), groups_per_chunk):
            chunk_sizes = self.group_sizes.slice(chunk_start, groups_per_chunk).to_list()
            chunk_rows = self.rows.slice(first_row, sum(chunk_sizes))
            first_row += sum(chunk_sizes)
            chunk_texts = entry_texts(chunk_rows, self.creates).to_list()
            offset = 0
            for start in range(0, len(chunk_sizes), self.batch_size):
                sizes = chunk_sizes[start : start + self.batch_size]
                count = sum(sizes)
                rows, texts = chunk_rows.slice(offset, count), chunk_texts[offset : offset + count]
                offset += count
                if not self.transactional:
                    yield rows, texts
                    continue
                offsets = [0, *accumulate(sizes)]
                yield rows, [transaction_entry(texts[a:b]) for a, b in pairwise(offsets)]


def _row_responses(rows: pl.DataFrame, responses: list[EntryResponse], transactional: bool) -> list[EntryResponse]:
    """The response of each row: its own entry's, or for a transaction its inner entry's (or the
    transaction's own when the whole transaction failed)."""
    if not transactional:
        return responses
    per_row: list[EntryResponse] = []
    group_sizes = rows.group_by("bundle_group", maintain_order=True).len()["len"].to_list()
    for size, response in zip(group_sizes, responses, strict=True):
        # A transaction refused by the quota answers 200 with every inner entry 429.
        inner = response.inner_responses() if response.ok or response.refused_by_quota else []
        per_row.extend(inner if len(inner) == size else [response] * size)
    return per_row


def _record(
    recorder: _Recorder,
    bundle_number: int,
    rows: pl.DataFrame,
    responses: list[EntryResponse],
    result: LoadResult,
    transactional: bool,
) -> None:
    """Each row's attempt and the disposition it settles. A row refused by the quota after its wait ran
    out stays pending ("quota"). In a transactional element, a row written while another row of its
    bundle group was not (a project without transaction-bundles writes a transaction like a batch) is
    half written: it stays pending too, so the next run sends the whole group again."""
    groups = rows["bundle_group"].to_list()
    incomplete = (
        {group for group, response in zip(groups, responses, strict=True) if not response.ok}
        if transactional
        else set()
    )
    attempts, successes, resource_ids, version_ids, reasons = [], [], [], [], []
    for entry_number, (row, group, response) in enumerate(
        zip(rows.iter_rows(named=True), groups, responses, strict=True), start=1
    ):
        attempts.append(
            Attempt(
                row["source_table"],
                row["unit_key"],
                bundle_number,
                entry_number,
                response.status,
                response.location,
                response.outcome,
                row["content_hash"],
            )
        )
        resource_ids.append(response.resource_id)
        version_ids.append(response.version_id)
        result.add("sent")
        success: bool | None = response.ok
        reason = None
        if response.refused_by_quota:
            success, reason = (
                None,
                f"quota: refused by the FHIR quota (429) until the wait allowed ran out: {response.diagnostics}",
            )
            result.add("pending_quota")
        elif not response.ok:
            reason = f"{response.status}: {response.diagnostics}"
            result.add("failed")
            result.failures.append(
                {
                    "source_table": row["source_table"],
                    "unit_key": row["unit_key"],
                    "resource_type": row["resource_type"],
                    "status": response.status,
                    "outcome": response.diagnostics,
                }
            )
        elif group in incomplete:
            success, reason = (
                None,
                (
                    "half written: written while another entry of its transaction was not "
                    "(transaction-bundles off); the whole transaction is sent again"
                ),
            )
            result.add("half_written")
        elif response.status == 201:
            result.add("created")
        elif response.version_id is not None and response.version_id == row["previous_version"]:
            result.add("unchanged")
        else:
            result.add("updated")
        successes.append(success)
        reasons.append(reason)
    recorder.add(attempts, successes, resource_ids, version_ids, reasons)


def _distinct_references(frame: pl.DataFrame, element: DataElement) -> pl.DataFrame:
    """One eligible row per distinct expected reference of `frame` to another element's resource:
    what check_prerequisites reads."""
    return (
        frame.filter(pl.col("quarantine_rule").is_null())
        .select(pl.col("references").explode())
        .drop_nulls()
        .filter(~pl.col("references").struct.field("resource_type").is_in(list(element.schemas)))
        .unique()
        .select(quarantine_rule=pl.lit(None, pl.String), references=pl.concat_list("references"))
    )


class PrerequisitesMissing(RuntimeError):
    """An earlier data element is not (fully) in Medplum; the message names it."""


def migrate(
    client: MedplumClient,
    manifest: Manifest,
    run_id: str,
    element: DataElement,
    frame: pl.DataFrame | FrameParts,
    source_url: str,
    settings: LoadSettings,
    on_progress: Callable[[int, int], None] | None = None,
    census_of_target: Callable[[pl.DataFrame], Censuses] | None = None,
    run_prerequisites: RunPrerequisites | None = None,
) -> LoadResult:
    """One data element into Medplum, recorded in the ledger as one run.

    `frame` is the element's FHIR frame, or its parts (whole bundle groups each), sent one part at a
    time so memory stays bounded. Rows whose prerequisites were refused are quarantined before
    anything is sent. With `census_of_target` (the census of the element's resources in the target
    now, for its REFERENCE_COLUMNS), units the ledger records as loaded that the target lost are sent
    again in this load. With `run_prerequisites` the prerequisites are the run's (made once per run)."""
    parts = frame if isinstance(frame, FrameParts) else [frame]
    # First pass, over three columns: each distinct reference to another element's resource by an
    # eligible row (as a row of its own), and the rows per source table.
    narrow = ("source_table", "quarantine_rule", "references")
    summaries = [
        (_distinct_references(part, element), part.group_by("source_table").len())
        for part in (frame.parts(narrow) if isinstance(frame, FrameParts) else [frame])
    ]

    distinct_references = [references for references, _ in summaries]

    def make_report() -> PrerequisiteReport:
        # Only when the run has no report yet (the blocking check usually made it).
        return check_prerequisites(client, manifest, element.name, pl.concat(distinct_references).unique())

    report = run_prerequisites.get(make_report) if run_prerequisites else make_report()
    if report.blocking_elements:
        raise PrerequisitesMissing(report.message())
    per_table = pl.concat([tables for _, tables in summaries]).group_by("source_table").agg(pl.col("len").sum())
    del summaries
    manifest.start_run(
        run_id,
        element.name,
        element.mapping_version,
        source_url,
        dict(per_table.iter_rows()),
        shard=(settings.shard_index, settings.shard_count),
    )
    result = LoadResult()
    try:
        held = None
        if census_of_target is not None:
            keys = in_shard(
                frame.read(REFERENCE_COLUMNS) if isinstance(frame, FrameParts) else frame.select(REFERENCE_COLUMNS),
                settings,
            )
            censuses = census_of_target(keys)
            held = held_in_target(censuses)
            lost = lost_in_target(
                keys, manifest.units(element.name, RECONCILE_UNIT_COLUMNS), censuses, report.loaded_ids
            )
            manifest.mark_for_resend(element.name, lost)
            result.add("lost_in_target", lost.height)
            if not lost.is_empty():
                log.warning(
                    "%s: %d units the ledger records as loaded are not in the target as written: sent again",
                    element.name,
                    lost.height,
                )
        if element.transactional and settings.mode == "sync":
            # Asked once per run; the caller warns (TRANSACTIONS_OFF) when the answer is no.
            result.transaction_bundles = client.transaction_bundles()
        ledger = manifest.units(element.name, LEDGER_COLUMNS)
        # Each part (and the next element) starts where the load before it settled: probing from one
        # again would cost every part its first bundles.
        start = in_flight_start(manifest)
        for part in parts:
            part_result = load_frame(
                client,
                manifest,
                run_id,
                element,
                part,
                settings,
                on_progress,
                Known(
                    prerequisites=report,
                    ledger=ledger,
                    held=held,
                    bundle_offset=result.bundles,
                    units_before=result.counts["sent"],
                    in_flight_start=start,
                ),
            )
            result.merge(part_result)
            start = result.settled_in_flight or start
    except Exception:
        manifest.finish_run(run_id, element.name, "failed", {})
        raise
    manifest.finish_run(run_id, element.name, "finished", result.counts, result.settled_in_flight)
    return result
