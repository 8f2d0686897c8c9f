"""The Dagster UI as our users use it, in a real browser.

`dagster dev` (webserver, daemon, code server) runs on a generated sample of 30 patients and a fresh
local Medplum server; headless Debian Chromium, driven by Playwright with the system browser (no
browser download), opens the assets, materializes the `patients` partition of `medplum_resources`
with its upstream assets by clicking through the launch dialog, waits for the run to succeed and reads
the asset-check results on the page. Then a partition backfill goes in through the webserver's
GraphQL API (the mutation the UI's dialog sends) and the daemon must materialize its partitions.

Screenshots of every step go to .artifacts/ui/ (git-ignored); the README's come from here.
"""

import math
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from migration_assets.active import LOAD_ORDER
from migration_assets_tests.ui_support import (
    ARTIFACTS_DIR,
    CHROMIUM_ARGS,
    DagsterUI,
    chromium_or_fail,
    running_dagster_ui,
)

pytestmark = pytest.mark.integration  # every test here starts a server or a run against one

# A missing Playwright is an error, never a skip: the UI path must be tested.
try:
    from playwright.sync_api import Locator, Page, expect, sync_playwright
except ImportError as exc:  # pragma: no cover - the dev extra installs it
    raise ImportError("Playwright for Python is missing: run `make setup` (pip install -e '.[dev]')") from exc

UI_TIMEOUT_MS = 60_000  # the React app on two busy cores: generous, every wait is for a condition
RUN_TIMEOUT_MS = 150_000
ELEMENT = "patients"
BACKFILL = ["practitioners", "problem_list"]  # problem_list needs the patients loaded from the UI
MIGRATION_ASSETS = ["legacy_source", "fhir_frames", "medplum_resources", "reconciliation_report"]
expect.set_options(timeout=UI_TIMEOUT_MS)  # assertions wait for the page, not only actions

CHECKS = ["accounting_balanced", "idempotent_reload", "reconciliation", "reference_integrity"]


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterUI]:
    with running_dagster_ui(tmp_path_factory.mktemp("dagster_ui"), patients=30) as running:
        yield running


@pytest.fixture(scope="module")
def artifacts() -> Path:
    shutil.rmtree(ARTIFACTS_DIR, ignore_errors=True)
    ARTIFACTS_DIR.mkdir(parents=True)
    return ARTIFACTS_DIR


@pytest.fixture
def page(ui: DagsterUI, artifacts: Path, tmp_path: Path) -> Iterator[Page]:
    chromium = chromium_or_fail()  # a missing browser fails the test with how to install it
    with sync_playwright() as playwright:
        # A persistent context is how Playwright passes a fresh --user-data-dir.
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium_profile"),
            executable_path=str(chromium),
            args=CHROMIUM_ARGS,
            viewport={"width": 1440, "height": 900},
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        page = context.pages[0] if context.pages else context.new_page()
        try:
            yield page
        except BaseException:
            page.screenshot(path=artifacts / "failure.png")
            raise
        finally:
            context.close()


def shot(page: Page, artifacts: Path, name: str) -> None:
    page.wait_for_timeout(500)  # let the last repaint land
    page.screenshot(path=artifacts / f"{name}.png")


def test_materialize_a_partition_from_the_ui_then_backfill_over_graphql(
    ui: DagsterUI, page: Page, artifacts: Path
) -> None:
    started = time.monotonic()

    def step(name: str) -> None:
        print(f"{time.monotonic() - started:6.1f} s  {name}", flush=True)

    # 1. The catalog: every asset of the migration with the line that says what it is.
    page.goto(ui.url + "/assets")
    for asset in ["legacy_source", "fhir_frames", "medplum_resources", "reconciliation_report", "mapping_register"]:
        expect(page.locator(f'a[href="/assets/{asset}"]').first).to_be_visible()
    expect(page.get_by_text(re.compile(r"^The data element's resources in Medplum"))).to_be_visible()
    page.goto(ui.url + "/locations/migration_assets/asset-groups/migration")
    expect(page.get_by_text("reconciliation_report", exact=True).first).to_be_visible()
    expect(page.get_by_text(f"{len(LOAD_ORDER)} partitions").first).to_be_visible()
    shot(page, artifacts, "01_migration_group")
    step("catalog and group read")

    # 2. medplum_resources with its upstream assets, one partition, launched from the dialog.
    page.goto(ui.url + "/assets/medplum_resources?view=lineage&lineageScope=upstream&lineageDepth=2")
    expect(page.get_by_text("legacy_source", exact=True).first).to_be_attached()
    page.get_by_role("button", name="Materialize all…").click()
    dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize").first
    expect(dialog.get_by_text("Launch runs to materialize 3 assets")).to_be_visible()
    dialog.get_by_text("Select a partition or create one").click()
    partitions = page.get_by_role("dialog").filter(has_text=f"Select all ({len(LOAD_ORDER)})").last
    partitions.get_by_text(ELEMENT, exact=True).filter(visible=True).first.click()
    dialog.get_by_text("Launch runs to materialize 3 assets").click()  # closes the partition list
    expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
    launch = dialog.get_by_role("button", name="Launch 1 run")
    expect(launch).to_be_enabled()
    shot(page, artifacts, "02_launch_patients")
    launch.click()
    step("run launched from the dialog")

    # 3. The run: the toast names it; its page must come to say Success.
    toast = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}")).first
    expect(toast).to_be_visible()
    short_id = re.search(r"Launched run ([0-9a-f]{8})", toast.inner_text()).group(1)  # type: ignore[union-attr]
    run_id = next(run["runId"] for run in ui.runs() if run["runId"].startswith(short_id))
    page.goto(ui.url + f"/runs/{run_id}")
    expect(page.get_by_text(f"partition: {ELEMENT}")).to_be_visible()
    expect(page.get_by_text("Success", exact=True).first).to_be_visible(timeout=RUN_TIMEOUT_MS)
    assert {"runId": run_id, "status": "SUCCESS"}.items() <= _run(ui, run_id).items()
    shot(page, artifacts, "03_run_success")
    step("run succeeded")

    # 4. The materialization's metadata: counts, the Medplum base URL (never a secret).
    page.goto(ui.url + f"/assets/medplum_resources?view=partitions&partition={ELEMENT}")
    expect(page.get_by_text("medplum_base_url").first).to_be_visible()
    expect(page.get_by_text(ui.medplum.base_url).first).to_be_visible()
    body = page.locator("body").inner_text()
    assert ui.medplum.client_secret not in body
    assert re.search(r"created\s+30\b", body), body[:3000]

    # 5. The check report: every check of medplum_resources ran on the partition and passed.
    page.goto(ui.url + "/assets/medplum_resources?view=checks")
    expect(page.get_by_text("Checks (4)")).to_be_visible()
    for check in CHECKS:
        expect(check_row(page, check)).to_contain_text("Succeeded")
    expect(page.get_by_text("Passed", exact=True).first).to_be_visible()
    expect(page.get_by_text(re.compile(r"30 source units = 30 successful"))).to_be_visible()
    shot(page, artifacts, "04_checks_passed")
    page.goto(ui.url + "/assets/fhir_frames?view=checks")
    expect(page.get_by_text("Checks (2)")).to_be_visible()
    for check in ["prerequisites_loaded", "schema"]:
        expect(check_row(page, check)).to_contain_text("Succeeded")
    page.goto(ui.url + "/assets/medplum_resources?view=checks")
    check_row(page, "reconciliation").click()
    expect(page.get_by_text(re.compile(r"30 of 30 expected resources found"))).to_be_visible()
    shot(page, artifacts, "05_reconciliation_check")
    step("metadata and checks read")

    # 6. A backfill of two more elements through GraphQL, as the UI's dialog sends it; the daemon
    # (started by `dagster dev`) turns it into runs, and the partitions end materialized.
    backfill_id = ui.launch_partition_backfill(MIGRATION_ASSETS, BACKFILL, title="browser test backfill")
    for asset in MIGRATION_ASSETS:
        ui.wait_for_partitions(asset, BACKFILL, timeout=RUN_TIMEOUT_MS / 1000)
    step("backfill materialized")
    backfill_runs = ui.wait_for_finished_runs(
        {"key": "dagster/backfill", "value": backfill_id}, timeout=RUN_TIMEOUT_MS / 1000
    )
    assert backfill_runs and all(run["status"] == "SUCCESS" for run in backfill_runs), backfill_runs
    page.goto(ui.url + "/assets/medplum_resources?view=partitions")
    expect(page.get_by_text("Materialized (3)")).to_be_visible()  # patients from the UI, two backfilled
    shot(page, artifacts, "06_partitions_after_backfill")
    page.goto(ui.url + "/locations/migration_assets/asset-groups/migration")
    filled = 300 / len(LOAD_ORDER)  # 3 of the elements, shown rounded either way
    expect(page.get_by_text(re.compile(rf"^({math.floor(filled)}|{math.ceil(filled)})% filled$")).first).to_be_visible()
    shot(page, artifacts, "07_migration_group_loaded")

    step("done")


def check_row(page: Page, check: str) -> Locator:
    """A check in the list of the asset's Checks tab: its name (in a title) and its latest status."""
    return page.locator("span", has=page.locator(f'[title="{check}"]')).first


def _run(ui: DagsterUI, run_id: str) -> dict[str, object]:
    return next(run for run in ui.runs() if run["runId"] == run_id)
