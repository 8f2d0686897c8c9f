pytest_plugins = [
    "migration_assets_tests.fixtures_local_medplum",
    "migration_assets_tests.fixtures_platform",
    "migration_assets_tests.fixtures_postgres",
]
