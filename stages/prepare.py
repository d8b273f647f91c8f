"""DVC stage `prepare`: dataset source -> uint8 train/test arrays, a dataset card and a grid of real images."""

from __future__ import annotations

import hashlib
from pathlib import Path

import click
import numpy as np

from ddpmlab import images
from ddpmlab.cli import params_option, read_params, write_json
from ddpmlab.data import ImageSet, load_source, split


def dataset_card(source: str, train: ImageSet, test: ImageSet) -> dict:
    pixels = np.concatenate([train.images, test.images]).astype(np.float64) / 255.0
    digest = hashlib.sha256()
    for part in (train.images, train.labels, test.images, test.labels):
        digest.update(np.ascontiguousarray(part).tobytes())
    return {
        "source": source,
        "image_size": int(train.images.shape[-1]),
        "channels": int(train.images.shape[1]),
        "num_classes": int(max(train.labels.max(), test.labels.max())) + 1,
        "train": {"count": len(train), "per_class": np.bincount(train.labels).tolist()},
        "test": {"count": len(test), "per_class": np.bincount(test.labels).tolist()},
        "pixel_mean": round(float(pixels.mean()), 6),
        "pixel_std": round(float(pixels.std()), 6),
        "content_sha256": digest.hexdigest(),
    }


@click.command(help=__doc__)
@params_option
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
def main(params_path: str, out: Path) -> None:
    params = read_params(params_path)
    data = load_source(params.data.source, params.data.image_size)
    train, test = split(data, params.data.test_fraction, params.seed)
    out.mkdir(parents=True, exist_ok=True)
    train.save(out / "train.npz")
    test.save(out / "test.npz")
    write_json(out / "card.json", dataset_card(params.data.source, train, test))
    scale = images.display_scale(params.data.image_size)
    images.save_png(images.upscale(images.grid(train.images[:64], columns=8), scale), out / "real_grid.png")
    click.echo(f"prepared {params.data.source}: {len(train)} train / {len(test)} test images of {train.images.shape[1:]}")


if __name__ == "__main__":
    main()
