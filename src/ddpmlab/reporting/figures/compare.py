"""`ddpmlab compare`'s figures: FID against NFE and sampling cost, several runs' loss curves, the compared
schedules, their forward processes side by side, and the sample grids of several models. Each writes one PNG."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ddpmlab.data import images
from ddpmlab.reporting import replicates
from ddpmlab.reporting.figures.forward_strip import forward_strip
from ddpmlab.reporting.figures.style import colors, plt, save_figure, show_image

if TYPE_CHECKING:
    from ddpmlab.core.diffusion import DiffusionProcess
    from ddpmlab.reporting.compare import Selection


def fid_figure(selection: Selection, path: Path) -> None:
    """FID against network evaluations per image (log x) and against sampling seconds per image (log x), a line per model and sampler."""
    fig, (ax_steps, ax_cost) = plt.subplots(1, 2, figsize=(13, 4.4))
    curves = selection.curves
    for (label, rows), color in zip(curves, colors(len(curves))):
        points = _mean_over_replicates(rows)
        ax_steps.plot(points["nfe"], points["fid"], marker="o", color=color, label=label)
        ax_steps.errorbar(points["nfe"], points["fid"], yerr=[points["fid"] - points["low"], points["high"] - points["fid"]], fmt="none",
                          ecolor=color, alpha=0.6, capsize=3)  # fmt: skip
        ax_cost.plot(points["ms"], points["fid"], marker="o", color=color, label=label)
        for _, row in points.iterrows():
            ax_cost.annotate(str(int(row["nfe"])), (row["ms"], row["fid"]), fontsize=7, xytext=(3, 3), textcoords="offset points", color=color)
    steps = sorted(selection.evaluations["nfe"].unique())
    ax_steps.set_xscale("log")
    ax_steps.set_xticks(steps, [str(s) for s in steps])
    ax_steps.minorticks_off()
    ax_steps.set(xlabel="network evaluations per image, NFE (log scale)", ylabel="FID vs test split (lower is better)", title="FID vs NFE")
    ax_cost.set_xscale("log")
    ax_cost.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax_cost.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 20, not 2x10^1
    ax_cost.xaxis.set_minor_formatter(NullFormatter())
    ax_cost.set(xlabel="sampling time per image, ms (log scale; labels: NFE)", ylabel="FID vs test split (lower is better)",
                title="FID vs sampling cost")  # fmt: skip
    for ax in (ax_steps, ax_cost):
        ax.grid(True, which="both", alpha=0.3)
    ax_steps.legend(fontsize=8)
    save_figure(fig, path)


def _mean_over_replicates(rows: pd.DataFrame) -> pd.DataFrame:
    """Per NFE: mean FID over replicates with its interval (t over replicates; one replicate: its own
    interval, or none), and mean sampling ms per image. Lower ends are kept above 0 for the log axes."""
    out = []
    for nfe, at in rows.groupby("nfe", sort=True):
        single = None
        if len(at) == 1 and "metrics.fid_ci_low" in at and at["metrics.fid_ci_low"].notna().all():
            single = (float(at["metrics.fid_ci_low"].iloc[0]), float(at["metrics.fid_ci_high"].iloc[0]))
        p = replicates.pool(at["metrics.fid"].astype(float).tolist(), single)
        low, high = (p.low, p.high) if p.low is not None else (p.mean, p.mean)
        out.append({"nfe": int(nfe), "fid": p.mean, "low": max(low, p.mean * 0.05), "high": high, "ms": at["metrics.seconds_per_sample"].mean() * 1000})
    return pd.DataFrame(out)


def loss_curves_figure(histories: dict[str, pd.DataFrame], path: Path) -> None:
    """Training loss (log y) against step, one line per training run; histories: label -> (step, value)."""
    fig, ax = plt.subplots(figsize=(9, 4))
    for (label, history), color in zip(sorted(histories.items()), colors(len(histories))):
        ax.plot(history["step"], history["value"], color=color, label=label, lw=1.3)
    ax.set_yscale("log")
    ax.set(xlabel="training step", ylabel="training loss (log scale)", title="Training loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def compared_schedules_figure(processes: dict[str, DiffusionProcess], path: Path) -> None:
    """alpha-bar_t and log10 SNR_t against t / T for each (schedule, T): label -> process."""
    fig, (ax_abar, ax_snr) = plt.subplots(1, 2, figsize=(13, 4))
    for (label, process), color in zip(processes.items(), colors(len(processes))):
        t = np.arange(1, process.T + 1) / process.T
        abar = process.alpha_bars.numpy()
        ax_abar.plot(t, abar, color=color, label=label)
        ax_snr.plot(t, np.log10(abar / (1 - abar)), color=color, label=label)
    ax_abar.set(xlabel="t / T", ylabel="alpha-bar_t (share of signal variance)", title="Signal kept: x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps")
    ax_snr.set(xlabel="t / T", ylabel="log10 SNR = log10(abar / (1 - abar))", title="Signal-to-noise ratio")
    for ax in (ax_abar, ax_snr):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def forward_figure(image: np.ndarray, processes: dict[str, DiffusionProcess], path: Path, columns: int = 9, seed: int = 0) -> None:
    """The same image and the same noise under q(x_t | x_0) of each schedule: a row per schedule,
    columns at t = 0 .. T evenly (eq. 4). image: (C, H, W) uint8."""
    labels = list(processes)
    fig, axes = plt.subplots(len(labels), 1, figsize=(1.1 * columns, 1.35 * len(labels) + 0.3), squeeze=False)
    for ax, label in zip(axes[:, 0], labels):
        frames, ts = forward_strip(image[None], processes[label].betas, columns, seed)
        strip = images.grid(frames, columns=columns, padding=1)
        show_image(ax, strip)
        ax.set_xticks([(i + 0.5) * strip.shape[2] / columns for i in range(columns)], [f"t={t}" for t in ts], fontsize=7)
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("Forward process q(x_t | x_0): one image, one noise draw, each schedule", fontsize=10)
    save_figure(fig, path)


def sample_grids_figure(grids: dict[tuple[str, int], Path], path: Path) -> None:
    """Sample grids side by side: a row per model, a column per step count; grids: (label, steps) -> PNG."""
    labels = sorted({label for label, _ in grids})
    steps = sorted({s for _, s in grids}, reverse=True)
    first = plt.imread(next(iter(grids.values())))
    width = 3.2  # inches per grid; rows as tall as the grids are
    height = width * first.shape[0] / first.shape[1] + 0.4
    fig, axes = plt.subplots(len(labels), len(steps), figsize=(width * len(steps) + 1.2, height * len(labels) + 0.5), squeeze=False)
    for i, label in enumerate(labels):
        for j, s in enumerate(steps):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if (label, s) in grids:
                ax.imshow(plt.imread(grids[(label, s)]), cmap="gray", interpolation="nearest")
            else:
                ax.text(0.5, 0.5, "not evaluated", ha="center", va="center", transform=ax.transAxes, color="gray")
            if i == 0:
                ax.set_title(f"{s} sampling steps", fontsize=9)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle("Samples from the same seeds at matched step counts", fontsize=10)
    save_figure(fig, path)
