"""How much of a few-step FID is the draw of x_T: runs of one trained model scored with several
`sample.seed` values (fresh images each time; the same reference split, floor and protocol as the
evaluate stage), pooled into a mean with a Student-t 95% interval per run, and paired differences
against a many-step run drawn from the same x_T.

One evaluate stage scores one draw of 500 images. Its bootstrap interval says how far that draw's
FID may sit from the protocol's mean, and picking the lowest of many such runs favours a lucky
draw. Averaging over seeds estimates the mean itself; the differences to a many-step run of the
same seeds say whether a few-step run is as good as the model gets.

Runs in a project that has run `dvc repro` (models/ddpm, models/classifier.pt, data/prepared,
params.yaml); grids for "searched" come from a `search` stage's JSON:

    python benchmarks/few_step_seeds.py --project . --grids models/searched_grids.json --seeds 1 2 3 4 5 6 7 8 \\
        --reference dpmpp_2m:uniform:50 --runs unipc_afs:searched:5 dpmpp_2m:uniform:4 --csv /tmp/seeds.csv
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from ddpmlab.core.math_names import SEARCHED
from ddpmlab.data.image_set import ImageSet
from ddpmlab.evaluation.metrics import Extractor, frechet_distance
from ddpmlab.evaluation.protocol import SPLITS, Protocol
from ddpmlab.model.draw import draw_images
from ddpmlab.model.trained import TrainedDiffusion
from ddpmlab.nn.devices import resolve_device
from ddpmlab.pipeline.stage_io import read_params
from ddpmlab.reporting.replicates import pool
from ddpmlab.sampling.plan import Run
from ddpmlab.sampling.registry import sampler_spec
from ddpmlab.sampling.trajectory import image_seeds


def parse_run(text: str, sample_cfg, searched: dict[tuple[str, int], list[int]]) -> Run:
    """`sampler:spacing:steps` -> a Run with the sample config's options (and its searched grid)."""
    try:
        sampler, spacing, steps = text.split(":")
        steps = int(steps)
    except ValueError:
        raise SystemExit(f"--runs/--reference take sampler:spacing:steps (e.g. unipc_afs:searched:5), got {text!r}") from None
    run = Run(sampler, steps, spacing, None, sampler_spec(sampler).options_from(sample_cfg))
    if spacing == SEARCHED:
        if (sampler, steps) not in searched:
            raise SystemExit(f"{text}: no searched grid for {sampler} at {steps} steps in --grids (has {sorted(searched)})")
        run = dataclasses.replace(run, grid=tuple(searched[sampler, steps]))
    return run


def t_interval(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, low, high): the 95% Student-t interval of the mean, as `ddpmlab compare` pools replicates."""
    pooled = pool(list(values))
    return pooled.mean, pooled.low, pooled.high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=Path("."))
    parser.add_argument("--grids", type=Path, help="a search stage's JSON (for runs on the searched spacing)")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="sample.seed values, one draw of x_T each")
    parser.add_argument("--runs", nargs="+", required=True, help="sampler:spacing:steps")
    parser.add_argument("--reference", required=True, help="the many-step run the others are paired with")
    parser.add_argument("--versus", help="one of --runs: a second paired-difference column against it")
    parser.add_argument("--images", type=int, default=None, help="images per draw (default sample.num_samples)")
    parser.add_argument("--csv", type=Path, required=True, help="one row per (seed, run)")
    args = parser.parse_args()
    if len(args.seeds) < 2:
        raise SystemExit("--seeds needs at least 2 values for an interval")

    torch.set_grad_enabled(False)
    params = read_params(args.project / "params.yaml")
    cfg = params.sample
    if params.evaluate.feature_extractor != "classifier":
        raise SystemExit(
            f"evaluate.feature_extractor is {params.evaluate.feature_extractor!r}; this benchmark scores classifier features only"
        )
    searched = {(g["sampler"], g["steps"]): g["grid"] for g in json.loads(args.grids.read_text())["grids"]} if args.grids else {}
    reference = parse_run(args.reference, cfg, searched)
    runs = [reference] + [parse_run(text, cfg, searched) for text in args.runs]
    versus = parse_run(args.versus, cfg, searched).key if args.versus else None
    if versus is not None and versus not in {run.key for run in runs}:
        raise SystemExit(f"--versus {args.versus} is not one of --runs")
    n = args.images or cfg.num_samples

    device = resolve_device(params.device)
    trained = TrainedDiffusion.load(args.project / "models/ddpm/model.pt", device)
    if trained.model.num_classes:
        raise SystemExit("models/ddpm is class-conditional; this benchmark draws unconditional samples only")
    network = trained.sampling_network(cfg.precision, cfg.compile, cfg.channels_last, min(cfg.batch_size, n))
    extractor = Extractor(
        params.evaluate.feature_extractor, args.project / "models/classifier.pt", device, params.evaluate.batch_size
    )
    data = {split: ImageSet.load(args.project / f"data/prepared/{split}.npz") for split in SPLITS}
    references = {split: extractor(data[split].images) for split in SPLITS}
    protocol = Protocol(
        references, kid_subset_size=params.evaluate.kid_subset_size, isc_splits=params.evaluate.isc_splits, seed=params.seed
    )
    floor = protocol.real_floor(n)[0]["fid"]
    # The floor is one draw too: other draws of n training images (protocol seeds = --seeds) show its spread.
    floors = np.array([dataclasses.replace(protocol, seed=seed).real_floor(n)[0]["fid"] for seed in args.seeds])
    print(f"real floor FID {floor:.3f} ({n} training images against the {len(data['test'])}-image test split); "
          "over {} other draws of training images: {:.3f} [{:.3f}, {:.3f}]".format(len(floors), *t_interval(floors)))  # fmt: skip

    fid = {run.key: [] for run in runs}
    rows = []
    for seed in args.seeds:
        began = time.perf_counter()
        for run in runs:
            images = draw_images(
                trained,
                network,
                run,
                image_seeds(seed, 0, n),
                None,
                clip_x0=cfg.clip_x0,
                batch_size=cfg.batch_size,
                device=device,
            )
            score = frechet_distance(extractor(images).features, references["test"].features)
            fid[run.key].append(score)
            timesteps = " ".join(map(str, run.process(trained.process).model_timesteps.tolist()))
            rows.append({"seed": seed, "run": run.key, "nfe": run.nfe, "timesteps": timesteps, "fid": round(score, 5)})
        print(
            f"seed {seed}: "
            + "  ".join(f"{run.key} {fid[run.key][-1]:.3f}" for run in runs)
            + f"  ({time.perf_counter() - began:.0f}s)",
            flush=True,
        )

    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    print(f"\n{len(args.seeds)} draws of {n} images; mean FID [95% t interval over draws]; floor {floor:.3f}; "
          f"difference: paired with {reference.key} on the same x_T\n")  # fmt: skip
    against = [reference.key] + ([versus] if versus else [])
    print(f"| run | NFE | FID | FID / floor | {' | '.join(f'minus {key}' for key in against)} | lowest, highest draw |")
    print("|---|---|---|---|" + "---|" * len(against) + "---|")
    for run in runs:
        values = np.array(fid[run.key])
        mean, low, high = t_interval(values)
        diffs = [
            "" if run.key == key else "{:+.3f} [{:+.3f}, {:+.3f}]".format(*t_interval(values - np.array(fid[key])))
            for key in against
        ]
        print(f"| {run.key} | {run.nfe} | {mean:.3f} [{low:.3f}, {high:.3f}] | {mean / floor:.2f}x [{low / floor:.2f}, {high / floor:.2f}] "
              f"| {' | '.join(diffs)} | {values.min():.3f}, {values.max():.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
