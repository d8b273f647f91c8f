"""Scores recomputed on B bootstrap resamples at once, from features and per-image indicators.

Resamples are given as counts (B, N): how often each image appears in resample b
(:meth:`ddpmlab.evaluation.bootstrap.Resampler.counts`), so a resampled mean is a weighted one
and nothing is copied B times. The formulas are those of the point estimates in
:mod:`ddpmlab.evaluation.metrics` (torch-fidelity's definitions); tests/test_bootstrap.py
checks that all-ones counts give torch-fidelity's values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CHUNK = 64  # resamples per batch: bounds the (chunk, D, D) covariances in memory
LOW_RANK_CHUNK = 16  # the same for frechet_low_rank's (chunk, M, N) cross-Gram matrices


@dataclass(frozen=True)
class ResampledMoments:
    """Per resample: mean (B, D), covariance (B, D, D) and its symmetric square root (B, D, D)."""

    mean: torch.Tensor
    cov: torch.Tensor
    sqrt_cov: torch.Tensor | None = None


def weighted_moments(features: torch.Tensor, counts: torch.Tensor, with_sqrt: bool = False) -> ResampledMoments:
    """Mean and unbiased covariance (divisor N - 1, as np.cov) of each resample.

    features: (N, D); counts: (B, N), rows summing to N."""
    x = features.double()
    n = counts.sum(1)[0].item()
    mean = counts @ x / n  # (B, D)
    covs, roots = [], []
    for start in range(0, len(counts), CHUNK):
        w = counts[start : start + CHUNK]
        weighted = x[None] * w[:, :, None].sqrt()  # (b, N, D)
        m = mean[start : start + CHUNK]
        cov = (weighted.transpose(1, 2) @ weighted - n * m[:, :, None] * m[:, None, :]) / (n - 1)
        covs.append(cov)
        if with_sqrt:
            values, vectors = torch.linalg.eigh(cov)
            roots.append(vectors @ (values.clamp_min(0).sqrt()[:, :, None] * vectors.transpose(1, 2)))
    return ResampledMoments(mean, torch.cat(covs), torch.cat(roots) if with_sqrt else None)


def frechet(generated: ResampledMoments, reference: ResampledMoments) -> torch.Tensor:
    """FID per resample (Heusel et al. 2017, eq. 6): ||mu_g - mu_r||^2 + tr(S_g) + tr(S_r) - 2 tr((S_r^1/2 S_g S_r^1/2)^1/2).

    tr((S_g S_r)^1/2) is computed as tr((S_r^1/2 S_g S_r^1/2)^1/2), which has the same eigenvalues
    but is symmetric, so a symmetric eigensolver applies. reference needs ``sqrt_cov``. Returns (B,)."""
    root = reference.sqrt_cov
    cross = []
    for start in range(0, len(root), CHUNK):
        r = root[start : start + CHUNK]
        product = r @ generated.cov[start : start + CHUNK] @ r
        cross.append(torch.linalg.eigvalsh(product).clamp_min(0).sqrt().sum(1))
    trace = torch.diagonal(generated.cov, dim1=1, dim2=2).sum(1) + torch.diagonal(reference.cov, dim1=1, dim2=2).sum(1)
    return ((generated.mean - reference.mean) ** 2).sum(1) + trace - 2 * torch.cat(cross)


def frechet_low_rank(generated: torch.Tensor, reference: torch.Tensor, w_g: torch.Tensor, w_r: torch.Tensor) -> torch.Tensor:
    """FID per resample when features outnumber images (D > N, e.g. Inception's 2048 at N = 500),
    from Gram matrices instead of D x D covariances.

    With A = diag(sqrt(w)) (X - 1 mu^T) / sqrt(N - 1), so that S = A^T A, the eigenvalues of S_g S_r
    are the squared singular values of M = A_r A_g^T (M x N), hence tr((S_g S_r)^1/2) = ||M||_*.
    M, the means and the traces come from X_r X_g^T, X_g X_g^T and X_r X_r^T: the cost grows with
    N and M, not with D. generated (N, D), reference (M, D), counts (B, N), (B, M). Returns (B,)."""
    xg, xr = generated.double(), reference.double()
    k_gg, k_rr, k_rg = xg @ xg.T, xr @ xr.T, xr @ xg.T
    n, m = w_g.sum(1)[0].item(), w_r.sum(1)[0].item()
    out = []
    for start in range(0, len(w_g), LOW_RANK_CHUNK):
        wg, wr = w_g[start : start + LOW_RANK_CHUNK], w_r[start : start + LOW_RANK_CHUNK]
        mean_g2 = ((wg @ k_gg) * wg).sum(1) / n**2  # |mu_g|^2
        mean_r2 = ((wr @ k_rr) * wr).sum(1) / m**2
        cross = ((wr @ k_rg) * wg).sum(1) / (n * m)  # mu_r . mu_g
        trace_g = (wg @ torch.diagonal(k_gg) - n * mean_g2) / (n - 1)
        trace_r = (wr @ torch.diagonal(k_rr) - m * mean_r2) / (m - 1)
        # (X_r - 1 mu_r^T)(X_g - 1 mu_g^T)^T: the cross-Gram centred with each resample's own means
        centred = k_rg[None] - (wg @ k_rg.T)[:, :, None] / n - (wr @ k_rg)[:, None, :] / m + cross[:, None, None]
        a = wr.sqrt()[:, :, None] * centred * wg.sqrt()[:, None, :] / ((n - 1) * (m - 1)) ** 0.5
        gram = a.transpose(1, 2) @ a if n <= m else a @ a.transpose(1, 2)  # the smaller of M^T M and M M^T
        nuclear = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().sum(1)
        out.append(mean_g2 + mean_r2 - 2 * cross + trace_g + trace_r - 2 * nuclear)
    return torch.cat(out)


def polynomial_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KID's kernel k(x, y) = (x.y / D + 1)^3 (Binkowski et al. 2018; torch-fidelity's defaults). (N, D), (M, D) -> (N, M)."""
    return (a.double() @ b.double().T / a.shape[1] + 1) ** 3


def kid(k_gg: torch.Tensor, k_rr: torch.Tensor, k_gr: torch.Tensor, w_g: torch.Tensor, w_r: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 per resample from kernel matrices (N, N), (M, M), (N, M) and counts (B, N), (B, M).

    The within-set terms average k over pairs of *different* original images: pairs of an
    image with a copy of itself are left out, as the U-statistic leaves out i = j, so a resample
    estimates the same quantity as the original set. Returns (B,)."""

    def within(k: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        pairs = w.sum(1) ** 2 - (w**2).sum(1)
        return (((w @ k) * w).sum(1) - (w**2) @ torch.diagonal(k)) / pairs

    n, m = w_g.sum(1), w_r.sum(1)
    return within(k_gg, w_g) + within(k_rr, w_r) - 2 * ((w_g @ k_gr) * w_r).sum(1) / (n * m)


def inception_score(logits: torch.Tensor, indices: torch.Tensor, splits: int) -> torch.Tensor:
    """IS per resample: the resampled images (B, N) are cut into ``splits`` consecutive splits, as
    torch-fidelity cuts its shuffled set, and exp E KL(p(y|x) || p_split(y)) is averaged over them. Returns (B,)."""
    log_p = logits.double().log_softmax(dim=1)
    n = indices.shape[1]
    out = []
    for start in range(0, len(indices), CHUNK):
        chosen = log_p[indices[start : start + CHUNK]]  # (b, N, K)
        scores = []
        for i in range(splits):
            chunk = chosen[:, i * n // splits : (i + 1) * n // splits]
            log_marginal = chunk.exp().mean(1, keepdim=True).log()
            scores.append((chunk.exp() * (chunk - log_marginal)).sum(2).mean(1).exp())
        out.append(torch.stack(scores, 1).mean(1))
    return torch.cat(out)


def proportion(indicator: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The resampled mean of a per-image 0/1 indicator (N,) (precision, recall, copy rate, accuracy). Returns (B,)."""
    return counts @ indicator.double() / counts.sum(1)
