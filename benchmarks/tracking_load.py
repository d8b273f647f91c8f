"""K concurrent MLflow clients against the team stack's server and against one machine's SQLite file.

Stores, both measured in the same run so the ratio is fair (same machine, same load):
  team    `ddpmlab.team.TeamStack` brought up in a temporary folder: `mlflow server --app-name
          basic-auth` (2 workers) over PostgreSQL, artifacts proxied to SeaweedFS's S3. A user with
          EDIT on experiment `ddpmlab` is created; clients log in as it (MLFLOW_TRACKING_USERNAME /
          MLFLOW_TRACKING_PASSWORD), so every call also pays the server's login check. The stack
          (cluster included) is destroyed at the end.
  sqlite  `sqlite:///<tmp>/mlflow.db`, created once by the parent, then written directly by the K
          processes, as parallel DVC queue workers of one machine do; artifacts to a local folder.

Each of the K client processes (multiprocessing, spawn; all wait on one barrier, after importing
mlflow, and start together) creates its own run in the experiment, logs N points of metric `loss`
with one `MlflowClient.log_metric` call per point (as a training loop logs a step), timing every
call, then logs one artifact of `--artifact-mb` MB and ends the run. An exception from a call is an
error: it is counted (and the first message kept) and the client goes on. Note MLflow's REST client
retries 429/5xx answers itself (MLFLOW_HTTP_REQUEST_MAX_RETRIES), so a server's transient failures
show as latency, not errors; the SQLite store's own retries are likewise inside the call.

Afterwards a fresh client (a new MlflowClient in the parent) reads every run back: a point is found
when its step is in the run's history with the expected value (lost = N*K - found; duplicate or
unexpected points are counted apart), and the artifact must be listed with its exact size.

Printed per store: clients, points sent (calls that returned), found, lost, duplicated runs, errors, wall time (first
client start to last client end), throughput (points found per second of the metric phase: first
client's first call to last client's last call), log_metric latency p50/p95/p99/max in ms, artifact
upload time (median and max over clients); then team/SQLite ratios of throughput and p95, and in
which store "database is locked" errors happened.

MLflow's basic-auth checks the user's password hash (~0.1 s of CPU here) on every request
unless its login cache is on; the stack turns it on (auth_cache_ttl_seconds = 30,
ddpmlab.team.stack.AUTH_CACHE_S). `--auth-cache-ttl 0` measures MLflow's own default: on 2 cores
about 6 points/s, so keep --points small with it.

    python benchmarks/tracking_load.py                                  # both stores, 8 clients x 1,000 points, 1 MB
    python benchmarks/tracking_load.py --auth-cache-ttl 0 --points 100  # the server checking every request's password
    python benchmarks/tracking_load.py --store sqlite --clients 4 --points 200

Logs: benchmarks/logs/cpu_tracking_load.log (defaults), cpu_tracking_load_no_auth_cache.log (--auth-cache-ttl 0 --points 100).

As root the stack runs MLflow as the unprivileged user `ddpmlab`: run this with a Python that
user can run, or name one in $DDPMLAB_TEAM_SERVICE_PYTHON (docs/team.md, on a shared server).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing as mp
import os
import platform
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

EXPERIMENT = "ddpmlab"  # the team stack creates it at up()
METRIC = "loss"
USER = "loadtest"
LOCKED = "database is locked"
UP_TIMEOUT_S = 300


def expected_value(client: int, step: int) -> float:
    """Exactly representable in a double, distinct per client and step."""
    return client + step / 1024


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil
    return ordered[int(rank) - 1]


# -- one client (a spawned process) ---------------------------------------------------------------


def client_main(index: int, uri: str, experiment_id: str, points: int, artifact_mb: float, work_dir: str,
                env: dict[str, str], barrier, results) -> None:  # fmt: skip
    os.environ.update(env)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    artifact = Path(work_dir) / f"client-{index}" / "artifact.bin"
    artifact.parent.mkdir(parents=True, exist_ok=True)
    artifact.write_bytes(os.urandom(int(artifact_mb * 1024 * 1024)))
    out = {"index": index, "run_id": None, "latencies": [], "errors": 0, "locked": 0, "first_error": None,
           "artifact_s": None, "metric_start": None, "metric_end": None}  # fmt: skip

    def error(e: BaseException) -> None:
        out["errors"] += 1
        out["locked"] += LOCKED in str(e)
        out["first_error"] = out["first_error"] or f"{type(e).__name__}: {str(e)[:300]}"

    barrier.wait()
    out["start"] = time.time()
    try:
        run_id = client.create_run(experiment_id, run_name=f"load-client-{index}").info.run_id
        out["run_id"] = run_id
    except Exception as e:  # noqa: BLE001 - no run, nothing more this client can do
        error(e)
        out["end"] = time.time()
        results.put(out)
        return
    latencies = out["latencies"]
    out["metric_start"] = time.time()
    for step in range(points):
        start = time.perf_counter()
        try:
            client.log_metric(run_id, METRIC, expected_value(index, step), step=step)
            latencies.append(time.perf_counter() - start)
        except Exception as e:  # noqa: BLE001 - counted, and the client goes on
            error(e)
    out["metric_end"] = time.time()
    start = time.perf_counter()
    try:
        client.log_artifact(run_id, str(artifact))
        out["artifact_s"] = time.perf_counter() - start
    except Exception as e:  # noqa: BLE001
        error(e)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # MLflow prints "View run ... at" links for a server's runs
            client.set_terminated(run_id)
    except Exception as e:  # noqa: BLE001
        error(e)
    out["end"] = time.time()
    results.put(out)


# -- one store ------------------------------------------------------------------------------------


def load(uri: str, experiment_id: str, args: argparse.Namespace, work_dir: Path, env: dict[str, str]) -> list[dict]:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(args.clients), ctx.Queue()
    procs = [
        ctx.Process(target=client_main, args=(i, uri, experiment_id, args.points, args.artifact_mb, str(work_dir), env, barrier, results))
        for i in range(args.clients)
    ]  # fmt: skip
    for p in procs:
        p.start()
    outs = []
    for _ in procs:
        outs.append(results.get(timeout=args.timeout))
    for p in procs:
        p.join(timeout=60)
    return sorted(outs, key=lambda o: o["index"])


def verify(uri: str, outs: list[dict], args: argparse.Namespace) -> dict:
    """Read every run back with a fresh client."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    size = int(args.artifact_mb * 1024 * 1024)
    found = extra = artifacts_ok = 0
    problems = []
    for o in outs:
        if o["run_id"] is None:
            problems.append(f"client {o['index']}: no run")
            continue
        history = client.get_metric_history(o["run_id"], METRIC)
        seen = set()
        for m in history:
            if 0 <= m.step < args.points and m.value == expected_value(o["index"], m.step) and m.step not in seen:
                seen.add(m.step)
            else:
                extra += 1
        found += len(seen)
        listed = {f.path: f.file_size for f in client.list_artifacts(o["run_id"])}
        if listed.get("artifact.bin") == size:
            artifacts_ok += 1
        else:
            problems.append(f"client {o['index']}: artifact listing {listed}")
        status = client.get_run(o["run_id"]).info.status
        if status != "FINISHED":
            problems.append(f"client {o['index']}: run status {status}")
    # Runs in the experiment beyond one per client: a creation sent twice would show here.
    experiments = {client.get_run(o["run_id"]).info.experiment_id for o in outs if o["run_id"]}
    runs = sum(len(client.search_runs([e], max_results=10_000)) for e in experiments)
    return {"found": found, "extra": extra, "artifacts_ok": artifacts_ok, "problems": problems,
            "duplicated_runs": runs - sum(1 for o in outs if o["run_id"])}  # fmt: skip


def summarise(name: str, outs: list[dict], check: dict, args: argparse.Namespace) -> dict:
    latencies = [x for o in outs for x in o["latencies"]]
    starts = [o["metric_start"] for o in outs if o["metric_start"]]
    ends = [o["metric_end"] for o in outs if o["metric_end"]]
    metric_s = max(ends) - min(starts) if starts else float("nan")
    uploads = [o["artifact_s"] for o in outs if o["artifact_s"] is not None]
    ms = lambda q: 1000 * percentile(latencies, q) if latencies else float("nan")
    return {
        "store": name, "clients": len(outs), "sent": len(latencies), "found": check["found"],
        "lost": args.points * len(outs) - check["found"], "extra": check["extra"], "duplicated_runs": check["duplicated_runs"],
        "errors": sum(o["errors"] for o in outs), "locked": sum(o["locked"] for o in outs),
        "wall_s": max(o["end"] for o in outs) - min(o["start"] for o in outs), "metric_s": metric_s,
        "throughput": check["found"] / metric_s, "p50": ms(50), "p95": ms(95), "p99": ms(99), "max": ms(100),
        "artifact_median_s": statistics.median(uploads) if uploads else float("nan"),
        "artifact_max_s": max(uploads) if uploads else float("nan"),
        "artifacts_ok": check["artifacts_ok"], "problems": check["problems"],
        "first_errors": [f"client {o['index']}: {o['first_error']}" for o in outs if o["first_error"]],
    }  # fmt: skip


def run_sqlite(args: argparse.Namespace, tmp: Path) -> dict:
    from mlflow.tracking import MlflowClient

    db = tmp / "sqlite" / "mlflow.db"
    db.parent.mkdir(parents=True)
    uri = f"sqlite:///{db}"
    # The parent creates the database (schema migrations) and the experiment, as `ddpmlab` has done
    # before queue workers start; the clients then only write to the existing file.
    artifacts = (tmp / "sqlite" / "artifacts").as_uri()
    experiment_id = MlflowClient(uri).create_experiment(EXPERIMENT, artifact_location=artifacts)
    env = {"MLFLOW_TRACKING_URI": uri}
    start = time.perf_counter()
    outs = load(uri, experiment_id, args, tmp / "sqlite" / "clients", env)
    print(f"sqlite: clients done in {time.perf_counter() - start:.1f} s; verifying", flush=True)
    return summarise("sqlite", outs, verify(uri, outs, args), args)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_team(args: argparse.Namespace, tmp: Path) -> dict:
    from ddpmlab.team import accounts
    from ddpmlab.team.stack import TeamStack

    admin_password = secrets.token_urlsafe(18)
    user_password = secrets.token_urlsafe(18)
    cache = {} if args.auth_cache_ttl is None else {"auth_cache_s": args.auth_cache_ttl}
    stack = TeamStack(tmp / "team", mlflow_port=_free_port(), **cache)
    start = time.perf_counter()
    try:
        stack.up(admin_password, experiments=(EXPERIMENT,), timeout_s=UP_TIMEOUT_S)
        uri = stack.tracking_uri
        print(f"team: stack up in {time.perf_counter() - start:.1f} s at {uri}", flush=True)
        accounts.create_user(uri, admin_password, USER, user_password)
        accounts.grant(uri, admin_password, USER, EXPERIMENT, "EDIT")
        experiment_id = accounts.experiment_id(uri, admin_password, EXPERIMENT)
        env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": user_password}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # the verifying client logs in as the same user
        try:
            start = time.perf_counter()
            outs = load(uri, experiment_id, args, tmp / "team-clients", env)
            print(f"team: clients done in {time.perf_counter() - start:.1f} s; verifying", flush=True)
            result = summarise("team", outs, verify(uri, outs, args), args)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return result
    finally:
        stack.destroy()  # down(), then the state folder and the PostgreSQL cluster


# -- report ---------------------------------------------------------------------------------------


def machine() -> list[str]:
    import mlflow

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = {line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")}
    processors = sum(line.startswith("processor") for line in cpuinfo.splitlines())
    try:
        from ddpmlab.team.postgres import bin_dir

        pg = subprocess.run(
            [str(bin_dir() / "postgres"), "--version"], check=False, capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except Exception as e:  # noqa: BLE001
        pg = f"unknown ({e})"
    load1, load5, _ = os.getloadavg()
    return [
        (
            f"machine: {platform.machine()} {', '.join(sorted(models)) or 'unknown CPU'}; /proc/cpuinfo processors {processors}, "
            f"os.cpu_count() {os.cpu_count()}; load average before the run {load1:.2f} (1 min), {load5:.2f} (5 min)"
        ),
        f"python {platform.python_version()}, mlflow {mlflow.__version__}, {pg}, SQLite {sqlite3.sqlite_version}",
    ]


def table(results: list[dict]) -> list[str]:
    rows = [
        ("clients", "{clients}"), ("points sent", "{sent:,}"), ("points found", "{found:,}"), ("lost", "{lost:,}"),
        ("unexpected points", "{extra:,}"), ("duplicated runs", "{duplicated_runs}"), ("errors", "{errors}"), ("  'database is locked'", "{locked}"),
        ("wall time (s)", "{wall_s:.1f}"), ("metric phase (s)", "{metric_s:.1f}"), ("throughput (points/s)", "{throughput:,.0f}"),
        ("log_metric p50 (ms)", "{p50:.1f}"), ("log_metric p95 (ms)", "{p95:.1f}"), ("log_metric p99 (ms)", "{p99:.1f}"),
        ("log_metric max (ms)", "{max:.1f}"), ("artifact upload median (s)", "{artifact_median_s:.2f}"),
        ("artifact upload max (s)", "{artifact_max_s:.2f}"), ("artifacts verified", "{artifacts_ok}/{clients}"),
    ]  # fmt: skip
    lines = [f"{'':28}" + "".join(f"{r['store']:>12}" for r in results)]
    for label, fmt in rows:
        lines.append(f"{label:28}" + "".join(f"{fmt.format(**r):>12}" for r in results))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=("team", "sqlite", "both"), default="both")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client processes (default 8)")
    parser.add_argument("--points", type=int, default=1000, help="metric points per client, one call each (default 1,000)")
    parser.add_argument("--artifact-mb", type=float, default=1.0, help="size of each client's artifact in MB (default 1)")
    parser.add_argument(
        "--auth-cache-ttl", type=int, default=None,
        help="team only: MLflow's auth_cache_ttl_seconds (default: the stack's, ddpmlab.team.stack.AUTH_CACHE_S; "
        "0: a password-hash check on every request, MLflow's own default)",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for each client's result (default 900)")
    args = parser.parse_args()
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        os.environ.pop(key, None)  # the caller's settings must not leak into either store's clients
    print("\n".join(machine()))
    print(f"{args.clients} clients x {args.points:,} points (one log_metric call each) + one {args.artifact_mb:g} MB artifact, "
          f"stores: {args.store}"
          + (f"; team with auth_cache_ttl_seconds = {args.auth_cache_ttl}" if args.auth_cache_ttl is not None else ""), flush=True)  # fmt: skip
    total = time.perf_counter()
    results = []
    tmp = Path(tempfile.mkdtemp(prefix="tracking-load-"))
    try:
        if args.store in ("team", "both"):
            results.append(run_team(args, tmp))
        if args.store in ("sqlite", "both"):
            results.append(run_sqlite(args, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print("\n".join(table(results)))
    for r in results:
        for line in r["first_errors"] + r["problems"]:
            print(f"  {r['store']}: {line}")
    by = {r["store"]: r for r in results}
    if {"team", "sqlite"} <= by.keys():
        team, lite = by["team"], by["sqlite"]
        print(f"ratio team/SQLite: throughput {team['throughput'] / lite['throughput']:.2f}x, "
              f"log_metric p95 {team['p95'] / lite['p95']:.2f}x")  # fmt: skip
    locked = ", ".join(f"{r['locked']} in {r['store']}" for r in results if r["locked"])
    print(f"'database is locked' errors: {locked or 'none'}")
    print(f"total {time.perf_counter() - total:.0f} s (stack start-up and verification included)")


if __name__ == "__main__":
    main()
