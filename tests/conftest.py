"""Shared fixtures: tiny params that run every code path in seconds, an isolated MLflow store,
and the stages chained as dvc.yaml chains them."""

from __future__ import annotations

import glob
import hashlib
import os
import secrets
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

import pytest
import yaml
from click.testing import CliRunner, Result

import slurm_cluster

ROOT = Path(__file__).resolve().parents[1]

# Same keys as params.yaml, sized so the whole pipeline runs in seconds on a CPU.
TINY_OVERRIDES = {
    "T": 30,
    "data": {"image_size": 8},
    "model": {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_levels": [1], "norm_groups": 4},
    "train": {"steps": 4, "batch_size": 8, "warmup_steps": 2, "log_every": 2, "checkpoint_every": 2},
    "sample": {"sampler": ["ddpm", "dpmpp_2m"], "steps": [30, 5], "spacing": ["uniform"], "precision": "fp32", "num_samples": 24, "batch_size": 16, "strip_images": 2, "strip_columns": 4},
    "classifier": {"steps": 3, "min_accuracy": 0.0},  # three batches cannot reach a real threshold
    "evaluate": {"batch_size": 64, "kid_subset_size": 8, "isc_splits": 4, "nll_images": 12, "snapshot_samples": 8, "snapshot_steps": 5, "jackknife_groups": 8},
}


# -- Debian packages a few tests need: .ci/run installs them; elsewhere those tests skip, naming the package --------


def needs_debian_package(package: str, installed: bool) -> pytest.MarkDecorator:
    """Skip where Debian's ``package`` is missing, with one line that names it (pytest -ra prints it)."""
    return pytest.mark.skipif(not installed, reason=f"needs Debian's {package} (apt-get install {package}; .ci/run installs it)")


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_chromium = needs_debian_package("chromium", Path(CHROMIUM).is_file())
# The server binaries the team stack runs (ddpmlab.team.postgres looks for them there).
needs_postgresql = needs_debian_package("postgresql", bool(glob.glob("/usr/lib/postgresql/*/bin/initdb")))
needs_slurm = needs_debian_package(slurm_cluster.PACKAGES, slurm_cluster.installed())


@pytest.fixture(scope="session")
def slurm():
    """A real single-node SLURM cluster (slurmctld, slurmd, munged) for the session; its SLURM_CONF is
    set in this process's environment meanwhile, as a user's shell on a cluster has it. Its folder
    is under /var/tmp: munged wants every folder above its socket open to all (pytest's are 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="ddpmlab-slurm-", dir="/var/tmp"))
    cluster = slurm_cluster.start(folder)
    previous = os.environ.get("SLURM_CONF")
    os.environ.update(cluster.env)
    try:
        yield cluster
    finally:
        slurm_cluster.stop(cluster)
        shutil.rmtree(folder, ignore_errors=True)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous


def pytest_configure(config: pytest.Config) -> None:
    """`auto` probes cache their choice per machine (nn.autotune): the tests keep theirs in a folder of their own,
    never in the user's, and so do the stages and `dvc` they start (the variable is inherited)."""
    os.environ["DDPMLAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="ddpmlab-test-cache-")


def merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merge(base[key], value) if isinstance(value, dict) else value
    return out


def tiny_params() -> dict:
    return merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY_OVERRIDES)


# The TrainConfig defaults the unit tests were written, and their tolerances measured, with (fp32,
# NHWC): the dataclass defaults now follow params.yaml (auto precision, NCHW, ...).
UNIT_TRAIN_DEFAULTS = {"precision": "fp32", "channels_last": True, "compile": False, "ema_decay": 0.999, "checkpoint_every": 500}


def train_config(**fields):
    """A TrainConfig of ``fields`` over UNIT_TRAIN_DEFAULTS."""
    from ddpmlab.config import TrainConfig

    return TrainConfig(**{**UNIT_TRAIN_DEFAULTS, **fields})


def write_tiny_params(path: Path, **section_overrides: dict) -> Path:
    path.write_text(yaml.safe_dump(merge(tiny_params(), section_overrides), sort_keys=False))
    return path


def isolate_stores(monkeypatch: pytest.MonkeyPatch, folder: Path, tracking_uri: str | None = None) -> str:
    """Point MLflow at a SQLite store (or at ``tracking_uri``, e.g. a test server) and the feature
    cache at a folder inside ``folder``: the project's mlflow.db and the user's ~/.cache are never
    touched. Returns the MLflow URI."""
    monkeypatch.setenv("DDPMLAB_CACHE", str(folder / "cache"))
    monkeypatch.setenv("DDPMLAB_JOURNAL_DIR", str(folder / "journal"))
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    uri = tracking_uri or f"sqlite:///{folder / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def random_inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file in the format of torch-fidelity's Inception weights (every key and shape), randomly
    initialised: the real 91 MB file cannot be downloaded where the tests run."""
    import torch
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    cls = tf_inception.FeatureExtractorInceptionV3
    with mock.patch.object(tf_inception, "load_state_dict_from_url"), mock.patch.object(cls, "load_state_dict"):
        module = cls("inception-v3-compat", ["2048"])
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(module.state_dict(), path)
    return path


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty $TORCH_HOME and an Inception download that fails at once (a refused local port,
    so the test never downloads even where the network is up). Returns the hub checkpoints folder."""
    from ddpmlab.evaluation import inception

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(inception, "WEIGHTS_URL", "http://127.0.0.1:9/weights-inception-2015-12-05-6726825d.pth")
    return tmp_path / "torch" / "hub" / "checkpoints"


def free_port() -> int:
    """A loopback port nothing listens on (until someone binds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_project(dest: Path) -> Path:
    """This project's tracked and unignored files copied to ``dest``, with tiny params: a clone
    that `dvc repro` / `dvc exp run` runs in seconds. Returns ``dest``."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()  # fmt: skip
    for name in files:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    (dest / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    return dest


def outside_address() -> str:
    """An address of this machine that is not loopback (what a lab server's --host would be); skips without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # a route lookup only: UDP sends nothing on connect
            address = s.getsockname()[0]
        except OSError:
            address = ""
    if not address or address.startswith("127."):
        pytest.skip("this machine has no network address besides loopback")
    return address


def make_certificate(folder: Path, names: list[str]) -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) for ``names`` (IP addresses or DNS names, its
    subjectAltName), as `openssl req -x509` makes one; returns (cert.pem, key.pem)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def entry(name: str) -> x509.GeneralName:
        try:
            return x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            return x509.DNSName(name)

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([entry(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (folder / "key.pem").chmod(0o600)
    return folder / "cert.pem", folder / "key.pem"


def stop_process_group(process: subprocess.Popen, timeout_s: float = 20) -> None:
    """Stop a process started with ``start_new_session=True`` and its children (`mlflow server`
    and `mlflow ui` run uvicorn and job workers): SIGTERM, then SIGKILL if they linger."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def invoke(command, *args: object) -> Result:
    """Run a stage (a module with a click ``main``) or a click command; fail the test on a non-zero exit."""
    result = CliRunner().invoke(getattr(command, "main", command), [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def evaluate_args(params: Path, data: Path, samples: Path, model: Path, classifier_dir: Path, out: Path) -> list:
    """The evaluate stage's arguments: classifier.pt / classifier.json from ``classifier_dir``, outputs into ``out``."""
    return [
        "--params", params, "--data", data, "--samples", samples, "--model", model,
        "--classifier", classifier_dir / "classifier.pt", "--classifier-metrics", classifier_dir / "classifier.json",
        "--out", out / "metrics.json", "--details", out / "evaluation.json", "--steps-csv", out / "steps.csv", "--guidance-csv", out / "guidance.csv", "--nfe-csv", out / "fid_vs_nfe.csv",
        "--nll-terms", out / "nll_terms.csv", "--training-curve", out / "fid_over_training.csv",
    ]  # fmt: skip


def prepare_inputs(p: Path, out: Path) -> None:
    """The stages that never touch MLflow: prepared data in ``out/data``, ``out/classifier.*``."""
    from stages import classifier, prepare

    invoke(prepare, "--params", p, "--out", out / "data")
    invoke(classifier, "--params", p, "--data", out / "data", "--out", out / "classifier.pt", "--metrics", out / "classifier.json")


def train_args(p: Path, out: Path, data: Path) -> list:
    """The train stage's arguments: prepared data from ``data/data``, outputs into ``out``."""
    return [
        "--params", p, "--data", data / "data", "--out", out / "model", "--log", out / "train_log.csv",
        "--schedule", out / "schedule.csv", "--resume-dir", out / "resume",
    ]  # fmt: skip


def report_args(out: Path, data: Path) -> list:
    """The report stage's arguments, reading what the other stages wrote into ``out``; report in ``out/reports``."""
    return [
        "--data", data / "data", "--model", out / "model", "--samples", out / "samples",
        "--evaluation", out / "evaluation.json", "--classifier-metrics", data / "classifier.json",
        "--train-log", out / "train_log.csv", "--schedule", out / "schedule.csv",
        "--steps-csv", out / "steps.csv", "--guidance-csv", out / "guidance.csv", "--nll-terms", out / "nll_terms.csv",
        "--training-curve", out / "fid_over_training.csv", "--out", out / "reports",
    ]  # fmt: skip


def run_pipeline(p: Path, out: Path, data: Path | None = None) -> None:
    """Every stage with params ``p`` into ``out``; with ``data``, reuse its prepared data and classifier
    (a folder that :func:`prepare_inputs` filled)."""
    from stages import evaluate, report, sample, search, train

    if data is None:
        data = out
        prepare_inputs(p, out)
    invoke(train, *train_args(p, out, data))
    invoke(search, "--params", p, "--model", out / "model", "--out", out / "searched_grids.json")
    invoke(sample, "--params", p, "--model", out / "model", "--grids", out / "searched_grids.json", "--out", out / "samples")
    invoke(evaluate, *evaluate_args(p, data / "data", out / "samples", out / "model", data, out))
    invoke(report, *report_args(out, data))


COMPARED_SCHEDULES = ("linear", "cosine", "sigmoid")


@pytest.fixture(scope="session")
def schedules_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A store as `dvc exp run -S schedule=linear,cosine,sigmoid` leaves it, with tiny params:
    per schedule a training run and one evaluation run per step count (30 and 5), and for linear
    a second replicate (train.seed=1, folder "replicate"). Returns
    (folder, MLflow URI); the first schedule's folder also holds data/ and classifier.*."""
    folder = tmp_path_factory.mktemp("schedules")
    with pytest.MonkeyPatch.context() as monkeypatch:
        uri = isolate_stores(monkeypatch, folder)
        first = None
        for schedule in COMPARED_SCHEDULES:
            params = write_tiny_params(folder / f"{schedule}.yaml", schedule=schedule, evaluate={"snapshot_samples": 0})
            run_pipeline(params, folder / schedule, data=first)
            first = first or folder / schedule
        # A second replicate of the first schedule: same config, another training seed.
        replicate = write_tiny_params(folder / "replicate.yaml", schedule=COMPARED_SCHEDULES[0], train={"seed": 1}, evaluate={"snapshot_samples": 0})
        run_pipeline(replicate, folder / "replicate", data=first)
    return folder, uri


# -- the team stack (tests/test_team_*.py) ------------------------------------------------------

TEAM_ADMIN_PASSWORD = f"admin-{secrets.token_hex(10)}"  # unique per session: searched for wherever it must not be
TEAM_WRITER = ("worker", f"worker-{secrets.token_hex(10)}")


@pytest.fixture(scope="session")
def service_python() -> Path | None:
    """As root, the team stack runs MLflow as the unprivileged user `ddpmlab`, which cannot run a
    Python under root's 0700 home (pyenv's, as on the CI machines). Then this builds what an admin
    would: a virtualenv of Debian's Python of the same minor version (its C extensions load in
    either), under /var/lib, that imports this environment's packages, and names it in
    $DDPMLAB_TEAM_SERVICE_PYTHON for every stack of the session. None where this Python will do."""
    from ddpmlab.team.processes import as_root, run_as
    from ddpmlab.team.service_account import blocked_by, service_account

    if not as_root():
        return None
    account = service_account(create=True)
    if blocked_by(Path(sys.executable).resolve(), account, execute=True) is None:
        return None
    minor = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = Path("/usr/bin") / minor
    if not system.is_file():
        pytest.skip(f"needs Debian's {minor} (apt-get install {minor}): as root the team stack needs a Python its service user can run")
    venv = Path("/var/lib/ddpmlab-tests") / f"{minor}-{hashlib.sha256(sys.prefix.encode()).hexdigest()[:8]}"
    python = venv / "bin" / "python"
    if not python.is_file():
        subprocess.run([str(system), "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
        # site.addsitedir, not a bare path: the .pth files in there (editable installs) count too
        paths = [p for p in site.getsitepackages() if Path(p).is_dir()]
        (venv / "lib" / minor / "site-packages" / "ddpmlab-tests.pth").write_text(
            "".join(f"import site; site.addsitedir({p!r})\n" for p in paths)
        )
    probe = subprocess.run([str(python), "-c", "import mlflow.server"], capture_output=True, text=True, cwd="/", check=False,
                           **run_as(account))  # fmt: skip
    assert probe.returncode == 0, f"{python} (for the service user) cannot import MLflow: {probe.stderr[-500:]}"
    os.environ["DDPMLAB_TEAM_SERVICE_PYTHON"] = str(python)
    return python


@pytest.fixture(scope="session")
def team_stack(tmp_path_factory: pytest.TempPathFactory, service_python):
    """One real team stack (PostgreSQL, SeaweedFS, `mlflow server` with logins) on free loopback
    ports for the fault and worker tests; the fault tests stop and restart its services."""
    from ddpmlab.team.stack import TeamStack

    stack = TeamStack(tmp_path_factory.mktemp("team-stack") / "state", mlflow_port=free_port())
    try:
        stack.up(TEAM_ADMIN_PASSWORD, experiments=("ddpmlab",), timeout_s=180)
        yield stack
    finally:
        stack.destroy()


@pytest.fixture(scope="session")
def team_writer(team_stack) -> tuple[str, str]:
    """(user, password) of an account that may log to experiment ddpmlab (EDIT), as `ddpmlab team user` makes one."""
    from ddpmlab.team import accounts

    user, password = TEAM_WRITER
    accounts.create_user(team_stack.tracking_uri, TEAM_ADMIN_PASSWORD, user, password)
    accounts.grant(team_stack.tracking_uri, TEAM_ADMIN_PASSWORD, user, "ddpmlab", "EDIT")
    return TEAM_WRITER


@pytest.fixture
def signed_in_as_writer(team_writer, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's MlflowClient (and ddpmlab's probes) use the worker account's credentials."""
    user, password = team_writer
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
