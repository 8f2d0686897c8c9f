"""The sync while seed_ehr's simulated old application (legacy_app.py) writes new and changed rows: every
change reaches Medplum. On the local Medplum server and a real Dagster instance; runs in a seed_ehr session
(migration_assets_tests/conftest.py, SEED_EHR_TESTS)."""

import pytest

from migration_assets.profiles.seed_ehr.legacy_app import RunningApp
from migration_assets.source import read_table
from migration_assets_tests.fixtures_platform import PlatformFactory
from migration_assets_tests.test_adoption import check, legacy_db, medplum_values, run, sensor_tick, write_phases

pytestmark = pytest.mark.integration  # starts a server and runs against it

PATIENT_SYSTEM = "https://ehr.example-clinic.org/fhir/identifier/patient"
CONDITION_SYSTEM = "https://ehr.example-clinic.org/fhir/identifier/patient-condition"


@pytest.fixture
def platform_factory(tmp_path):
    """The platform tests' factory (migration_assets_tests/fixtures_platform.py), on this profile's sample."""
    factory = PlatformFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


def test_the_sync_picks_up_every_change_the_old_application_writes(platform_factory, tmp_path, monkeypatch):
    write_phases(monkeypatch, tmp_path, patients="backfill", problem_list="backfill")
    url = legacy_db(tmp_path, patients=20)
    platform = platform_factory.new(source_url=url)
    first = run(platform, "sync_data_element", "patients")
    assert first.success
    assert check(first, "dual_write_consistency").passed

    app = RunningApp(url, seed=5, interval=0.02)
    try:
        during = run(platform, "sync_data_element", "patients")  # a tick while the application writes
    finally:
        changes = app.stop()
    assert during.success
    assert {c.kind for c in changes if c.table == "patients"} >= {"insert", "update"}

    tick = sensor_tick(platform, "patients")
    (request,) = tick.run_requests
    assert request.partition_key == "patients"
    assert run(platform, "sync_data_element", "patients").success
    assert "no legacy row of patients changed" in (sensor_tick(platform, "patients").skip_message or "")
    assert run(platform, "sync_data_element", "problem_list").success

    patients = read_table(url, "patients")
    assert medplum_values(platform, "Patient", PATIENT_SYSTEM, ("name", 0, "family")) == dict(
        zip(patients["patient_id"], patients["last_name"], strict=True)
    )
    conditions = read_table(url, "patient_conditions")
    assert medplum_values(platform, "Condition", CONDITION_SYSTEM, ("onsetDateTime",)) == dict(
        zip(conditions["patient_condition_id"], conditions["onset_date"], strict=True)
    )
    with platform.manifest() as manifest:
        assert set(manifest.units("patients")["disposition"].to_list()) == {"successful"}
