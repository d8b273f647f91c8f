"""Classifier-free guidance (Ho & Salimans 2022): sampling a conditional network towards its class.

One network learns eps(x, t, y) and, with the null label, eps(x, t) (labels dropped with
probability train.p_uncond). Sampling with weight w uses

    eps~(x, t, y) = (1 + w) eps(x, t, y) - w eps(x, t, null)        (Ho & Salimans 2022, eq. 6)

w = 0 is plain conditional sampling; larger w trades diversity (FID) for class fidelity.
The rule is applied to the raw network output whatever the objective: x_0 and v predictions
are affine in eps given x_t with the same coefficients for both terms, and the weights
(1 + w, -w) sum to 1, so guiding the output is guiding eps. A learned-variance output
(2C channels) is guided in its first C channels; the variance comes from the conditional pass.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Network = Callable[..., torch.Tensor]


class LabelError(ValueError):
    pass


def class_labels(count: int, num_classes: int) -> np.ndarray:
    """The class asked of image i: i mod num_classes, so every class gets count / num_classes images
    and image i's class, like its noise, does not depend on the batch size."""
    return np.arange(count, dtype=np.int64) % num_classes


def check_labels(labels: torch.Tensor | np.ndarray, num_classes: int) -> None:
    """Labels must be classes of the training data, [0, num_classes); the null label is internal."""
    values = torch.as_tensor(labels)
    if num_classes < 1:
        raise LabelError("class labels given, but the model is unconditional (model.conditional: false)")
    bad = values[(values < 0) | (values >= num_classes)]
    if bad.numel():
        raise LabelError(f"class label {int(bad[0])} is outside [0, {num_classes}): the model was trained on {num_classes} classes")


def network_passes(w: float | None) -> int:
    """Network evaluations per image per sampling step: a guided step (w != 0) also runs the null class."""
    return 2 if w else 1


def guided(network: Network, y: torch.Tensor, w: float, null_label: int, channels: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """network(x, t) for the sampler: conditioned on y (B,), guided with weight w.

    x: (B, C, H, W), t: (B,) -> (B, C_out, H, W). For w > 0 the conditional and the
    unconditional pass run as one batch of 2B."""

    def forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        labels = y.to(x.device)
        if w == 0:
            return network(x, t, y=labels)
        both = network(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([labels, torch.full_like(labels, null_label)]))
        conditional, unconditional = both.chunk(2)
        mean = (1 + w) * conditional[:, :channels] - w * unconditional[:, :channels]
        return torch.cat([mean, conditional[:, channels:]], dim=1)

    return forward
