"""DVC stage `prepare`: dataset source -> uint8 train/test arrays, a dataset card and a grid of real images.

data.source picks digits (bundled), mnist, fashion_mnist, cifar10 (local files first, then a
download) or folder (data.root, any directory of images); see docs/datasets.md.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import click
import numpy as np

from ddpmlab.data import images
from ddpmlab.data.image_set import ImageSet, SourceData
from ddpmlab.data.sources import load_source, pixel_stats, split
from ddpmlab.pipeline.stage_io import params_option, read_params, stage_errors, write_json


def content_sha256(train: ImageSet, test: ImageSet) -> str:
    digest = hashlib.sha256()
    for part in (train.images, train.labels, test.images, test.labels):
        digest.update(np.ascontiguousarray(part).data)
    return digest.hexdigest()


def dataset_card(source: str, data: SourceData, train: ImageSet, test: ImageSet) -> dict:
    """The prepared data in one small JSON: read by train / evaluate / report and logged to MLflow."""
    num_classes = len(data.classes)
    return {
        "source": source,
        "image_size": int(train.images.shape[-1]),
        "channels": int(train.images.shape[1]),
        "num_classes": num_classes,
        "classes": data.classes,
        "train": {"count": len(train), "per_class": np.bincount(train.labels, minlength=num_classes).tolist()},
        "test": {"count": len(test), "per_class": np.bincount(test.labels, minlength=num_classes).tolist()},
        **pixel_stats(train, test),
        "content_sha256": content_sha256(train, test),
        "origin": data.origin,
    }


@click.command(help=__doc__)
@params_option
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@stage_errors
def main(params_path: str, out: Path) -> None:
    params = read_params(params_path)
    cfg = params.data
    data = load_source(cfg)
    train, test = (data.train, data.test) if data.test is not None else split(data.train, cfg.test_fraction, params.seed)
    out.mkdir(parents=True, exist_ok=True)
    train.save(out / "train.npz")
    test.save(out / "test.npz")
    card = dataset_card(cfg.source, data, train, test)
    write_json(out / "card.json", card)
    scale = images.display_scale(cfg.image_size)
    images.save_png(images.upscale(images.grid(train.images[:64], columns=8), scale), out / "real_grid.png")
    skipped = f", {data.origin['skipped']} bad files skipped" if data.origin.get("skipped") else ""
    click.echo(
        f"prepared {cfg.source}: {len(train)} train / {len(test)} test images of {tuple(train.images.shape[1:])}, "
        f"{card['num_classes']} classes{skipped}"
    )


if __name__ == "__main__":
    main()
