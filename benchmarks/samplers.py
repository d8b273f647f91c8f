"""ddpmlab's samplers against diffusers' schedulers: the same numbers for the same model outputs, and speed.

\b
1. Agreement. Both sides get the same deterministic model eps(x, t), the same x_T, the same integer
   timestep grid (diffusers' ``scheduler.timesteps``, or ours passed to it as custom timesteps; ours
   always runs on ``DiffusionProcess.respaced(sorted(those timesteps))``) and the same betas
   (diffusers gets ``trained_betas=`` our float64 betas). Samplers run in float64 on both sides; models:
     gaussian  the exact eps of data N(mu, s^2) per pixel: x0_hat = mu + a s^2 / (a^2 s^2 + 1 - abar) (x - a mu),
               a = sqrt(abar); its probability-flow ODE has the closed-form solution
               x_0 = mu + s (x_T - a_T mu) / sqrt(a_T^2 s^2 + 1 - abar_T), so each deterministic run's error is printed too
     unet      gaussian + 0.1 sqrt(abar_t) x the default U-Net with random weights (its zero-initialised layers
               re-drawn; the U-Net itself runs in float32, see PerturbedEps)
   Stochastic samplers (ddpm, euler_ancestral) replay ours' own noise draws inside diffusers (its ``randn_tensor``
   is replaced by a replay of the draws ours made, in the same order).
   Each pair is run twice on diffusers' side:
     stock     diffusers as shipped: it keeps betas, alpha-bars and sigmas in float32 and (DPM-Solver, Euler
               ancestral) casts the sample to float32 every step, so agreement is to float32 rounding, ~1e-7
     float64   the same diffusers code with ``torch.float32`` read as float64 inside the scheduler module and
               its sigmas recomputed in float64: differences left are differences of the algorithm
   Printed: max |ours - diffusers| over final samples, and over every intermediate state x_t (in the VP
   scaling of x_t; diffusers' Heun / Euler states are divided by sqrt(sigma^2 + 1)).

\b
2. Speed. images/s of a batch of images drawn by ours (``sample_seeded``) and by a diffusers loop
   (scale_model_input, network, step) with the same network: the default U-Net of params.yaml
   (random init, eval mode, float32, ``torch.no_grad``) at equal NFE. Every network call is counted on
   both sides. Heun costs 2N - 1 evaluations on both sides, so it runs N = (NFE + 1) // 2 steps; diffusers'
   PNDM (skip_prk_steps) costs N + 1, so it runs NFE - 1 steps against ours' NFE. Rounds alternate ours and
   diffusers (the order flipping each round) in one process; the median round counts. The same loops are then
   timed with a network that returns zeros: the samplers' own cost per network call, which the network hides.
   On a shared host, --threads 1 gives steadier figures: two OpenMP threads wait on each other whenever
   another process holds a core.

\b
    python benchmarks/samplers.py                      # both parts, several minutes on 2 CPU cores
    python benchmarks/samplers.py --no-speed           # agreement only (a minute or two)
    python benchmarks/samplers.py --quick              # smoke test, figures not to be quoted
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import torch
import yaml
from speed import cpu_name  # benchmarks/ is on sys.path when a script here runs
from torch import nn

from ddpmlab.config import Params
from ddpmlab.core.denoiser import Denoiser
from ddpmlab.core.diffusion import DiffusionProcess
from ddpmlab.core.step_grids import step_grid
from ddpmlab.nn.unet import UNet
from ddpmlab.sampling.registry import SAMPLERS, sample_seeded, sampler_spec
from ddpmlab.sampling.trajectory import SeededNoise, StepInfo

IMAGE_SHAPE = (1, 16, 16)
DATA_STD = 0.3  # s of the gaussian model; mu is a fixed pattern in [-0.5, 0.5]
UNET_WEIGHT = 0.1  # the unet model is gaussian + this x sqrt(abar_t) x a random U-Net


# -- models ------------------------------------------------------------------------------------------


class GaussianEps:
    """The exact eps_hat(x, t) of data N(mu, s^2) per pixel, for the float64 alpha-bars of a T-step schedule.

    t may be fractional (diffusers' Heun with linspace spacing): then sigma = sqrt((1 - abar) / abar) is
    interpolated linearly in t, as diffusers does, so the model agrees with the sigma the scheduler assumes."""

    def __init__(self, alpha_bars: torch.Tensor):
        self.sigmas = ((1 - alpha_bars) / alpha_bars).sqrt()
        self.mu = 0.5 * torch.sin(torch.arange(int(np.prod(IMAGE_SHAPE)), dtype=torch.float64) * 0.7).reshape(IMAGE_SHAPE)

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(torch.float64)
        low = t.floor().long().clamp(max=len(self.sigmas) - 1)
        high = (low + 1).clamp(max=len(self.sigmas) - 1)
        sigma = self.sigmas[low] + (t - low) * (self.sigmas[high] - self.sigmas[low])
        return 1 / (1 + sigma**2)

    def x0(self, x: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        a2 = abar.reshape(-1, 1, 1, 1).to(x)
        a, s2 = a2.sqrt(), DATA_STD**2
        return self.mu + a * s2 / (a2 * s2 + 1 - a2) * (x - a * self.mu)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self.alpha_bar(t).reshape(-1, 1, 1, 1).to(x)
        return (x - abar.sqrt() * self.x0(x, abar)) / (1 - abar).sqrt()

    def ode_solution(self, x_T: torch.Tensor, abar_T: float) -> torch.Tensor:
        """The probability-flow ODE's x_0 from x_T at alpha-bar abar_T (an affine map for Gaussian data)."""
        a = abar_T**0.5
        return self.mu + DATA_STD * (x_T - a * self.mu) / (abar_T * DATA_STD**2 + 1 - abar_T) ** 0.5


class PerturbedEps(nn.Module):
    """gaussian + UNET_WEIGHT sqrt(abar_t) x a random-weight U-Net: a nonlinear model whose x0_hat stays within
    UNET_WEIGHT x |U-Net| of the exact one at every noise level (x0_hat moves by sqrt((1 - abar) / abar) x eps_hat's
    change), like a trained denoiser and unlike a bare perturbation of eps, which at t = T would move x0_hat 150x.
    The U-Net runs in float32 (PyTorch's float64 CPU convolutions are ~50x slower): its float64 input rounds to the
    same float32 tensor on both sides unless they already differ by ~1e-7, so it adds no difference of its own."""

    def __init__(self, gaussian: GaussianEps, unet: nn.Module):
        super().__init__()
        self.gaussian, self.unet = gaussian, unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        scale = UNET_WEIGHT * self.gaussian.alpha_bar(t).sqrt().reshape(-1, 1, 1, 1).to(x)
        return self.gaussian(x, t) + scale * self.unet(x.float(), t).to(x.dtype)


def default_unet(params_path: Path) -> UNet:
    params = Params.from_dict(yaml.safe_load(params_path.read_text()))
    return UNet(params.model, IMAGE_SHAPE[0], IMAGE_SHAPE[1])


def random_unet(params_path: Path, seed: int = 0) -> UNet:
    """The default U-Net with every weight random: its zero-initialised layers (residual branches' last conv,
    attention projection, output conv) would otherwise make eps_hat = 0."""
    torch.manual_seed(seed)
    net = default_unet(params_path)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1 and not p.any():
                nn.init.normal_(p, std=0.05)
    return net.eval()


class Counting(nn.Module):
    """Counts network calls (each call evaluates the whole batch once)."""

    def __init__(self, net: Callable):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x, t)


# -- ours ----------------------------------------------------------------------------------------------


class RecordingNoise(SeededNoise):
    """SeededNoise in float64 that keeps every draw, for replay inside diffusers."""

    def __init__(self, seeds, image_shape):
        super().__init__(seeds, image_shape)
        self.draws: list[torch.Tensor] = []

    def __call__(self) -> torch.Tensor:
        draw = super().__call__().double()
        self.draws.append(draw)
        return draw


@dataclass
class Run:
    final: torch.Tensor
    states: list[torch.Tensor] = field(default_factory=list)  # x after each step, VP scaling
    calls: int = 0


def run_ours(sampler: str, model: Callable, process: DiffusionProcess, seeds: list[int], **options) -> tuple[Run, RecordingNoise]:
    noise, counted, states = RecordingNoise(seeds, IMAGE_SHAPE), Counting(model), []

    def keep(info: StepInfo) -> None:
        if info.step > 0:
            states.append(info.x.clone())

    final = SAMPLERS[sampler].function(Denoiser(counted, process, "eps", clip_x0=False), noise, callback=keep, **options)
    return Run(final, states, counted.calls), noise


# -- diffusers -------------------------------------------------------------------------------------------


def scheduler_module(name: str) -> types.ModuleType:
    import importlib

    return importlib.import_module(f"diffusers.schedulers.{name}")


SCHEDULER_MODULES = {
    "DPMSolverMultistepScheduler": "scheduling_dpmsolver_multistep",
    "HeunDiscreteScheduler": "scheduling_heun_discrete",
    "DDIMScheduler": "scheduling_ddim",
    "DDPMScheduler": "scheduling_ddpm",
    "EulerAncestralDiscreteScheduler": "scheduling_euler_ancestral_discrete",
    "PNDMScheduler": "scheduling_pndm",
}


class _TorchFloat64(types.ModuleType):
    """torch, except that ``torch.float32`` is float64: put in a scheduler module's globals, its betas,
    alpha-bars and its per-step "upcast to float32" all become float64."""

    def __getattr__(self, name):
        return torch.float64 if name == "float32" else getattr(torch, name)


@contextlib.contextmanager
def scheduler_globals(cls_name: str, float64: bool, replay: list[torch.Tensor] | None) -> Iterator[None]:
    """Patch the scheduler's module for the duration: float64 internals and/or replayed noise draws."""
    module = scheduler_module(SCHEDULER_MODULES[cls_name])
    saved = {name: getattr(module, name) for name in ("torch", "randn_tensor") if hasattr(module, name)}
    if float64:
        module.torch = _TorchFloat64("torch")
    if replay is not None:
        draws = iter(replay)

        def randn_tensor(shape, generator=None, device=None, dtype=None, **_):
            draw = next(draws, None)  # exhausted: a draw ours never makes, multiplied by 0 (Euler ancestral's last step)
            return torch.zeros(shape, dtype=dtype) if draw is None else draw.to(dtype=dtype)

        module.randn_tensor = randn_tensor
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def make_scheduler(cls_name: str, T: int, betas: torch.Tensor, **config):
    import diffusers

    return getattr(diffusers, cls_name)(num_train_timesteps=T, trained_betas=betas.numpy(), prediction_type="epsilon", **config)


def float64_sigmas(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """sqrt((1 - abar) / abar) at (possibly fractional) timesteps, interpolated linearly in t as diffusers does, in float64."""
    abar = scheduler.alphas_cumprod.to(torch.float64).numpy()
    sigma = np.sqrt((1 - abar) / abar)
    return torch.from_numpy(np.interp(timesteps.to(torch.float64).numpy(), np.arange(len(abar)), sigma))


def set_float64_sigmas(cls_name: str, scheduler) -> None:
    """Replace the float32 sigmas diffusers' set_timesteps stores (``.astype(np.float32)``) with float64 ones."""
    if not hasattr(scheduler, "sigmas"):
        return
    zero = torch.zeros(1, dtype=torch.float64)
    if cls_name == "HeunDiscreteScheduler":  # timesteps t0, t1, t1, t2, t2, ...; sigmas s0, s1, s1, ..., 0
        ts = scheduler.timesteps
        levels = float64_sigmas(scheduler, torch.cat([ts[:1], ts[1::2]]))
        scheduler.sigmas = torch.cat([levels[:1], levels[1:].repeat_interleave(2), zero])
    else:
        scheduler.sigmas = torch.cat([float64_sigmas(scheduler, scheduler.timesteps), zero])


def ve_scale(cls_name: str) -> bool:
    """Whether the scheduler's sample is x_t / sqrt(abar) (k-diffusion's VE scaling) rather than x_t."""
    return cls_name in ("HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler")


def run_diffusers(
    cls_name: str,
    config: dict,
    set_timesteps: dict,
    model: Callable,
    betas: torch.Tensor,
    x_T: torch.Tensor,
    *,
    float64: bool,
    replay: list[torch.Tensor] | None = None,
    euler_start: bool = False,
) -> Run:
    """A diffusers sampling loop from x_T (VP scaling); states converted back to the VP scaling of x_t.

    euler_start (PNDM): give its second call, the trial step's evaluation, the first call's output again instead
    of calling the network, so the mean of the two slopes is the first one and the first step is plain Euler."""
    counted, states = Counting(model), []
    with scheduler_globals(cls_name, float64, replay):
        scheduler = make_scheduler(cls_name, len(betas), betas, **config)
        scheduler.set_timesteps(**set_timesteps)
        if float64:
            set_float64_sigmas(cls_name, scheduler)
        ve = ve_scale(cls_name)
        sigmas = scheduler.sigmas.to(torch.float64) if ve else None
        x = x_T * (1 + sigmas[0] ** 2).sqrt() if ve else x_T.clone()
        timesteps = scheduler.timesteps
        heun, pndm = cls_name == "HeunDiscreteScheduler", cls_name == "PNDMScheduler"
        for k, t in enumerate(timesteps):
            model_input = scheduler.scale_model_input(x, t)
            if not (pndm and euler_start and k == 1):
                eps = counted(model_input, t.expand(x.shape[0]))
            x = scheduler.step(eps, t, x).prev_sample
            # a full step has ended unless Heun is between its two stages (its last call is a lone Euler step)
            # or PNDM has taken its first, trial Euler step (its second call redoes that step with the mean slope)
            if heun and not (scheduler.state_in_first_order or k == len(timesteps) - 1) or pndm and k == 0:
                continue
            states.append(x)
        if ve:  # states land on s_1, ..., s_{N-1}, 0 (Heun: the distinct levels after s_0)
            levels = torch.cat([sigmas[:1], sigmas[1:-1:2], sigmas[-1:]]) if heun else sigmas
            states = [s / (1 + levels[j + 1] ** 2).sqrt() for j, s in enumerate(states)]
    return Run(states[-1], states, counted.calls)


# -- agreement ---------------------------------------------------------------------------------------------


@dataclass
class Case:
    sampler: str
    T: int
    steps: int
    grid: str  # how the grid is chosen, for the table
    scheduler: str
    config: dict
    custom: list[int] | None = None  # ours' grid passed to diffusers as custom timesteps; else diffusers' spacing
    options: dict = field(default_factory=dict)
    note: str = ""
    euler_start: bool = False  # see run_diffusers


DPM = {"algorithm_type": "dpmsolver++", "final_sigmas_type": "zero", "lower_order_final": True, "thresholding": False}
TRAILING = {"timestep_spacing": "trailing"}
DDIM = {"set_alpha_to_one": True, "clip_sample": False}
PNDM = {"skip_prk_steps": True, "set_alpha_to_one": True}
LINSPACE_NOTE = "diffusers t = linspace(0, T-1, N), fractional; ours: the same rounded (our uniform)"
PNDM_NOTE = "diffusers: improved-Euler first step, N + 1 evals; ours: Euler, N"
PNDM_EULER_NOTE = "the same, diffusers' trial evaluation replaced by the first: an Euler first step"


def cases(Ts: list[int], steps_list: list[int]) -> list[Case]:
    out = []
    for T in Ts:
        abar = DiffusionProcess.from_schedule("linear", T).alpha_bars
        for N in steps_list:
            uniform, karras = step_grid("uniform", abar, N), step_grid("karras", abar, N)
            for order in (2, 3):
                name, dpm = f"dpmpp_{order}m", {**DPM, "solver_order": order}
                out += [
                    Case(name, T, N, "trailing", "DPMSolverMultistepScheduler", {**dpm, **TRAILING}),
                    Case(name, T, N, "uniform (custom)", "DPMSolverMultistepScheduler", dpm, custom=uniform),
                    Case(name, T, N, "karras (custom)", "DPMSolverMultistepScheduler", dpm, custom=karras),
                ]
            heun, ddim, ddpm = "HeunDiscreteScheduler", "DDIMScheduler", "DDPMScheduler"
            out += [
                Case("heun", T, N, "trailing", heun, TRAILING),
                Case("heun", T, N, "uniform (custom)", heun, {}, custom=uniform),
                Case("heun", T, N, "linspace vs uniform", heun, {"timestep_spacing": "linspace"}, note=LINSPACE_NOTE),
                Case("ddim", T, N, "trailing", ddim, {**DDIM, **TRAILING}, options={"eta": 0.0}),
                Case("ddim", T, N, "leading", ddim, {**DDIM, "timestep_spacing": "leading"}, options={"eta": 0.0}),
            ]
            for variance in ("fixed_large", "fixed_small"):
                config, options = {"variance_type": variance, "clip_sample": False}, {"variance": variance}
                out.append(Case("ddpm", T, N, f"uniform (custom), {variance}", ddpm, config, uniform, options, "noise replayed"))
            out += [
                Case("euler_ancestral", T, N, "trailing", "EulerAncestralDiscreteScheduler", TRAILING, note="noise replayed"),
                Case("plms", T, N, "trailing", "PNDMScheduler", {**PNDM, **TRAILING}, note=PNDM_NOTE),
                Case(
                    "plms",
                    T,
                    N,
                    "trailing, Euler start",
                    "PNDMScheduler",
                    {**PNDM, **TRAILING},
                    note=PNDM_EULER_NOTE,
                    euler_start=True,
                ),
            ]
    return out


def grid_of(case: Case, betas: torch.Tensor) -> tuple[list[int], dict]:
    """Ours' grid (0-based increasing) and diffusers' set_timesteps arguments."""
    if case.custom is not None:
        return case.custom, {"timesteps": list(reversed(case.custom))}
    scheduler = make_scheduler(case.scheduler, case.T, betas, **case.config)
    scheduler.set_timesteps(num_inference_steps=case.steps)
    ts = scheduler.timesteps.to(torch.float64)
    if case.note.startswith("diffusers t = linspace"):
        ts = ts.round()  # ours runs on the rounded timesteps: our uniform grid
    return sorted({int(t) for t in ts}), {"num_inference_steps": case.steps}


def run_agreement(
    Ts: list[int], steps_list: list[int], params_path: Path, seeds: list[int], model_names: list[str]
) -> list[dict]:
    rows = []
    unet = random_unet(params_path) if "unet" in model_names else None
    for model_name in model_names:
        print(
            f"\n=== agreement, model {model_name!r}: max |ours - diffusers| (float64 on both sides), {len(seeds)} images 1x16x16 ==="
        )
        print(
            f"  {'sampler':15s} {'T':>4s} {'N':>3s} {'grid':30s} {'scheduler':32s} {'NFE o/d':>7s} "
            f"{'final stock':>11s} {'steps stock':>11s} {'final f64':>10s} {'steps f64':>10s}  "
            f"{'ODE err ours / diffusers':>24s}  note"
        )
        for case in cases(Ts, steps_list):
            base = DiffusionProcess.from_schedule("linear", case.T)
            gaussian = GaussianEps(base.alpha_bars)
            model = gaussian if model_name == "gaussian" else PerturbedEps(gaussian, unet)
            kept, set_args = grid_of(case, base.betas)
            with torch.no_grad():
                ours, noise = run_ours(case.sampler, model, base.respaced(kept), seeds, **case.options)
                replay = noise.draws[1:] if SAMPLERS[case.sampler].stochastic else None
                theirs = {
                    f64: run_diffusers(
                        case.scheduler,
                        case.config,
                        set_args,
                        model,
                        base.betas,
                        noise.draws[0],
                        float64=f64,
                        replay=replay,
                        euler_start=case.euler_start,
                    )
                    for f64 in (False, True)
                }
            row = {
                "model": model_name,
                "sampler": case.sampler,
                "T": case.T,
                "steps": case.steps,
                "grid": case.grid,
                "scheduler": case.scheduler,
            }
            row["nfe_ours"], row["nfe_diffusers"] = ours.calls, theirs[True].calls
            for f64, label in ((False, "stock"), (True, "f64")):
                run = theirs[f64]
                row[f"final_{label}"] = float((ours.final - run.final).abs().max())
                same_length = len(run.states) == len(ours.states)
                row[f"steps_{label}"] = (
                    max(float((a - b).abs().max()) for a, b in zip(ours.states, run.states)) if same_length else float("nan")
                )
            ode = ""
            if model_name == "gaussian" and not SAMPLERS[case.sampler].stochastic:
                exact = gaussian.ode_solution(noise.draws[0], float(base.alpha_bars[kept[-1]]))
                row["ode_ours"] = float((ours.final - exact).abs().max())
                row["ode_diffusers"] = float((theirs[True].final - exact).abs().max())
                ode = f"{row['ode_ours']:.2e} / {row['ode_diffusers']:.2e}"
            row["max_abs_sample"] = float(ours.final.abs().max())
            rows.append(row)
            print(
                f"  {case.sampler:15s} {case.T:4d} {case.steps:3d} {case.grid:30s} {case.scheduler:32s} {ours.calls:3d}/{theirs[True].calls:<3d} "
                f"{row['final_stock']:11.1e} {row['steps_stock']:11.1e} {row['final_f64']:10.1e} {row['steps_f64']:10.1e}  {ode:>24s}  {case.note}",
                flush=True,
            )
        print(
            f"  (largest |x_0| of ours over these runs: {max(r['max_abs_sample'] for r in rows if r['model'] == model_name):.2f})"
        )
    return rows


# -- speed -----------------------------------------------------------------------------------------------------


SPEED_PAIRS = {  # ours' sampler -> (diffusers scheduler, its config, steps for a given NFE: ours, diffusers)
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {**DPM, "solver_order": 2, **TRAILING}, lambda n: (n, n)),
    "dpmpp_3m": ("DPMSolverMultistepScheduler", {**DPM, "solver_order": 3, **TRAILING}, lambda n: (n, n)),
    "heun": ("HeunDiscreteScheduler", TRAILING, lambda n: ((n + 1) // 2, (n + 1) // 2)),
    # PNDM on its default "leading" grid: its steps are t - T // N, which a trailing grid of N - 1 = 9 steps is not
    "plms": ("PNDMScheduler", {**PNDM, "timestep_spacing": "leading"}, lambda n: (n, n - 1)),
    "ddim": ("DDIMScheduler", {**DDIM, **TRAILING}, lambda n: (n, n)),
}


class SpeedPair:
    def __init__(self, sampler: str, nfe: int, net: Counting, batch: int, T: int):
        self.sampler, self.nfe, self.net, self.batch = sampler, nfe, net, batch
        self.cls_name, self.config, steps = SPEED_PAIRS[sampler]
        self.steps_ours, self.steps_diffusers = steps(nfe)
        base = DiffusionProcess.from_schedule("linear", T)
        self.betas = base.betas
        self.process = base.with_steps(self.steps_ours, "trailing")
        self.seeds = list(range(batch))

    def ours(self) -> torch.Tensor:
        return sample_seeded(sampler_spec(self.sampler), self.net, self.process, self.seeds, IMAGE_SHAPE, batch_size=self.batch, clip_x0=False)

    @torch.no_grad()
    def diffusers(self) -> torch.Tensor:
        scheduler = make_scheduler(self.cls_name, len(self.betas), self.betas, **self.config)
        scheduler.set_timesteps(self.steps_diffusers)
        generator = torch.Generator().manual_seed(0)
        x = torch.randn((self.batch, *IMAGE_SHAPE), generator=generator) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            eps = self.net(scheduler.scale_model_input(x, t), t.expand(self.batch))
            x = scheduler.step(eps, t, x).prev_sample
        return x


def time_call(fn: Callable, net: Counting) -> tuple[float, int]:
    net.calls = 0
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start, net.calls


class ZeroEps(nn.Module):
    """A network that costs nothing: times the sampling loop alone."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def alternate(pairs: list[SpeedPair], rounds: int, net: Counting, times: dict, calls: dict, r0: int = 0) -> None:
    """Time every pair's two sides back to back, the order flipping every round."""
    for r in range(r0, r0 + rounds):
        for pair in pairs:
            sides = [("ours", pair.ours), ("diffusers", pair.diffusers)]
            for side, fn in sides if r % 2 == 0 else sides[::-1]:
                seconds, count = time_call(fn, net)
                times.setdefault((pair.sampler, pair.nfe, side), []).append(seconds)
                calls[(pair.sampler, pair.nfe, side)] = count


def speed(samplers: list[str], nfes: list[int], batch: int, rounds: int, params_path: Path, T: int) -> list[dict]:
    """Each round times, for every NFE, the bare network (NFE calls on one batch: the floor both sides share)
    and every sampler pair, ours and diffusers back to back (order flipped every round). Then the same loops
    with a network that returns zeros, 5 rounds: the samplers' own cost per network call."""
    torch.manual_seed(0)
    net = Counting(default_unet(params_path).eval())  # float32, random init (zero-initialised output: the cost is the same)
    pairs = [SpeedPair(s, n, net, batch, T) for n in nfes for s in samplers]
    print(f"\n=== speed: batch {batch} images 1x16x16, default U-Net (float32, eval, no_grad), T = {T} ===")
    print(f"  load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    x, t = torch.randn(batch, *IMAGE_SHAPE), torch.zeros(batch, dtype=torch.long)

    @torch.no_grad()
    def network_only(n: int) -> None:
        for _ in range(n):
            net(x, t)

    network_only(2)  # warm-up
    times: dict[tuple[str, int, str], list[float]] = {}
    calls: dict[tuple[str, int, str], int] = {}
    for r in range(rounds):
        for n in nfes:
            times.setdefault(("network", n, "-"), []).append(time_call(lambda n=n: network_only(n), net)[0])
            alternate([p for p in pairs if p.nfe == n], 1, net, times, calls, r0=r)
        print(f"  round {r + 1}/{rounds} done", flush=True)
    print(f"  load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")

    zero = Counting(ZeroEps())
    zero_pairs = [SpeedPair(s, n, zero, batch, T) for n in nfes for s in samplers]
    loop_times: dict[tuple[str, int, str], list[float]] = {}
    loop_calls: dict[tuple[str, int, str], int] = {}
    alternate(zero_pairs, 1, zero, {}, {})  # warm-up
    alternate(zero_pairs, 5, zero, loop_times, loop_calls)

    rows = []
    print(
        f"\n  {'sampler':10s} {'NFE':>4s} {'steps o/d':>9s} {'calls o/d':>9s} {'ours img/s':>10s} {'diffusers img/s':>15s} "
        f"{'ours/diffusers':>14s} {'paired':>7s}  {'loop ms/call o/d':>17s}  rounds (s) ours | diffusers"
    )
    for n in nfes:
        per_call = statistics.median(times[("network", n, "-")]) / n
        print(f"  {'network':10s} {n:4d} {'':9s} {n:4d}/{n:<4d} {batch / (per_call * n):10.1f}   (the network alone, {n} calls)")
        for pair in (p for p in pairs if p.nfe == n):
            key_o, key_d = (pair.sampler, n, "ours"), (pair.sampler, n, "diffusers")
            med_o, med_d = statistics.median(times[key_o]), statistics.median(times[key_d])
            paired = statistics.median(d / o for o, d in zip(times[key_o], times[key_d]))
            loop_o = 1000 * statistics.median(loop_times[key_o]) / loop_calls[key_o]
            loop_d = 1000 * statistics.median(loop_times[key_d]) / loop_calls[key_d]
            row = {
                "sampler": pair.sampler, "nfe": n, "steps_ours": pair.steps_ours, "steps_diffusers": pair.steps_diffusers,
                "calls_ours": calls[key_o], "calls_diffusers": calls[key_d], "ours_img_s": batch / med_o,
                "diffusers_img_s": batch / med_d, "ratio": med_d / med_o, "paired_ratio": paired,
                "network_img_s": batch / (per_call * n), "loop_ms_per_call_ours": loop_o, "loop_ms_per_call_diffusers": loop_d,
            }  # fmt: skip
            rows.append(row)
            rounds_o = ", ".join(f"{v:.2f}" for v in times[key_o])
            rounds_d = ", ".join(f"{v:.2f}" for v in times[key_d])
            print(
                f"  {pair.sampler:10s} {n:4d} {pair.steps_ours:4d}/{pair.steps_diffusers:<4d} {calls[key_o]:4d}/{calls[key_d]:<4d} "
                f"{batch / med_o:10.1f} {batch / med_d:15.1f} {med_d / med_o:13.3f}x {paired:6.3f}x  {loop_o:7.2f} / {loop_d:6.2f}  "
                f"{rounds_o} | {rounds_d}"
            )
    print(
        "  (ours/diffusers: ratio of the median rounds; paired: median over rounds of the ratio within a round;"
        " loop: ms per network call of the same loop with a network returning zeros, median of 5: the samplers' own cost)"
    )
    return rows


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


@click.command(help=__doc__)
@click.option("--agreement/--no-agreement", default=True, show_default=True, help="part 1: the same numbers as diffusers")
@click.option("--speed/--no-speed", "run_speed", default=True, show_default=True, help="part 2: images/s against diffusers")
@click.option("--models", default="gaussian,unet", show_default=True, help="agreement models (see above)")
@click.option("--T", "Ts", default="1000,100", show_default=True, help="agreement: training timesteps T of the linear schedule")
@click.option(
    "--steps", default="10,20", show_default=True, help="agreement: sampling steps N (< 15 and >= 15 exercise lower_order_final)"
)
@click.option("--images", default=4, show_default=True, help="agreement: images per run")
@click.option(
    "--samplers",
    default=",".join(SPEED_PAIRS),
    show_default=True,
    help="speed: ours' samplers, each against its diffusers scheduler",
)
@click.option("--nfe", default="10,20", show_default=True, help="speed: network evaluations per image")
@click.option("--batch", default=128, show_default=True, help="speed: images per run")
@click.option("--rounds", default=3, show_default=True, help="speed: rounds per pair; the median counts")
@click.option("--speed-T", "speed_T", default=1000, show_default=True)
@click.option(
    "--params",
    "params_path",
    default="params.yaml",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    show_default=True,
)
@click.option("--threads", default=0, help="speed: torch threads [default: torch's own, here the core count]")
@click.option("--quick", is_flag=True, help="T 100, 10 steps, gaussian model, batch 32, 1 round: a smoke test")
def main(agreement, run_speed, models, Ts, steps, images, samplers, nfe, batch, rounds, speed_T, params_path, threads, quick):
    import diffusers

    if quick:
        models, Ts, steps, batch, rounds = "gaussian", "100", "10", 32, 1
    default_threads = torch.get_num_threads()
    versions = {"torch": torch.__version__, "python": platform.python_version(), "diffusers": diffusers.__version__}
    machine = f"{cpu_name()}, {platform.machine()}, {os.cpu_count()} cores"
    print(f"device cpu ({machine}), torch threads: agreement 1, speed {threads or default_threads}")
    print(f"  {versions}")
    if agreement:
        torch.set_num_threads(1)  # 4-image batches: a second thread only adds synchronisation (and, on a busy host, waits)
        run_agreement(ints(Ts), ints(steps), params_path, list(range(images)), models.split(","))
    if run_speed:
        torch.set_num_threads(threads or default_threads)
        speed(samplers.split(","), ints(nfe), batch, rounds, params_path, speed_T)


if __name__ == "__main__":
    main()
