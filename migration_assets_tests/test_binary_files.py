"""Files to Medplum Binary against the local server over real HTTP: bytes served back byte for byte,
each file uploaded once (rerun, changed file), a run killed between an upload and its
DocumentReference, the refusals, and memory bounded while moving a 200 MB file and a 64 MB BLOB."""

import base64
import hashlib
import os
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from migration_assets.devtools.local_medplum import LocalMedplum, running_local_medplum
from migration_assets.ledger.files import FileUploader, UploadedFiles
from migration_assets.medplum.binary import file_facts
from migration_assets.medplum.client import MedplumClient, RetryPolicy

pytestmark = pytest.mark.integration  # every test here talks to the local Medplum server

# A 1x1 PNG: signature, IHDR, IDAT, IEND.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def client_of(server: LocalMedplum) -> MedplumClient:
    return MedplumClient(server.base_url, server.client_id, server.client_secret)


def read_back(client: MedplumClient, binary_id: str) -> httpx.Response:
    return client.http.get(
        client.fhir_base + f"Binary/{binary_id}",
        headers={"Authorization": f"Bearer {client.bearer()}", "Accept": "*/*"},
    )


def uploader(client: MedplumClient, tmp_path: Path, **limits: object) -> FileUploader:
    books = UploadedFiles(f"sqlite:///{tmp_path / 'books.db'}", client.target.key)
    return FileUploader(client, books, **limits)  # type: ignore[arg-type]


def test_binaries_are_served_back_byte_for_byte(local_medplum, tmp_path):
    files = {
        "scan.png": ("image/png", PNG),
        "letter.txt": ("text/plain", b"Dear colleague,\nthank you.\n"),
        "empty.txt": ("text/plain", b""),
    }
    with client_of(local_medplum) as client:
        upload = uploader(client, tmp_path)
        for name, (content_type, data) in files.items():
            (tmp_path / name).write_bytes(data)
            outcome = upload.upload(tmp_path / name, content_type)
            assert outcome.uploaded and outcome.binary_id and outcome.facts
            assert outcome.facts.size == len(data)
            assert outcome.facts.sha1_base64 == base64.b64encode(hashlib.sha1(data).digest()).decode()
            answer = read_back(client, outcome.binary_id)
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith(content_type)
            assert answer.content == data
            resource = client.read(f"Binary/{outcome.binary_id}")
            assert resource is not None and resource["contentType"] == content_type


def test_a_rerun_uploads_nothing_and_a_changed_file_uploads_once_more(local_medplum, tmp_path):
    path = tmp_path / "consent.pdf"
    path.write_bytes(b"%PDF-1.4\n% consent form, version 1\n%%EOF\n")
    with client_of(local_medplum) as client:
        upload = uploader(client, tmp_path)
        first = upload.upload(path, "application/pdf")
        requests_before = client.stats.requests
        again = upload.upload(path, "application/pdf")
        assert first.uploaded and not again.uploaded and again.binary_id == first.binary_id
        assert client.stats.requests == requests_before  # nothing sent at all
        # Two rows sharing one file: one Binary.
        copy = tmp_path / "same-consent.pdf"
        copy.write_bytes(path.read_bytes())
        assert upload.upload(copy, "application/pdf").binary_id == first.binary_id
        path.write_bytes(b"%PDF-1.4\n% consent form, version 2 (signed)\n%%EOF\n")
        changed = upload.upload(path, "application/pdf")
        assert changed.uploaded and changed.binary_id != first.binary_id
        assert upload.upload(path, "application/pdf").uploaded is False
        assert upload.books.count() == 2
        assert read_back(client, changed.binary_id).content == path.read_bytes()


def test_uploads_past_the_fhir_quota_wait_for_its_reset_instead_of_failing(tmp_path):
    # Three writes a two-second window, and a client allowed two tries of a request: eight uploads in a
    # row meet 429s that only the window's reset clears, never a retry's short backoff.
    with running_local_medplum(fhir_quota=300, quota_window_seconds=2) as server:
        retry = RetryPolicy(max_attempts=2)
        with MedplumClient(server.base_url, server.client_id, server.client_secret, retry=retry) as client:
            upload = uploader(client, tmp_path)
            for number in range(8):
                path = tmp_path / f"scan-{number}.png"
                path.write_bytes(PNG + bytes([number]))
                assert upload.upload(path, "image/png").uploaded
            assert client.stats.quota_wait_seconds > 2
            assert client.stats.retries == 0, "a wait for the quota is not a failed try"
            assert read_back(client, upload.books.binary_for(file_facts(path).sha256_hex)).content == path.read_bytes()


def test_missing_disallowed_and_oversized_files_are_refused_with_their_reason(local_medplum, tmp_path):
    (tmp_path / "big.pdf").write_bytes(b"%PDF" + b"0" * 2000)
    (tmp_path / "macro.docm").write_bytes(b"PK")
    with client_of(local_medplum) as client:
        upload = uploader(client, tmp_path, max_bytes=1000)
        missing = upload.upload(tmp_path / "gone.pdf", "application/pdf")
        assert (missing.binary_id, missing.refused_rule) == (None, "missing_file")
        assert (
            upload.upload(tmp_path / "macro.docm", "application/vnd.ms-word.document.macroEnabled.12").refused_rule
            == "disallowed_content_type"
        )
        too_large = upload.upload(tmp_path / "big.pdf", "application/pdf")
        assert too_large.refused_rule == "file_too_large" and "over the limit of 1000 bytes" in (
            too_large.refused_reason or ""
        )
        assert upload.books.count() == 0


def run_python(code: str, server: LocalMedplum, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "BASE": server.base_url,
        "CID": server.client_id,
        "SECRET": server.client_secret,
        "WORK": str(tmp_path),
    }
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=600, check=False
    )


def test_a_run_killed_between_upload_and_document_reference_uploads_nothing_twice(local_medplum, tmp_path):
    (tmp_path / "referral.txt").write_text("Referral to cardiology.\n")
    # The one fault injected: the process dies right after the upload, before any DocumentReference.
    killed = run_python(
        """
        import os
        from pathlib import Path
        from migration_assets.ledger.files import FileUploader, UploadedFiles
        from migration_assets.medplum.client import MedplumClient, RetryPolicy
        work = Path(os.environ["WORK"])
        client = MedplumClient(os.environ["BASE"], os.environ["CID"], os.environ["SECRET"])
        books = UploadedFiles(f"sqlite:///{work / 'books.db'}", client.target.key)
        outcome = FileUploader(client, books).upload(work / "referral.txt", "text/plain")
        print(outcome.binary_id, flush=True)
        os._exit(9)
    """,
        local_medplum,
        tmp_path,
    )
    assert killed.returncode == 9, killed.stderr
    uploaded_id = killed.stdout.strip()
    with client_of(local_medplum) as client:
        upload = uploader(client, tmp_path)
        rerun = upload.upload(tmp_path / "referral.txt", "text/plain")
        assert (rerun.uploaded, rerun.binary_id) == (False, uploaded_id)
        assert read_back(client, uploaded_id).content == b"Referral to cardiology.\n"


def test_memory_stays_bounded_while_moving_a_200_mb_file(local_medplum, tmp_path):
    size = 200 * 1024 * 1024
    big = tmp_path / "scan.tiff"
    with big.open("wb") as handle:
        block = os.urandom(1024 * 1024)
        for number in range(size // len(block)):
            handle.write(number.to_bytes(8, "big") + block[8:])
    expected_sha1 = file_facts(big).sha1_base64
    try:
        measured = run_python(
            """
            import os, resource, tracemalloc
            from pathlib import Path
            from migration_assets.ledger.files import FileUploader, UploadedFiles
            from migration_assets.medplum.client import MedplumClient, RetryPolicy
            work = Path(os.environ["WORK"])
            client = MedplumClient(os.environ["BASE"], os.environ["CID"], os.environ["SECRET"])
            books = UploadedFiles(f"sqlite:///{work / 'books.db'}", client.target.key)
            client.bearer()
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            tracemalloc.start()
            outcome = FileUploader(client, books, max_bytes=300 * 1024 * 1024).upload(work / "scan.tiff", "image/tiff")
            _, peak = tracemalloc.get_traced_memory()
            after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            print(outcome.binary_id, outcome.facts.size, outcome.facts.sha1_base64, peak, (after - before) * 1024)
        """,
            local_medplum,
            tmp_path,
        )
        assert measured.returncode == 0, measured.stderr
        binary_id, sent, sha1, traced_peak, rss_growth = measured.stdout.split()
        assert int(sent) == size and sha1 == expected_sha1
        # A whole copy would be 200 MB; streaming holds a few 1 MB chunks.
        assert int(traced_peak) < 16 * 1024 * 1024, traced_peak
        assert int(rss_growth) < 48 * 1024 * 1024, rss_growth
        with client_of(local_medplum) as client:
            token = client.bearer()
            digest = hashlib.sha1()
            with client.http.stream(
                "GET",
                client.fhir_base + f"Binary/{binary_id}",
                headers={"Authorization": f"Bearer {token}", "Accept": "*/*"},
            ) as answer:
                for chunk in answer.iter_bytes():
                    digest.update(chunk)
            assert base64.b64encode(digest.digest()).decode() == expected_sha1
        print(
            f"200 MB upload: traced peak {int(traced_peak) / 2**20:.1f} MiB, "
            f"RSS growth {int(rss_growth) / 2**20:.1f} MiB"
        )
    finally:
        big.unlink(missing_ok=True)


def test_memory_stays_bounded_while_reading_and_moving_a_64_mb_blob(local_medplum, tmp_path):
    size = 64 * 1024 * 1024
    database = tmp_path / "legacy.db"
    digest = hashlib.sha1()
    with closing(sqlite3.connect(database)) as lite:
        lite.execute("CREATE TABLE documents (document_id TEXT PRIMARY KEY, file_content BLOB)")
        lite.execute("INSERT INTO documents VALUES ('D1', zeroblob(?)), ('D2', NULL)", (size,))
        lite.commit()
        with lite.blobopen("documents", "file_content", 1) as blob:  # written a chunk at a time
            block = os.urandom(1024 * 1024)
            for number in range(size // len(block)):
                chunk = number.to_bytes(8, "big") + block[8:]
                blob.write(chunk)
                digest.update(chunk)
        lite.commit()
    measured = run_python(
        f"""
        import os, tracemalloc
        from migration_assets.elements.files import LegacyBlob
        from migration_assets.ledger.files import FileUploader, UploadedFiles
        from migration_assets.medplum.client import MedplumClient, RetryPolicy
        from migration_assets.source import read_table
        url = "sqlite:///{database}"
        client = MedplumClient(os.environ["BASE"], os.environ["CID"], os.environ["SECRET"])
        books = UploadedFiles(f"sqlite:///{tmp_path / "books.db"}", client.target.key)
        client.bearer()
        tracemalloc.start()
        table = read_table(url, "documents")
        blob = LegacyBlob(url, "documents", "file_content", "document_id", "D1")
        outcome = FileUploader(client, books).upload(blob, "application/pdf")
        _, peak = tracemalloc.get_traced_memory()
        print(table["file_content_size"].to_list(), table["file_content_sha1"][0], outcome.binary_id, peak)
    """,
        local_medplum,
        tmp_path,
    )
    assert measured.returncode == 0, measured.stderr
    sizes, sha1, binary_id, traced_peak = measured.stdout.rsplit(maxsplit=3)
    assert sizes == f"[{size}, None]" and sha1 == base64.b64encode(digest.digest()).decode()
    # A whole copy would be 64 MB; reading one chunk at a time holds a few 1 MB chunks.
    assert int(traced_peak) < 16 * 1024 * 1024, traced_peak
    with client_of(local_medplum) as client:
        read_back_sha1 = hashlib.sha1(read_back(client, binary_id).content).digest()
    assert base64.b64encode(read_back_sha1).decode() == sha1
    print(f"64 MB BLOB read and upload: traced peak {int(traced_peak) / 2**20:.1f} MiB")
