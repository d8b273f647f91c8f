"""`ddpmlab generate` and the MLflow model: the same seeds and settings give byte-identical images
from a local folder, a run id, a registry URI, the pyfunc and the `sample` stage.

Uses the session's tiny pipeline store (conftest.schedules_store): linear, cosine and sigmoid
models and a second linear replicate, registered in that order as versions 1 to 4 of "ddpmlab"."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from conftest import isolate_stores, run_pipeline, write_tiny_params
from ddpmlab.cli import main as cli
from ddpmlab.generation.numbers import parse_numbers
from ddpmlab.model import checkpoint
from ddpmlab.model.trained import KIND, TrainedDiffusion

MODEL = "ddpmlab"  # tracking.model_name: null registers under the experiment's name


@pytest.fixture
def store(schedules_store, monkeypatch):
    """(the linear model's pipeline folder, its training run id) with MLflow pointed at the store."""
    folder, uri = schedules_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    linear = folder / "linear"
    return linear, json.loads((linear / "model" / "train.json").read_text())["run_id"]


def stage_run(linear: Path, key: str) -> tuple[list[int], list[bytes], np.ndarray]:
    """The sample stage's run ``key``: its seeds, PNG bytes and images."""
    npz = np.load(linear / "samples" / key / "samples.npz")
    pngs = [(linear / "samples" / key / "images" / f"{i:06d}.png").read_bytes() for i in range(len(npz["seeds"]))]
    return [int(s) for s in npz["seeds"]], pngs, npz["images"]


def stage_layout(linear: Path) -> str:
    """The sample stage's channels_last as recorded in sampling.json (`auto` chose it by timing): "true" | "false"."""
    return str(json.loads((linear / "samples" / "sampling.json").read_text())["execution"]["channels_last"]).lower()


def generate(out: Path, model: str, seeds: list[int], *args: str, layout: str = "auto") -> list[bytes]:
    """Run `ddpmlab generate` with the tiny pipeline's sampling settings (``layout``: --channels-last); the PNG bytes in seed order."""
    text = f"{seeds[0]}-{seeds[-1]}"
    assert parse_numbers(text) == seeds
    common = ["--precision", "fp32", "--channels-last", layout, "--batch-size", "16", "--device", "cpu", "--out", str(out)]
    result = CliRunner().invoke(cli, ["generate", "--model", model, "--seeds", text, *common, *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return [(out / f"{seed:06d}.png").read_bytes() for seed in seeds]


def test_seed_lists_follow_edm_syntax_and_bad_ones_are_named():
    assert parse_numbers("0-3,7,10-11") == [0, 1, 2, 3, 7, 10, 11]
    assert parse_numbers("5") == [5]
    for text, named in [("3-1", "'3-1'"), ("a", "'a'"), ("1,1", "1 listed"), ("", "''"), ("-2", "'-2'")]:
        with pytest.raises(ValueError, match=named):
            parse_numbers(text)


@pytest.mark.parametrize("key,sampler,steps", [("dpmpp_2m-5", "dpmpp_2m", "5"), ("ddpm-30", "ddpm", "30")])
def test_generate_from_the_model_folder_equals_the_sample_stage(store, tmp_path, key, sampler, steps):
    """Deterministic (dpmpp_2m) and stochastic (ddpm: every step's noise from the image's seed) alike."""
    linear, _ = store
    seeds, stage_pngs, _ = stage_run(linear, key)
    layout = stage_layout(linear)
    assert generate(tmp_path / "out", str(linear / "model"), seeds, "--sampler", sampler, "--steps", steps, layout=layout) == stage_pngs
    record = json.loads((tmp_path / "out" / "generation.json").read_text())
    assert (record["sampler"], record["steps"], record["nfe"], record["seeds"]) == (sampler, int(steps), int(steps), seeds)
    execution = record["execution"]
    assert (execution["precision"], str(execution["channels_last"]).lower(), execution["chosen_by"]) == ("fp32", layout, "explicit")
    assert (record["device"], record["model"]["schedule"], record["model"]["T"]) == ("cpu", "linear", 30)
    assert (tmp_path / "out" / "grid.png").is_file()


def test_a_run_id_and_registry_uris_give_the_same_bytes_as_the_local_folder(store, tmp_path):
    linear, run_id = store
    seeds, stage_pngs, _ = stage_run(linear, "dpmpp_2m-5")
    client = mlflow.tracking.MlflowClient()
    (version,) = client.search_model_versions(f"name = '{MODEL}' AND run_id = '{run_id}'")
    client.set_registered_model_alias(MODEL, "champion", version.version)
    sources = [run_id, f"runs:/{run_id}", f"models:/{MODEL}/{version.version}", f"models:/{MODEL}@champion", f"models:/{MODEL}/champion"]
    for i, source in enumerate(sources):
        assert generate(tmp_path / f"out{i}", source, seeds, "--sampler", "dpmpp_2m", "--steps", "5", layout=stage_layout(linear)) == stage_pngs, source
    described = json.loads((tmp_path / "out3" / "generation.json").read_text())["model"]
    assert (described["registered_model"], described["version"], described["run_id"], described["aliases"]) == (MODEL, int(version.version), run_id, ["champion"])


def test_every_training_run_registers_one_version_with_its_params_and_headline_fid(store, schedules_store):
    folder, _ = schedules_store
    client = mlflow.tracking.MlflowClient()
    versions = sorted(client.search_model_versions(f"name = '{MODEL}'"), key=lambda v: int(v.version))
    runs = [json.loads((folder / name / "model" / "train.json").read_text())["run_id"] for name in ("linear", "cosine", "sigmoid", "replicate")]
    assert [v.run_id for v in versions] == runs
    assert [v.tags["schedule"] for v in versions] == ["linear", "cosine", "sigmoid", "linear"]
    for version, name in zip(versions, ("linear", "cosine", "sigmoid", "replicate")):
        metrics = json.loads((folder / name / "metrics.json").read_text())
        assert (version.tags["T"], version.tags["objective"], version.tags["data.source"], version.tags["train.steps"]) == ("30", "eps", "digits", "4")
        assert float(version.tags["fid"]) == pytest.approx(metrics["fid"], rel=1e-3)
        assert version.tags["fid_run"] == metrics["run"]
        assert version.tags["fid_interval"] == f"[{metrics['fid_ci_low']:.4g}, {metrics['fid_ci_high']:.4g}]"
    assert versions[0].tags["config_id"] == versions[3].tags["config_id"] != versions[1].tags["config_id"]  # replicates share it


def test_the_registered_weights_are_bit_identical_and_the_pyfunc_draws_the_stage_images(store, tmp_path):
    linear, run_id = store
    (version,) = mlflow.tracking.MlflowClient().search_model_versions(f"name = '{MODEL}' AND run_id = '{run_id}'")
    uri = f"models:/{MODEL}/{version.version}"
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path)))
    registered = checkpoint.load(folder / "artifacts" / "ema.pt", KIND)["ema"]
    local = checkpoint.load(linear / "model" / "model.pt", KIND)["ema"]
    assert registered.keys() == local.keys()
    assert all(torch.equal(registered[k], local[k]) for k in local)
    assert (folder / "code" / "ddpmlab" / "generation" / "mlflow_model.py").is_file()  # loads without a ddpmlab install

    model = mlflow.pyfunc.load_model(uri)
    seeds, _, stage_images = stage_run(linear, "dpmpp_2m-5")
    params = {"sampler": "dpmpp_2m", "steps": 5, "precision": "fp32", "channels_last": stage_layout(linear), "batch_size": 16, "device": "cpu"}
    images = model.predict(pd.DataFrame({"seed": seeds}), params=params)
    assert images.dtype == np.uint8 and images.shape == stage_images.shape
    np.testing.assert_array_equal(images, stage_images)
    with pytest.raises(Exception, match="steps 31"):
        model.predict(pd.DataFrame({"seed": [0]}), params={"steps": 31})


RUN_BUNDLED = """
import sys, numpy as np, pandas as pd, mlflow
model = mlflow.pyfunc.load_model(sys.argv[1])
images = model.predict(pd.DataFrame({"seed": [int(s) for s in sys.argv[3].split(",")]}),
                       params={"sampler": "dpmpp_2m", "steps": 5, "precision": "fp32", "channels_last": sys.argv[4], "batch_size": 16, "device": "cpu"})
np.save(sys.argv[2], images)
print("\\n".join(sorted({m.__file__ for name, m in sys.modules.items() if name.split(".")[0] == "ddpmlab"})))
"""


def test_a_fresh_process_runs_the_model_on_its_bundled_code(store, tmp_path):
    """In a new process the model's own copy of ddpmlab (its code/ folder) is what runs, not the
    installed package, and it draws the stage's images: the model does not need a ddpmlab install."""
    linear, run_id = store
    (version,) = mlflow.tracking.MlflowClient().search_model_versions(f"name = '{MODEL}' AND run_id = '{run_id}'")
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL}/{version.version}", dst_path=str(tmp_path)))
    seeds, _, stage_images = stage_run(linear, "dpmpp_2m-5")
    result = subprocess.run([sys.executable, "-c", RUN_BUNDLED, str(folder), str(tmp_path / "images.npy"), ",".join(map(str, seeds)), stage_layout(linear)],
                            cwd=tmp_path, capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = result.stdout.split()
    assert loaded and all(Path(f).resolve().is_relative_to((folder / "code").resolve()) for f in loaded), loaded
    np.testing.assert_array_equal(np.load(tmp_path / "images.npy"), stage_images)


@pytest.fixture
def network_never_built(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the network was built before the input was checked")

    monkeypatch.setattr(TrainedDiffusion, "from_payload", classmethod(refuse))


@pytest.mark.parametrize(
    "args,named",
    [
        (["--sampler", "dpm_fast"], "'dpm_fast'"),
        (["--steps", "31"], "steps 31: the model has T = 30"),
        (["--steps", "0"], "steps 0"),
        (["--class", "3"], "class 3: the model is unconditional"),
        (["--guidance", "2"], "guidance 2: the model is unconditional"),
        (["--eta", "-1", "--sampler", "ddim"], "sample.eta: got -1.0"),
        (["--variance", "learned_range"], "variance 'learned_range'"),
        (["--spacing", "cosine"], "'cosine'"),
        (["--seeds", "9-2"], "'9-2' runs backwards"),
    ],
)
def test_bad_settings_are_rejected_before_the_network_is_built(store, tmp_path, network_never_built, args, named):
    linear, _ = store
    result = CliRunner().invoke(cli, ["generate", "--model", str(linear / "model"), "--out", str(tmp_path / "out"), *args])
    assert result.exit_code != 0 and named in result.output, result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "model,named",
    [
        ("models:/no_such_model/1", "no registered model 'no_such_model'"),
        (f"models:/{MODEL}/99", "no version or alias '99' (versions: 1, 2, 3, 4"),
        (f"models:/{MODEL}@nobody", "no version or alias 'nobody'"),
        ("0123456789abcdef0123456789abcdef", "no MLflow run 0123456789abcdef0123456789abcdef"),
        ("models/missing", "'models/missing': no such folder or file"),
    ],
)
def test_a_model_that_does_not_resolve_is_named(store, tmp_path, network_never_built, model, named):
    result = CliRunner().invoke(cli, ["generate", "--model", model, "--out", str(tmp_path / "out")])
    assert result.exit_code != 0 and named in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_an_existing_output_is_kept_unless_overwrite_and_then_replaced_whole(store, tmp_path):
    linear, _ = store
    out = tmp_path / "out"
    generate(out, str(linear / "model"), [0, 1, 2], "--steps", "3")
    result = CliRunner().invoke(cli, ["generate", "--model", str(linear / "model"), "--seeds", "7", "--out", str(out)])
    assert result.exit_code != 0 and "--overwrite" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "000002.png", "generation.json", "grid.png"]
    generate(out, str(linear / "model"), [7], "--steps", "3", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["000007.png", "generation.json", "grid.png"]
    assert not list(tmp_path.glob(".out.*"))


def test_registration_off_logs_the_model_but_registers_no_version(tmp_path, monkeypatch):
    isolate_stores(monkeypatch, tmp_path)
    params = write_tiny_params(tmp_path / "params.yaml", tracking={"register_model": False}, evaluate={"snapshot_samples": 0})
    run_pipeline(params, tmp_path)
    run_id = json.loads((tmp_path / "model" / "train.json").read_text())["run_id"]
    client = mlflow.tracking.MlflowClient()
    assert client.search_registered_models() == []
    assert "model" in {a.path for a in client.list_artifacts(run_id)}
