"""The chunked k-NN behind precision / recall and the memorisation check: equal to brute force
for any chunk size, bounded blocks, and precision / recall equal to torch-fidelity's."""

import math

import pytest
import torch
from torch_fidelity.metric_prc import prc_features_to_metric

from ddpmlab.evaluation import neighbours
from ddpmlab.evaluation.metrics import Manifold, precision_recall
from ddpmlab.evaluation.neighbours import inside_any_ball, knn, kth_neighbour_radii


def features(n: int, d: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])  # 7 and 64 divide neither 103 nor 211
@pytest.mark.parametrize("k", [1, 5])
def test_knn_equals_brute_force(chunk: int, k: int):
    queries, keys = features(103), features(211, seed=1)
    brute = torch.cdist(queries, keys).sort(dim=1)
    found = knn(queries, keys, k, chunk=chunk)
    torch.testing.assert_close(found.distances, brute.values[:, :k], rtol=0, atol=1e-10)
    assert torch.equal(found.indices, brute.indices[:, :k])


def test_offsets_are_subtracted_per_key():
    queries, keys = features(50), features(80, seed=1)
    offset = torch.rand(80, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    brute = (torch.cdist(queries, keys) - offset).sort(dim=1)
    found = knn(queries, keys, 3, offset=offset, chunk=13)
    torch.testing.assert_close(found.distances, brute.values[:, :3], rtol=0, atol=1e-10)
    assert torch.equal(found.indices, brute.indices[:, :3])


def test_every_distance_block_is_at_most_chunk_by_chunk(monkeypatch: pytest.MonkeyPatch):
    shapes = []
    original = neighbours.block_distances

    def recording(q, k):
        shapes.append((len(q), len(k)))
        return original(q, k)

    monkeypatch.setattr(neighbours, "block_distances", recording)
    knn(features(1000, 4), features(2500, 4, seed=1), 3, chunk=300)
    assert max(r for r, _ in shapes) == 300 and max(c for _, c in shapes) == 300
    assert len(shapes) == math.ceil(1000 / 300) * math.ceil(2500 / 300)  # every pair of chunks, once
    assert sum(r * c for r, c in shapes) == 1000 * 2500


def test_radii_are_torch_fidelitys_kth_neighbour_distances():
    points = features(120)
    expected = torch.cdist(points, points).kthvalue(3 + 1).values  # torch-fidelity counts the point itself
    torch.testing.assert_close(kth_neighbour_radii(points, 3, chunk=50), expected, rtol=0, atol=1e-10)


def test_ball_membership_includes_the_boundary():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0]], dtype=torch.float64)
    radii = torch.tensor([1.0, 2.0], dtype=torch.float64)
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.5], [12.0, 0.0], [8.5, 0.0]], dtype=torch.float64)
    assert inside_any_ball(queries, centres, radii).tolist() == [True, False, True, True]


@pytest.mark.parametrize(("n_generated", "n_real"), [(200, 200), (150, 260)])
def test_precision_recall_equal_torch_fidelitys(n_generated: int, n_real: int):
    generated = features(n_generated, 8, seed=3) * 1.3 + 0.4  # overlapping but different clouds
    real = features(n_real, 8, seed=4)
    theirs = prc_features_to_metric(generated, real, prc_neighborhood=3, prc_batch_size=10000, save_cpu_ram=False, verbose=False)
    ours = precision_recall(Manifold.of(generated), Manifold.of(real))
    assert 0.05 < ours["precision"] < 0.99 and 0.05 < ours["recall"] < 0.99  # neither trivially 0 nor 1
    assert ours["precision"] == pytest.approx(theirs["precision"], abs=1e-6)
    assert ours["recall"] == pytest.approx(theirs["recall"], abs=1e-6)


def test_bad_arguments_name_the_allowed_range():
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\]"):
        knn(features(3), features(5), 6)
    with pytest.raises(ValueError, match="queries and keys must be"):
        knn(features(3, 4), features(5, 3), 1)
