"""MLflow records of an evaluation: one run per plan run, nested under the training run, and
the headline scores, tables and FID-over-training curve on the training run itself."""

from __future__ import annotations

from pathlib import Path

from ddpmlab.config import Params, flatten
from ddpmlab.evaluation import metric_registry
from ddpmlab.evaluation.protocol import SPLITS
from ddpmlab.evaluation.scorecard import CURVE_FIELDS
from ddpmlab.nn.execution import ExecutionRecord
from ddpmlab.pipeline import tracking
from ddpmlab.sampling.plan import Run


def run_name(training_params: dict, run: Run) -> str:
    """"linear-T100-seed0-dpmpp_2m-10": the model and its training seed, then the run key."""
    seed = training_params["train"].get("seed", training_params.get("seed", 0))  # before train.seed, the top-level seed trained
    return f"{training_params['schedule']}-T{training_params['T']}-seed{seed}-{run.key}"


def protocol_params(protocol: dict) -> dict:
    """The protocol as flat MLflow params (a run is only comparable with runs of the same protocol)."""
    return {**flatten(protocol), "reference_splits": ",".join(SPLITS)}


def model_version_fid_tags(row: dict, run: Run, protocol: dict) -> dict[str, str]:
    """The headline FID as tags of the training run's registered model versions: the value, its 95%
    95% interval, the run it comes from and how it was measured (comparable only under one protocol)."""
    measured = f"{protocol['feature_extractor']} features, {protocol['num_generated']} generated vs the test split"
    tags = {"fid": f"{row['fid']:.4g}", "fid_run": run.key, "fid_protocol": measured}
    if row.get("fid_ci_low") is not None:
        tags["fid_interval"] = f"[{row['fid_ci_low']:.4g}, {row['fid_ci_high']:.4g}]"
    return tags


def log_evaluation(params: Params, sampling: dict, train_info: dict, runs: list[Run], rows: list[dict], evaluation: dict,
                   samples_dir: Path, metric_files: tuple[Path, ...], tables: tuple[Path, ...], curve: list[dict]) -> None:  # fmt: skip
    training_params = train_info["params"]
    nll = evaluation["nll"]
    nll_metrics = {f"nll_{k}": v for k, v in nll.items() if isinstance(v, float)} if nll else {}
    real = {f"real_{k}": v for k, v in evaluation["real"].items()}
    accuracy = {"classifier_accuracy": evaluation["classifier_accuracy"]} if evaluation.get("classifier_accuracy") is not None else {}
    sample_params = flatten({"sample": params.to_dict()["sample"], "evaluate": params.to_dict()["evaluate"]})
    executions = {task: info["execution"] for task, info in (("train", train_info), ("sample", sampling)) if "execution" in info}
    how_it_ran = {k: v for task, summary in executions.items() for k, v in ExecutionRecord.from_summary(task, summary).tags().items()}
    for run, row, entry in zip(runs, rows, sampling["runs"]):
        tags = {**tracking.config_tags(params, run.key), **how_it_ran}  # tags: `ddpmlab compare` warns when they differ
        with tracking.start_run(params.tracking.experiment, run_name(training_params, run), "evaluate", parent_run_id=train_info["run_id"], tags=tags):
            tracking.log_params(flatten(training_params))
            tracking.log_params(sample_params)
            tracking.log_params(protocol_params(evaluation["protocol"]))
            tracking.log_params(
                {
                    "run_key": run.key, "sampler": run.sampler, "spacing": run.spacing, "sample_steps": run.steps, "nfe": run.nfe,
                    **({} if run.guidance is None else {"guidance": run.guidance}),
                    **{f"sampler.{k}": v for k, v in run.option_values.items()},
                    "train_run_id": train_info["run_id"], "sampling_device": sampling["device"],
                    **({"timesteps": ",".join(map(str, entry["timesteps"]))} if "timesteps" in entry else {}),  # the grid, searched or not
                }
            )  # fmt: skip
            scores = {c: row[c] for m in metric_registry.METRICS for c in m.columns + m.interval_columns if row.get(c) is not None}
            tracking.log_metrics({**scores, "nfe": run.nfe, **real, **accuracy, **nll_metrics})
            for name in ("grid.png", "denoise_strip.png", "class_grid.png"):
                if (samples_dir / run.folder / name).is_file():
                    tracking.log_artifact(samples_dir / run.folder / name, "samples")
            for path in metric_files:
                tracking.log_artifact(path)
    train_run = train_info["run_id"]
    if tracking.run_exists(train_run):
        # The headline scores on the training run too: the UI's chart view lists parent runs, so
        # an `fid` chart there compares models (the latest evaluation of each).
        tracking.log_metrics(metric_registry.headline(rows[0]), run_id=train_run)
        tracking.tag_model_versions(train_run, model_version_fid_tags(rows[0], runs[0], evaluation["protocol"]))
        for table in tables:
            tracking.log_artifact(table, "evaluation", run_id=train_run)
        if nll:
            tracking.log_metrics(nll_metrics, run_id=train_run)
        for row in curve:
            tracking.log_metrics({f"snapshot_{k}": row[k] for k in CURVE_FIELDS[1:]}, step=row["step"], run_id=train_run)
