"""The three alignment losses against a direct, loop-by-loop evaluation of the formulas (reference §2.3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_afloc_kit import one_thread  # noqa: F401  (fixture)

from afloc.losses import global_loss, length_chunks, local_loss, local_similarity

pytestmark = pytest.mark.usefixtures("one_thread")


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _ce(scores: np.ndarray) -> float:
    """Mean cross-entropy with targets on the diagonal, rows = queries."""
    return float(np.mean([-(s[i] - np.log(np.exp(s).sum())) for i, s in enumerate(scores)]))


def direct_z(img: np.ndarray, units: np.ndarray, lens, t1=4.0, t2=5.0, agg="sum") -> np.ndarray:
    """Z_ij = log sum_k exp(t2 cos(q_k, c_k)), c_k = sum_m beta_mk r_m, beta = softmax_m(t1 softmax_k(r.q))."""
    B, D = img.shape[:2]
    Z = np.zeros((B, units.shape[0]))
    for i in range(B):
        r = img[i].reshape(D, -1).T  # [R, D]
        for j in range(units.shape[0]):
            q = units[j, :lens[j]]  # [n, D]
            a = r @ q.T  # [R, n]
            beta = _softmax(t1 * _softmax(a, axis=1), axis=0)
            c = beta.T @ r  # [n, D]
            cos = (c * q).sum(1) / np.maximum(np.linalg.norm(c, axis=1) * np.linalg.norm(q, axis=1), 1e-8)
            s = np.exp(t2 * cos)
            Z[i, j] = np.log(s.sum() if agg == "sum" else s.mean())
    return Z


def test_global_loss_is_temperature_scaled_cosine_cross_entropy_both_ways():
    g = torch.randn(5, 7, dtype=torch.float64)
    r = torch.randn(5, 7, dtype=torch.float64)
    l0, l1 = global_loss(g, r, temp3=10.0)
    gn = g.numpy() / np.linalg.norm(g.numpy(), axis=1, keepdims=True)
    rn = r.numpy() / np.linalg.norm(r.numpy(), axis=1, keepdims=True)
    S = 10.0 * gn @ rn.T
    assert abs(float(l0) - _ce(S)) < 1e-10
    assert abs(float(l1) - _ce(S.T)) < 1e-10


def test_local_similarity_matches_the_direct_formula_with_ragged_units():
    gen = torch.Generator().manual_seed(0)
    img = torch.randn(3, 6, 4, 5, generator=gen, dtype=torch.float64)
    units = torch.randn(3, 9, 6, generator=gen, dtype=torch.float64)
    lens = torch.tensor([2, 5, 1])
    Z = local_similarity(img, units, lens, 4.0, 5.0)
    ref = direct_z(img.numpy(), units.numpy(), lens.tolist())
    np.testing.assert_allclose(Z.numpy(), ref, rtol=1e-10, atol=1e-12)
    # chunking over texts does not change anything; "mean" divides inside the log
    np.testing.assert_allclose(local_similarity(img, units, lens, chunk=1).numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(local_similarity(img, units, lens, chunk=2).numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(local_similarity(img, units, lens, agg="mean").numpy(),
                               direct_z(img.numpy(), units.numpy(), lens.tolist(), agg="mean"), rtol=1e-10)


def test_length_chunks_groups_similar_lengths_longest_first():
    lens = [93, 61, 67, 41, 48, 46, 39, 3, 20, 10, 9, 4]
    groups = length_chunks(lens, cells=32 * 256)
    assert sorted(j for g in groups for j in g) == list(range(len(lens)))
    assert [[lens[j] for j in g] for g in groups] == [[93, 67, 61, 48], [46, 41, 39], [20, 10, 9, 4, 3]]
    for g in groups[:-1]:  # at most half of a group is padding, unless the group is tiny
        assert all(2 * lens[j] >= lens[g[0]] for j in g)
    # small groups are merged whatever the padding; the element budget splits large ones
    assert length_chunks(lens, cells=4) == [sorted(range(len(lens)), key=lambda j: -lens[j])]
    assert [len(g) for g in length_chunks([10] * 8, cells=1000, budget=30_000)] == [3, 3, 2]
    # a fixed size overrides both rules; ties keep the batch order
    assert length_chunks([5, 7, 5, 1], cells=10**6, chunk=2) == [[1, 0], [2, 3]]


def test_padding_units_beyond_cap_len_are_ignored():
    gen = torch.Generator().manual_seed(1)
    img = torch.randn(2, 4, 3, 3, generator=gen, dtype=torch.float64)
    units = torch.randn(2, 6, 4, generator=gen, dtype=torch.float64)
    lens = torch.tensor([3, 2])
    z = local_similarity(img, units, lens)
    units2 = units.clone()
    units2[0, 3:] = 1e3
    units2[1, 2:] = -7.0
    torch.testing.assert_close(local_similarity(img, units2, lens), z)


def test_local_loss_is_cross_entropy_of_temp3_scores_rows_images():
    gen = torch.Generator().manual_seed(2)
    img = torch.randn(4, 5, 3, 3, generator=gen, dtype=torch.float64)
    units = torch.randn(4, 7, 5, generator=gen, dtype=torch.float64)
    lens = torch.tensor([3, 7, 2, 4])
    l0, l1 = local_loss(img, units, lens, 4.0, 5.0, 10.0)
    Z = 10.0 * direct_z(img.numpy(), units.numpy(), lens.tolist())
    assert abs(float(l0) - _ce(Z)) < 1e-9
    assert abs(float(l1) - _ce(Z.T)) < 1e-9


def test_local_loss_gradients_flow_to_both_modalities():
    img = torch.randn(3, 4, 3, 3, requires_grad=True)
    units = torch.randn(3, 5, 4, requires_grad=True)
    l0, l1 = local_loss(img, units, torch.tensor([2, 3, 5]))
    (l0 + l1).backward()
    assert img.grad.abs().sum() > 0 and units.grad[:, :2].abs().sum() > 0
    assert torch.all(units.grad[0, 2:] == 0)  # units beyond cap_len get no gradient
