"""Secrets and patient details stay where they belong: a whole migration, configured through
EnvVar as in production, leaves neither the client secret nor any bearer token in logs,
materialization metadata, the manifest, evidence files or the Dagster instance, and its logs carry
no patient names or birth dates. TLS verification cannot be turned off; the local server listens on
127.0.0.1 only."""

import http.server
import inspect
import ssl
import subprocess
import threading
from pathlib import Path

import polars as pl
import pytest

from migration_assets.active import LOAD_ORDER
from migration_assets.commands.demo import migrate_element
from migration_assets.definitions import make_definitions
from migration_assets.medplum import MedplumClient, MedplumError, RetryPolicy
from migration_assets.medplum.auth import ClientCredentialsToken
from migration_assets.pipeline.resources import MedplumResource, build_resources
from migration_assets.source import read_table

pytestmark = pytest.mark.integration  # every test here starts a server or a run against one

# Files that hold patient data on purpose (the legacy source and the FHIR frames) are not logs.
PATIENT_DATA_FILES = ("legacy.db", "frames")


def test_a_full_run_leaks_no_secret_no_token_and_no_patient_detail(platform_factory, monkeypatch, capfd):
    platform = platform_factory.new(patients=60)
    server = platform.server
    for name, value in {
        "MEDPLUM_BASE_URL": server.base_url,
        "MEDPLUM_CLIENT_ID": server.client_id,
        "MEDPLUM_CLIENT_SECRET": server.client_secret,
        "LEGACY_DB_URL": platform.source_url,
        "MANIFEST_DB_URL": platform.manifest_url,
    }.items():
        monkeypatch.setenv(name, value)
    defs = make_definitions(build_resources(work_dir=platform.work))
    issued: list[str] = []
    real_fetch = ClientCredentialsToken._fetch

    def recording_fetch(self: ClientCredentialsToken) -> None:  # a spy: the real request still happens
        real_fetch(self)
        issued.append(self._token or "")

    monkeypatch.setattr(ClientCredentialsToken, "_fetch", recording_fetch)

    summaries = [migrate_element(element, platform.instance, defs) for element in LOAD_ORDER]

    assert all(s.ok for s in summaries), [(s.element, s.error, s.failure_messages) for s in summaries if not s.ok]
    assert issued, "the run fetched no token: the spy is not in the path"
    secrets = [server.client_secret, *issued]
    console = "".join(capfd.readouterr())
    artefacts = {
        path: path.read_bytes()
        for path in platform.work.rglob("*")
        if path.is_file() and not any(part in PATIENT_DATA_FILES for part in path.relative_to(platform.work).parts)
    }
    assert any("manifest" in path.name for path in artefacts) and any("evidence" in str(path) for path in artefacts)
    for secret in secrets:
        assert secret not in console
        leaking = [str(path) for path, content in artefacts.items() if secret.encode() in content]
        assert not leaking, f"a secret or token is in {leaking}"

    patients = read_table(platform.source_url, "patients")
    details = set(patients["birth_date"].drop_nulls()) | {
        f"{first} {last}" for first, last in patients.select("first_name", "last_name").iter_rows() if first and last
    }
    messages = [
        record.message or ""
        for summary_run in platform.instance.get_runs()
        for record in platform.instance.all_logs(summary_run.run_id)
    ]
    log_text = "\n".join(messages) + console
    assert not [detail for detail in details if detail in log_text]
    assert "P001" in log_text or any("patients" in m for m in messages)  # identifiers and counts are fine


def test_tls_verification_is_always_on(tmp_path: Path):
    assert "verify" not in inspect.signature(MedplumClient).parameters
    assert "verify" not in MedplumResource.model_fields
    certificate, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(certificate),
        ],
        check=True,
        capture_output=True,
    )
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = MedplumClient(
            f"https://127.0.0.1:{server.server_address[1]}/", "id", "secret", retry=RetryPolicy(max_attempts=1)
        )
        with client, pytest.raises(Exception) as error:
            client.read("Patient/x")
    finally:
        server.shutdown()
    assert "CERTIFICATE_VERIFY_FAILED" in repr(error.value) or isinstance(error.value, MedplumError)


def test_the_local_server_listens_on_loopback_only(local_medplum):
    port = int(local_medplum.base_url.rstrip("/").rsplit(":", 1)[1])
    listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True)
    addresses = {line.split()[3].rsplit(":", 1)[0] for line in listening.stdout.splitlines() if line.strip()}
    assert addresses == {"127.0.0.1"}


def test_a_patient_row_never_reaches_the_logs_of_a_quarantine(platform_factory, capfd):
    platform = platform_factory.new(patients=60)
    import sqlite3

    with sqlite3.connect(platform.source_url.removeprefix("sqlite:///")) as db:
        db.execute("INSERT INTO patients VALUES ('PLEAK', 'Zebulon', 'Quixotic', '1980-02-30', 'F')")
    summary = platform.run("patients")
    assert summary.counts["quarantined"] == 1
    messages = "\n".join(
        record.message or ""
        for run in platform.instance.get_runs()
        for record in platform.instance.all_logs(run.run_id)
    ) + "".join(capfd.readouterr())
    assert "Quixotic" not in messages and "1980-02-30" not in messages
    with platform.manifest() as manifest:
        reason = manifest.units("patients").filter(pl.col("unit_key") == "PLEAK")["reason"].item()
    assert reason == "birth_date is not a real date"
