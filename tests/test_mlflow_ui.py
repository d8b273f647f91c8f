"""The MLflow UI as a person sees it: `ddpmlab ui` on a loopback port against a store made by
tiny pipeline runs of three schedules, opened in headless Chromium (Debian's, no browser
download) through the link `ddpmlab ui` prints. Screenshots go to test-output/.

Needs /usr/bin/chromium (CI installs Debian's `chromium`) and the playwright package."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from conftest import CHROMIUM, COMPARED_SCHEDULES, ROOT, free_port, needs_chromium, stop_process_group

SCREENSHOTS = ROOT / "test-output"
pytestmark = needs_chromium


@pytest.fixture
def ui_link(schedules_store, tmp_path):
    """Start `ddpmlab ui` against the store; yield the link it prints; stop the server and its workers."""
    _, uri = schedules_store
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    command = [sys.executable, "-m", "ddpmlab.cli", "ui", "--port", str(port), "--params", str(tmp_path / "none.yaml")]
    server = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        link = None
        for _ in range(5):
            line = server.stdout.readline()
            if "http://" in line:
                link = line.strip()
                break
        assert link, "ddpmlab ui printed no link"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                time.sleep(0.5)
        else:
            pytest.fail("mlflow ui did not answer within 90 s")
        yield link
    finally:
        stop_process_group(server)


@contextmanager
def chromium_page(height: int) -> Iterator:
    """A headless Chromium page 1500 px wide; on a failure its screenshot goes to test-output/mlflow_ui_failure.png."""
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1500, "height": height})
        try:
            yield page
        except Exception:
            page.screenshot(path=SCREENSHOTS / "mlflow_ui_failure.png")
            raise
        finally:
            browser.close()


def test_the_printed_link_opens_fid_charts_and_a_run_page_with_params_and_sample_grid(ui_link):
    from playwright.sync_api import expect

    assert re.search(r"#/experiments/\d+/runs\?workflowType=machine_learning&compareRunsMode=CHART$", ui_link)
    with chromium_page(height=1000) as page:
        page.goto(ui_link)
        # The chart view: the runs carry their schedule in their names, and there is an `fid` chart.
        for schedule in COMPARED_SCHEDULES:
            expect(page.get_by_text(f"{schedule}-T30-seed0-train", exact=True).first).to_be_visible(timeout=60_000)
        page.get_by_placeholder("Search metric charts").fill("fid")
        fid_card = page.get_by_test_id("experiment-view-compare-runs-card").filter(has=page.get_by_text("fid", exact=True))
        # Drawn, not a spinner: one bar per training run, i.e. per schedule, and linear's second replicate.
        expect(fid_card.locator(".js-plotly-plot .barlayer .point")).to_have_count(len(COMPARED_SCHEDULES) + 1, timeout=60_000)
        page.screenshot(path=SCREENSHOTS / "mlflow_ui_fid_charts.png")

        # A run's page, reached as a user would: its params include schedule and T ...
        page.get_by_text("cosine-T30-seed0-train", exact=True).first.click()
        expect(page.get_by_text("Parameters", exact=False).first).to_be_visible(timeout=30_000)
        page.get_by_placeholder("Search parameters").fill("schedule")
        expect(page.get_by_role("row", name=re.compile(r"^schedule\s+cosine$"))).to_be_visible(timeout=30_000)
        page.get_by_placeholder("Search parameters").fill("T")
        expect(page.get_by_role("row", name=re.compile(r"^T\s+30$"))).to_be_visible(timeout=30_000)
        page.screenshot(path=SCREENSHOTS / "mlflow_ui_run_params.png")

        # ... and its artifacts show the sample grid as an image.
        page.get_by_role("tab", name="Artifacts").click()
        page.get_by_text("samples", exact=True).first.click()
        page.get_by_text("comparison.png", exact=True).first.click()
        image = page.locator("img[src^='blob:'], img[src^='data:image/png']").first
        expect(image).to_be_visible(timeout=30_000)
        assert image.evaluate("img => img.complete && img.naturalWidth > 0")
        page.screenshot(path=SCREENSHOTS / "mlflow_ui_sample_grid.png")


def open_runs_table(page, link: str, filter_string: str, expected: int) -> None:
    """The runs table of ``link``'s experiment with an MLflow search applied through the page's own
    `searchFilter` URL parameter (typing into the box races its autocomplete); waits until it holds
    ``expected`` runs."""
    page.goto(f"{link.replace('&compareRunsMode=CHART', '')}&searchFilter={urllib.parse.quote(filter_string)}")
    from playwright.sync_api import expect

    expect(page.get_by_text(re.compile(rf"^\s*{expected}\s+matching runs"))).to_be_visible(timeout=60_000)


def test_grouping_by_config_id_puts_replicates_together(ui_link, schedules_store, monkeypatch):
    """The runs table grouped by the config-id tag, as a person would click it: one group per
    schedule, linear's group holding both its training seeds."""
    from playwright.sync_api import expect

    from ddpmlab.pipeline import tracking

    _, uri = schedules_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    trainings = tracking.search_runs(tracking.find_experiment("ddpmlab"), "tags.ddpmlab.stage = 'train'")
    per_config = trainings.groupby("tags.ddpmlab.config_id")["tags.mlflow.runName"].apply(sorted).to_dict()
    assert sorted(per_config.values()) == [["cosine-T30-seed0-train"], ["linear-T30-seed0-train", "linear-T30-seed1-train"], ["sigmoid-T30-seed0-train"]]
    with chromium_page(height=800) as page:
        open_runs_table(page, ui_link, "tags.ddpmlab.stage = 'train'", len(trainings))
        page.get_by_role("button", name="Group by").click()
        page.get_by_text("ddpmlab.config_id", exact=True).first.click()
        page.keyboard.press("Escape")
        groups = page.get_by_role("row").filter(has_text="Group:")
        expect(groups).to_have_count(len(per_config), timeout=30_000)
        for config, names in per_config.items():
            row = groups.filter(has_text=f"Group: {config}")
            expect(row).to_have_count(1)
            expect(row).to_contain_text(re.compile(rf"Group: {config}\s*{len(names)}(?!\d)"), timeout=30_000)  # then its run count
        for names in per_config.values():
            for name in names:
                expect(page.get_by_text(name, exact=True).first).to_be_visible()
        page.screenshot(path=SCREENSHOTS / "mlflow_ui_grouped_by_config.png")


def test_the_models_page_lists_the_registered_model_with_versions_tags_and_source_runs(ui_link, schedules_store, monkeypatch):
    """Every training run of the store registered a version of "ddpmlab": the UI's Models page lists
    the model with its latest version, its page lists every version, and a version's page shows its
    tags (schedule, T, the headline FID) and links its source run."""
    from playwright.sync_api import expect

    from ddpmlab.pipeline import tracking

    _, uri = schedules_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    trainings = tracking.search_runs(tracking.find_experiment("ddpmlab"), "tags.ddpmlab.stage = 'train'")
    base = ui_link.split("#")[0]
    with chromium_page(height=900) as page:
        page.goto(f"{base}#/models")
        model_link = page.get_by_role("link", name="ddpmlab", exact=True)
        expect(model_link).to_be_visible(timeout=60_000)
        welcome = page.get_by_role("dialog")  # MLflow's one-time note on the new registry UI
        if welcome.count():
            welcome.get_by_role("button", name="Try it now").click()
            expect(welcome).to_have_count(0, timeout=10_000)
        expect(page.get_by_text(f"Version {len(trainings)}", exact=True).first).to_be_visible(timeout=30_000)  # the latest
        page.screenshot(path=SCREENSHOTS / "mlflow_ui_models.png")
        model_link.click()
        for version in range(1, len(trainings) + 1):
            expect(page.get_by_role("link", name=f"Version {version}", exact=True)).to_be_visible(timeout=30_000)
        page.screenshot(path=SCREENSHOTS / "mlflow_ui_model_versions.png")
        page.get_by_role("link", name="Version 2", exact=True).click()  # the cosine model
        expect(page.get_by_text("cosine", exact=True).first).to_be_visible(timeout=30_000)
        for key in ("schedule", "T", "objective", "fid", "fid_interval", "config_id"):
            expect(page.get_by_text(key, exact=True).first).to_be_visible()
        source = page.get_by_role("link", name="cosine-T30-seed0-train")
        expect(source).to_be_visible()
        page.screenshot(path=SCREENSHOTS / "mlflow_ui_model_version.png")
        source.click()
        expect(page.get_by_text("cosine-T30-seed0-train", exact=True).first).to_be_visible(timeout=30_000)
        page.get_by_role("tab", name="Artifacts").click()
        expect(page.get_by_text("model", exact=True).first).to_be_visible(timeout=30_000)
