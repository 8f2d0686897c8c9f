"""Phased adoption: the sync, the dual-write check, read readiness, deprecation and chart review, on the
local Medplum server and a real Dagster instance. (The sync while seed_ehr's simulated old application
writes: migration_assets/profiles/seed_ehr/tests/test_sync_with_legacy_app.py.)"""

import hashlib
import json
import sqlite3
import stat
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from dagster import build_schedule_context, build_sensor_context

from migration_assets.active import write_sample
from migration_assets.adoption.archive import CHECKSUM_FILE, verify_archive
from migration_assets.phases import PHASE_NAMES, PhaseConfigError, load_phases
from migration_assets.pipeline.resources import LegacySource, ManifestStore, MedplumResource
from migration_assets.source import read_table
from migration_assets.verify.census import resources_with_identifier

pytestmark = pytest.mark.integration  # every test here starts a server or a run against one

PATIENT_SYSTEM = "https://ehr.example-clinic.org/fhir/identifier/patient"


def write_phases(monkeypatch: pytest.MonkeyPatch, folder: Path, version: int = 1, **phases: str) -> Path:
    path = folder / f"phases-{version}.yaml"
    lines = [f"version: {version}", "elements:"]
    lines += [f"  {name}: {{phase: {phase}, since: 2025-06-01}}" for name, phase in phases.items()]
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("ADOPTION_PHASES_FILE", str(path))
    return path


def legacy_db(folder: Path, patients: int) -> str:
    url = f"sqlite:///{folder / 'legacy.db'}"
    write_sample(url, patients=patients, updated_at=True)
    return url


def run(platform, job: str, element: str | None = None, run_config: dict | None = None):
    return platform.defs.resolve_job_def(job).execute_in_process(
        partition_key=element, instance=platform.instance, raise_on_error=False, run_config=run_config or {}
    )


def sensor_tick(platform, element: str):
    sensor = platform.defs.resolve_sensor_def(f"sync_{element}_on_legacy_change")
    context = build_sensor_context(
        instance=platform.instance,
        definitions=platform.defs,
        resources={
            "legacy_db": LegacySource(url=platform.source_url),
            "manifest": ManifestStore(url=platform.manifest_url),
            "medplum": MedplumResource(
                base_url=platform.server.base_url,
                client_id=platform.server.client_id,
                client_secret=platform.server.client_secret,
            ),
        },
    )
    return sensor.evaluate_tick(context)


def check(result, name: str):
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return evaluation


def medplum_values(platform, resource_type: str, system: str, path: tuple) -> dict[str, object]:
    with platform.client() as client:
        found = list(resources_with_identifier(client, resource_type, system))
    values = {}
    for value, resource in found:
        node = resource
        for part in path:
            node = node[part]
        values[value] = node
    assert len(values) == len(found)  # nothing duplicated
    return values


def test_a_silent_legacy_change_blocks_readiness_until_synced_and_deprecation_freezes_the_tables(
    platform_factory, tmp_path, monkeypatch
):
    write_phases(monkeypatch, tmp_path, patients="read_from_medplum")
    url = legacy_db(tmp_path, patients=10)
    platform = platform_factory.new(source_url=url)
    assert run(platform, "sync_data_element", "patients").success
    readiness_file = platform.work / "readiness" / "patients.json"

    # A dual write that went wrong: the name changed in the legacy store only, updated_at untouched.
    legacy = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    (family,) = legacy.execute("SELECT last_name FROM patients WHERE patient_id = 'P001'").fetchone()
    legacy.execute("UPDATE patients SET last_name = 'Doe-Silent' WHERE patient_id = 'P001'")
    synced = run(platform, "sync_data_element", "patients")
    assert synced.success
    dual_write = check(synced, "dual_write_consistency")
    assert not dual_write.passed
    assert dual_write.metadata["discrepancies/differs"].value == 1
    assert dual_write.metadata["units_with_discrepancies"].value == 1
    assert "Doe-Silent" not in json.dumps({k: str(v) for k, v in dual_write.metadata.items()})  # values stay out
    evidence = json.loads((platform.work / "evidence" / "patients" / "dual_write.json").read_text())
    assert evidence["discrepancies"] == [
        {
            "resource_type": "Patient",
            "identifier_value": "P001",
            "kind": "differs",
            "field": "name.0.family",
            "legacy_value": "Doe-Silent",
            "medplum_value": family,
        }
    ]

    assessed = run(platform, "assess_read_readiness", "patients")
    assert not check(assessed, "reads_can_move_to_medplum").passed
    document = json.loads(readiness_file.read_text())
    assert (document["ready"], document["reads_from"]) == (False, "legacy")
    assert document["criteria"]["units_with_differing_fields"] == 1

    # Saved again: a fresh updated_at, so the next tick carries it.
    fresh = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    legacy.execute("UPDATE patients SET updated_at = ? WHERE patient_id = 'P001'", (fresh,))
    legacy.close()
    assert run(platform, "sync_data_element", "patients").success
    assert check(run(platform, "assess_read_readiness", "patients"), "reads_can_move_to_medplum").passed
    document = json.loads(readiness_file.read_text())
    assert (document["ready"], document["reads_from"], document["phases_version"]) == (True, "medplum", "1")

    # Not deprecated yet: no archive. Deprecated: no more sync, and a frozen export.
    assert not run(platform, "deprecate_data_element", "patients").success
    write_phases(monkeypatch, tmp_path, version=2, patients="deprecated")
    refused = run(platform, "sync_data_element", "patients")
    assert not refused.success
    failure = next(e for e in refused.all_events if e.is_step_failure)
    assert "no longer synced" in failure.step_failure_data.error.message
    assert "no longer synced" in sensor_tick(platform, "patients").skip_message
    schedule = platform.defs.resolve_schedule_def("sync_patients_every_15_minutes")
    assert "no longer synced" in schedule.evaluate_tick(build_schedule_context(instance=platform.instance)).skip_message

    archived = run(platform, "deprecate_data_element", "patients")
    assert archived.success
    assert check(archived, "legacy_archive_intact").passed
    (export,) = (platform.work / "legacy_archive" / "patients").iterdir()
    assert verify_archive(export) == []
    sums = dict(line.split("  ")[::-1] for line in (export / CHECKSUM_FILE).read_text().splitlines())
    assert set(sums) == {"patients.parquet", "export.json"}
    for name, digest in sums.items():
        assert hashlib.sha256((export / name).read_bytes()).hexdigest() == digest
    for path in [export, *export.iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o222 == 0, path
    assert pl.read_parquet(export / "patients.parquet").equals(read_table(url, "patients"))
    description = json.loads((export / "export.json").read_text())
    assert description["phases_version"] == "2" and description["final_verification"]["ready"] is True
    assert description["keep_until"] > description["exported_at"][:10]
    export.chmod(0o755)  # let pytest clean up


def test_chart_review_samples_record_their_seed_and_repeat(platform_factory, tmp_path, monkeypatch):
    write_phases(monkeypatch, tmp_path, patients="backfill", conditions="backfill")
    url = legacy_db(tmp_path, patients=12)
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:  # an odd row: a code not in the map
        db.execute(
            "INSERT INTO conditions VALUES ('CODD', 'P007', 'XX999', '2020-01-01', '2025-01-01T00:00:00.000000Z')"
        )
    platform = platform_factory.new(source_url=url)
    assert run(platform, "sync_data_element", "patients").success
    assert run(platform, "sync_data_element", "conditions").success

    config = {
        "ops": {"chart_review": {"config": {"sample_size": 3, "seed": 11, "elements": ["patients", "conditions"]}}}
    }
    first, second = (
        run(platform, "adoption_overview", run_config=config),
        run(platform, "adoption_overview", run_config=config),
    )
    assert first.success and second.success
    indexes = []
    for result in (first, second):
        (materialization,) = result.asset_materializations_for_node("chart_review")
        assert materialization.metadata["random_seed"].value == 11
        indexes.append(json.loads(Path(materialization.metadata["index_json"].value).read_text()))
    assert indexes[0]["samples"] == indexes[1]["samples"]
    samples = {s["kind"]: s for s in indexes[0]["samples"]}
    assert samples["repeatable"]["patients"] == ["P001", "P002", "P003"]
    assert samples["random"]["seed"] == 11 and len(samples["random"]["patients"]) == 3
    assert "P007" in samples["risk"]["patients"]
    # Odd values: the quarantined row, and the codes known only locally (code_mapped false, a review flag).
    assert any(reason.startswith("odd values") for reasons in samples["risk"]["reasons"].values() for reason in reasons)
    page = (Path(materialization.metadata["index"].value).parent / indexes[0]["pages"]["P007"]).read_text()
    assert "CODD" in page and "quarantined (unmapped_code" in page
    assert '"resourceType": "Patient"' in page and "matches" in page

    (status,) = first.asset_materializations_for_node("adoption_status")
    rows = {r.data["element"]: r.data for r in status.metadata["elements"].value.records}
    assert rows["patients"]["phase"] == "backfill" and rows["patients"]["watermark"]
    assert rows["visits"]["phase"] == "backfill (default)"


def test_the_phases_file_is_validated(tmp_path):
    config = load_phases()  # the repository's own file
    assert set(config.elements) >= {"patients", "conditions"} and config.version
    assert PHASE_NAMES == (
        "initial_load",
        "dual_write",
        "backfill",
        "read_from_medplum",
        "front_end_write",
        "deprecated",
    )
    cases = {
        "version: 1\nelements:\n  vitals: backfill\n": "unknown data element(s) 'vitals'",
        "version: 1\nelements:\n  patients: {phase: read_from_fhir}\n": "unknown phase 'read_from_fhir'",
        "elements:\n  patients: backfill\n": "'version' is required",
        "version: 1\nelements:\n  patients: {phase: backfill, since: 2025-13-01}\n": "is not a date",
        "version: 1\nelements:\n  patients: {phase: backfill, when: x}\n": "unknown keys ['when']",
    }
    for text, message in cases.items():
        path = tmp_path / "phases.yaml"
        path.write_text(text)
        with pytest.raises(PhaseConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            load_phases(path)
    with pytest.raises(PhaseConfigError, match="not found"):
        load_phases(tmp_path / "missing.yaml")
