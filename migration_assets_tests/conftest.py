pytest_plugins = ["migration_assets_tests.fixtures_local_medplum"]
