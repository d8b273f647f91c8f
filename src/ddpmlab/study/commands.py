"""`ddpmlab study`: a replicated design declared in a file (:mod:`ddpmlab.study.spec`).

So far `plan` (the tasks, each checked as the stages check params, and for the slurm executor
the resources against the scheduler). Submitting, status, extend and report come next (issue 41).
"""

from __future__ import annotations

from pathlib import Path

import click

from ddpmlab.pipeline.presets import command_line, set_arguments


@click.group("study", help="""A replicated study: configs x training seeds, declared in a YAML file
(factors, seeds, fixed overrides, executor, resources, where results go; see
docs/cluster.md). Every task is checked before anything is submitted.

\b
  ddpmlab study plan FILE   the tasks, their `dvc exp run -S ...`, and the checks""")
def study() -> None:
    pass


@study.command("plan", short_help="The study's tasks and their commands; checks everything, runs nothing.")
@click.argument("study_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--params", "params_path", default="params.yaml", show_default=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The params file the tasks override.")  # fmt: skip
@click.option("--check-cluster/--no-check-cluster", default=True, show_default=True,
              help="For the slurm executor: ask the scheduler whether the partition exists and a node holds a task.")  # fmt: skip
def plan(study_file: Path, params_path: Path, check_cluster: bool) -> None:
    """Print every task of STUDY_FILE (each config at each seed) with the `dvc exp run` command
    that runs it. Every task's params are checked as the stages check them, and unknown keys
    are named, before anything runs; with the slurm executor the partition and the resources
    are checked against the scheduler (sinfo)."""
    from ddpmlab.config import ConfigError
    from ddpmlab.study import spec

    try:
        found = spec.load(study_file)
        tasks = spec.tasks(found, params_path)
        partition = None
        if found.executor == "slurm" and check_cluster:
            from ddpmlab.study import slurm

            partition = slurm.check(found.resources)
    except (spec.StudyError, ConfigError) as e:
        raise click.ClickException(str(e)) from None
    configs = {task.config_name for task in tasks}
    click.echo(f"study {found.name}: {len(configs)} configs x {len(found.seeds)} seeds = {len(tasks)} tasks, executor {found.executor}")
    if partition is not None:
        r = found.resources
        click.echo(f"  each task: {r.cpus} CPUs, {r.gpus} GPUs, {r.memory_gb:g} GB, {r.time} on partition {partition.name!r} "
                   f"(largest node: {partition.cpus} CPUs, {partition.gpus} GPUs, {partition.memory_mb / 1024:.1f} GB)")  # fmt: skip
    for task in tasks:
        click.echo(f"  {task.name}\n    {command_line([*set_arguments(task.overrides), '--name', task.name])}")
