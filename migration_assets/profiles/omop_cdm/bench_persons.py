"""The transform rate of OMOP persons beside the seed EHR's patients (100,000 each, one process):
`.venv/bin/python -m migration_assets.profiles.omop_cdm.bench_persons`."""

import time

from migration_assets.elements.base import SourceSystem, build_frame
from migration_assets.elements.profile import load_profile

s = SourceSystem("https://ehr.example-clinic.org/fhir")
for prof, el in (("omop_cdm", "persons"), ("seed_ehr", "patients")):
    p = load_profile(prof)
    t0 = time.perf_counter(); tables = p.sample(100_000, 7); gen = time.perf_counter() - t0
    e = p.element(el)
    t0 = time.perf_counter(); f = build_frame(e, e.extract(tables), s); dt = time.perf_counter() - t0
    print(f"{prof}.{el}: {f.height} rows in {dt:.2f} s = {f.height/dt:,.0f} rows/s (sample generated in {gen:.1f} s)", flush=True)
