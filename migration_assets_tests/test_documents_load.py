"""Documents with their files through the real load path (migrate) into the local Medplum server: each
DocumentReference's attachment points at a Binary holding the file's bytes; a rerun uploads and sends
nothing; a changed file is uploaded once more and its DocumentReference follows; a run killed between
the upload and the DocumentReference leaves a booked Binary that the next run reuses."""

import base64
import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest

from migration_assets.elements.base import SourceSystem, build_frame
from migration_assets.ledger.files import UploadedFiles
from migration_assets.ledger.manifest import Manifest
from migration_assets.medplum.client import MedplumClient
from migration_assets.pipeline.loader import LoadSettings, migrate
from migration_assets.profiles.seed_ehr import PROFILE
from migration_assets.profiles.seed_ehr.sample_data import TABLE_COLUMNS, build_sample_tables

pytestmark = pytest.mark.integration  # every test here talks to the local Medplum server

SYSTEM = SourceSystem("https://ehr.example-clinic.org/fhir")
SETTINGS = LoadSettings(batch_size=10)


def documents_table(folder: Path, rows: list[tuple[str, str, str, str]]) -> pl.DataFrame:
    """(document id, patient, file name, content type) rows, files under `folder`."""
    return pl.DataFrame(
        [
            (key, patient, None, "referral", "Referral letter", str(folder / name), kind, "2023-06-15")
            for key, patient, name, kind in rows
        ],
        schema=dict.fromkeys(TABLE_COLUMNS["documents"], pl.String),
        orient="row",
    )


def load(
    client: MedplumClient, manifest: Manifest, element: str, tables: dict[str, pl.DataFrame], run: str
) -> dict[str, int]:
    chosen = PROFILE.element(element)
    frame = build_frame(chosen, chosen.extract(tables), SYSTEM)
    return migrate(client, manifest, run, chosen, frame, "memory://test", SETTINGS).counts


def read_bytes(client: MedplumClient, reference: str) -> bytes:
    answer = client.http.get(
        client.fhir_base + reference, headers={"Authorization": f"Bearer {client.bearer()}", "Accept": "*/*"}
    )
    assert answer.status_code == 200
    return answer.content


def attachment_of(client: MedplumClient, document_id: str) -> dict:
    found = list(
        client.search("DocumentReference", {"identifier": f"{SYSTEM.identifier_system('document')}|{document_id}"})
    )
    assert len(found) == 1
    return found[0]["content"][0]["attachment"]


def test_documents_load_once_follow_a_changed_file_and_survive_a_kill(local_medplum, tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    (files / "a.txt").write_text("Referral of P001 to cardiology.\n")
    (files / "shared.pdf").write_bytes(b"%PDF-1.4\n% consent\n%%EOF\n")
    tables = build_sample_tables(patients=2)
    tables["documents"] = documents_table(
        files,
        [
            ("D1", "P001", "a.txt", "text/plain"),
            ("D2", "P002", "shared.pdf", "application/pdf"),
            ("D3", "P002", "shared.pdf", "application/pdf"),
        ],
    )
    manifest_url = f"sqlite:///{tmp_path / 'manifest.db'}"
    with (
        MedplumClient(local_medplum.base_url, local_medplum.client_id, local_medplum.client_secret) as client,
        Manifest(manifest_url, client.target.key) as manifest,
    ):
        books = UploadedFiles(manifest.engine, client.target.key)
        for element in ("patients", "practitioners", "encounters"):
            load(client, manifest, element, tables, f"run-{element}")
        first = load(client, manifest, "documents", tables, "docs-1")
        assert (first["created"], first["failed"], books.count()) == (3, 0, 2)  # two rows, one file: one Binary
        a = attachment_of(client, "D1")
        data = (files / "a.txt").read_bytes()
        assert (a["contentType"], a["size"]) == ("text/plain", len(data))
        assert a["hash"] == base64.b64encode(hashlib.sha1(data).digest()).decode()
        assert a["url"].startswith("Binary/") and read_bytes(client, a["url"]) == data
        assert attachment_of(client, "D2")["url"] == attachment_of(client, "D3")["url"]

        rerun = load(client, manifest, "documents", tables, "docs-2")
        assert (rerun["sent"], books.count()) == (0, 2)

        (files / "a.txt").write_text("Referral of P001 to cardiology, second version.\n")
        changed = load(client, manifest, "documents", tables, "docs-3")
        assert (changed["sent"], changed["updated"], books.count()) == (1, 1, 3)
        followed = attachment_of(client, "D1")
        assert followed["url"] != a["url"] and read_bytes(client, followed["url"]) == (files / "a.txt").read_bytes()

    # A run killed after uploading D4's file and before its DocumentReference was written: the one
    # fault injected, the bundle submission replaced by the process's death.
    (files / "late.png").write_bytes(b"\x89PNG\r\n\x1a\n late scan")
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent("""
        import os, sys
        import polars as pl
        from migration_assets.elements.base import SourceSystem, build_frame
        from migration_assets.ledger.manifest import Manifest
        from migration_assets.medplum.client import MedplumClient
        from migration_assets.pipeline.loader import LoadSettings, migrate
        from migration_assets.profiles.seed_ehr import PROFILE
        base, cid, secret, manifest_url, tables_dir = sys.argv[1:6]
        tables = {path[:-8]: pl.read_parquet(os.path.join(tables_dir, path)) for path in os.listdir(tables_dir)}
        MedplumClient.submit_batch = lambda *args, **kwargs: os._exit(9)
        element = PROFILE.element("documents")
        frame = build_frame(element, element.extract(tables), SourceSystem("https://ehr.example-clinic.org/fhir"))
        with MedplumClient(base, cid, secret) as client, Manifest(manifest_url, client.target.key) as manifest:
            migrate(client, manifest, "docs-killed", element, frame, "memory://test", LoadSettings(batch_size=10))
    """),
            local_medplum.base_url,
            local_medplum.client_id,
            local_medplum.client_secret,
            manifest_url,
            str(_saved(tables, files, tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert killed.returncode == 9, killed.stderr[-2000:]
    with (
        MedplumClient(local_medplum.base_url, local_medplum.client_id, local_medplum.client_secret) as client,
        Manifest(manifest_url, client.target.key) as manifest,
    ):
        books = UploadedFiles(manifest.engine, client.target.key)
        assert books.count() == 4  # the killed run booked the Binary it uploaded
        booked = books.binary_for(hashlib.sha256((files / "late.png").read_bytes()).hexdigest())
        tables["documents"] = pl.concat(
            [tables["documents"], documents_table(files, [("D4", "P001", "late.png", "image/png")])]
        )
        resumed = load(client, manifest, "documents", tables, "docs-4")
        assert (resumed["created"], books.count()) == (1, 4)  # nothing uploaded twice
        assert attachment_of(client, "D4")["url"] == f"Binary/{booked}"


def _saved(tables: dict[str, pl.DataFrame], files: Path, tmp_path: Path) -> Path:
    """The tables with document D4 added, as Parquet files for the killed process."""
    folder = tmp_path / "tables"
    folder.mkdir(exist_ok=True)
    with_late = {
        **tables,
        "documents": pl.concat(
            [tables["documents"], documents_table(files, [("D4", "P001", "late.png", "image/png")])]
        ),
    }
    for name, frame in with_late.items():
        frame.write_parquet(folder / f"{name}.parquet")
    return folder
