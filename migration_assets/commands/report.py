"""`make report`: the cutover report of the latest run (pipeline/cutover_report.py) as one HTML page
under .demo/reports/, from the ledger, the Dagster instance and the evidence files; prints its path."""

import argparse
import sys
from pathlib import Path

from dagster import DagsterInstance

from migration_assets.commands.environment import ensure_dagster_home, quiet_dagster_warnings
from migration_assets.pipeline.cutover_report import write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", help="the books of this target (base URL#project); default: the latest run's")
    args = parser.parse_args(argv)
    quiet_dagster_warnings()
    ensure_dagster_home()
    from migration_assets.definitions import defs

    resources = defs.resources or {}
    with DagsterInstance.get() as instance:
        path = write_report(
            instance, resources["manifest"].url, Path(resources["migration_settings"].evidence_dir), args.target
        )
    print(f"cutover report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
