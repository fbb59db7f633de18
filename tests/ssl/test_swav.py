"""SwAV pieces: Sinkhorn marginals, swapped-prediction loss, the multi-crop model."""

from __future__ import annotations

import math

import pytest
import torch

from monai_lessmore.ssl.swav import SwAVLoss, SwAVModel, SwAVPrototypes, sinkhorn


def _scores(b: int = 64, k: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(b, 8, generator=g), dim=1)
    c = torch.nn.functional.normalize(torch.randn(k, 8, generator=g), dim=1)
    return z @ c.t()


@pytest.mark.parametrize("iterations", [3, 10])
def test_sinkhorn_rows_sum_to_one(iterations):
    q = sinkhorn(_scores(), epsilon=0.05, iterations=iterations)
    assert q.shape == (64, 16)
    assert torch.all(q >= 0)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(64), atol=1e-5, rtol=0)


def test_sinkhorn_columns_equal_partition():
    """Columns sum to B/K: the equal-partition constraint of SwAV eq. 3 (exact in the limit of iterations)."""
    s = _scores()
    q = sinkhorn(s, epsilon=0.05, iterations=200)
    torch.testing.assert_close(q.sum(dim=0), torch.full((16,), 64 / 16), atol=1e-3, rtol=0)
    # the column error shrinks with iterations; three (Table 8) are already closer than a plain softmax
    errs = [(sinkhorn(s, epsilon=0.05, iterations=n).sum(0) - 4).abs().max() for n in (3, 10, 50)]
    assert errs[0] > errs[1] > errs[2]
    assert errs[0] < (torch.softmax(s / 0.05, dim=1).sum(0) - 4).abs().max()


def test_sinkhorn_is_stable_under_amp():
    """Cosine scores / 0.05 overflow exp() in float16; the max-shift and float32 maths keep Q finite."""
    q = sinkhorn(_scores().half() * 1.0, epsilon=0.05, iterations=3)
    assert q.dtype == torch.float32
    assert torch.isfinite(q).all()


def test_sinkhorn_rejects_bad_args():
    with pytest.raises(ValueError, match="batch, prototypes"):
        sinkhorn(torch.zeros(3))
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn(torch.zeros(3, 2), epsilon=0)


def test_swav_loss_identical_views_lower_than_unrelated():
    torch.manual_seed(0)
    protos = torch.nn.functional.normalize(torch.randn(30, 16), dim=1)
    z1 = torch.nn.functional.normalize(torch.randn(32, 16), dim=1)
    z2 = torch.nn.functional.normalize(torch.randn(32, 16), dim=1)
    loss = SwAVLoss()
    same = loss([z1 @ protos.t(), z1 @ protos.t()])
    unrelated = loss([z1 @ protos.t(), z2 @ protos.t()])
    assert same < unrelated
    assert unrelated > 0.9 * math.log(30)  # unrelated views: about the entropy of a uniform guess


def test_swav_loss_uses_queue_and_checks_crops():
    torch.manual_seed(0)
    s = [torch.randn(4, 10), torch.randn(4, 10), torch.randn(4, 10)]
    loss = SwAVLoss(crops_for_assign=[0, 1])
    a = loss(s)
    b = loss(s, [torch.randn(20, 10), torch.randn(20, 10)])
    assert torch.isfinite(a) and torch.isfinite(b) and not torch.isclose(a, b)
    with pytest.raises(ValueError, match="crops_for_assign"):
        SwAVLoss(crops_for_assign=[0, 5])(s)
    with pytest.raises(ValueError, match="temperature"):
        SwAVLoss(temperature=0)


def test_prototypes_normalize():
    p = SwAVPrototypes(8, 5)
    p.layers.weight.data.mul_(7)
    p.normalize()
    torch.testing.assert_close(p.weight.norm(dim=1), torch.ones(5))


def test_swav_model_multicrop_shapes():
    torch.manual_seed(0)
    model = SwAVModel(hidden_dim=64, output_dim=16, num_prototypes=10).eval()
    crops = [torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64), torch.rand(2, 3, 32, 32)]
    with torch.no_grad():
        z, p = model(crops)
    assert [t.shape for t in z] == [(2, 16)] * 3 and [t.shape for t in p] == [(2, 10)] * 3
    torch.testing.assert_close(z[0].norm(dim=1), torch.ones(2))
