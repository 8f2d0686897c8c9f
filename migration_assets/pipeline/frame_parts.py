"""Large data elements in bounded memory: an element's FHIR frame is built, stored and loaded in parts.

Building goes over slices of the source, PART_ROWS rows at a time. Each slice is transformed, given
the row-local rules and its content hashes, and staged; only its key columns stay in memory. The rules
that need the whole element (unique keys, whole transactions, unit keys) then run once over those key
columns, and each staged slice, with their decisions, is split by key-hash of its bundle groups into
parts. A part therefore holds whole bundle groups (a transaction's rows never span two parts), and the
loader sends one part at a time. An element with at most PART_ROWS source rows is one part, in the
same row order as build_frame gives.

On disk: `<directory>/part-00003/slice-00012.parquet`; a part is its slice files read in order.
"""

import math
import shutil
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from migration_assets.elements.base import (
    FRAME_COLUMNS,
    RULED_BY_FRAME_INPUTS,
    RULED_BY_FRAME_OUTPUTS,
    DataElement,
    SourceSystem,
    apply_frame_rules,
    apply_row_rules,
    in_chunks,
    transformed,
)

# What the checks and the report read of a frame: its keys, rules and expected references, never
# the resources themselves (the bulk of it).
KEY_COLUMNS = (
    "source_table",
    "unit_key",
    "resource_type",
    "identifier_system",
    "identifier_value",
    "bundle_group",
    "quarantine_rule",
    "quarantine_reason",
)
REFERENCE_COLUMNS = (*KEY_COLUMNS, "references")

# Source rows per slice, and about the resources per part (an element makes about one resource per
# source row): a few hundred megabytes of polars frame at most for the largest resources.
PART_ROWS = 100_000


def shard_of(bundle_groups: pl.Series, shard_count: int) -> pl.Series:
    """The shard of each row: crc32 of its bundle group (stable across processes, machines and library
    versions, unlike polars' own hash) modulo `shard_count`. A bundle group never spans two shards."""
    groups = bundle_groups.fill_null("")
    unique = groups.unique()
    shards = pl.Series([zlib.crc32(group.encode()) % shard_count for group in unique.to_list()], dtype=pl.UInt32)
    return groups.replace_strict(unique, shards, return_dtype=pl.UInt32)


@dataclass(frozen=True)
class FrameParts:
    """A FHIR frame stored as parts of whole bundle groups."""

    directory: Path

    def part_directories(self) -> list[Path]:
        return sorted(path for path in self.directory.glob("part-*") if path.is_dir())

    def __iter__(self) -> Iterator[pl.DataFrame]:
        return self.parts()

    def parts(self, columns: Sequence[str] | None = None) -> Iterator[pl.DataFrame]:
        """Each part in turn (only `columns` when given)."""
        for part in self.part_directories():
            yield _read_slices(sorted(part.glob("slice-*.parquet")), columns)

    def __len__(self) -> int:
        return len(self.part_directories())

    def read(self, columns: Sequence[str] | None = None) -> pl.DataFrame:
        """The whole frame (only `columns` when given), part after part."""
        return _read_slices(sorted(self.directory.glob("part-*/slice-*.parquet")), columns)

    def scan(self) -> pl.LazyFrame:
        """The whole frame, lazily."""
        scans = [pl.scan_parquet(path) for path in sorted(self.directory.glob("part-*/slice-*.parquet"))]
        return pl.concat(scans, how="diagonal_relaxed")

    @property
    def height(self) -> int:
        return sum(
            pl.scan_parquet(path).select(pl.len()).collect().item()
            for path in self.directory.glob("part-*/slice-*.parquet")
        )

    def move_to(self, directory: Path) -> "FrameParts":
        """The same parts at `directory` (replacing what was there)."""
        if directory.exists():
            shutil.rmtree(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(self.directory), str(directory))
        # A staging folder made for these parts alone goes with them: nothing is left in the temp folder.
        if self.directory.parent.name.startswith("fhir_frames-") and not any(self.directory.parent.iterdir()):
            self.directory.parent.rmdir()
        return FrameParts(directory)


def _read_slices(paths: Sequence[Path], columns: Sequence[str] | None = None) -> pl.DataFrame:
    # "diagonal_relaxed": a column that is all null in one slice has polars' Null type there.
    frames = [pl.read_parquet(path, columns=list(columns) if columns else None) for path in paths]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame(schema=FRAME_COLUMNS)


def build_frame_parts(
    element: DataElement,
    source: pl.DataFrame | pl.LazyFrame,
    system: SourceSystem,
    directory: Path,
    part_rows: int = PART_ROWS,
) -> FrameParts:
    """The element's FHIR frame, as build_frame makes it, written as parts under `directory`."""
    source = in_chunks(source)
    total = source.select(pl.len()).collect().item()
    slice_count = max(1, math.ceil(total / part_rows))
    staged = directory / "_staged"
    staged.mkdir(parents=True)
    # One slice stays in memory; with more, each waits on disk (quickly compressed: it is read back
    # once and deleted) while the rules that need every row's keys run.
    kept: pl.DataFrame | None = None
    heights, keys = [], []
    for number in range(slice_count):
        rows = source.slice(number * part_rows, part_rows)
        frame = apply_row_rules(element, transformed(element, rows, system), system)
        if slice_count == 1:
            kept = frame
        else:
            frame.write_parquet(staged / f"{number:05d}.parquet", compression="lz4")
        heights.append(frame.height)
        keys.append(frame.select(RULED_BY_FRAME_INPUTS))
    decided = apply_frame_rules(element, pl.concat(keys, how="vertical_relaxed")).select(RULED_BY_FRAME_OUTPUTS)
    del keys
    offset = 0
    for number, height in enumerate(heights):
        path = staged / f"{number:05d}.parquet"
        frame = (kept if kept is not None else pl.read_parquet(path)).with_columns(
            decided.slice(offset, height).get_columns()
        )
        offset += height
        frame = frame.select(*FRAME_COLUMNS, *[name for name in frame.columns if name not in FRAME_COLUMNS])
        part_of_row = (
            shard_of(frame["bundle_group"], slice_count) if slice_count > 1 else pl.repeat(0, frame.height, eager=True)
        )
        # An empty slice is still written once: its columns are the frame's schema.
        pieces = frame.with_columns(_part=part_of_row).partition_by("_part", as_dict=True) or {(0,): frame}
        for (part,), piece in pieces.items():
            target = directory / f"part-{part:05d}" / f"slice-{number:05d}.parquet"
            target.parent.mkdir(exist_ok=True)
            piece.drop("_part", strict=False).write_parquet(target)
        path.unlink(missing_ok=True)
    staged.rmdir()
    return FrameParts(directory)
