"""part_distance: numbers derived by hand."""

import functools
import math

import numpy as np
import pytest
import torch

from qgait.evaluation import part_distance

# distances are float64 by default (issue 16); the hand-computed expectations are float32 literals
assert_close = functools.partial(torch.testing.assert_close, check_dtype=False)


def emb(*parts):
    """One embedding [c, p] from its p part vectors (each of length c)."""
    return torch.stack([torch.as_tensor(p, dtype=torch.float32) for p in parts], dim=-1)


def test_euclidean_is_averaged_over_parts_not_flattened():
    probe = emb([0.0, 0.0], [0.0, 0.0])[None]  # [1, 2, 2]
    gallery = torch.stack(
        [
            emb([3.0, 4.0], [0.0, 0.0]),  # parts at distance 5 and 0: mean 2.5 (flattened norm 5)
            emb([3.0, 0.0], [0.0, 4.0]),  # parts at distance 3 and 4: mean 3.5 (flattened norm 5 too)
            emb([1.0, 0.0], [0.0, 0.0]),  # 1 and 0: mean 0.5
        ]
    )
    d = part_distance(probe, gallery)
    assert d.shape == (1, 3)
    assert d.dtype == torch.float64
    assert_close(d, torch.tensor([[2.5, 3.5, 0.5]]))
    assert part_distance(probe, gallery, precision="float32").dtype == torch.float32
    flat = torch.linalg.norm(gallery.flatten(1) - probe.flatten(1), dim=1)
    assert_close(flat, torch.tensor([5.0, 5.0, 1.0]))  # the wrong convention differs


def test_euclidean_two_probes_two_parts():
    # probe A parts (1,1),(0,2); probe B parts (4,5),(0,0)
    probe = torch.stack([emb([1.0, 1.0], [0.0, 2.0]), emb([4.0, 5.0], [0.0, 0.0])])
    # gallery G parts (1,1),(0,0): A -> (0 + 2)/2 = 1 ; B -> (sqrt(9+16)=5 + 0)/2 = 2.5
    gallery = emb([1.0, 1.0], [0.0, 0.0])[None]
    assert_close(part_distance(probe, gallery), torch.tensor([[1.0], [2.5]]))


def test_cosine_on_known_angles():
    probe = emb([1.0, 0.0], [1.0, 0.0])[None]
    s3 = math.sqrt(3.0)
    gallery = torch.stack(
        [
            emb([2.0, 0.0], [0.0, 3.0]),  # angles 0 and 90 deg: cos 1, 0 -> 1 - 0.5 = 0.5
            emb([1.0, 1.0], [-1.0, 0.0]),  # 45 and 180 deg: cos 0.7071, -1 -> 1 - (-0.1464) = 1.1464
            emb([1.0, s3], [s3, 1.0]),  # 60 and 30 deg: cos 0.5, 0.8660 -> 1 - 0.6830 = 0.3170
            emb([5.0, 0.0], [7.0, 0.0]),  # same directions, other lengths: 0
        ]
    )
    expected = [0.5, 1.0 - (math.sqrt(0.5) - 1.0) / 2, 1.0 - (0.5 + s3 / 2) / 2, 0.0]
    d = part_distance(probe, gallery, metric="cos")[0]
    assert_close(d, torch.tensor(expected), atol=1e-6, rtol=0)


def test_cosine_of_zero_part_is_zero_similarity():
    probe = emb([1.0, 0.0], [0.0, 0.0])[None]  # second part all zero: cosine 0 with anything
    gallery = emb([1.0, 0.0], [1.0, 0.0])[None]
    assert_close(part_distance(probe, gallery, metric="cos"), torch.tensor([[0.5]]))


def test_chunking_matches_unchunked_and_bruteforce():
    gen = torch.Generator().manual_seed(0)
    probe = torch.randn(37, 8, 5, generator=gen)
    gallery = torch.randn(23, 8, 5, generator=gen)
    brute = torch.linalg.norm(probe[:, None] - gallery[None], dim=2).mean(-1)  # [37, 23]
    full = part_distance(probe, gallery, chunk=1024)
    assert_close(full, brute, atol=1e-5, rtol=1e-5)
    for chunk in (1, 4, 36, 37):
        assert_close(part_distance(probe, gallery, chunk=chunk), full, atol=1e-6, rtol=0)
        assert_close(
            part_distance(probe, gallery, "cos", chunk=chunk), part_distance(probe, gallery, "cos"), atol=1e-6, rtol=0
        )


def test_numpy_and_float64_inputs():
    probe = np.array([[[0.0, 0.0], [0.0, 0.0]]])  # float64 [1, 2, 2]
    gallery = np.array([[[3.0, 0.0], [4.0, 0.0]]])  # part 0 = (3, 4), part 1 = (0, 0)
    d = part_distance(probe, gallery)
    assert isinstance(d, torch.Tensor) and d.dtype == torch.float64
    assert_close(d, torch.tensor([[2.5]]))
    # integer input is converted too
    assert_close(part_distance(probe.astype(np.int64), gallery.astype(np.int64)), torch.tensor([[2.5]]))


def test_self_distance_is_clamped_not_nan():
    x = torch.full((3, 64, 4), 1000.0) + torch.arange(3.0)[:, None, None] * 1e-3
    d = part_distance(x, x)
    assert torch.isfinite(d).all() and (d >= 0).all()


@pytest.mark.parametrize(
    "probe, gallery, kwargs, match",
    [
        (torch.zeros(2, 3), torch.zeros(2, 3, 1), {}, r"\[n, c, p\]"),
        (torch.zeros(2, 3, 1), torch.zeros(2, 3, 1, 1), {}, r"\[n, c, p\]"),
        (torch.zeros(2, 3, 2), torch.zeros(0, 3, 2), {}, "gallery is empty"),
        (torch.zeros(0, 3, 2), torch.zeros(1, 3, 2), {}, "probe is empty"),
        (torch.zeros(2, 3, 2), torch.zeros(2, 4, 2), {}, "same"),
        (torch.zeros(2, 3, 2), torch.zeros(2, 3, 3), {}, "same"),
        (torch.tensor([[[float("nan")]]]), torch.zeros(1, 1, 1), {}, "NaN"),
        (torch.zeros(1, 1, 1), torch.tensor([[[float("inf")]]]), {}, "NaN or infinite"),
        (torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), {"metric": "l1"}, "unknown metric"),
        (torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), {"chunk": 0}, "chunk"),
    ],
)
def test_bad_input_raises_value_error(probe, gallery, kwargs, match):
    with pytest.raises(ValueError, match=match):
        part_distance(probe, gallery, **kwargs)


def test_non_array_raises_type_error():
    with pytest.raises(TypeError):
        part_distance([[[0.0]]], torch.zeros(1, 1, 1))


def test_float64_ranks_near_ties_as_exact_distances_do_and_float32_does_not():
    """Issue 16: the float32 Gram expansion cancels |a|^2 + |b|^2 - 2ab catastrophically for large embeddings, so
    two gallery entries at nearly the same distance can swap; the default float64 path ranks as exact distances."""
    g = torch.Generator().manual_seed(0)
    c, p, n = 64, 4, 200
    base = 300.0 * torch.randn(1, c, p, generator=g)  # large norms: float32 round-off ~ 1e-7 * |x|^2 ~ 1e-1
    probes = base + torch.randn(n, c, p, generator=g)
    direction = torch.randn(2, c, p, generator=g)
    direction /= direction.flatten(1).norm(dim=1)[:, None, None]
    gallery = torch.cat([base + direction[:1], base + (1 + 1e-4) * direction[1:]])  # two near-tied entries
    exact = ((probes[:, None].double() - gallery[None].double()).square().sum(2).sqrt().mean(2))  # [n, 2]
    want = exact.argmin(1)
    d64 = part_distance(probes, gallery)
    d32 = part_distance(probes, gallery, precision="float32")
    assert d64.dtype == torch.float64 and d32.dtype == torch.float32
    assert torch.equal(d64.argmin(1), want)
    assert torch.allclose(d64, exact, rtol=1e-12, atol=1e-9)
    assert (d32.argmin(1) != want).sum() > 0  # the problem the default avoids
    with pytest.raises(ValueError, match="precision"):
        part_distance(probes, gallery, precision="float16")


def test_cross_view_reports_its_precision_and_float64_is_the_default():
    from qgait.evaluation import evaluate_cross_view

    g = torch.Generator().manual_seed(1)
    subjects = [s for s in ("a", "b") for _ in range(8)]
    conds = ["nm-01", "nm-02", "nm-03", "nm-04", "nm-05", "nm-06", "bg-01", "cl-01"] * 2
    views = ["000"] * 8 + ["018"] * 8
    emb = torch.randn(16, 8, 2, generator=g)
    r64 = evaluate_cross_view(emb, subjects, conds, views, "casia-b")
    r32 = evaluate_cross_view(emb, subjects, conds, views, "casia-b", precision="float32")
    assert r64["distance_precision"] == "float64" and r32["distance_precision"] == "float32"
    assert r64["mean"] == pytest.approx(r32["mean"])  # no near-ties here: same figures
