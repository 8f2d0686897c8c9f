"""Nothing left behind: a run, successful or failed, leaves no folder in the system's temporary folder
(the issue: a test session and two demos once left 95 empty `fhir_frames-*` folders there)."""

import tempfile
from pathlib import Path

import pytest

import migration_assets.pipeline.assets as pipeline_assets
from migration_assets_tests.fixtures_platform import PlatformFactory


@pytest.fixture
def fresh_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TMPDIR pointed at an empty folder, for this process (tempfile caches it) and its children."""
    folder = tmp_path / "system_tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_demo_like_runs_leave_nothing_in_the_temp_folder(fresh_tmpdir: Path, platform_factory: PlatformFactory) -> None:
    platform = platform_factory.new(patients=20)
    for element in ("patients", "visits", "conditions"):
        summary = platform.run(element)
        assert summary.ok, summary
    platform_factory.close()  # the local server too: it keeps its Binaries in a temporary folder while it runs
    assert sorted(path.name for path in fresh_tmpdir.iterdir()) == []


def test_a_failed_run_leaves_nothing_in_the_temp_folder(
    fresh_tmpdir: Path, platform_factory: PlatformFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform = platform_factory.new(patients=20)

    def broken_summary(*_: object) -> None:
        # Fails after the parts were built in their staging folder, before the IO manager takes them.
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(pipeline_assets, "quarantine_summary", broken_summary)
    summary = platform.run("patients")
    assert not summary.run_ok and "broken on purpose" in summary.error
    platform_factory.close()
    assert sorted(path.name for path in fresh_tmpdir.iterdir()) == []
