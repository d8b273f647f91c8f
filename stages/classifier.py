"""DVC stage `classifier`: train the dataset classifier, the feature extractor of
evaluate.feature_extractor=classifier. When it is the extractor, a test accuracy below
classifier.min_accuracy fails the stage (after writing the checkpoint and its accuracy,
so they can be inspected)."""

from __future__ import annotations

from pathlib import Path

import click
from tqdm import tqdm

from ddpmlab.data.image_set import ImageSet
from ddpmlab.evaluation.classifier import CHECKPOINT_KIND as CLASSIFIER_KIND
from ddpmlab.evaluation.classifier import check_accuracy, train_classifier
from ddpmlab.model import checkpoint
from ddpmlab.nn.devices import resolve_device
from ddpmlab.pipeline.stage_io import params_option, read_json, read_params, stage_errors, write_json


@click.command(help=__doc__)
@params_option
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="Prepared data folder.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Classifier checkpoint to write.")
@click.option("--metrics", "metrics_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="JSON file for its accuracy.")
@stage_errors
def main(params_path: str, data_dir: Path, out: Path, metrics_path: Path) -> None:
    params = read_params(params_path)
    cfg = params.classifier
    device = resolve_device(params.device)
    card = read_json(data_dir / "card.json")
    if card["num_classes"] < 2 and params.evaluate.feature_extractor != "classifier":
        # nothing to classify, and nothing needs the classifier: record that instead of a checkpoint of nothing
        checkpoint.save({"in_channels": card["channels"], "num_classes": card["num_classes"], "model": None, "test_accuracy": None}, out, CLASSIFIER_KIND)
        write_json(metrics_path, {"test_accuracy": None, "train_accuracy": None, "note": "single-class data: no classifier"})
        click.echo("single-class data: no classifier trained (evaluate uses Inception features)")
        return
    train, test = ImageSet.load(data_dir / "train.npz"), ImageSet.load(data_dir / "test.npz")
    with tqdm(total=cfg.steps, desc="classifier", unit="step") as bar:

        def on_step(step: int, loss: float) -> None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss:.4f}")

        result = train_classifier(
            train, test, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=params.seed, device=device, on_step=on_step
        )
    payload = {
        "in_channels": result.model.in_channels,
        "num_classes": result.model.num_classes,
        "model": result.model.cpu().state_dict(),
        "test_accuracy": result.test_accuracy,
    }
    checkpoint.save(payload, out, CLASSIFIER_KIND)
    write_json(metrics_path, {"test_accuracy": round(result.test_accuracy, 4), "train_accuracy": round(result.train_accuracy, 4)})
    click.echo(f"classifier test accuracy {result.test_accuracy:.4f} (train {result.train_accuracy:.4f})")
    if params.evaluate.feature_extractor == "classifier":
        check_accuracy(result.test_accuracy, cfg.min_accuracy)


if __name__ == "__main__":
    main()
