"""A small CNN classifier of the prepared dataset: the feature extractor of
``evaluate.feature_extractor: classifier``.

It works offline (Inception-v3's weights are a download), and Inception features of 16x16
grayscale digits would mean little anyway. A classifier trained on the same data gives
features that separate its classes: its penultimate layer stands in for Inception's pool3
(FID, KID) and its logits for Inception's logits (IS). Numbers computed with it are
comparable only with each other, never with published Inception-based FIDs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ddpmlab.data.image_set import ImageSet, to_model_range
from ddpmlab.model import checkpoint

FEATURE_DIM = 128
CHECKPOINT_KIND = "classifier"


class DigitClassifier(nn.Module):
    """(B, C, S, S) images in [-1, 1] -> (features (B, 128), logits (B, num_classes))."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.SiLU(),
            nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.GroupNorm(8, 64), nn.SiLU(),
            nn.Conv2d(64, 128, 3, padding=1, stride=2), nn.GroupNorm(8, 128), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(128, FEATURE_DIM), nn.SiLU(),
        )  # fmt: skip
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return features, self.head(features)


class ClassifierTooWeak(RuntimeError):
    """The classifier misses classifier.min_accuracy, so its features cannot be trusted as a metric."""


def check_accuracy(test_accuracy: float, min_accuracy: float) -> None:
    if test_accuracy < min_accuracy:
        raise ClassifierTooWeak(
            f"classifier test accuracy {test_accuracy:.4f} is below classifier.min_accuracy={min_accuracy}: features of a "
            "classifier that cannot tell the classes apart make FID / IS / KID meaningless. Train it longer "
            "(classifier.steps, classifier.lr) or use evaluate.feature_extractor=inception-v3-compat."
        )


@dataclass
class ClassifierResult:
    model: DigitClassifier
    test_accuracy: float
    train_accuracy: float


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 1/8 of the image side, so features do not key on exact pixels."""
    max_shift = max(1, x.shape[-1] // 8)
    dx, dy = (torch.randint(-max_shift, max_shift + 1, (2,), generator=generator)).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


@torch.no_grad()
def accuracy(model: DigitClassifier, data: ImageSet, device: torch.device, batch_size: int = 512) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(data), batch_size):
        x = to_model_range(torch.from_numpy(data.images[start : start + batch_size]).to(device))
        y = torch.from_numpy(data.labels[start : start + batch_size]).to(device)
        correct += int((model(x)[1].argmax(1) == y).sum())
    return correct / len(data)


def train_classifier(
    train: ImageSet,
    test: ImageSet,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
    on_step: Callable[[int, float], None] | None = None,
) -> ClassifierResult:
    """AdamW + cross-entropy with shift augmentation for ``steps`` batches (reshuffled every epoch),
    cosine learning-rate decay; a budget in steps costs the same on 1,797 digits as on 60,000 MNIST
    images. Deterministic for a given seed on CPU."""
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    if num_classes < 2:
        raise ClassifierTooWeak(
            "the data has a single class (for data.source=folder: no class sub-folders), so no classifier can be trained "
            "as a feature extractor; use evaluate.feature_extractor=inception-v3-compat or put the images in class sub-folders"
        )
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitClassifier(train.images.shape[1], num_classes).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    images = torch.from_numpy(train.images)
    labels = torch.from_numpy(train.labels)
    model.train()
    order, position = torch.randperm(len(train), generator=generator), 0
    for step in range(1, steps + 1):
        if position >= len(order):
            order, position = torch.randperm(len(train), generator=generator), 0
        idx = order[position : position + batch_size]
        position += batch_size
        x = _augment(to_model_range(images[idx]), generator).to(device)
        loss = F.cross_entropy(model(x)[1], labels[idx].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if on_step is not None:
            on_step(step, float(loss.detach()))
    return ClassifierResult(model, accuracy(model, test, device), accuracy(model, train, device))


def load_classifier(path: str | Path, device: torch.device) -> DigitClassifier:
    payload = checkpoint.load(path, CHECKPOINT_KIND)
    model = DigitClassifier(payload["in_channels"], payload["num_classes"])
    checkpoint.load_weights(model, payload["model"], path, "classifier")
    return model.to(device).eval()


@torch.no_grad()
def predict(model: DigitClassifier, images: np.ndarray, device: torch.device, batch_size: int = 512) -> np.ndarray:
    """Predicted class of each uint8 image (N, C, H, W) -> (N,) int64."""
    out = []
    for start in range(0, len(images), batch_size):
        x = to_model_range(torch.from_numpy(images[start : start + batch_size])).to(device)
        out.append(model(x)[1].argmax(dim=1).cpu())
    return torch.cat(out).numpy()
