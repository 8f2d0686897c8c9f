"""The transform rate of OMOP persons beside the seed EHR's patients (100,000 each, one process):
`.venv/bin/python -m migration_assets.profiles.omop_cdm.bench_persons`."""

import time

from migration_assets.elements.base import SourceSystem, build_frame
from migration_assets.elements.profile import load_profile

SYSTEM = SourceSystem("https://ehr.example-clinic.org/fhir")
for profile_name, element_name in (("omop_cdm", "persons"), ("seed_ehr", "patients")):
    profile = load_profile(profile_name)
    started = time.perf_counter()
    tables = profile.sample(100_000, 7)
    generated = time.perf_counter() - started
    element = profile.element(element_name)
    started = time.perf_counter()
    frame = build_frame(element, element.extract(tables), SYSTEM)
    seconds = time.perf_counter() - started
    print(
        f"{profile_name}.{element_name}: {frame.height} rows in {seconds:.2f} s = {frame.height / seconds:,.0f} rows/s "
        f"(sample generated in {generated:.1f} s)",
        flush=True,
    )
