"""The run report's figures (the `report` stage): loss, FID over training, the schedule, FID against NFE,
the step grids, guidance, class grids and the NLL per term. Each writes one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ddpmlab.core.diffusion import DiffusionProcess
from ddpmlab.core.math_names import SCHEDULES
from ddpmlab.core.schedules import make_betas
from ddpmlab.data import images
from ddpmlab.reporting.figures.style import colors, plt, save_figure, show_image


def loss_figure(log: pd.DataFrame, path: Path) -> None:
    """L_simple against training step (log y), with the learning rate on a second axis."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(log["step"], log["loss"], color="tab:blue", label="loss (mean over log window)")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss")
    ax.grid(True, which="both", alpha=0.3)
    lr_ax = ax.twinx()
    lr_ax.plot(log["step"], log["lr"], color="tab:orange", alpha=0.6, label="learning rate")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_ylim(0, 1.15 * float(log["lr"].max()))
    lines = ax.get_lines() + lr_ax.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="center right")
    ax.set_title("Training loss")
    save_figure(fig, path)


def training_curve_figure(curve: pd.DataFrame, real: dict, path: Path) -> None:
    """FID of each training checkpoint against the test and the training split, with the real-data floors."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for key, label, color in (("fid", "vs test", "tab:red"), ("fid_train", "vs train", "tab:orange")):
        ax.plot(curve["step"], curve[key], marker="o", color=color, label=f"EMA model {label}")
        ax.axhline(real[key], color=color, linestyle="--", alpha=0.6, label=f"real-data floor {label}")
    ax.set_yscale("log")
    ax.set(xlabel="training step", ylabel="FID (log scale)", title="FID over training")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def schedule_figure(schedule: pd.DataFrame, chosen: str, path: Path) -> None:
    """beta_t, alpha-bar_t and log10 SNR_t = log10(abar / (1 - abar)) of the run's schedule,
    with every other named schedule at the same T for reference."""
    T = len(schedule)
    fig, (ax_beta, ax_abar, ax_snr) = plt.subplots(1, 3, figsize=(14, 3.8))
    t = np.arange(1, T + 1)
    others = [name for name in sorted(SCHEDULES) if name != chosen]
    styles = zip(others, ["tab:blue", "tab:green", "tab:purple", "tab:brown"], ["--", ":", "-.", (0, (5, 1))])
    for name, color, dash in styles:
        try:
            process = DiffusionProcess(make_betas(name, T))
        except ValueError:
            continue  # e.g. linear at very small T leaves (0, 1)
        abar = process.alpha_bars.numpy()
        for ax, values in ((ax_beta, process.betas.numpy()), (ax_abar, abar), (ax_snr, np.log10(abar / (1 - abar)))):
            ax.plot(t, values, linestyle=dash, color=color, alpha=0.8, label=f"{name} (reference)")
    ax_beta.plot(schedule["t"], schedule["beta"], color="tab:red", lw=2, label=f"{chosen} (this run)")
    ax_abar.plot(schedule["t"], schedule["alpha_bar"], color="tab:red", lw=2, label=f"{chosen} (this run)")
    ax_snr.plot(schedule["t"], schedule["log10_snr"], color="tab:red", lw=2, label=f"{chosen} (this run)")
    ax_beta.set_yscale("log")
    ax_beta.set(xlabel="timestep t", ylabel="beta_t (log scale)", title=f"Noise added per step (T = {T})")
    ax_abar.set(xlabel="timestep t", ylabel="alpha-bar_t = prod (1 - beta_s)", title="Signal kept: x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps")
    ax_snr.set(xlabel="timestep t", ylabel="log10 SNR = log10(abar / (1 - abar))", title="Signal-to-noise ratio")
    for ax in (ax_beta, ax_abar, ax_snr):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def line_label(sampler: str, spacing: str, spacings: int) -> str:
    """A sampler's line in the figures; the spacing is named only when several are compared."""
    return sampler if spacings == 1 else f"{sampler} ({spacing})"


def nfe_figure(runs: pd.DataFrame, real: dict, path: Path) -> None:
    """FID and IS against network evaluations per image (log x), one line per (sampler, spacing),
    with the real-data floor; and sampling time per image against NFE. runs: steps.csv's rows."""
    fig, (ax_fid, ax_is, ax_time) = plt.subplots(1, 3, figsize=(15, 4.2))
    spacings = runs["spacing"].nunique()
    groups = list(runs.groupby(["sampler", "spacing"], sort=False))
    for i, (((sampler, spacing), rows), color) in enumerate(zip(groups, colors(len(groups)))):
        rows = rows.sort_values("nfe")
        label = line_label(sampler, spacing, spacings)
        nudged = rows["nfe"] * 1.025 ** (i - (len(groups) - 1) / 2)  # lines side by side at each NFE, so their bars do not overlap
        ax_fid.plot(nudged, rows["fid"], marker="o", color=color, label=label)
        ax_is.plot(nudged, rows["is_mean"], marker="o", color=color, label=label)
        for ax, name in ((ax_fid, "fid"), (ax_is, "is_mean")):
            if f"{name}_ci_low" in rows and rows[f"{name}_ci_low"].notna().all():  # 95% intervals as bars
                low = rows[f"{name}_ci_low"].clip(lower=rows[name] * 0.05)  # a log axis cannot show 0 or below
                ax.errorbar(nudged, rows[name], yerr=[rows[name] - low, rows[f"{name}_ci_high"] - rows[name]], fmt="none",
                            ecolor=color, alpha=0.6, capsize=2)  # fmt: skip
        ax_time.plot(rows["nfe"], 1000 * rows["seconds_per_sample"], marker="o", color=color, label=label)
    ax_fid.axhline(real["fid"], color="black", linestyle="--", alpha=0.6, label="real-data floor")
    if real.get("fid_ci_low") is not None:
        ax_fid.axhspan(max(real["fid_ci_low"], real["fid"] * 0.05), real["fid_ci_high"], color="black", alpha=0.08, label="floor's 95% interval")
    ax_is.axhline(real["is_mean"], color="black", linestyle="--", alpha=0.6, label="real-data floor")
    ax_fid.set_yscale("log")
    ax_fid.set(ylabel="FID vs test split (log scale; lower is better)", title="FID vs network evaluations")
    ax_is.set(ylabel="IS (higher is better)", title="IS vs network evaluations")
    ax_time.set(ylabel="ms per image", title="Sampling time per image")
    ticks = sorted(runs["nfe"].unique())
    for ax in (ax_fid, ax_is, ax_time):
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations per image, NFE (log scale)")
        ax.set_xticks(ticks, [str(v) for v in ticks])
        ax.minorticks_off()
        ax.grid(True, which="both", alpha=0.3)
    ax_fid.legend(fontsize=8)
    save_figure(fig, path)


def step_grids_figure(entries: list[dict], T: int, path: Path, max_steps: int = 10) -> bool:
    """The timesteps of every grid of at most ``max_steps`` steps, one row each: a closed-form spacing
    once per step count (the same for every sampler), a searched grid per sampler. entries: sampling.json's
    runs. False (nothing drawn) when no run is that short."""
    rows: dict[str, list[int]] = {}
    for e in sorted(entries, key=lambda e: (e["steps"], e["spacing"] == "searched", e["spacing"], e["sampler"])):
        if e["steps"] <= max_steps and "timesteps" in e:
            label = f"{e['steps']} steps, {e['spacing']}" + (f" ({e['sampler']})" if e["spacing"] == "searched" else "")
            rows.setdefault(label, e["timesteps"])
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(rows) + 1.2))
    for i, (label, timesteps) in enumerate(rows.items()):
        searched = "searched" in label
        ax.plot([t + 1 for t in timesteps], [i] * len(timesteps), marker="D" if searched else "o", linestyle="-", alpha=0.8,
                color="tab:red" if searched else "tab:blue", markersize=5)  # fmt: skip
    ax.set_yticks(range(len(rows)), list(rows), fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, T + 1)
    ax.set(xlabel=f"timestep t (1 = least noise, {T} = pure noise); the sampler starts at the right", title="Step grids (red: searched on this model)")
    ax.grid(True, axis="x", alpha=0.3)
    save_figure(fig, path)
    return True


def guidance_figure(sweep: pd.DataFrame, real: dict, path: Path) -> None:
    """Classifier-free guidance: FID and conditional accuracy against w, and the FID-vs-accuracy trade-off, each point a w."""
    ordered = sweep.sort_values("guidance")
    fig, (ax_w, ax_trade) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax_w.plot(ordered["guidance"], ordered["fid"], marker="o", color="tab:red", label="FID vs test")
    ax_w.axhline(real["fid"], color="tab:red", linestyle="--", alpha=0.6, label="real-data floor")
    ax_w.set(xlabel="guidance weight w", ylabel="FID (lower is better)", title="FID and class accuracy vs guidance")
    ax_acc = ax_w.twinx()
    ax_acc.plot(ordered["guidance"], 100 * ordered["cond_accuracy"], marker="s", color="tab:blue", label="conditional accuracy")
    ax_acc.set_ylabel("conditional accuracy (%)")
    lines = ax_w.get_legend_handles_labels()[0] + ax_acc.get_legend_handles_labels()[0]
    ax_w.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="center right")
    ax_trade.plot(100 * ordered["cond_accuracy"], ordered["fid"], marker="o", color="tab:purple")
    for row in ordered.itertuples():
        ax_trade.annotate(f"w={row.guidance:g}", (100 * row.cond_accuracy, row.fid), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax_trade.set(xlabel="conditional accuracy (%)", ylabel="FID vs test (lower is better)", title="Trade-off across w (Ho & Salimans 2022)")
    for ax in (ax_w, ax_trade):
        ax.grid(True, alpha=0.3)
    save_figure(fig, path)


def class_grid_figure(
    samples: np.ndarray, labels: np.ndarray, class_names: list[str], title: str, path: Path, per_class: int = 10
) -> None:
    """One row per class, named on the left, holding the first ``per_class`` images asked to be that class.
    samples: uint8 (N, C, H, W); labels: (N,) class indices into ``class_names``."""
    fig, axes = plt.subplots(len(class_names), 1, figsize=(0.55 * per_class + 1.6, 0.55 * len(class_names) + 0.5), squeeze=False)
    for c, (ax, name) in enumerate(zip(axes[:, 0], class_names)):
        chosen = samples[labels == c][:per_class]
        if len(chosen):
            show_image(ax, images.grid(chosen, columns=per_class, padding=1))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def nll_figure(terms: pd.DataFrame, path: Path) -> None:
    """Bits/dim of each term of the bound against t, and the running share of the total."""
    fig, ax = plt.subplots(figsize=(9, 3.8))
    bits = terms["bits_per_dim"].to_numpy()
    t = terms["t"].to_numpy()
    ax.plot(t[1:-1], bits[1:-1], color="tab:red", label="L_{t-1} = KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))")
    ax.scatter([t[0]], [bits[0]], color="tab:blue", zorder=3, label=f"L_0 decoder at t = 1: {bits[0]:.3f}")
    ax.scatter([t[-1]], [max(bits[-1], 1e-8)], color="tab:green", zorder=3, label=f"L_T prior: {bits[-1]:.2g}")
    ax.set_yscale("log")
    ax.set(xlabel="timestep t", ylabel="bits/dim (log scale)", title=f"Where the bits are spent: total {bits.sum():.3f} bits/dim")
    ax.grid(True, which="both", alpha=0.3)
    share = ax.twinx()
    share.plot(t, np.cumsum(bits) / bits.sum(), color="tab:gray", linestyle="--", label="cumulative share of the total")
    share.set_ylim(0, 1.02)
    share.set_ylabel("cumulative share")
    lines = ax.get_lines() + ax.collections + share.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="center right")
    save_figure(fig, path)
