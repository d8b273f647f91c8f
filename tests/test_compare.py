"""`ddpmlab compare`: the cross-experiment report from one MLflow search, and its selection rules."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import COMPARED_SCHEDULES
from ddpmlab import compare, tracking
from ddpmlab.commands import main, runs_link


def run_compare(monkeypatch: pytest.MonkeyPatch, uri: str, *args: object):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return CliRunner().invoke(main, ["compare", "--params", "missing.yaml", *[str(a) for a in args]], catch_exceptions=False)


def table_rows(markdown: str) -> list[list[str]]:
    """The comparison table's rows (header first) as cell lists."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_compare_reports_every_schedule_at_every_step_count(schedules_store, tmp_path, monkeypatch):
    folder, uri = schedules_store
    result = run_compare(monkeypatch, uri, "--out", tmp_path, "--data", folder / COMPARED_SCHEDULES[0] / "data")
    assert result.exit_code == 0, result.output
    assert "compared 6 evaluations of 3 models" in result.output
    rows = table_rows((tmp_path / "compare.md").read_text())
    header, body = rows[0], rows[1:]
    assert header[:7] == ["run", "schedule", "T", "objective", "variance", "sampler", "steps"]
    assert sorted((r[1], r[6]) for r in body) == sorted((s, n) for s in COMPARED_SCHEDULES for n in ("30", "5"))
    assert {r[0] for r in body} == {f"{s}-T30-ddpm{n}" for s in COMPARED_SCHEDULES for n in (30, 5)}

    # Each FID is the one the evaluate stage wrote for that (schedule, steps); the lowest is bold, once.
    fid_col = header.index("FID")
    expected = {}
    for schedule in COMPARED_SCHEDULES:
        by_steps = json.loads((folder / schedule / "evaluation.json").read_text())["by_steps"]
        expected.update({(schedule, steps): row["fid"] for steps, row in by_steps.items()})
    shown = {(r[1], r[6]): float(r[fid_col].strip("*")) for r in body}
    assert shown == pytest.approx(expected, rel=1e-3)
    bold = [r for r in body if r[fid_col].startswith("**")]
    assert len(bold) == 1 and float(bold[0][fid_col].strip("*")) == pytest.approx(min(expected.values()), rel=1e-3)
    recall_col = header.index("recall")
    assert any(r[recall_col].startswith("**") for r in body)  # higher-is-better columns are marked too

    for name in ("fid", "loss", "schedules", "forward", "grids"):
        with Image.open(tmp_path / "compare" / f"{name}.png") as image:
            assert image.width > 300 and image.height > 150
    html = (tmp_path / "compare.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and "<b>" in html


def test_a_filter_that_matches_only_evaluations_still_brings_their_training_runs(schedules_store, tmp_path, monkeypatch):
    _, uri = schedules_store
    result = run_compare(monkeypatch, uri, "--out", tmp_path, "--filter", "params.sample_steps = '5'")
    assert result.exit_code == 0, result.output
    body = table_rows((tmp_path / "compare.md").read_text())[1:]
    assert sorted(r[1] for r in body) == sorted(COMPARED_SCHEDULES) and {r[6] for r in body} == {"5"}
    assert all(r[14] != "" for r in body)  # train time comes from the training runs the filter left out
    assert (tmp_path / "compare" / "loss.png").is_file()


def test_runs_selects_a_training_run_with_all_its_evaluations(schedules_store, tmp_path, monkeypatch):
    folder, uri = schedules_store
    cosine_run = json.loads((folder / "cosine" / "model" / "train.json").read_text())["run_id"]
    result = run_compare(monkeypatch, uri, "--out", tmp_path, "--runs", cosine_run)
    assert result.exit_code == 0, result.output
    body = table_rows((tmp_path / "compare.md").read_text())[1:]
    assert sorted((r[1], r[6]) for r in body) == [("cosine", "30"), ("cosine", "5")]


def test_runs_with_an_evaluation_id_brings_its_training_run_for_time_and_loss(schedules_store, tmp_path, monkeypatch):
    _, uri = schedules_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    runs = tracking.search_runs(tracking.find_experiment("ddpmlab"), "params.schedule = 'sigmoid' AND params.sample_steps = '5'")
    (evaluation_id,) = runs["run_id"]
    result = run_compare(monkeypatch, uri, "--out", tmp_path, "--runs", evaluation_id)
    assert result.exit_code == 0, result.output
    (row,) = table_rows((tmp_path / "compare.md").read_text())[1:]
    assert (row[1], row[6]) == ("sigmoid", "5") and float(row[14]) > 0  # train time (min), from the training run
    assert (tmp_path / "compare" / "loss.png").is_file()


def test_bad_filter_and_empty_selection_fail_with_a_clear_message(schedules_store, tmp_path, monkeypatch):
    _, uri = schedules_store
    result = run_compare(monkeypatch, uri, "--out", tmp_path, "--filter", "params.T === 3")
    assert result.exit_code == 1 and "--filter 'params.T === 3'" in result.output
    result = run_compare(monkeypatch, uri, "--out", tmp_path, "--filter", "params.schedule = 'quadratic'")
    assert result.exit_code == 1 and "no ddpmlab runs" in result.output
    result = run_compare(monkeypatch, uri, "--out", tmp_path, "--experiment", "nobody-ran-this")
    assert result.exit_code == 1 and "no MLflow experiment 'nobody-ran-this'" in result.output
    assert not (tmp_path / "compare.md").exists()


def evaluation(run_id: str, train_run: str, steps: int, start: int, fid: float, **params: str) -> dict:
    base = {"schedule": "linear", "T": "1000", "sampler": "ddpm", "variance": "fixed_large", "eta": "0.0", "train.lr": "0.001"}
    return {
        "run_id": run_id, "start_time": pd.Timestamp(start, unit="s"), "tags.ddpmlab.stage": "evaluate",
        "params.train_run_id": train_run, "params.sample_steps": str(steps), "metrics.fid": fid,
        **{f"params.{k}": v for k, v in {**base, **params}.items()},
    }  # fmt: skip


def test_select_keeps_the_newest_evaluation_per_model_sampler_and_steps():
    runs = pd.DataFrame(
        [
            evaluation("a", "t1", 50, start=1, fid=9.0),
            evaluation("b", "t1", 50, start=2, fid=7.0),  # re-evaluated later: replaces a
            evaluation("c", "t1", 50, start=3, fid=8.0, sampler="ddim"),  # another sampler: its own row
            evaluation("d", "t2", 50, start=4, fid=6.0, schedule="cosine", T="1000"),
            {"run_id": "t1", "tags.ddpmlab.stage": "train", "start_time": pd.Timestamp(0, unit="s"), "metrics.train_seconds": 120.0},
        ]
    )
    selection = compare.select(runs)
    assert sorted(selection.evaluations["run_id"]) == ["b", "c", "d"]
    assert selection.evaluations.set_index("run_id")["train_minutes"].to_dict() == pytest.approx({"b": 2.0, "c": 2.0, "d": float("nan")}, nan_ok=True)
    assert [label for label, _ in selection.curves] == ["cosine, ddpm fixed_large", "linear, ddim eta=0.0", "linear, ddpm fixed_large"]


def test_labels_name_only_the_training_params_that_differ():
    runs = pd.DataFrame(
        [
            evaluation("a", "t1", 10, 1, 5.0),
            evaluation("b", "t2", 10, 2, 5.0, schedule="cosine", **{"train.lr": "0.0002"}),
            evaluation("c", "t3", 10, 3, 5.0, sampler="ddim"),  # a sampling param: not part of the model's label
        ]
    )
    labels = compare.training_labels(runs)
    assert labels["t2"] == "cosine, train.lr=0.0002"
    # t1 and t3 trained with the same params (t3 differs only in how it was sampled): told apart by run id.
    assert (labels["t1"], labels["t3"]) == ("linear, train.lr=0.001 (t1)", "linear, train.lr=0.001 (t3)")


def test_no_evaluations_is_an_error_not_an_empty_report():
    with pytest.raises(compare.NothingToCompare, match="no evaluation runs"):
        compare.select(pd.DataFrame([{"run_id": "t", "tags.ddpmlab.stage": "train", "start_time": pd.Timestamp(0)}]))


def test_ui_link_opens_the_model_training_view_in_chart_mode():
    link = runs_link("127.0.0.1", 5123, "7")
    assert re.fullmatch(r"http://127\.0\.0\.1:5123/#/experiments/7/runs\?(.+)", link)
    query = dict(part.split("=") for part in link.split("?", 1)[1].split("&"))
    assert query == {"workflowType": "machine_learning", "compareRunsMode": "CHART"}


def test_hundreds_of_models_fill_the_table_and_the_figures_show_the_best(tmp_path):
    """300 trained models x 4 step counts: every row in the table, the 10 lowest-FID models in the figures."""
    rng = np.random.default_rng(0)
    fids = rng.uniform(1, 50, size=300)
    runs = pd.DataFrame(
        [
            {**evaluation(f"e{m}-{steps}", f"t{m}", steps, start=m, fid=fids[m] * (1 + 10 / steps), **{"train.lr": str(m)}), "metrics.seconds_per_sample": steps / 1000}
            for m in range(300)
            for steps in (100, 50, 20, 10)
        ]
    )  # fmt: skip
    selection = compare.select(runs)
    _, rows = compare.table(selection)
    assert len(rows) == 1200
    shown = selection.best_models()
    assert set(shown.evaluations["params.train_run_id"]) == {f"t{m}" for m in np.argsort(fids)[: compare.MAX_PLOTTED_MODELS]}
    assert len(compare.grid_choices(shown)) == compare.MAX_PLOTTED_MODELS * 4
    compare.fid_figure(shown, tmp_path / "fid.png")
    assert len(shown.curves) == compare.MAX_PLOTTED_MODELS and (tmp_path / "fid.png").is_file()
    doc = compare.document(selection, {"fid": "fid.png"}, "a test", plotted_models=compare.MAX_PLOTTED_MODELS)
    assert "The figures show the 10 models with the lowest FID; the table lists all 300." in doc.to_markdown()
