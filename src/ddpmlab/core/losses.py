"""Training objectives: the regression target, its weighting over t, and the hybrid loss.

    objective  eps | x0 | v          what the network predicts (Ho et al. 2020; Salimans & Ho 2022)
    weighting  mse                    plain MSE of that prediction: L_simple (Ho et al. eq. 14) for eps
               min_snr                Min-SNR-gamma (Hang et al. 2023): the x0-space loss weighted by
                                      min(SNR_t, gamma), expressed for each target (see ``snr_weight``)
    learned variance                  L_hybrid = L_simple + lambda L_vlb (Nichol & Dhariwal 2021,
                                      eq. 16), the VLB term seeing the mean only through a stop-gradient
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ddpmlab.core.diffusion import DiffusionProcess, split_output
from ddpmlab.core.likelihood import nats_to_bits_per_dim, term_at
from ddpmlab.core.math_names import OBJECTIVES, WEIGHTINGS


def snr_weight(process: DiffusionProcess, t: torch.Tensor, objective: str, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weight per sample, shape (B,), with SNR_t = abar_t / (1 - abar_t).

    Since ||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2 and ||v - v_hat||^2 = (SNR + 1) ||x0 - x0_hat||^2,
    weighting the x0-space error by min(SNR, gamma) means weights min(SNR, gamma) / SNR for eps,
    min(SNR, gamma) for x0 and min(SNR, gamma) / (SNR + 1) for v (Hang et al. 2023, sec. 3.4).
    """
    snr = (process.alpha_bars / (1 - process.alpha_bars)).to(t.device)[t]
    clipped = snr.clamp(max=gamma)
    weight = {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}[objective]
    return weight.float()


@dataclass(frozen=True)
class TrainingLoss:
    """loss(model, process, x0, t, noise) -> scalar, for one batch.

    x0, noise: (B, C, H, W); t: (B,) 0-based indices. With ``learn_variance`` the network
    outputs 2C channels: the prediction, then the raw variance interpolation of
    ``DiffusionProcess.learned_log_variance``.
    """

    objective: str = "eps"
    weighting: str = "mse"
    min_snr_gamma: float = 5.0
    learn_variance: bool = False
    vlb_weight: float = 1e-3  # lambda of L_hybrid

    @classmethod
    def from_params(cls, params: Any) -> TrainingLoss:
        """The loss a :class:`ddpmlab.config.Params` trains with (``objective`` and ``train.*``)."""
        t = params.train
        return cls(params.objective, t.weighting, t.min_snr_gamma, t.learn_variance, t.vlb_weight)

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; allowed: {', '.join(OBJECTIVES)}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown loss weighting {self.weighting!r}; allowed: {', '.join(WEIGHTINGS)}")

    def target(self, process: DiffusionProcess, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self.objective == "eps":
            return noise
        if self.objective == "x0":
            return x0
        return process.v_from_x0_eps(x0, t, noise)

    def __call__(self, model, process: DiffusionProcess, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        xt = process.q_sample(x0, t, noise)
        output = model(xt, t)
        output = output.to(torch.promote_types(output.dtype, torch.float32))  # bf16 under autocast -> fp32 loss; fp64 stays
        prediction, variance_output = split_output(output, x0.shape[1])
        per_sample = (prediction - self.target(process, x0, t, noise)).square().flatten(1).mean(dim=1)
        if self.weighting == "min_snr":
            per_sample = per_sample * snr_weight(process, t, self.objective, self.min_snr_gamma)
        loss = per_sample.mean()
        if self.learn_variance:
            if variance_output is None:
                raise ValueError(f"learn_variance needs a network with {2 * x0.shape[1]} output channels, got {output.shape[1]}")
            loss = loss + self.vlb_weight * process.T * self.vlb_term(process, prediction, variance_output, x0, xt, t).mean()
        return loss

    def vlb_term(self, process, prediction, variance_output, x0, xt, t) -> torch.Tensor:
        """L_{t-1} in bits/dim per sample (B,), with a stop-gradient on the predicted mean so this
        term trains the variance only. Scaled by T in ``__call__``: sum_t L_t = T E_t[L_t]."""
        frozen = torch.cat([prediction.detach(), variance_output], dim=1)
        per_element = term_at(process, frozen, x0, xt, t, objective=self.objective, variance="learned_range")
        return nats_to_bits_per_dim(per_element)


def simple_loss(model, process: DiffusionProcess, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, objective: str = "eps") -> torch.Tensor:
    """Unweighted MSE of the ``objective`` prediction; L_simple (eq. 14) for eps."""
    return TrainingLoss(objective=objective)(model, process, x0, t, noise)

