"""The sample legacy EHR this platform ships with: the tables of Medplum's "Building Migration Pipelines"
guide and the rest of a clinic's chart (practitioners, medications, allergies, observations)."""

from pathlib import Path

from migration_assets.elements.profile import Profile, discover_elements
from migration_assets.profiles.seed_ehr.sample_data import build_sample_tables, sample_with_files

HERE = Path(__file__).parent

PROFILE = Profile(
    name="seed_ehr",
    description="The sample legacy EHR: patients, practitioners, allergies, medications, problem list, "
    "encounters with notes, observations.",
    elements=discover_elements(f"{__name__}.elements"),
    phases_file=HERE / "phases.yaml",
    sample_tables=build_sample_tables,
    sample_folder=HERE / "samples",
    terminology_dir=HERE / "terminology",
    sample_files=sample_with_files,
    bench_elements=("patients", "problem_list"),
    # Practitioners too: the encounters reference them, and the load step checks its prerequisites.
    bench_memory_elements=("patients", "practitioners", "problem_list", "encounters"),
)
