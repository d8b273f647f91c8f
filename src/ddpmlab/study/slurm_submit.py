"""A study's tasks as one SLURM job array, in a study folder on storage every node sees.

    <folder>/study.yaml         the study file as submitted
    <folder>/source.json        the git repository and commit every task clones
    <folder>/tasks.tsv          array index, task name, its `dvc exp run` arguments (shell-quoted)
    <folder>/task.sh            the array's batch script (sbatch reads its #SBATCH lines)
    <folder>/jobs.json          every submission: job id, array indices, when
    <folder>/work/<task>/       the task's clone of the study's commit: it outlives the job, so a
                                requeued or resubmitted task finds its training checkpoint (.resume)
    <folder>/logs/<task>.log    the task's output, appended across attempts
    <folder>/done/<task>.json   written when the task's experiment is made and pushed

Each task clones the study's commit (once), runs `dvc exp run -S ... --name <task>` there (which
resumes from the clone's checkpoint after a requeue), then pushes the experiment (`dvc exp push`,
outputs with it) when the study names a git remote. Jobs are requeueable.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from ddpmlab.pipeline.presets import set_arguments
from ddpmlab.study.spec import Study, StudyError, Task

TIMEOUT_S = 60
# squeue's states of a task that has a node (every other state in the queue waits for one)
ACTIVE = {"running", "completing", "configuring", "suspended", "stopped", "resizing", "signaling", "stage_out"}


def write_tasks(folder: Path, tasks: list[Task], targets: list[str] = ()) -> dict[str, int]:
    """tasks.tsv with every task; returns name -> array index. Indices only grow: a task keeps the
    index it had, new tasks (more seeds) come after, so an array still running from an earlier
    submission reads the same line for its index."""
    table = folder / "tasks.tsv"
    known = {}
    if table.is_file():
        for line in table.read_text().splitlines():
            index, name, *_ = line.split("\t")
            known[name] = int(index)
    for task in tasks:
        known.setdefault(task.name, max(known.values(), default=-1) + 1)
    by_name = {t.name: t for t in tasks}
    lines = [f"{i}\t{name}\t{shlex.join([*set_arguments(by_name[name].overrides), '--name', name, *targets])}\n"
             for name, i in sorted(known.items(), key=lambda item: item[1]) if name in by_name]  # fmt: skip
    table.write_text("".join(lines))
    return known


def batch_script(study: Study, folder: Path, repo: str, commit: str, push_url: str | None = None) -> str:
    """The array's batch script: #SBATCH resources, then one task's work by SLURM_ARRAY_TASK_ID;
    ``push_url``: the git remote (results.git_remote, resolved where the study was submitted)."""
    r = study.resources
    directives = [
        f"--job-name=ddpmlab-{study.name}", f"--cpus-per-task={r.cpus}", f"--mem={int(r.memory_gb * 1024)}M",
        f"--time={r.time}", "--requeue", "--open-mode=append", f"--output={folder}/logs/%A_%a.slurm.out",
        *([f"--partition={r.partition}"] if r.partition else []), *([f"--gres=gpu:{r.gpus}"] if r.gpus else []),
    ]  # fmt: skip
    push = f"dvc exp push {shlex.quote(push_url)} \"$name\"" if push_url else ": no git remote to push to"
    tracking = f"export MLFLOW_TRACKING_URI={shlex.quote(study.results.mlflow)}" if study.results.mlflow else ": tracking as the project sets it"
    return "\n".join([
        "#!/usr/bin/env bash",
        *(f"#SBATCH {d}" for d in directives),
        "# ddpmlab study task: one config at one seed (docs/cluster.md). Generated; edit the study file instead.",
        "set -euo pipefail",
        f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:\"$PATH\"  # the environment the study was submitted from",
        f"folder={shlex.quote(str(folder))}",
        'line=$(awk -F "\\t" -v i="$SLURM_ARRAY_TASK_ID" \'$1 == i\' "$folder/tasks.tsv")',
        'name=$(cut -f2 <<<"$line")',
        'eval "set -- $(cut -f3 <<<"$line")"',
        'exec >>"$folder/logs/$name.log" 2>&1',
        'echo "--- $(date -u +%FT%TZ) job ${SLURM_ARRAY_JOB_ID:-?}_${SLURM_ARRAY_TASK_ID} (restart ${SLURM_RESTART_COUNT:-0}) on $(hostname)"',
        'work="$folder/work/$name"',
        'if [ ! -e "$work/.git" ]; then',
        '  rm -rf "$work"',
        f"  git clone -q {shlex.quote(repo)} \"$work\"",
        f"  git -C \"$work\" checkout -q {shlex.quote(commit)}",
        "fi",
        'cd "$work"',
        tracking,
        'dvc exp run "$@"  # after a requeue: resumes from this clone\'s .resume checkpoint',
        push,
        ('printf \'{"task": "%s", "job": "%s", "finished": "%s"}\\n\' "$name" "${SLURM_ARRAY_JOB_ID:-}_${SLURM_ARRAY_TASK_ID}" '
        '"$(date -u +%FT%TZ)" >"$folder/done/$name.json"'),
        "",
    ])  # fmt: skip


def done(folder: Path) -> set[str]:
    return {p.stem for p in (folder / "done").glob("*.json")}


def sbatch(script: Path, indices: list[int]) -> str:
    """Submit ``script`` as an array over ``indices``; the job id."""
    command = ["sbatch", "--parsable", f"--array={','.join(map(str, indices))}", str(script)]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise StudyError("`sbatch` is missing: the slurm executor needs SLURM's client tools (Debian: slurm-client)") from None
    if out.returncode != 0:
        raise StudyError(f"sbatch refused the study's array: {(out.stderr or out.stdout).strip()}")
    return out.stdout.strip().split(";")[0]


def submit(study: Study, tasks: list[Task], folder: Path, repo: str, commit: str, push_url: str | None = None) -> tuple[str | None, list[Task]]:
    """Submit the tasks not done yet as one array; (job id or None when nothing is left, the tasks submitted)."""
    for sub in ("logs", "work", "done"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    finished = done(folder)
    if all(t.name in finished for t in tasks):
        return None, []
    index = write_tasks(folder, tasks, study.targets)
    todo = [(index[t.name], t) for t in tasks if t.name not in finished]
    if study.path is not None:
        (folder / "study.yaml").write_text(study.path.read_text())
    (folder / "source.json").write_text(json.dumps({"repo": repo, "commit": commit, "push": push_url}, indent=2) + "\n")
    script = folder / "task.sh"
    script.write_text(batch_script(study, folder, repo, commit, push_url))
    job = sbatch(script, [i for i, _ in todo])
    jobs_file = folder / "jobs.json"
    jobs = json.loads(jobs_file.read_text()) if jobs_file.is_file() else []
    jobs.append({"job": job, "tasks": [t.name for _, t in todo], "submitted": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    jobs_file.write_text(json.dumps(jobs, indent=2) + "\n")
    return job, [t for _, t in todo]


def _queued(job: str) -> dict[str, str]:
    """Array index -> state (PENDING, RUNNING, ...) of job ``job``'s tasks still in the queue."""
    out = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%K|%T"], capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    states = {}
    for line in out.stdout.splitlines():
        index, _, state = line.strip().partition("|")
        if index.isdigit():
            states[index] = state.lower()
    return states


def status(folder: Path) -> list[dict]:
    """Per task of the study in ``folder``: name, state (done, pending, running, requeued, failed,
    not submitted), the attempts seen in its log, and the log's path."""
    rows = [line.split("\t") for line in (folder / "tasks.tsv").read_text().splitlines() if line.strip()]
    jobs = json.loads((folder / "jobs.json").read_text()) if (folder / "jobs.json").is_file() else []
    latest = {name: entry["job"] for entry in jobs for name in entry["tasks"]}
    finished = done(folder)
    queues = {job: _queued(job) for job in set(latest.values())}
    out = []
    for index, name, _ in rows:
        log = folder / "logs" / f"{name}.log"
        text = log.read_text(errors="replace") if log.is_file() else ""
        attempts = sum(line.startswith("--- ") and " job " in line for line in text.splitlines())
        if name in finished:
            state = "done"
        elif name not in latest:
            state = "not submitted"
        else:
            queued = queues[latest[name]].get(index)
            if queued is None:
                state = "failed"  # out of the queue without its done file
            elif queued in ACTIVE:
                state = "running"
            else:  # pending in any of SLURM's ways (held, requeued, waiting for a resource)
                state = "requeued" if attempts > 0 else "pending"
        out.append({"task": name, "state": state, "attempts": attempts, "log": str(log)})
    return out
