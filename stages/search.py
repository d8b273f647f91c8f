"""DVC stage `search`: step grids searched on the trained model, one per deterministic sampler and
step count of the plan, for sample.spacing's "searched" (``ddpmlab.sampling.grid_search``).

Calibration: search.samples x_T from seeds (search.seed, i), disjoint from the evaluated images'
(sample.seed), each solved once by the many-step reference (``sampling.endpoint``); every
candidate grid is scored by the sampler's mean endpoint error against it. No training or test
image is read, so nothing of the evaluation data leaks into the grids. Writes the grids, the
closed-form grids' errors, and the cost next to training's; without "searched" in sample.spacing
it writes an empty list at once.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import click
import torch
from tqdm import tqdm

from ddpmlab.core.math_names import SPACINGS
from ddpmlab.core.step_grids import step_grid
from ddpmlab.model.draw import draw_tensor
from ddpmlab.model.trained import TrainedDiffusion
from ddpmlab.nn.devices import resolve_device
from ddpmlab.pipeline.stage_io import params_option, read_json, read_params, stage_errors, write_json
from ddpmlab.sampling.endpoint import endpoint_errors, reference_run
from ddpmlab.sampling.grid_search import search_grid
from ddpmlab.sampling.guidance import class_labels
from ddpmlab.sampling.plan import search_targets
from ddpmlab.sampling.trajectory import image_seeds


@click.command(help=__doc__)
@params_option
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Folder with model.pt and train.json.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="JSON file for the searched grids.")
@stage_errors
def main(params_path: str, model_dir: Path, out: Path) -> None:
    params = read_params(params_path)
    cfg, search = params.sample, params.search
    train_info = read_json(model_dir / "train.json")
    record = {"calibration": dataclasses.asdict(search), "grids": []}
    conditional = bool(train_info["params"]["model"].get("conditional"))
    targets = search_targets(cfg, conditional)
    if not targets:
        write_json(out, {**record, "note": "sample.spacing has no 'searched': nothing to search"})
        click.echo("search: sample.spacing has no 'searched'; no grids searched")
        return
    device = resolve_device(params.device)
    trained = TrainedDiffusion.load(model_dir / "model.pt", device)
    network = trained.sampling_network(cfg.precision, cfg.compile, cfg.channels_last, min(cfg.batch_size, search.samples))
    T, seeds = trained.process.T, image_seeds(search.seed, 0, search.samples)
    labels = class_labels(search.samples, trained.model.num_classes) if trained.model.num_classes else None

    def draw(run):
        return draw_tensor(trained, network, run, seeds, labels, clip_x0=cfg.clip_x0, batch_size=cfg.batch_size, device=device)

    began = time.perf_counter()
    reference = draw(reference_run(T, targets[0].guidance))
    record["reference"] = {**reference_run(T).to_dict(), "seconds": round(time.perf_counter() - began, 2)}
    with tqdm(targets, desc="search", unit="grid") as bar:
        for target in bar:
            bar.set_postfix_str(target.key)

            def error_of(grid, target=target):
                return endpoint_errors(draw(dataclasses.replace(target, grid=grid)), reference).mean().item()

            starts = {spacing: step_grid(spacing, trained.process.alpha_bars, target.steps) for spacing in SPACINGS}
            result = search_grid(error_of, T, starts, search.max_runs)
            record["grids"].append({"sampler": target.sampler, "steps": target.steps, "nfe": target.nfe, **result.to_dict()})
            tqdm.write(f"  {target.key:>24} ({target.nfe} NFE): {list(result.grid)} error {result.error:.4f} "
                       f"(best closed form {result.start} {result.fixed[result.start]:.4f}; {result.runs} runs, {result.seconds:.1f}s)")  # fmt: skip
    seconds = time.perf_counter() - began
    training = train_info.get("seconds_this_session")
    record.update({"T": T, "checkpoint_step": trained.step, "device": str(device), "seconds": round(seconds, 1), "training_seconds": training})
    write_json(out, record)
    share = f" ({100 * seconds / training:.1f}% of training's {training:.0f}s)" if training else ""
    click.echo(f"searched {len(targets)} grids on {search.samples} calibration images in {seconds:.0f}s{share}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
