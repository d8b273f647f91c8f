"""FID of every sampler x spacing x step count on a trained model, through the real stages.

Runs `stages/sample.py` and `stages/evaluate.py` of this repository with params.yaml plus the
sweep's overrides, on an existing `train` output (models/ddpm by default), into --out, with
its own MLflow store, and prints FID against NFE per (sampler, spacing) with the real-data
floor, the best run within each NFE budget, and each sampler's best grid. Measures quality,
not speed (times are in --out/steps.csv).

    python benchmarks/sampler_sweep.py --out /tmp/sweep \\
        --samplers ddpm,ddim,euler_ancestral,plms,dpmpp_2m,dpmpp_3m,heun \\
        --spacings uniform,trailing,quadratic,logsnr,karras --steps 10,5,3
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]


def run_stage(*args: object) -> None:
    subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, check=True)


@click.command(help=__doc__)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for params, samples, metrics and the MLflow store.")
@click.option("--model", default="models/ddpm", show_default=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Output of `train`.")
@click.option("--samplers", default="ddpm,ddim,euler_ancestral,plms,dpmpp_2m,dpmpp_3m,heun", show_default=True, help="Comma-separated sampler names.")
@click.option("--spacings", default="uniform", show_default=True, help="Comma-separated step grids.")
@click.option("--steps", default="50,20,10,5", show_default=True, help="Comma-separated step counts.")
@click.option("--skip-sampling", is_flag=True, help="Only re-read an earlier sweep's results in --out.")
def main(out: Path, model: Path, samplers: str, spacings: str, steps: str, skip_sampling: bool) -> None:
    out = out.resolve()
    if not skip_sampling:
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["sample"].update(sampler=samplers.split(","), spacing=spacings.split(","), steps=[int(s) for s in steps.split(",")])
        params["evaluate"].update(snapshot_samples=0, nll_images=0)  # the model's curve and NLL are the pipeline's, not the sweep's
        out.mkdir(parents=True, exist_ok=True)
        (out / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{out / 'mlflow.db'}"
        run_stage("stages/sample.py", "--params", out / "params.yaml", "--model", model, "--out", out / "samples")
        run_stage(
            "stages/evaluate.py", "--params", out / "params.yaml", "--data", "data/prepared", "--samples", out / "samples", "--model", model,
            "--classifier", "models/classifier.pt", "--classifier-metrics", "reports/classifier.json", "--out", out / "metrics.json",
            "--details", out / "evaluation.json", "--steps-csv", out / "steps.csv", "--guidance-csv", out / "guidance.csv",
            "--nfe-csv", out / "fid_vs_nfe.csv", "--nll-terms", out / "nll_terms.csv", "--training-curve", out / "fid_over_training.csv",
        )  # fmt: skip
    rows = pd.read_csv(out / "steps.csv")
    floor = float(pd.read_json(out / "metrics.json", typ="series")["real_fid"])
    table = rows.pivot_table(index=["sampler", "spacing"], columns="nfe", values="fid").round(3)
    click.echo(f"FID vs test split by NFE (real-data floor {floor:.3f}); {len(rows)} runs\n{table.to_string()}\n")
    click.echo("Best run within each NFE budget (FID / floor):")
    for budget in (5, 10, 20, 50):
        within = rows[rows["nfe"] <= budget]
        if len(within):
            best = within.loc[within["fid"].idxmin()]
            click.echo(f"  <= {budget:>2} NFE: {best['key']:<24} NFE {best['nfe']:>3}  FID {best['fid']:.3f}  ({best['fid'] / floor:.2f}x)")
    click.echo("\nEach sampler's best grid (lowest mean FID over the step counts swept):")
    means = rows.groupby(["sampler", "spacing"])["fid"].mean().reset_index()
    for sampler, group in means.groupby("sampler"):
        best = group.loc[group["fid"].idxmin()]
        click.echo(f"  {sampler:<16} {best['spacing']:<10} mean FID {best['fid']:.3f}")


if __name__ == "__main__":
    main()
