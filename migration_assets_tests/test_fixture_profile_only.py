"""The platform's tests run on the fixture profile and never import the sample profile seed_ehr: the
platform must work for a schema it has never seen, and its tests must not lean on seed_ehr's mappings. Only
SEED_EHR_TESTS (conftest.py) and their helpers may import it; an import written inside a string (a script a
test runs in a subprocess) counts too."""

import ast
import re
from pathlib import Path

from migration_assets_tests.conftest import FIXTURE_PROFILE_NAME, REPO_ROOT, SEED_EHR_TESTS, needed_profile

TESTS = Path(__file__).resolve().parent
SEED_EHR = "migration_assets.profiles.seed_ehr"
NAMES_SEED_EHR = re.compile(r"\bmigration_assets\.profiles\.seed_ehr\b")
# An import statement inside a string: a script run with `python -c`.
IMPORTS_SEED_EHR = re.compile(
    r"\b(from\s+migration_assets\.profiles(\.seed_ehr\b|\s+import\s+.*\bseed_ehr\b)"
    r"|import\s+migration_assets\.profiles\.seed_ehr\b)"
)
# Helpers of SEED_EHR_TESTS, used by nothing else.
SEED_EHR_HELPERS = {"migration_assets_tests/ui_support.py"}


def seed_ehr_imports(path: Path) -> list[str]:
    """Where the module imports seed_ehr: `line: statement`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and IMPORTS_SEED_EHR.search(node.value):
            names = [SEED_EHR]
        if any(NAMES_SEED_EHR.search(name) for name in names):
            found.append(f"{node.lineno}: {ast.get_source_segment(path.read_text(encoding='utf-8'), node)}")
    return found


def test_the_platform_tests_never_import_seed_ehr():
    offenders = {}
    for path in sorted(TESTS.rglob("*.py")):
        relative = path.relative_to(REPO_ROOT).as_posix()
        if (
            needed_profile(path) != FIXTURE_PROFILE_NAME
            or relative in SEED_EHR_HELPERS
            or path == Path(__file__).resolve()
        ):
            continue
        if found := seed_ehr_imports(path):
            offenders[relative] = found
    assert not offenders, f"platform tests import {SEED_EHR}; use the fixture profile (conftest.py): {offenders}"


def test_the_check_finds_an_import_written_any_way(tmp_path):
    module = tmp_path / "test_x.py"
    module.write_text(
        "import migration_assets.profiles.seed_ehr.sample_data\n"
        "from migration_assets.profiles import seed_ehr\n"
        "from migration_assets.profiles.seed_ehr.elements import patients\n"
        "SCRIPT = 'from migration_assets.profiles.seed_ehr import PROFILE'\n"
        "from migration_assets.profiles.omop_cdm import PROFILE\n"
    )
    assert [line.split(":")[0] for line in seed_ehr_imports(module)] == ["1", "2", "3", "4"]


def test_the_seed_ehr_tests_exist():
    assert all((REPO_ROOT / entry).exists() for entry in SEED_EHR_TESTS), "SEED_EHR_TESTS names a missing path"
