"""The `ddpmlab` console script: commands that work on the MLflow store, outside the DVC DAG."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import yaml

from ddpmlab.evaluation.correction_names import CORRECTIONS
from ddpmlab.generation.command import generate
from ddpmlab.pipeline.sync import tracking_group
from ddpmlab.study.commands import study
from ddpmlab.team.commands import team

DEFAULT_EXPERIMENT = "ddpmlab"


def params_value(params_path: Path, section: str, key: str, default: str) -> str:
    """params.yaml's ``section.key`` as text, else ``default`` (also where the file does not exist)."""
    raw = (yaml.safe_load(params_path.read_text()) or {}) if params_path.is_file() else {}
    return str((raw.get(section) or {}).get(key) or default)


def correction_of(params_path: Path, given: str | None) -> str:
    """--correction, else params.yaml's evaluate.correction, else Benjamini-Hochberg."""
    value = given or params_value(params_path, "evaluate", "correction", CORRECTIONS[0])
    if value not in CORRECTIONS:
        raise click.BadParameter(f"evaluate.correction = {value!r} in {params_path}: use one of {', '.join(CORRECTIONS)}")
    return value


def experiment_name(params_path: Path, given: str | None) -> str:
    """--experiment, else params.yaml's tracking.experiment, else the default."""
    return given or params_value(params_path, "tracking", "experiment", DEFAULT_EXPERIMENT)


def runs_link(host: str, port: int, experiment_id: str) -> str:
    """The experiment's runs in MLflow 3's model-training view, metrics as charts.

    Without workflowType the UI may open the GenAI traces overview, and the runs table starts
    with no params or metrics columns; chart mode shows one chart per logged metric."""
    return f"http://{host}:{port}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&compareRunsMode=CHART"


experiment_option = click.option("--experiment", default=None, help="MLflow experiment [default: tracking.experiment of --params, else ddpmlab].")
params_option = click.option(
    "--params", "params_path", default="params.yaml", show_default=True, type=click.Path(dir_okay=False, path_type=Path),
    help="Read only for tracking.experiment; need not exist.",
)  # fmt: skip


@click.group(
    help="""Compare ddpmlab experiments, browse them in MLflow and check params files (no DVC needed).

\b
  ddpmlab generate  images from a trained model: a local folder, an MLflow run or models:/name@alias
  ddpmlab compare   one report comparing every evaluated run: configs over seeds, samplers, step counts
  ddpmlab ui        the MLflow UI on 127.0.0.1, opened at the runs' metric charts
  ddpmlab preset    the `dvc exp run -S ...` command of a preset (configs/cifar10.yaml)
  ddpmlab validate  check a params file (default params.yaml) as the stages do, and run nothing
  ddpmlab study     a replicated study (configs x seeds) from one file: plan it, checked
  ddpmlab team      a team tracking stack on this machine: PostgreSQL, S3, MLflow with logins
  ddpmlab tracking  records journaled while a tracking server was down: status, sync

The store is the project's (mlflow.db in the current directory) unless MLFLOW_TRACKING_URI is set."""
)
def main() -> None:
    pass


@main.command()
@experiment_option
@params_option
@click.option("--filter", "filter_string", default="", help="MLflow search filter, e.g. \"params.T = '1000'\" or \"params.sampler = 'ddim'\".")
@click.option("--runs", "run_ids", multiple=True,
              help="Only these run ids or registered models (models:/ddpmlab@champion; repeat or comma-separate); a training run brings all its evaluations.")  # fmt: skip
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default="reports", show_default=True, help="Writes compare.md, compare.html, compare/*.png here.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default="data/prepared", show_default=True,
              help="Prepared data whose first test image shows the forward process (else a bundled digit).")  # fmt: skip
@click.option("--correction", type=click.Choice(CORRECTIONS), default=None,
              help="Multiple-comparison correction of each table of verdicts: bh (Benjamini-Hochberg, false discovery rate 5%), "
                   "holm (any false claim 5%) or none [default: params.yaml's evaluate.correction, else bh].")  # fmt: skip
def compare(experiment: str | None, params_path: Path, filter_string: str, run_ids: tuple[str, ...], out: Path, data_dir: Path,
            correction: str | None) -> None:  # fmt: skip
    """Compare every evaluated run of the experiment. Runs that differ only in train.seed /
    sample.seed are replicates of one config: pooled into a mean and 95% interval, with a verdict
    (better, worse, no detectable difference) for every pair of configs that differ in one param,
    tested on log FID (paired by seed where both configs ran the same seeds) and corrected for the
    number of comparisons in the table (--correction).
    Also: every evaluation with its interval, FID against network evaluations and
    sampling cost, training losses, schedules, forward-process strips and sample grids at matched
    steps. Reads all runs with one MLflow search."""
    from ddpmlab.pipeline import tracking
    from ddpmlab.pipeline.stage_io import write_text_atomic
    from ddpmlab.reporting import compare as cmp
    from ddpmlab.reporting.figures.compare import (
        compared_schedules_figure,
        fid_figure,
        forward_figure,
        loss_curves_figure,
        sample_grids_figure,
    )

    name = experiment_name(params_path, experiment)
    correction = correction_of(params_path, correction)
    with tracking_errors():
        experiment_id = tracking.find_experiment(name)
    if experiment_id is None:
        raise click.ClickException(f"no MLflow experiment {name!r} in {tracking.tracking_uri()}: run the pipeline first (dvc repro)")
    wanted = [r.strip() for value in run_ids for r in value.split(",") if r.strip()]
    if any(r.startswith("models:/") for r in wanted):
        from ddpmlab.pipeline.model_registry import ModelNotFound, training_run_id

        def run_of(reference: str) -> str:  # a registered version stands for the run that trained it
            try:
                return training_run_id(reference)
            except ModelNotFound as e:
                raise click.ClickException(f"--runs {reference}: {e}") from e

        wanted = [run_of(r) for r in wanted]
    try:
        selection = cmp.select(selected_runs(experiment_id, filter_string, wanted))
    except tracking.BadSearch as e:
        raise click.ClickException(f"--filter {filter_string!r}: {e}") from e
    except cmp.NothingToCompare as e:
        raise click.ClickException(str(e)) from e
    for line in cmp.execution_differences(selection):
        click.echo(f"warning: the compared models ran differently: {line}", err=True)

    figures_dir = out / "compare"
    figures = {}

    def figure(name: str, draw) -> None:
        draw(figures_dir / f"{name}.png")
        figures[name] = f"compare/{name}.png"

    shown = selection.best_models()  # figures stay readable with hundreds of runs; the table has them all
    figure("fid", lambda p: fid_figure(shown, p))
    histories = cmp.loss_histories(shown, tracking.metric_histories)
    if histories:
        figure("loss", lambda p: loss_curves_figure(histories, p))
    processes = cmp.schedule_processes(shown)
    figure("schedules", lambda p: compared_schedules_figure(processes, p))
    figure("forward", lambda p: forward_figure(cmp.first_image(data_dir), processes, p))
    choices = cmp.grid_choices(shown)
    with tempfile.TemporaryDirectory() as tmp:
        paths = tracking.download_artifacts([(run_id, "samples/grid.png") for _, _, run_id in choices], Path(tmp))
        grids = {(label, steps): path for (label, steps, _), path in zip(choices, paths) if path is not None}
        if grids:
            figure("grids", lambda p: sample_grids_figure(grids, p))
    doc = cmp.document(selection, figures, f"MLflow experiment {name!r} ({tracking.tracking_uri()})", shown.evaluations["label"].nunique(),
                       correction=correction)  # fmt: skip
    write_text_atomic(out / "compare.md", doc.to_markdown())
    write_text_atomic(out / "compare.html", doc.to_html(out))
    models = selection.evaluations["label"].nunique()
    click.echo(f"compared {len(selection.evaluations)} evaluations of {models} models: wrote {out / 'compare.md'} and {out / 'compare.html'}")


@main.command()
@experiment_option
@params_option
@click.option("--difference", required=True,
              help="The FID difference to resolve between two configs: a percentage (10%: B's FID 10% below A's) or an FID gap (0.5).")  # fmt: skip
@click.option("--filter", "filter_string", default="", help="MLflow search filter selecting the pilot, e.g. \"params.T = '100'\".")
@click.option("--sampler", default=None, help="Only this sampler's ways of sampling.")
@click.option("--steps", type=int, default=None, help="Only this step count.")
def plan(experiment: str | None, params_path: Path, difference: str, filter_string: str, sampler: str | None, steps: int | None) -> None:
    """How many images per run and training seeds per config a comparison of two configs needs for
    80% power, and what that costs, read off a pilot: the evaluated runs already in the experiment.
    It needs a config with two or more replicates (train.seed) for the seed-to-seed spread; each
    run's own interval gives the sampling noise at its N, and the runs' logged times give the
    cost on the machine that ran them. Seeds are for an unpaired test at 5% (docs/comparing.md)."""
    from ddpmlab.pipeline import tracking
    from ddpmlab.reporting import compare as cmp
    from ddpmlab.reporting import planning, study_plan

    try:
        target = study_plan.Target.parse(difference)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--difference") from None
    name = experiment_name(params_path, experiment)
    with tracking_errors():
        experiment_id = tracking.find_experiment(name)
    if experiment_id is None:
        raise click.ClickException(f"no MLflow experiment {name!r} in {tracking.tracking_uri()}: run the pipeline first (dvc repro)")
    try:
        found = study_plan.pilots(cmp.select(selected_runs(experiment_id, filter_string, [])))
    except tracking.BadSearch as e:
        raise click.ClickException(f"--filter {filter_string!r}: {e}") from e
    except (cmp.NothingToCompare, study_plan.NoPilot) as e:
        raise click.ClickException(str(e)) from e
    found = [p for p in found if (sampler is None or p.way[0] == sampler) and (steps is None or p.way[2] == steps)]
    if not found:
        raise click.ClickException(f"no way of sampling in the pilot matches --sampler {sampler} --steps {steps}")
    click.echo(f"To resolve a difference of {target.text} in FID between two configs with 80% power (two-sided t test on log FID at 5%, "
               f"unpaired; pilot: experiment {name!r}):")  # fmt: skip
    for pilot in found:
        sampler_name, spacing, step_count = pilot.way
        reference = f"{pilot.reference_images} test images" if pilot.reference_images else "the test split"
        click.echo(f"\n{sampler_name}, {spacing}, {step_count} steps: pilot of {pilot.runs} runs over {pilot.configs} config(s), geometric-mean "
                   f"FID {pilot.fid:.3g}; log-FID spread between replicates {pilot.replicate_sd:.3f} ({pilot.df} degree(s) of freedom: "
                   f"its 80% upper bound is {pilot.upper_factor():.2g}x that), of which the images' share {pilot.images_sd:.3f} at "
                   f"{pilot.images} images and the training seed's {pilot.seed_sd:.3f}")  # fmt: skip
        click.echo(f"  {'images per run':>14}  {'replicate sd':>12}  {'seeds per config':>16}  {'at the upper bound':>18}  {'cost (2 configs)':>16}")
        for row in study_plan.plan_rows(pilot, target):
            seeds, upper = (f"> {planning.MAX_SEEDS}" if k is None else str(k) for k in (row["seeds"], row["seeds_upper"]))
            cost = _duration(row["seconds"]) if row["seconds"] is not None and math.isfinite(row["seconds"]) else ""
            click.echo(f"  {row['images']:>14}  {row['sd']:>12.3f}  {seeds:>16}  {upper:>18}  {cost:>16}")
        click.echo(f"  More images shrink only the generated side's noise: the reference ({reference}) keeps its share, so these are the "
                   "most images can buy. A larger test split lifts that cap (the MNISTs have 10,000: data.source=mnist).")  # fmt: skip
    click.echo("\nPaired by seed (both configs run with the same train.seed values) needs fewer; `ddpmlab compare` shows, for each "
               "unresolved change, the seeds it would need at the spread it saw. A table corrected for many comparisons needs more.")  # fmt: skip


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


@main.command()
@experiment_option
@params_option
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535), help="Port on 127.0.0.1.")
def ui(experiment: str | None, params_path: Path, port: int) -> None:
    """Start `mlflow ui` on 127.0.0.1 against the project's store and print the link to the
    experiment's runs in the model-training view (metric charts). Stop it with Ctrl-C."""
    from ddpmlab.pipeline import tracking

    name = experiment_name(params_path, experiment)
    uri = tracking.tracking_uri()
    with tracking_errors():
        experiment_id = tracking.use_experiment(name)  # creates it (tagged for the training view) if no run has yet
    click.echo(f"MLflow UI for experiment {name!r} ({uri}):\n  {runs_link('127.0.0.1', port, experiment_id)}")
    sys.stdout.flush()
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    try:
        raise SystemExit(subprocess.call(command, env={**os.environ, "MLFLOW_TRACKING_URI": uri}))
    except KeyboardInterrupt:
        raise SystemExit(0) from None


@main.command()
@click.argument("preset", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--params", "params_path", default="params.yaml", show_default=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The params file the preset overrides (validated together before anything runs).")  # fmt: skip
@click.option("--run", is_flag=True, help="Run the command instead of printing it; arguments after -- go to `dvc exp run` (e.g. -- --queue).")
@click.argument("dvc_args", nargs=-1, type=click.UNPROCESSED)
def preset(preset: Path, params_path: Path, run: bool, dvc_args: tuple[str, ...]) -> None:
    """Turn a preset (a YAML file of params.yaml overrides, e.g. configs/cifar10.yaml) into the
    `dvc exp run -S key=value ...` command that applies it, after checking that the merged params
    are valid. Prints the command, or runs it with --run."""
    from ddpmlab.config import ConfigError
    from ddpmlab.pipeline import presets

    try:
        overrides, _ = presets.load(preset, params_path)
    except (ConfigError, ValueError) as e:
        raise click.ClickException(f"{preset} on {params_path}: {e}") from e
    args = [*presets.set_arguments(overrides), *dvc_args]
    if not run:
        click.echo(presets.command_line(args))
        return
    raise SystemExit(subprocess.call(["dvc", "exp", "run", *args]))


@main.command()
@click.argument("path", default="params.yaml", type=click.Path(dir_okay=False, path_type=Path))
def validate(path: Path) -> None:
    """Check a params file exactly as every stage does before it works (YAML, keys, types,
    ranges, the U-Net's shape) and run nothing. Prints every problem, one per line, and exits
    with status 78 (EX_CONFIG) when there is any, a missing file and invalid YAML included."""
    from ddpmlab.pipeline.stage_io import read_params

    params = read_params(path)  # exits with EXIT_CONFIG_ERROR after listing the problems
    steps = ",".join(str(s) for s in params.sample.steps)
    click.echo(
        f"{path}: valid ({params.data.source} {params.data.image_size}x{params.data.image_size}, {params.schedule} schedule, T={params.T}, "
        f"{params.objective} objective, {params.train.steps} training steps, {', '.join(params.sample.sampler)} sampling at {steps} steps)"
    )


@contextmanager
def tracking_errors() -> Iterator[None]:
    """An unreachable tracking server, or one refusing the credentials, as a one-line error, not a traceback."""
    from ddpmlab.pipeline.tracking import TrackingError

    try:
        yield
    except TrackingError as e:
        raise click.ClickException(str(e)) from e


def selected_runs(experiment_id: str, filter_string: str, wanted: list[str]):
    """The runs matching --filter and --runs (a training run id brings its evaluations), plus the
    training runs of every selected evaluation that the selection left out (their train time and
    loss curve): two searches at most."""
    import pandas as pd

    from ddpmlab.pipeline import tracking

    runs = tracking.search_runs(experiment_id, filter_string)
    if runs.empty:
        return runs
    if wanted:
        runs = runs[runs["run_id"].isin(wanted) | runs.get("params.train_run_id", runs["run_id"]).isin(wanted)]
    if "params.train_run_id" in runs:
        missing = sorted(set(runs["params.train_run_id"].dropna()) - set(runs["run_id"]))
        if missing:
            runs = pd.concat([runs, tracking.search_runs(experiment_id, run_ids=missing)], ignore_index=True)
    return runs


main.add_command(generate)  # generation/command.py
main.add_command(tracking_group)  # ddpmlab tracking status / sync: pipeline/sync.py
main.add_command(team)  # ddpmlab team ...: team/commands.py
main.add_command(study)  # ddpmlab study ...: study/commands.py

if __name__ == "__main__":
    main()
