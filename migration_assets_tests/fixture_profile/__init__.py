"""The fixture profile: a tiny legacy schema the platform's own tests run on, and a worked example of a
profile (docs/authoring.md). Three elements, each showing what the platform relies on:

- `patients` (table `patients`) to Patient: a root element, its identifier, quarantine rules;
- `visits` (tables `visits`, `visit_notes`) to Encounter and ClinicalImpression: requires `patients`,
  declared references, orphans quarantined, a visit and its notes in one transaction;
- `conditions` (table `conditions`) to Condition: a code mapped from terminology/condition_codes.csv, an
  unknown code quarantined, a code known only locally flagged for chart review.

Every table has a primary key and, when the sample is asked for it, an `updated_at` change column (the sync
reads it). The sample generator (sample_data.py) is deterministic and small, with one row of each oddity.
Run it alone: `MIGRATION_PROFILE=migration_assets_tests/fixture_profile make demo`.
"""

from pathlib import Path

from migration_assets.elements.profile import Profile, discover_elements

from .sample_data import build_sample_tables

HERE = Path(__file__).parent

PROFILE = Profile(
    name="fixture_profile",
    description="The platform tests' fixture: patients, their visits and their conditions.",
    elements=discover_elements(f"{__name__}.elements"),
    phases_file=HERE / "phases.yaml",
    sample_tables=build_sample_tables,
    terminology_dir=HERE / "terminology",
)
