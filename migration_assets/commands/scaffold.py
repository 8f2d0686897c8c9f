"""`make element NAME=... [PROFILE=...]` and `make profile DIR=...`: files that run before a line is edited.

An element scaffold is a module mapping a legacy table `<name>` (key `<name>_id`, a local `code`, a
`description` and a `recorded_on` date) to FHIR Basic, its code map (terminology/<name>.csv, with a row
in VERSIONS.csv), sample rows (samples/<name>.csv) and a test (tests/test_<name>.py). It loads into
Medplum and passes every check as written; then the user replaces the table, the columns and the
resource with their own. A profile scaffold is a folder outside the repository with its PROFILE, a
phases file, and a first element.
"""

import argparse
import re
import sys
from pathlib import Path

from migration_assets.elements.profile import SHIPPED_PROFILES_PACKAGE, load_profile, profile_module

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

_ELEMENT = '''"""{name}: legacy `{name}` rows to FHIR Basic (scaffolded by `make element`; map your own table here).

Edit `source_tables`, `extract` and `transform` for your table, the resource you map it to, and its
pandera model; docs/authoring.md lists every field of the contract.
"""

from collections.abc import Mapping
from pathlib import Path

import pandera.polars as pa
import polars as pl

from migration_assets.elements.base import (
    DATE,
    DataElement,
    FrameModel,
    SourceSystem,
    frame_columns,
    invalid_date,
    quarantine,
)
from migration_assets.elements.fhir_json import codeable_concept, coding, identifier
from migration_assets.elements.terminology import TerminologyMaps

TABLE = "{name}"
KEY = "{name}_id"
CODE_MAP = TerminologyMaps(Path(__file__).resolve().parent.parent / "terminology")


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    return tables[TABLE].with_columns(source_table=pl.lit(TABLE))


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    # The local code always; the standard coding only where terminology/{name}.csv maps it.
    codes = CODE_MAP.read_map("{name}").lazy().rename({{"local_code": "code"}}).with_columns(code_mapped=pl.lit(True))
    rows = source.join(codes, on="code", how="left", maintain_order="left").with_columns(
        recorded_on=pl.col("recorded_on").str.strip_chars(), code_mapped=pl.col("code_mapped").fill_null(False)
    )
    resource = pl.struct(
        pl.lit("Basic").alias("resourceType"),
        identifier(system.identifier_system("{name}"), pl.col(KEY)).alias("identifier"),
        codeable_concept(
            coding(system.code_system("{name}"), pl.col("code"), pl.col("description")),
            coding(pl.col("system"), pl.col("standard_code"), pl.col("display")),
            text=pl.col("description"),
        ).alias("code"),
        pl.col("recorded_on").alias("created"),
    )
    frame = rows.select(
        frame_columns("Basic", system.identifier_system("{name}"), pl.col(KEY), resource),
        recorded_on=pl.col("recorded_on"),
        code_mapped=pl.col("code_mapped"),
    )
    return quarantine(frame, "invalid_date", invalid_date("recorded_on"), "recorded_on is not a real date")


class {model}Frame(FrameModel):
    recorded_on: str = pa.Field(str_matches=DATE, nullable=True)
    code_mapped: bool


ELEMENT = DataElement(
    name="{name}",
    description="{name}: legacy {name} rows to FHIR Basic, keyed by {name}_id.",
    mapping_version="0.1.0",
    source_tables={{TABLE: KEY}},
    requires=(),
    extract=extract,
    transform=transform,
    schemas={{"Basic": {model}Frame}},
    patient_column=None,
    review_flags={{"code_mapped": False}},
)
'''

_SAMPLE = """{name}_id,code,description,recorded_on
{prefix}1,A1,First example,2024-01-15
{prefix}2,B2,Second example,2024-03
{prefix}3,A1,Third example,2023
"""

_CODE_MAP = "local_code,system,standard_code,display\n"
_VERSIONS_HEADER = "map,version,code_system,code_system_version,status\n"
_VERSION_ROW = "{name},0.1.0,,,draft: map the local codes before production\n"

_TEST = '''"""The scaffolded element `{name}` maps its sample rows (written by `make element`)."""

import json
from pathlib import Path

from migration_assets.elements.base import SourceSystem, build_frame
from migration_assets.elements.profile import load_profile

PROFILE = load_profile({spec})


def test_{name}_maps_its_sample_rows() -> None:
    element = PROFILE.element("{name}")
    tables = PROFILE.sample(patients=2)
    rows = element.extract({{table: tables[table] for table in element.source_tables}})
    frame = build_frame(element, rows, SourceSystem(PROFILE.identifier_base_uri))
    assert frame["quarantine_rule"].is_null().all(), frame["quarantine_reason"].to_list()
    resources = [json.loads(text) for text in frame["resource"]]
    assert {{resource["resourceType"] for resource in resources}} == {{"Basic"}}
    assert all(resource["identifier"][0]["value"] for resource in resources)
'''

_PROFILE_INIT = '''"""The profile {name}: a legacy schema migrated by the platform (scaffolded by `make profile`).

Run it with `MIGRATION_PROFILE={folder} make demo`; add elements with
`make element NAME=... PROFILE={folder}`. docs/authoring.md in the platform says how.
"""

from pathlib import Path

from migration_assets.elements.profile import Profile, discover_elements

HERE = Path(__file__).parent

PROFILE = Profile(
    name="{name}",
    description="{name}: describe the legacy system here.",
    elements=discover_elements(f"{{__name__}}.elements"),
    phases_file=HERE / "phases.yaml",
    sample_folder=HERE / "samples",
    terminology_dir=HERE / "terminology",
)
'''

_PHASES = """# The phase of each data element (the platform's README, "Phased adoption").
# Bump `version` with every change.
version: 1
updated: {today}
default_phase: backfill
verification_period_days: 90
elements: {{}}
"""


def profile_folder(spec: str) -> tuple[Path, str]:
    """The folder of the profile `spec` names, and how its tests name it to load_profile."""
    package = profile_module(spec)
    folder = Path(package.__file__ or "").resolve().parent
    shipped = package.__name__.startswith(f"{SHIPPED_PROFILES_PACKAGE}.")
    return folder, repr(load_profile(spec).name) if shipped else "str(Path(__file__).resolve().parents[1])"


def scaffold_element(name: str, profile_spec: str | None) -> list[Path]:
    """Write the element `name` into the profile's folder; returns the files written."""
    if not _NAME.match(name):
        raise SystemExit(f"NAME={name!r}: lower case letters, digits and _, starting with a letter")
    folder, spec_literal = profile_folder(profile_spec or "seed_ehr")
    targets = {
        folder / "elements" / f"{name}.py": _ELEMENT.format(name=name, model=_camel(name)),
        folder / "samples" / f"{name}.csv": _SAMPLE.format(name=name, prefix=name[:1].upper()),
        folder / "terminology" / f"{name}.csv": _CODE_MAP,
        folder / "tests" / f"test_{name}.py": _TEST.format(name=name, spec=spec_literal),
    }
    existing = [path for path in targets if path.exists()]
    if existing:
        raise SystemExit(f"not overwriting {', '.join(map(str, existing))}")
    for path, text in targets.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    versions = folder / "terminology" / "VERSIONS.csv"
    if not versions.exists():
        versions.write_text(_VERSIONS_HEADER)
    with versions.open("a") as out:
        out.write(_VERSION_ROW.format(name=name))
    return [*targets, versions]


def scaffold_profile(directory: Path, first_element: str = "records") -> list[Path]:
    """A new profile folder at `directory` with one element; returns the files written."""
    import datetime as dt

    folder = directory.expanduser().resolve()
    if not _NAME.match(folder.name):
        raise SystemExit(f"DIR={directory}: the folder's name is the profile's package name (lower case, digits, _)")
    if folder.exists() and any(folder.iterdir()):
        raise SystemExit(f"DIR={folder} exists and is not empty")
    files = {
        folder / "__init__.py": _PROFILE_INIT.format(name=folder.name, folder=folder),
        folder / "elements" / "__init__.py": f'"""The data elements of {folder.name}, one module each."""\n',
        folder / "phases.yaml": _PHASES.format(today=dt.date.today().isoformat()),
        folder / "terminology" / "VERSIONS.csv": _VERSIONS_HEADER,
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return [*files, *scaffold_element(first_element, str(folder))]


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    element = commands.add_parser("element", help="a new data element in a profile")
    element.add_argument("name")
    element.add_argument("--profile", help="a shipped profile's name or a profile folder (default: seed_ehr)")
    profile = commands.add_parser("profile", help="a new profile folder")
    profile.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    if args.command == "element":
        written = scaffold_element(args.name, args.profile)
    else:
        written = scaffold_profile(args.directory)
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
