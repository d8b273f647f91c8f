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
from ddpmlab.cli import main, runs_link
from ddpmlab.pipeline import tracking
from ddpmlab.reporting import compare
from ddpmlab.reporting.figures.compare import fid_figure


def run_compare(monkeypatch: pytest.MonkeyPatch, uri: str, *args: object):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return CliRunner().invoke(main, ["compare", "--params", "missing.yaml", *[str(a) for a in args]], catch_exceptions=False)


def table_rows(markdown: str, section: str = "Every evaluation") -> list[list[str]]:
    """The rows (header first) of the first table under ``## <section>``, as cell lists."""
    body = markdown.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in body.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def number(cell: str) -> float:
    """The value of a cell shown as "1.27 [1.12, 1.45]" (or bare, or marked)."""
    return float(cell.strip("*").split(" [")[0])


# The tiny pipeline's run plan (conftest.TINY_OVERRIDES): every sampler at every step count.
RUN_KEYS = ("ddpm-30", "ddpm-5", "dpmpp_2m-30", "dpmpp_2m-5")
TABLE_START = ["run", "schedule", "T", "objective", "sampler", "spacing", "steps", "NFE"]
METRIC_HEADERS = ["FID", "FID / real floor", "IS", "KID", "precision", "recall", "copy rate (features)", "endpoint error (RMS vs many-step)", "NLL (bits/dim)", "train steps", "train time (min)", "s / sample"]


def cells(header: list[str], row: list[str], *names: str) -> tuple[str, ...]:
    return tuple(row[header.index(name)] for name in names)


def test_compare_reports_every_schedule_at_every_sampler_and_step_count(schedules_store, tmp_path, monkeypatch):
    folder, uri = schedules_store
    result = run_compare(monkeypatch, uri, "--out", tmp_path, "--data", folder / COMPARED_SCHEDULES[0] / "data")
    assert result.exit_code == 0, result.output
    models = len(COMPARED_SCHEDULES) + 1  # linear twice: train.seed 0 and 1
    assert f"compared {models * len(RUN_KEYS)} evaluations of {models} models" in result.output
    md = (tmp_path / "compare.md").read_text()
    assert "ran differently" not in result.output and "differ in how they ran" not in md  # one machine, one cache: alike
    rows = table_rows(md)
    header, body = rows[0], rows[1:]
    assert header == TABLE_START + METRIC_HEADERS  # unconditional models: no w, no class accuracy
    expected_runs = [(s, sampler, steps) for s in (*COMPARED_SCHEDULES, "linear") for sampler in ("ddpm", "dpmpp_2m") for steps in ("30", "5")]
    assert sorted(cells(header, r, "schedule", "sampler", "steps") for r in body) == sorted(expected_runs)
    names = {f"{s}-T30-seed0-{key}" for s in COMPARED_SCHEDULES for key in RUN_KEYS} | {f"linear-T30-seed1-{key}" for key in RUN_KEYS}
    assert {r[0] for r in body} == names
    assert all(cells(header, r, "spacing", "T", "objective") == ("uniform", "30", "eps") for r in body)
    assert all(r[header.index("NFE")] == r[header.index("steps")] for r in body)  # one network evaluation per step, unguided

    # Each FID is the one the evaluate stage wrote for that (model, run), with its interval; one run per
    # model says nothing about the training seed, so nothing in this table is bold.
    fid_col = header.index("FID")
    expected = {}
    for model, seed in [*((s, "0") for s in COMPARED_SCHEDULES), ("replicate", "1")]:
        by_run = json.loads((folder / model / "evaluation.json").read_text())["by_run"]
        assert set(by_run) == set(RUN_KEYS)
        schedule = COMPARED_SCHEDULES[0] if model == "replicate" else model
        expected.update({f"{schedule}-T30-seed{seed}-{key}": (row["fid"], row["fid_ci_low"], row["fid_ci_high"]) for key, row in by_run.items()})
    shown = {r[0]: tuple(float(v) for v in re.findall(r"[-\d.e]+", r[fid_col])) for r in body}
    assert shown.keys() == expected.keys() and all(shown[k] == pytest.approx(expected[k], rel=1e-3) for k in expected)
    assert not any("**" in cell for r in body for cell in r)

    # Configs: linear's two replicates pool into one row per run with their mean; a block with a single-replicate
    # config is never marked, and every schedule pair gets a difference row without a verdict.
    pooled = table_rows(md, "Configs over training seeds")
    p_header, p_body = pooled[0], pooled[1:]
    assert p_header[:7] == ["config", "train seeds", "replicates", "sampler", "spacing", "steps", "NFE"]
    linear = [r for r in p_body if r[0] == "linear"]
    assert len(p_body) == len(COMPARED_SCHEDULES) * len(RUN_KEYS) and len(linear) == len(RUN_KEYS)
    assert all(cells(p_header, r, "train seeds", "replicates") == ("0, 1", "2") for r in linear)
    for r in linear:
        key = f"{r[p_header.index('sampler')]}-{r[p_header.index('steps')]}"
        mean = (expected[f"linear-T30-seed0-{key}"][0] + expected[f"linear-T30-seed1-{key}"][0]) / 2
        assert number(r[p_header.index("FID")]) == pytest.approx(mean, rel=1e-3)
    assert not any(cell.startswith("*") for r in p_body for cell in r)
    differences = table_rows(md, "Which config differences are real")[1:]
    assert len(differences) == 3 * len(RUN_KEYS) and all(r[0].startswith("schedule: ") for r in differences)
    assert sorted((r[3], r[5]) for r in differences) == sorted((key.split("-")[0], key.split("-")[1]) for key in RUN_KEYS for _ in range(3))
    prefix = "no verdict: needs >= 2 replicates per config (has "
    assert all(r[-1].startswith(prefix) for r in differences)
    counts = sorted(tuple(sorted(r[-1].removeprefix(prefix).removesuffix(")").split(" + "))) for r in differences)
    assert counts == [("1", "1")] * len(RUN_KEYS) + [("1", "2")] * 2 * len(RUN_KEYS)  # cosine-sigmoid; linear (2 seeds) against each

    for name in ("fid", "loss", "schedules", "forward", "grids"):
        with Image.open(tmp_path / "compare" / f"{name}.png") as image:
            assert image.width > 300 and image.height > 150
    html = (tmp_path / "compare.html").read_text()
    assert html.count("data:image/png;base64,") == 5


def test_a_filter_that_matches_only_evaluations_still_brings_their_training_runs(schedules_store, tmp_path, monkeypatch):
    _, uri = schedules_store
    result = run_compare(monkeypatch, uri, "--out", tmp_path, "--filter", "params.sample_steps = '5'")
    assert result.exit_code == 0, result.output
    header, *body = table_rows((tmp_path / "compare.md").read_text())
    models = (*COMPARED_SCHEDULES, "linear")  # linear's second replicate
    assert sorted(cells(header, r, "schedule", "sampler") for r in body) == sorted((s, sampler) for s in models for sampler in ("ddpm", "dpmpp_2m"))
    assert {r[header.index("steps")] for r in body} == {"5"}
    assert all(float(r[header.index("train time (min)")]) > 0 for r in body)  # from the training runs the filter left out
    assert (tmp_path / "compare" / "loss.png").is_file()


def test_runs_selects_a_training_run_with_all_its_evaluations(schedules_store, tmp_path, monkeypatch):
    folder, uri = schedules_store
    cosine_run = json.loads((folder / "cosine" / "model" / "train.json").read_text())["run_id"]
    result = run_compare(monkeypatch, uri, "--out", tmp_path, "--runs", cosine_run)
    assert result.exit_code == 0, result.output
    _header, *body = table_rows((tmp_path / "compare.md").read_text())
    assert sorted(r[0] for r in body) == sorted(f"cosine-T30-seed0-{key}" for key in RUN_KEYS)


def test_runs_takes_a_registered_model_alias_or_version_for_its_training_run(schedules_store, tmp_path, monkeypatch):
    """The cosine model is the second registered version; an alias on it selects the same runs as its run id."""
    import mlflow

    folder, uri = schedules_store
    cosine_run = json.loads((folder / "cosine" / "model" / "train.json").read_text())["run_id"]
    client = mlflow.tracking.MlflowClient(uri)
    (version,) = client.search_model_versions(f"name = 'ddpmlab' AND run_id = '{cosine_run}'")
    client.set_registered_model_alias("ddpmlab", "challenger", version.version)
    for reference in ("models:/ddpmlab@challenger", f"models:/ddpmlab/{version.version}"):
        result = run_compare(monkeypatch, uri, "--out", tmp_path, "--runs", reference)
        assert result.exit_code == 0, result.output
        _header, *body = table_rows((tmp_path / "compare.md").read_text())
        assert sorted(r[0] for r in body) == sorted(f"cosine-T30-seed0-{key}" for key in RUN_KEYS)
    result = run_compare(monkeypatch, uri, "--out", tmp_path, "--runs", "models:/ddpmlab@nobody")
    assert result.exit_code != 0 and "--runs models:/ddpmlab@nobody: model 'ddpmlab' has no version or alias 'nobody'" in result.output


def test_runs_with_an_evaluation_id_brings_its_training_run_for_time_and_loss(schedules_store, tmp_path, monkeypatch):
    _, uri = schedules_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    runs = tracking.search_runs(tracking.find_experiment("ddpmlab"), "params.schedule = 'sigmoid' AND params.run_key = 'dpmpp_2m-5'")
    (evaluation_id,) = runs["run_id"]
    result = run_compare(monkeypatch, uri, "--out", tmp_path, "--runs", evaluation_id)
    assert result.exit_code == 0, result.output
    header, row = table_rows((tmp_path / "compare.md").read_text())
    assert cells(header, row, "run", "schedule", "sampler", "steps", "NFE") == ("sigmoid-T30-seed0-dpmpp_2m-5", "sigmoid", "dpmpp_2m", "5", "5")
    assert float(row[header.index("train time (min)")]) > 0  # from the training run
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


# The options each sampler logs as params (``sampler.<option>``), at their defaults.
SAMPLER_OPTIONS = {"ddpm": {"sampler.variance": "fixed_large"}, "ddim": {"sampler.eta": "0.0"}}


def evaluation(run_id: str, train_run: str, steps: int, start: int, fid: float, sampler: str = "ddpm", nfe: int | None = None, **params: str) -> dict:
    """An evaluation run's row as evaluation_tracking logs it (its sampler's options included)."""
    base = {"schedule": "linear", "T": "1000", "sampler": sampler, "spacing": "uniform", **SAMPLER_OPTIONS.get(sampler, {}), "train.lr": "0.001"}
    return {
        "run_id": run_id, "start_time": pd.Timestamp(start, unit="s"), "tags.ddpmlab.stage": "evaluate",
        "params.train_run_id": train_run, "params.sample_steps": str(steps), "params.nfe": str(steps if nfe is None else nfe),
        "metrics.fid": fid, **{f"params.{k}": v for k, v in {**base, **params}.items()},
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
    assert [label for label, _ in selection.curves] == ["cosine, ddpm", "linear, ddim", "linear, ddpm"]


def test_select_keeps_spacings_and_sampler_options_apart_and_labels_their_lines():
    runs = pd.DataFrame(
        [
            evaluation("a", "t1", 10, start=1, fid=9.0),
            evaluation("b", "t1", 10, start=2, fid=8.0, spacing="logsnr"),  # another step grid: its own row
            evaluation("c", "t1", 10, start=3, fid=7.0, **{"sampler.variance": "fixed_small"}),  # another variance: its own row
            evaluation("d", "t1", 10, start=4, fid=6.0, sampler="ddim", **{"sampler.eta": "1.0"}),
            evaluation("e", "t1", 10, start=5, fid=5.0, sampler="ddim"),
        ]
    )
    selection = compare.select(runs)
    assert sorted(selection.evaluations["run_id"]) == ["a", "b", "c", "d", "e"]
    labels = [label for label, _ in selection.curves]
    assert len(labels) == 5 and len(set(labels)) == 5, labels  # a line per way of sampling, each told apart in the legend
    assert any("logsnr" in label for label in labels)


def test_the_table_and_the_fid_figure_count_network_evaluations_not_steps(tmp_path):
    """heun runs 2N - 1 network evaluations for N steps: NFE, not steps, is the cost axis."""
    runs = pd.DataFrame(
        [
            {**evaluation(f"{sampler}-{steps}", "t1", steps, start=steps, fid=10.0 / steps, sampler=sampler, nfe=nfe), "metrics.seconds_per_sample": nfe / 1000}
            for sampler, steps, nfe in [("heun", 10, 19), ("heun", 5, 9), ("dpmpp_2m", 10, 10), ("dpmpp_2m", 5, 5)]
        ]
    )  # fmt: skip
    selection = compare.select(runs)
    header, rows = compare.table(selection)
    assert header[: len(TABLE_START)] == TABLE_START
    assert sorted((r[header.index("sampler")], r[header.index("steps")], r[header.index("NFE")]) for r in rows) == [
        ("dpmpp_2m", 5, 5), ("dpmpp_2m", 10, 10), ("heun", 5, 9), ("heun", 10, 19),
    ]  # fmt: skip
    assert {label: rows_["nfe"].tolist() for label, rows_ in selection.curves} == {"linear, dpmpp_2m": [5, 10], "linear, heun": [9, 19]}
    fid_figure(selection, tmp_path / "fid.png")
    assert (tmp_path / "fid.png").is_file()


def test_labels_name_only_the_training_params_that_differ():
    runs = pd.DataFrame(
        [
            evaluation("a", "t1", 10, 1, 5.0),
            evaluation("b", "t2", 10, 2, 5.0, schedule="cosine", **{"train.lr": "0.0002"}),
            evaluation("c", "t3", 10, 3, 5.0, sampler="ddim", spacing="karras"),  # sampling params: not part of the model's label
        ]
    )
    labels = compare.training_labels(runs)
    assert labels["t2"] == "cosine, train.lr=0.0002"
    # t1 and t3 trained with the same params (t3 differs only in how it was sampled): told apart by run id.
    assert (labels["t1"], labels["t3"]) == ("linear, train.lr=0.001 (t1)", "linear, train.lr=0.001 (t3)")


def ran(precision: str, threads: str, sample_precision: str = "bf16", chosen_by: str = "probe") -> dict:
    """The execution tags an evaluation run carries (nn.execution.ExecutionRecord.tags), for train and sample."""
    fields = {"train.precision": precision, "train.threads": threads, "train.chosen_by": chosen_by, "train.processor": "AMD EPYC",
              "sample.precision": sample_precision, "sample.threads": threads, "sample.chosen_by": chosen_by}  # fmt: skip
    return {f"tags.ddpmlab.execution.{k}": v for k, v in fields.items()}


def test_compare_warns_when_the_models_ran_differently_but_not_when_only_the_cache_differs():
    alike = pd.DataFrame([{**evaluation("a", "t1", 10, 1, 5.0), **ran("bf16", "2")},
                          {**evaluation("b", "t2", 10, 2, 5.5), **ran("bf16", "2", chosen_by="cache")}])  # fmt: skip
    assert compare.execution_differences(compare.select(alike)) == []
    differing = pd.DataFrame([
        {**evaluation("a", "t1", 10, 1, 5.0), **ran("bf16", "2")},
        {**evaluation("b", "t1", 5, 2, 9.0), **ran("bf16", "2")},
        {**evaluation("c", "t2", 10, 3, 5.5), **ran("fp32", "1", sample_precision="fp32")},
    ])  # fmt: skip
    selection = compare.select(differing)
    assert compare.execution_differences(selection) == [
        "sample precision: bf16 (2 evaluations), fp32 (1 evaluation)", "sample threads: 1 (1 evaluation), 2 (2 evaluations)",
        "train precision: bf16 (1 model), fp32 (1 model)", "train threads: 1 (1 model), 2 (1 model)",
    ]  # fmt: skip
    md = compare.document(selection, {}, "a test").to_markdown()
    assert "WARNING: the models differ in how they ran, not only in their params" in md and "train precision: bf16 (1 model)" in md
    assert "WARNING: the models differ" not in compare.document(compare.select(alike), {}, "a test").to_markdown()
    older = pd.DataFrame([{**evaluation("a", "t1", 10, 1, 5.0), **ran("bf16", "2")}, evaluation("b", "t2", 10, 2, 5.5)])
    assert "train precision: bf16 (1 model), not recorded (1 model)" in compare.execution_differences(compare.select(older))


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
    fid_figure(shown, tmp_path / "fid.png")
    assert len(shown.curves) == compare.MAX_PLOTTED_MODELS and (tmp_path / "fid.png").is_file()
    doc = compare.document(selection, {"fid": "fid.png"}, "a test", plotted_models=compare.MAX_PLOTTED_MODELS)
    md = doc.to_markdown()
    assert "The figures show the 10 models with the lowest FID; the tables list all 300." in md
    # 300 configs that differ only in train.lr would make 44,850 pairs: the differences cover the 10 best configs.
    assert "between the 10 configs with the lowest mean FID" in md and len(compare.differences_table(selection)[1]) == 45 * 4
