"""Scores recomputed on R replicates at once (jackknife leave-outs or bootstrap resamples), from features and per-image indicators.

Replicates are given as counts (R, N): how often (with what weight) each image appears in replicate r
(:meth:`ddpmlab.evaluation.resampling.Resampler.counts`), so a resampled mean is a weighted one
and nothing is copied R times. The formulas are those of the point estimates in
:mod:`ddpmlab.evaluation.metrics` (torch-fidelity's definitions); tests/test_resampling.py
checks that all-ones counts give torch-fidelity's values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CHUNK = 64  # resamples per batch: bounds the (chunk, D, D) covariances in memory
WEIGHTED_BYTES = 1 << 28  # bounds weighted_moments' (chunk, N, D) weighted copy: a 60,000-image split goes 4 resamples at a time
LOW_RANK_CHUNK = 16  # the same for frechet_low_rank's (chunk, M, N) cross-Gram matrices


@dataclass(frozen=True)
class ResampledMoments:
    """Per resample: mean (B, D), covariance (B, D, D) and its symmetric square root (B, D, D)."""

    mean: torch.Tensor
    cov: torch.Tensor
    sqrt_cov: torch.Tensor | None = None


def weighted_moments(features: torch.Tensor, counts: torch.Tensor, with_sqrt: bool = False) -> ResampledMoments:
    """Mean and unbiased covariance (divisor N - 1, as np.cov) of each resample.

    features: (N, D); counts: (B, N), each row summing to its own n (N for a resample, the kept
    images for a jackknife's leave-out)."""
    x = features.double()
    n_all = counts.sum(1)  # (B,)
    mean = counts @ x / n_all[:, None]  # (B, D)
    covs, roots = [], []
    chunk = max(1, min(CHUNK, WEIGHTED_BYTES // (x.numel() * x.element_size())))
    for start in range(0, len(counts), chunk):
        w = counts[start : start + chunk]
        weighted = x[None] * w[:, :, None].sqrt()  # (b, N, D)
        m, n = mean[start : start + chunk], n_all[start : start + chunk, None, None]
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
    out = []
    for start in range(0, len(w_g), LOW_RANK_CHUNK):
        wg, wr = w_g[start : start + LOW_RANK_CHUNK], w_r[start : start + LOW_RANK_CHUNK]
        n, m = wg.sum(1), wr.sum(1)  # (b,) each
        mean_g2 = ((wg @ k_gg) * wg).sum(1) / n**2  # |mu_g|^2
        mean_r2 = ((wr @ k_rr) * wr).sum(1) / m**2
        cross = ((wr @ k_rg) * wg).sum(1) / (n * m)  # mu_r . mu_g
        trace_g = (wg @ torch.diagonal(k_gg) - n * mean_g2) / (n - 1)
        trace_r = (wr @ torch.diagonal(k_rr) - m * mean_r2) / (m - 1)
        # (X_r - 1 mu_r^T)(X_g - 1 mu_g^T)^T: the cross-Gram centred with each resample's own means
        centred = k_rg[None] - (wg @ k_rg.T)[:, :, None] / n[:, None, None] - (wr @ k_rg)[:, None, :] / m[:, None, None] + cross[:, None, None]
        a = wr.sqrt()[:, :, None] * centred * wg.sqrt()[:, None, :] / (((n - 1) * (m - 1)) ** 0.5)[:, None, None]
        gram = a.transpose(1, 2) @ a if len(xg) <= len(xr) else a @ a.transpose(1, 2)  # the smaller of M^T M and M M^T
        nuclear = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().sum(1)
        out.append(mean_g2 + mean_r2 - 2 * cross + trace_g + trace_r - 2 * nuclear)
    return torch.cat(out)


def frechet_split(pooled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """FID between the images each row of ``labels`` (P, n + m) marks 1 and those it marks 0 (the exact test's
    permutations of one pooled set (n + m, D); every row marks the same n). Returns (P,)."""
    other = 1.0 - labels
    n, m = labels[0].sum().item(), other[0].sum().item()
    if pooled.shape[1] > min(n, m):  # more features than images: Gram matrices
        return frechet_low_rank(pooled, pooled, labels, other)
    # One scatter per permutation: the other side's is the pooled scatter minus it.
    total, scatter_all = pooled.sum(0), pooled.T @ pooled
    sum_g = labels @ pooled  # (P, D)
    scatter_g = (pooled.T[None] * labels[:, None, :]) @ pooled  # (P, D, D)
    mean_g, mean_r = sum_g / n, (total - sum_g) / m
    cov_g = (scatter_g - n * mean_g[:, :, None] * mean_g[:, None, :]) / (n - 1)
    cov_r = (scatter_all - scatter_g - m * mean_r[:, :, None] * mean_r[:, None, :]) / (m - 1)
    # tr((S_g S_r)^1/2) from the eigenvalues of L^T S_g L, S_r = L L^T: a Cholesky factor costs less than an
    # eigendecomposition. The jitter keeps a feature with no variance factorable; every permutation gets the same one.
    jitter = 1e-12 * torch.diagonal(scatter_all).mean() / (n + m) * torch.eye(pooled.shape[1], dtype=pooled.dtype)
    factor = torch.linalg.cholesky(cov_r + jitter)
    cross = torch.linalg.eigvalsh(factor.transpose(1, 2) @ cov_g @ factor).clamp_min(0).sqrt().sum(1)
    trace = torch.diagonal(cov_g, dim1=1, dim2=2).sum(1) + torch.diagonal(cov_r, dim1=1, dim2=2).sum(1)
    return ((mean_g - mean_r) ** 2).sum(1) + trace - 2 * cross


def polynomial_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KID's kernel k(x, y) = (x.y / D + 1)^3 (Binkowski et al. 2018; torch-fidelity's defaults). (N, D), (M, D) -> (N, M)."""
    return (a.double() @ b.double().T / a.shape[1] + 1) ** 3


KERNEL_ROWS = 1024  # rows of a kernel matrix held at once: a 60,000-image reference needs 0.5 GB, not its 28.8 GB whole


def within_mean(features: torch.Tensor, counts: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """KID's within-set term per resample: the weighted mean of k over pairs of *different* original
    images, sum_{i != j} w_i w_j k(x_i, x_j) / sum_{i != j} w_i w_j. features (M, D), counts (B, M) -> (B,).

    Pairs of an image with a copy of itself are left out, as the U-statistic leaves out i = j, so a
    resample estimates the same quantity as the original set. The (M, M) kernel is built ``rows`` rows
    at a time (default KERNEL_ROWS) and never held whole."""
    rows = rows or KERNEL_ROWS
    w = counts.double()
    total = torch.zeros(len(w), dtype=torch.float64)  # sum_{i, j} w_i w_j k_ij
    diagonal = torch.empty(len(features), dtype=torch.float64)
    for start in range(0, len(features), rows):
        block = polynomial_kernel(features[start : start + rows], features)  # (b, M)
        total += ((w[:, start : start + rows] @ block) * w).sum(1)
        diagonal[start : start + len(block)] = block.diagonal(offset=start)
    pairs = w.sum(1) ** 2 - (w**2).sum(1)
    return (total - (w**2) @ diagonal) / pairs


def kid(generated: torch.Tensor, reference: torch.Tensor, w_g: torch.Tensor, w_r: torch.Tensor, within_r: torch.Tensor | None = None) -> torch.Tensor:
    """Unbiased MMD^2 (KID, Binkowski et al. 2018) per resample of features (N, D) and (M, D) with
    counts (B, N) and (B, M). ``within_r``: ``within_mean(reference, w_r)`` when the caller keeps it
    (a reference shared by every run). Returns (B,)."""
    within_r = within_mean(reference, w_r) if within_r is None else within_r
    w_g, w_r = w_g.double(), w_r.double()
    cross = torch.zeros(len(w_g), dtype=torch.float64)  # sum_{i, j} w_g,i w_r,j k(g_i, r_j), KERNEL_ROWS rows at a time
    for start in range(0, len(generated), KERNEL_ROWS):
        cross += ((w_g[:, start : start + KERNEL_ROWS] @ polynomial_kernel(generated[start : start + KERNEL_ROWS], reference)) * w_r).sum(1)
    return within_mean(generated, w_g) + within_r - 2 * cross / (w_g.sum(1) * w_r.sum(1))


def inception_score(logits: torch.Tensor, indices: list[torch.Tensor], splits: int) -> torch.Tensor:
    """IS per replicate: each replicate's images (indices: R tensors, of equal length within a call
    to stack) are cut into ``splits`` consecutive splits, as torch-fidelity cuts its shuffled set, and
    exp E KL(p(y|x) || p_split(y)) is averaged over them. Returns (R,)."""
    if len({len(index) for index in indices}) > 1:  # a jackknife's groups differ by one image: one replicate at a time
        return torch.cat([inception_score(logits, [index], splits) for index in indices])
    log_p = logits.double().log_softmax(dim=1)
    n = len(indices[0])
    out = []
    for start in range(0, len(indices), CHUNK):
        chosen = log_p[torch.stack(indices[start : start + CHUNK])]  # (b, N, K)
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
