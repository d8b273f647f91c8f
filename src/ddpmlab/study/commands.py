"""`ddpmlab study`: a replicated design declared in a file (:mod:`ddpmlab.study.spec`).

`plan` (the tasks, each checked as the stages check params, and for the slurm executor the
resources against the scheduler), `submit` (the slurm executor: one job array) and `status`.
The local executor's submit, `extend` and `report` come next (issue 41).
"""

from __future__ import annotations

from pathlib import Path

import click

from ddpmlab.pipeline.presets import command_line, set_arguments


@click.group("study", help="""A replicated study: configs x training seeds, declared in a YAML file
(factors, seeds, fixed overrides, executor, resources, where results go; see
docs/cluster.md). Every task is checked before anything is submitted.

\b
  ddpmlab study plan FILE                the tasks, their `dvc exp run -S ...`, and the checks
  ddpmlab study submit FILE --folder DIR  the tasks not done yet, as one SLURM job array
  ddpmlab study status --folder DIR       each task: done, pending, running, requeued or failed""")
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
    dvc_yaml = params_path.parent / "dvc.yaml"
    if dvc_yaml.is_file():
        from ddpmlab.study.reruns import stages_to_rerun

        reruns = stages_to_rerun(dvc_yaml, list(tasks[0].overrides))
        if found.targets:
            click.echo(f"  each task runs up to: {', '.join(found.targets)} (targets)")
        click.echo(f"  each task reruns: {', '.join(reruns)} (the rest comes from DVC's cache)")
    for task in tasks:
        click.echo(f"  {task.name}\n    {command_line([*set_arguments(task.overrides), '--name', task.name, *found.targets])}")


def _git(*args: str) -> str:
    import subprocess

    done = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise click.ClickException(f"`git {' '.join(args)}` failed: {done.stderr.strip()} (a study runs a commit of a git repository)")
    return done.stdout.strip()


@study.command("submit", short_help="Submit the tasks not done yet (slurm: one job array).")
@click.argument("study_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--folder", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The study's folder, on storage every node sees: clones, checkpoints, logs, what is done.")  # fmt: skip
@click.option("--params", "params_path", default="params.yaml", show_default=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The params file the tasks override.")  # fmt: skip
@click.option("--repo", default=None, help="What each task clones [default: this repository's folder].")
def submit(study_file: Path, folder: Path, params_path: Path, repo: str | None) -> None:
    """Check STUDY_FILE as `plan` does, then submit every task not done yet: with the slurm
    executor one job array, each task in its own clone of this repository's HEAD in --folder.
    Submitting again submits only what is not done (failed or missing tasks)."""
    from ddpmlab.config import ConfigError
    from ddpmlab.study import slurm, slurm_submit, spec

    try:
        found = spec.load(study_file)
        tasks = spec.tasks(found, params_path)
        if found.executor != "slurm":
            raise spec.StudyError(f"{study_file}: submit runs the slurm executor so far; executor {found.executor!r} comes next")
        slurm.check(found.resources)
    except (spec.StudyError, ConfigError) as e:
        raise click.ClickException(str(e)) from None
    changed = _git("diff", "--name-only", "HEAD").split()  # tracked files, staged or not
    if changed:
        raise click.ClickException(f"commit first: each task clones HEAD, without your changes to {', '.join(changed)}")
    commit = _git("rev-parse", "HEAD")
    repo = repo or _git("rev-parse", "--show-toplevel")
    push_url = None
    if found.results.git_remote:  # a remote of this repository: the tasks push to its address
        remotes = _git("remote").split()
        if found.results.git_remote not in remotes:
            raise click.ClickException(f"results.git_remote = {found.results.git_remote!r}: this repository has no such remote "
                                       f"(it has {', '.join(remotes) or 'none'})")  # fmt: skip
        push_url = _git("remote", "get-url", found.results.git_remote)
    try:
        job, submitted = slurm_submit.submit(found, tasks, folder.resolve(), repo, commit, push_url)
    except spec.StudyError as e:
        raise click.ClickException(str(e)) from None
    if job is None:
        click.echo(f"nothing to submit: all {len(tasks)} tasks of {found.name} are done ({folder / 'done'})")
        return
    click.echo(f"submitted {len(submitted)} of {len(tasks)} tasks of {found.name} as job array {job} (commit {commit[:10]})")
    click.echo(f"  logs: {folder / 'logs'}/<task>.log; `ddpmlab study status --folder {folder}`")


@study.command("status", short_help="Each task's state, attempts and log.")
@click.option("--folder", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="The study's folder.")
def status(folder: Path) -> None:
    """One line per task: done, pending, running, requeued (pending again after an attempt),
    failed (out of the queue without finishing) or not submitted; its attempts and its log."""
    from ddpmlab.study import slurm_submit

    if not (folder / "tasks.tsv").is_file():
        raise click.ClickException(f"{folder} holds no submitted study (no tasks.tsv): `ddpmlab study submit` makes it")
    rows = slurm_submit.status(folder)
    width = max(len(r["task"]) for r in rows)
    for r in rows:
        click.echo(f"  {r['task']:<{width}}  {r['state']:<13} attempts {r['attempts']}  {r['log']}")
    counts = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    click.echo(", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
