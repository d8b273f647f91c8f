"""Nearest neighbours between feature matrices in bounded memory: the one routine behind
precision / recall and the memorisation check.

Distances are Euclidean, computed a block at a time as sqrt(|a|^2 + |b|^2 - 2 a.b) (one matmul
per block) in float64, so the peak extra memory is one (query_chunk, key_chunk) block plus the
running top-k, whatever the sizes of the two sets. An optional per-key ``offset`` turns the search into
"which key minimises ||q - key_j|| - offset_j": with offset = a ball's radius, the best value is
<= 0 exactly when q lies in some ball, which is how precision and recall are counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_CHUNK = 4096  # rows and columns of one distance block: 4096^2 float64 = 128 MiB


@dataclass(frozen=True)
class Neighbours:
    """distances (N, k), ascending along dim 1, and the matching key indices (N, k)."""

    distances: torch.Tensor
    indices: torch.Tensor


def block_distances(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (n, m) between queries (n, D) and keys (m, D); clamped at 0 against cancellation."""
    squared = queries.square().sum(1, keepdim=True) + keys.square().sum(1) - 2 * queries @ keys.T
    return squared.clamp_min_(0).sqrt_()


def knn(
    queries: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    *,
    offset: torch.Tensor | None = None,
    chunk: int = DEFAULT_CHUNK,
    device: torch.device | str | None = None,
) -> Neighbours:
    """The k keys nearest to each query (a query that is also a key finds itself at distance ~0).

    queries: (N, D); keys: (M, D); offset: (M,) subtracted from each key's distance. Work happens
    on ``device`` (default: the queries'), a (chunk, chunk) block at a time; the result is on the CPU.
    """
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"queries and keys must be (N, D) and (M, D), got {tuple(queries.shape)} and {tuple(keys.shape)}")
    if not 1 <= k <= len(keys):
        raise ValueError(f"k must be in [1, {len(keys)}] (the number of keys), got {k}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    device = torch.device(device) if device is not None else queries.device
    dtype = torch.float64  # in float32 the expanded form loses ~1e-2 to cancellation: an exact copy would not be at 0
    out_d, out_i = [], []
    for q0 in range(0, len(queries), chunk):
        q = queries[q0 : q0 + chunk].to(device, dtype)
        best_d = torch.full((len(q), 0), float("inf"), dtype=dtype, device=device)
        best_i = torch.zeros((len(q), 0), dtype=torch.long, device=device)
        for k0 in range(0, len(keys), chunk):
            block = block_distances(q, keys[k0 : k0 + chunk].to(device, dtype))
            if offset is not None:
                block -= offset[k0 : k0 + chunk].to(device, dtype)
            index = torch.arange(k0, k0 + block.shape[1], device=device).expand(len(q), -1)
            merged_d, merged_i = torch.cat([best_d, block], 1), torch.cat([best_i, index], 1)
            best_d, order = merged_d.topk(min(k, merged_d.shape[1]), dim=1, largest=False)  # sorted ascending
            best_i = merged_i.gather(1, order)
        out_d.append(best_d.cpu())
        out_i.append(best_i.cpu())
    return Neighbours(torch.cat(out_d), torch.cat(out_i))


def kth_neighbour_radii(points: torch.Tensor, k: int, **kwargs) -> torch.Tensor:
    """(N,) distance from each point to its k-th nearest other point: the k-NN ball radii of
    Kynkaanniemi et al. 2019. The point itself is the 0th neighbour, as in torch-fidelity."""
    return knn(points, points, k + 1, **kwargs).distances[:, k]


def inside_any_ball(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, **kwargs) -> torch.Tensor:
    """(N,) bool: whether query n lies within radii[j] of some centres[j] (boundary included)."""
    return knn(queries, centres, 1, offset=radii, **kwargs).distances[:, 0] <= 0
