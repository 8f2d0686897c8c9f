"""Test tiers: a test that starts or reaches a server (the local Medplum server, PostgreSQL, a Dagster run
against them, a subprocess of the platform) is `integration`; the rest are unit tests, which
`make test-fast` runs in under a minute. `make test` runs both."""

import pytest

from migration_assets.medplum.auth import forget_tokens

pytest_plugins = [
    "migration_assets_tests.fixtures_local_medplum",
    "migration_assets_tests.fixtures_platform",
    "migration_assets_tests.fixtures_postgres",
]

# Fixtures that start or reach a server: a test that uses one is an integration test.
SERVER_FIXTURES = {"local_medplum", "local_medplum_token", "fhir", "platform_factory", "postgres_schema_url"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def fresh_tokens() -> None:
    """Every test fetches its own tokens: the process shares them between clients (medplum/auth.py), and a
    test that counts token requests must not find one left by another."""
    forget_tokens()
