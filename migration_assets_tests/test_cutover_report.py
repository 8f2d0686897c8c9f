"""The cutover report after a small real run: one self-contained HTML page with the books, the checks'
verdicts, the quarantine by rule, the throughput chart and the evidence links of each element."""

from pathlib import Path

from dagster import materialize

from migration_assets.pipeline.cutover_report import cutover_report, write_report
from migration_assets_tests.fixtures_platform import PlatformFactory


def test_report_of_a_small_run(platform_factory: PlatformFactory, tmp_path: Path) -> None:
    platform = platform_factory.new(patients=60)
    for element in ("patients", "conditions"):
        assert platform.run(element).ok
    evidence = platform.work / "evidence"
    path = write_report(platform.instance, platform.manifest_url, evidence, directory=tmp_path / "reports")
    page = " ".join(path.read_text().split())  # whitespace as a reader sees it
    assert path.name.startswith("cutover-") and path.suffix == ".html"
    assert "<script" not in page and "<link" not in page and "src=" not in page  # self-contained
    with platform.manifest() as ledger:
        units = ledger.units("conditions", ["disposition", "rule"])
    quarantined = units.filter(units["disposition"] == "quarantined")
    assert quarantined.height, "the sample's unknown code is quarantined"
    # The books of each element, as the ledger holds them, as one sentence.
    assert (
        f"{units.height:,} source units = {units.height - quarantined.height:,} successful + "
        f"{quarantined.height:,} quarantined + 0 rejected + 0 skipped + 0 pending" in page
    )
    for check in (
        "prerequisites_loaded",
        "schema",
        "reference_integrity",
        "idempotent_reload",
        "reconciliation",
        "accounting_balanced",
    ):
        assert f"<td>{check}</td>" in page
    assert '<td class="fail">FAILED</td>' not in page
    # The elements not run yet hold the sign-off back.
    assert "Not ready: " in page and "visits" in page.split("Not ready: ")[1].split("need attention")[0]
    for rule in quarantined["rule"].unique().to_list():
        assert f"<td>{rule}</td>" in page
    assert page.count("<svg") >= 2 and "<rect" in page  # a throughput chart per loaded element
    assert (evidence / "patients" / "reconciliation.json").resolve().as_uri() in page
    # Elements not run yet are listed with their empty books, not left out.
    assert "never run" in page


def test_the_asset_writes_the_report(platform_factory: PlatformFactory) -> None:
    platform = platform_factory.new(patients=20)
    assert platform.run("patients").ok
    resources = platform.defs.resources or {}
    result = materialize(
        [cutover_report],
        instance=platform.instance,
        resources={"manifest": resources["manifest"], "migration_settings": resources["migration_settings"]},
    )
    written = Path(str(result.asset_materializations_for_node("cutover_report")[0].metadata["report"].value))
    assert written.exists() and "patients" in written.read_text()
    assert written.parent == platform.work / "reports"
