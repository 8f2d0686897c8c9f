"""The books (every source unit with its one disposition), the content fingerprint of an element and the
sample of bundle groups the idempotency check resubmits."""

import hashlib
from dataclasses import dataclass

import polars as pl

from migration_assets.ledger.manifest import DISPOSITIONS


@dataclass(frozen=True)
class Books:
    """Every source unit of the frame and its one disposition in the ledger."""

    source_units: int
    dispositions: dict[str, int]  # every DISPOSITIONS name, and "none" for units the ledger lacks

    @property
    def accounted(self) -> int:
        return sum(self.dispositions[name] for name in ("successful", "rejected", "skipped", "quarantined"))

    @property
    def balanced(self) -> bool:
        return self.accounted == self.source_units and self.dispositions["pending"] == 0


def accounting(frame: pl.DataFrame, units: pl.DataFrame) -> Books:
    """source units = successful + rejected + skipped + quarantined, with nothing pending or missing.
    (The ledger's primary key makes two dispositions for one unit impossible.)"""
    mine = frame.select("source_table", "unit_key").join(units, on=["source_table", "unit_key"], how="left")
    dispositions = {name: int((mine["disposition"] == name).sum()) for name in DISPOSITIONS}
    dispositions["none"] = int(mine["disposition"].is_null().sum())
    return Books(source_units=frame.height, dispositions=dispositions)


# Lines hashed at a time by content_fingerprint.
FINGERPRINT_SLICE = 100_000


def content_fingerprint(frame: pl.DataFrame, scope: str) -> str:
    """SHA-256 of `scope` and the rows' (source table, unit key, content hash), in any order: the same
    exactly when the same units carry the same content."""
    lines = (
        frame.select(pl.concat_str("source_table", "unit_key", pl.col("content_hash").fill_null(""), separator="\t"))
        .to_series()
        .sort()
    )
    digest = hashlib.sha256(scope.encode())
    # A slice at a time: millions of lines never become Python strings at once.
    for start in range(0, len(lines), FINGERPRINT_SLICE):
        digest.update(("\n" + lines.slice(start, FINGERPRINT_SLICE).str.join("\n").item()).encode())
    return digest.hexdigest()


def sample_groups(frame: pl.DataFrame, size: int, seed: int) -> pl.DataFrame:
    """`size` bundle groups of the frame chosen at random with a recorded seed (all when size is 0 or
    at least the number of groups): whole groups, since a transaction goes whole or not at all."""
    groups = frame["bundle_group"].unique().sort()
    if size <= 0 or size >= len(groups):
        return frame
    chosen = groups.sample(size, seed=seed)
    return frame.filter(pl.col("bundle_group").is_in(chosen.implode()))
