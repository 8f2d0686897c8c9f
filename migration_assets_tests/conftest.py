"""Test tiers: a test that starts or reaches a server (the local Medplum server, PostgreSQL, a Dagster run
against them, a subprocess of the platform) is `integration`; the rest are unit tests, which
`make test-fast` runs in under a minute. `make test` runs both.

Profiles: the platform's own tests run on the fixture profile (migration_assets_tests/fixture_profile/), a
tiny schema of its own, never on the sample profile seed_ehr. A pytest session runs one profile (the platform
loads MIGRATION_PROFILE once per process), chosen before any test module is imported: MIGRATION_PROFILE when
set; else seed_ehr when every path given is one of SEED_EHR_TESTS; else the fixture profile. A test that needs
another profile than its session's is deselected, and the summary says how to run it; `make test` runs a
session per profile."""

import os
import sys
from pathlib import Path

import pytest

from migration_assets.medplum.auth import forget_tokens

pytest_plugins = [
    "migration_assets_tests.fixtures_local_medplum",
    "migration_assets_tests.fixtures_platform",
    "migration_assets_tests.fixtures_postgres",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURE_PROFILE = Path(__file__).resolve().parent / "fixture_profile"
FIXTURE_PROFILE_NAME = "fixture_profile"
# seed_ehr's own tests, and the platform tests that drive seed_ehr's elements or sample (documents and their
# files, provenance of all fifteen elements, the browser walk, Celery workers, soak, throughput): they run in a
# seed_ehr session (MIGRATION_PROFILE=seed_ehr). Paths from the repository.
SEED_EHR_TESTS = (
    "migration_assets/profiles/seed_ehr/",
    "migration_assets_tests/test_binary_files.py",
    "migration_assets_tests/test_celery_workers.py",
    "migration_assets_tests/test_documents_load.py",
    "migration_assets_tests/test_provenance.py",
    "migration_assets_tests/test_soak.py",
    "migration_assets_tests/test_throughput.py",
    "migration_assets_tests/test_ui_browser.py",
)

# Fixtures that start or reach a server: a test that uses one is an integration test.
SERVER_FIXTURES = {"local_medplum", "local_medplum_token", "fhir", "platform_factory", "postgres_schema_url"}


def needed_profile(path: Path) -> str:
    """The profile a test file runs on: seed_ehr for SEED_EHR_TESTS, the fixture profile for the rest."""
    relative = path.resolve().relative_to(REPO_ROOT).as_posix() if path.resolve().is_relative_to(REPO_ROOT) else ""
    seed = any(relative == entry or relative.startswith(entry) for entry in SEED_EHR_TESTS)
    return "seed_ehr" if seed else FIXTURE_PROFILE_NAME


def pytest_configure(config: pytest.Config) -> None:
    """Picks the session's profile before the platform is imported (fixtures_platform imports it lazily)."""
    if os.environ.get("MIGRATION_PROFILE", "").strip():
        return
    if "migration_assets.active" in sys.modules:
        raise pytest.UsageError(
            "migration_assets.active was imported before conftest.py chose the session's profile: import it "
            "inside the fixtures (see fixtures_platform.py), or set MIGRATION_PROFILE"
        )
    paths = [Path(arg.split("::")[0]) for arg in config.args if not arg.startswith("-")]
    everything_seed = bool(paths) and all(needed_profile(path) == "seed_ehr" for path in paths)
    os.environ["MIGRATION_PROFILE"] = "seed_ehr" if everything_seed else str(FIXTURE_PROFILE)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from migration_assets.active import PROFILE

    kept, other = [], []
    for item in items:
        (kept if needed_profile(item.path) == PROFILE.name else other).append(item)
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
    if other:
        config.hook.pytest_deselected(items=other)
        items[:] = kept
        config.stash[OTHER_PROFILE] = sorted({needed_profile(item.path) for item in other})


OTHER_PROFILE = pytest.StashKey[list[str]]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    for profile in config.stash.get(OTHER_PROFILE, []):
        spec = "seed_ehr" if profile == "seed_ehr" else "migration_assets_tests/fixture_profile"
        terminalreporter.write_line(
            f"deselected: the tests on the profile {profile}; run them with MIGRATION_PROFILE={spec} "
            "(make test runs a session per profile)"
        )


@pytest.fixture(autouse=True)
def fresh_tokens() -> None:
    """Every test fetches its own tokens: the process shares them between clients (medplum/auth.py), and a
    test that counts token requests must not find one left by another."""
    forget_tokens()
