"""`auto` measures: the probe keeps the fastest candidate, explicit values skip it, its choice is cached per
machine kind and network shape, a broken cache only warns, and a resumed run keeps the way it started."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from conftest import train_config
from ddpmlab.core.diffusion import DiffusionProcess
from ddpmlab.host import machine
from ddpmlab.host.choice_cache import CACHE_FILE, ChoiceCache
from ddpmlab.nn import autotune
from ddpmlab.nn.execution import CACHED, EXPLICIT, PROBED, RESUMED, Execution, ExecutionRecord, Requested
from ddpmlab.nn.inference_probe import inference_network
from ddpmlab.nn.unet import UNet
from ddpmlab.nn.unet_config import UNetConfig
from ddpmlab.training.execution_probe import training_execution
from ddpmlab.training.loop import new_train_state, train

CPU = torch.device("cpu")
AUTO_ALL = Requested("auto", "auto", "auto")
SHAPE = {"network": "UNet", "batch": 128}
TINY = UNetConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), norm_groups=4, dropout=0.0)


class Timings:
    """A timer with injected per-call seconds (and first-call overheads); counts its calls."""

    def __init__(self, per_call: dict[str, float], first: dict[str, float] | None = None, broken: tuple[str, ...] = ()):
        self.per_call, self.first, self.broken = per_call, first or {}, broken
        self.calls: dict[str, int] = {}

    def __call__(self, execution: Execution, calls: int) -> float:
        label = execution.label
        if label in self.broken:
            raise RuntimeError("no such kernel here")
        seen = self.calls.get(label, 0)
        self.calls[label] = seen + calls
        return self.per_call[label] * calls + (self.first.get(label, 0.0) if seen == 0 else 0.0)


EAGER = {"fp32 nchw": 0.35, "fp32 channels_last": 0.30, "bf16 nchw": 0.45, "bf16 channels_last": 0.50}


def choose(timer, tmp_path: Path, requested: Requested = AUTO_ALL, shape=SHAPE, planned_calls=None, lines=None) -> ExecutionRecord:
    return autotune.choose("train", requested, CPU, shape, timer, 128, identity=machine.identity(CPU), cache=ChoiceCache(tmp_path),
                           planned_calls=planned_calls, announce=(lines.append if lines is not None else lambda _: None))  # fmt: skip


def test_the_probe_picks_the_fastest_candidate_and_prints_its_figures(tmp_path: Path):
    lines = []
    record = choose(Timings(EAGER), tmp_path, lines=lines)
    assert record.execution == Execution("fp32", True) and record.chosen_by == PROBED
    assert record.rates == pytest.approx({label: 128 / s for label, s in EAGER.items()}, abs=0.05)  # 0.1 img/s
    expected = "auto (train): fp32 channels_last, 427 img/s (fp32 nchw 366, bf16 nchw 284, bf16 channels_last 256); probe"
    assert lines == [f"{expected} {record.probe_seconds:.1f} s"]
    faster_bf16 = {**EAGER, "bf16 nchw": 0.2}
    assert choose(Timings(faster_bf16), tmp_path / "other").execution == Execution("bf16", False)  # the check can fail


def test_explicit_values_skip_the_probe(tmp_path: Path):
    def never(execution, calls):
        raise AssertionError("an explicit request must not be timed")

    record = choose(never, tmp_path, Requested("bf16", False, False))
    assert (record.execution, record.chosen_by, record.rates) == (Execution("bf16", False), EXPLICIT, {})
    assert not (tmp_path / CACHE_FILE).exists()
    timer = Timings(EAGER)
    assert choose(timer, tmp_path, Requested("fp32", "auto", False)).execution == Execution("fp32", True)
    assert set(timer.calls) == {"fp32 nchw", "fp32 channels_last"}  # only what `auto` leaves open is timed


def test_a_cached_choice_is_reused_without_timing(tmp_path: Path):
    first = choose(Timings(EAGER), tmp_path)
    timer = Timings(EAGER)
    again = choose(timer, tmp_path)
    assert timer.calls == {} and again.chosen_by == CACHED and again.execution == first.execution
    assert again.rates == first.rates  # the cached figures travel with the record


def test_the_cache_key_changes_with_the_cpu_model_the_torch_version_and_the_network_shape():
    identity = machine.identity(CPU)
    key = autotune.cache_key("train", identity, SHAPE, AUTO_ALL)
    assert key == autotune.cache_key("train", dict(identity), dict(SHAPE), AUTO_ALL)  # a function of its inputs only
    changed = [
        autotune.cache_key("train", {**identity, "processor": "Intel(R) Xeon(R) Platinum 8488C"}, SHAPE, AUTO_ALL),
        autotune.cache_key("train", {**identity, "torch": "2.99.0"}, SHAPE, AUTO_ALL),
        autotune.cache_key("train", {**identity, "threads": identity["threads"] + 1}, SHAPE, AUTO_ALL),
        autotune.cache_key("train", identity, {**SHAPE, "batch": 64}, AUTO_ALL),
        autotune.cache_key("train", identity, {**SHAPE, "config": "UNetConfig(channels=128)"}, AUTO_ALL),
        autotune.cache_key("sample", identity, SHAPE, AUTO_ALL),
        autotune.cache_key("train", identity, SHAPE, Requested("auto", False, "auto")),
    ]
    assert len({key, *changed}) == len(changed) + 1


def test_another_machine_probes_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    choose(Timings(EAGER), tmp_path)
    monkeypatch.setattr(machine, "cpu_model", lambda: "Intel(R) Xeon(R) Platinum 8488C")
    timer = Timings({**EAGER, "bf16 nchw": 0.1})
    record = choose(timer, tmp_path)
    assert timer.calls and record.chosen_by == PROBED and record.execution == Execution("bf16", False)
    entries = json.loads((tmp_path / CACHE_FILE).read_text())["entries"]
    assert len(entries) == 2  # both machines' choices kept


@pytest.mark.parametrize("content", ["{not json", '{"version": 1, "entries": []}', '{"version": 0, "entries": {}}', "\udcff"])
def test_a_corrupt_cache_file_is_ignored_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture, content: str):
    (tmp_path / CACHE_FILE).write_bytes(content.encode("utf-8", "surrogateescape"))
    record = choose(Timings(EAGER), tmp_path)
    assert record.chosen_by == PROBED and record.execution == Execution("fp32", True)
    assert "warning: ignoring the execution cache" in capsys.readouterr().err
    assert choose(Timings(EAGER), tmp_path).chosen_by == CACHED  # rewritten whole


def test_a_malformed_cache_entry_is_ignored_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture):
    choose(Timings(EAGER), tmp_path)
    data = json.loads((tmp_path / CACHE_FILE).read_text())
    for entry in data["entries"].values():
        entry["execution"]["precision"] = "fp8"
    (tmp_path / CACHE_FILE).write_text(json.dumps(data))
    assert choose(Timings(EAGER), tmp_path).chosen_by == PROBED
    assert "malformed entry" in capsys.readouterr().err


def test_a_candidate_that_cannot_run_is_left_out(tmp_path: Path, capsys: pytest.CaptureFixture):
    record = choose(Timings(EAGER, broken=("fp32 channels_last",)), tmp_path)
    assert record.execution == Execution("fp32", False) and "fp32 channels_last" not in record.rates
    assert "fp32 channels_last could not run here" in capsys.readouterr().err


def test_compile_is_timed_only_for_long_runs_and_chosen_only_where_it_pays(tmp_path: Path):
    compiled = {f"{label} compiled": s * 0.5 for label, s in EAGER.items()}  # twice as fast once compiled ...
    first = {label: 60.0 for label in compiled}  # ... after a minute of compiling
    short = Timings({**EAGER, **compiled}, first)
    assert not choose(short, tmp_path / "a", planned_calls=100).execution.compile  # 30 s of work: never compiled
    assert not any(label.endswith("compiled") for label in short.calls)
    long_run = Timings({**EAGER, **compiled}, first)
    record = choose(long_run, tmp_path / "b", planned_calls=10_000)  # 3,000 s eager, 1,560 s compiled
    assert record.execution == Execution("fp32", True, True) and "fp32 channels_last compiled" in record.rates
    assert [label for label in long_run.calls if label.endswith("compiled")] == ["fp32 channels_last compiled"]  # one compile: the eager winner's
    slow_compile = Timings({**EAGER, **compiled}, {label: 2_000.0 for label in compiled})
    assert not choose(slow_compile, tmp_path / "c", planned_calls=10_000).execution.compile  # a compile that cannot pay loses


def test_bad_requests_name_the_value_and_what_is_allowed():
    with pytest.raises(ValueError, match="precision: got 'fp16'; allowed: auto, fp32, bf16"):
        Requested("fp16", "auto", "auto")
    with pytest.raises(ValueError, match="channels_last: got 1; allowed: auto, true, false"):
        Requested("auto", 1, "auto")
    with pytest.raises(ValueError, match="bf16 autocast does not run on this mps device"):
        Requested("bf16", False, False).candidates(torch.device("mps"), consider_compile=False)


def test_the_training_probe_times_the_real_loop_and_leaves_the_run_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DDPMLAB_CACHE_DIR", str(tmp_path))
    build = lambda: UNet(TINY, 1, 8)
    cfg = train_config(steps=3, batch_size=8, warmup_steps=1, log_every=3, precision="auto", channels_last="auto", compile="auto")
    torch.manual_seed(123)
    expected = torch.rand(3)
    for chosen_by in (PROBED, CACHED):  # a probe now, then this machine's cached choice
        torch.manual_seed(123)
        record = training_execution(build, cfg, CPU)
        assert torch.equal(torch.rand(3), expected)  # the probe gave the global random streams back
        assert record.chosen_by == chosen_by and set(record.rates) == {"fp32 nchw", "fp32 channels_last", "bf16 nchw", "bf16 channels_last"}
        assert all(rate > 0 for rate in record.rates.values())
    with pytest.raises(ValueError, match="auto must be timed first"):
        new_train_state(build, cfg, 0, CPU)
    state = new_train_state(build, cfg, 0, CPU, execution=record)
    concrete = {"precision": record.execution.precision, "channels_last": record.execution.channels_last, "compile": False}
    explicit = new_train_state(build, dataclasses.replace(cfg, **concrete), 0, CPU)
    assert explicit.execution.chosen_by == EXPLICIT and explicit.execution.execution == state.execution.execution
    torch.testing.assert_close(state.model.state_dict(), explicit.model.state_dict(), rtol=0, atol=0)  # same initial weights


def test_a_resumed_run_keeps_the_execution_it_started_with(tmp_path: Path):
    build = lambda: UNet(TINY, 1, 8)
    images = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    process = DiffusionProcess.from_schedule("linear", 20)
    first_cfg = train_config(steps=2, batch_size=8, warmup_steps=1, log_every=2, precision="bf16", channels_last=False)
    first = train(new_train_state(build, first_cfg, 0, CPU), process, images, first_cfg)
    saved = first.state_dict()
    assert saved["execution"] == {"precision": "bf16", "channels_last": False, "compile": False}  # no timings: model.pt stays reproducible
    later_cfg = train_config(steps=4, batch_size=8, warmup_steps=1, log_every=2, precision="fp32", channels_last=True)
    resumed = new_train_state(build, later_cfg, 0, CPU)  # as if the cache or the machine had changed since
    resumed.load_state_dict(saved)
    assert resumed.execution.execution == Execution("bf16", False) and resumed.execution.chosen_by == RESUMED
    assert all(p.is_contiguous() for p in resumed.model.parameters())  # back to NCHW before the optimizer state loaded
    train(resumed, process, images, later_cfg)
    assert resumed.step == 4


def test_the_inference_probe_returns_the_winner_as_built_and_records_it(tmp_path: Path):
    model = UNet(TINY, 1, 8).eval()
    probe = {"identity": machine.identity(CPU), "cache": ChoiceCache(tmp_path)}
    network = inference_network(model, CPU, Requested("auto", "auto", False), batch_size=4, **probe)
    record = network.execution_record
    assert record.chosen_by == PROBED and len(record.rates) == 4
    assert (network.dtype, network.memory_format) == (record.execution.dtype, record.execution.memory_format)
    x, t = torch.randn(4, 1, 8, 8), torch.randint(0, 20, (4,))
    with torch.no_grad():
        reference = model(x, t)
    torch.testing.assert_close(network(x, t), reference, rtol=0.05, atol=0.05)  # the same network (bf16 rounding allowed)
    assert inference_network(model, CPU, Requested("auto", "auto", False), batch_size=4, **probe).execution_record.chosen_by == CACHED
    assert inference_network(model, CPU, Requested("auto", "auto", False), batch_size=8, **probe).execution_record.chosen_by == PROBED
