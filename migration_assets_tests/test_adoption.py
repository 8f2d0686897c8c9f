"""Phased adoption: the sync while the old application writes, the dual-write check, read readiness,
deprecation and chart review (documents and immunizations beside the rest), on the local Medplum server and
a real Dagster instance."""

import hashlib
import json
import sqlite3
import stat
from pathlib import Path

import polars as pl
import pytest
from dagster import build_schedule_context, build_sensor_context

from migration_assets.active import get_element
from migration_assets.adoption.archive import CHECKSUM_FILE, verify_archive
from migration_assets.adoption.chart_review import build_chart_review
from migration_assets.adoption.dual_write import compare_stores
from migration_assets.adoption.sync import legacy_frame, read_legacy
from migration_assets.elements.base import SourceSystem
from migration_assets.phases import PHASE_NAMES, PhaseConfigError, load_phases
from migration_assets.pipeline.resources import LegacySource, ManifestStore, MedplumResource
from migration_assets.profiles.seed_ehr.legacy_app import LegacyApp, RunningApp
from migration_assets.profiles.seed_ehr.sample_data import generate_sample_ehr
from migration_assets.source import read_table
from migration_assets.verify.census import resources_with_identifier

pytestmark = pytest.mark.integration  # every test here starts a server or a run against one

PATIENT_SYSTEM = "https://ehr.example-clinic.org/fhir/identifier/patient"
CONDITION_SYSTEM = "https://ehr.example-clinic.org/fhir/identifier/patient-condition"


def write_phases(monkeypatch: pytest.MonkeyPatch, folder: Path, version: int = 1, **phases: str) -> Path:
    path = folder / f"phases-{version}.yaml"
    lines = [f"version: {version}", "elements:"]
    lines += [f"  {name}: {{phase: {phase}, since: 2025-06-01}}" for name, phase in phases.items()]
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("ADOPTION_PHASES_FILE", str(path))
    return path


def legacy_db(folder: Path, patients: int) -> str:
    url = f"sqlite:///{folder / 'legacy.db'}"
    generate_sample_ehr(url, patients=patients, updated_at=True)
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


def test_a_silent_legacy_change_blocks_readiness_until_synced_and_deprecation_freezes_the_tables(
    platform_factory, tmp_path, monkeypatch
):
    write_phases(monkeypatch, tmp_path, patients="read_from_medplum")
    url = legacy_db(tmp_path, patients=10)
    platform = platform_factory.new(source_url=url)
    assert run(platform, "sync_data_element", "patients").success
    readiness_file = platform.work / "readiness" / "patients.json"

    # A dual write that went wrong: the name changed in the legacy store only, updated_at untouched.
    app = LegacyApp(url)
    app.silent_update("patients", "P001", {"last_name": "Doe-Silent"})
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
            "medplum_value": "Doe",
        }
    ]

    assessed = run(platform, "assess_read_readiness", "patients")
    assert not check(assessed, "reads_can_move_to_medplum").passed
    document = json.loads(readiness_file.read_text())
    assert (document["ready"], document["reads_from"]) == (False, "legacy")
    assert document["criteria"]["units_with_differing_fields"] == 1

    app.touch("patients", "P001")  # saved again: a fresh updated_at, so the next tick carries it
    app.close()
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
    write_phases(monkeypatch, tmp_path, patients="backfill", problem_list="backfill")
    url = legacy_db(tmp_path, patients=12)
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:  # an odd row: a code not in the catalogue
        db.execute(
            "INSERT INTO patient_conditions VALUES ('PCODD', 'P000007', 'XX999', '2020-01-01', "
            "'2025-01-01T00:00:00.000000Z')"
        )
    platform = platform_factory.new(source_url=url)
    assert run(platform, "sync_data_element", "patients").success
    assert run(platform, "sync_data_element", "problem_list").success

    config = {
        "ops": {"chart_review": {"config": {"sample_size": 3, "seed": 11, "elements": ["patients", "problem_list"]}}}
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
    assert samples["repeatable"]["patients"] == ["P000003", "P000004", "P000005"]
    assert samples["random"]["seed"] == 11 and len(samples["random"]["patients"]) == 3
    assert "P000007" in samples["risk"]["patients"]
    assert "odd values" in samples["risk"]["reasons"]["P000007"][0]
    page = (Path(materialization.metadata["index"].value).parent / indexes[0]["pages"]["P000007"]).read_text()
    assert "PCODD" in page and "quarantined (unknown_code" in page
    assert '"resourceType": "Patient"' in page and "matches" in page

    (status,) = first.asset_materializations_for_node("adoption_status")
    rows = {r.data["element"]: r.data for r in status.metadata["elements"].value.records}
    assert rows["patients"]["phase"] == "backfill" and rows["patients"]["watermark"]
    assert rows["encounters"]["phase"] == "backfill (default)"


def test_the_phases_file_is_validated(tmp_path):
    config = load_phases()  # the repository's own file
    assert set(config.elements) >= {"patients", "problem_list"} and config.version
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


def test_chart_review_and_the_dual_write_check_show_documents_and_immunizations(platform_factory, tmp_path):
    platform = platform_factory.new(patients=30)  # lab reports kept as BLOBs, the other documents as files
    url, system = platform.source_url, SourceSystem("https://ehr.example-clinic.org/fhir")
    frames = {}
    for name in ("patients", "practitioners", "encounters", "immunizations", "documents"):
        assert platform.run(name).ok
        element = get_element(name)
        _, frames[name] = legacy_frame(element, read_legacy(url, element), system, url)
    with platform.client() as client, platform.manifest() as ledger:
        documents = frames["documents"]
        urls = [json.loads(text)["content"][0]["attachment"]["url"] for text in documents["resource"]]
        assert any(u.startswith("urn:legacy-blob:") for u in urls) and any(
            u.startswith("urn:legacy-file:") for u in urls
        )

        # In agreement: the legacy file or BLOB against the Binary, compared on contentType, size and hash.
        report = compare_stores(client, "documents", documents, ledger.units("documents"))
        assert report.passed and report.compared == documents.height, report.discrepancies
        assert compare_stores(client, "immunizations", frames["immunizations"], ledger.units("immunizations")).passed

        # A DocumentReference whose attachment says other bytes than the legacy ones: found, on its hash.
        key = documents["identifier_value"][0]
        (stored,) = client.search("DocumentReference", {"identifier": f"{system.identifier_system('document')}|{key}"})
        stored["content"][0]["attachment"]["hash"] = "2jmj7l5rSw0yVb/vlWAYkK/YBwk="
        answer = client.http.put(
            client.fhir_base + f"DocumentReference/{stored['id']}",
            json=stored,
            headers={"Authorization": f"Bearer {client.bearer()}", "Content-Type": "application/fhir+json"},
        )
        assert answer.status_code == 200
        differs = compare_stores(client, "documents", documents, ledger.units("documents")).discrepancies
        assert differs.select("identifier_value", "kind", "field").rows() == [
            (key, "differs", "content.0.attachment.hash")
        ]

        review = build_chart_review(
            client, ledger, url, system, tmp_path / "review", size=3, seed=5, elements=["immunizations", "documents"]
        )
    pages = [path.read_text() for path in review.pages.values()]
    assert any("<h2>immunizations (" in page and '"resourceType": "Immunization"' in page for page in pages)
    document_pages = [page for page in pages if "<h2>documents (" in page]
    assert document_pages and all("<b>Document</b>" in page for page in document_pages)
    shown = "".join(document_pages)
    assert "<th>hash</th>" in shown and "Binary/" in shown and "file_content_sha1" in shown
