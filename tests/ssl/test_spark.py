"""SparK: masks, sparse encoder (visible outputs independent of masked pixels), decoder, loss."""

from __future__ import annotations

import pytest
import torch

from monai_lessmore.ssl.spark import (
    SparKLoss, SparKModel, SparseBatchNorm2d, SparseEncoder, patchify, random_patch_mask, sparsify_, upsample_mask,
)


def test_random_patch_mask_ratio():
    m = random_patch_mask(3, (4, 5), 0.6, generator=torch.Generator().manual_seed(0))
    assert m.shape == (3, 1, 4, 5) and m.dtype == torch.bool
    assert m.flatten(1).sum(1).tolist() == [8, 8, 8]  # round(20 * 0.4) visible per image


def test_upsample_mask_and_error():
    m = torch.tensor([[[[True, False]]]])
    up = upsample_mask(m, (2, 4))
    assert up.tolist() == [[[[True, True, False, False], [True, True, False, False]]]]
    with pytest.raises(ValueError, match="multiple"):
        upsample_mask(m, (3, 3))


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return SparseEncoder()


@pytest.mark.parametrize("train", [True, False])
def test_visible_outputs_do_not_depend_on_masked_pixels(encoder, train):
    """The defining property of SparK's sparse convolution: changing masked pixels changes nothing, at every
    stage, in training mode too (BN statistics over visible positions only)."""
    encoder.train(train)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 64, 64, generator=g)
    mask = random_patch_mask(2, (2, 2), 0.5, generator=g)
    hidden = ~upsample_mask(mask, (64, 64)).expand_as(x)
    x2 = x.clone()
    x2[hidden] = 100 * torch.randn(int(hidden.sum()), generator=g)
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    f1 = encoder(x, mask)
    encoder.load_state_dict(state)  # same running statistics for the second pass
    f2 = encoder(x2, mask)
    encoder.load_state_dict(state)
    for a, b in zip(f1, f2):
        m = upsample_mask(mask, a.shape[-2:]).expand_as(a)
        assert torch.equal(a[m], b[m])
        assert not a[~m].any()  # masked positions stay empty


def test_sparse_bn_uses_visible_statistics():
    net = torch.nn.Sequential(torch.nn.BatchNorm2d(2))
    holder = sparsify_(net)
    bn = net[0]
    assert isinstance(bn, SparseBatchNorm2d)
    x = torch.randn(1, 2, 2, 2)
    holder.mask = torch.tensor([[[[True, False], [True, True]]]])
    out = bn(x)
    vis = x.permute(0, 2, 3, 1)[holder.mask[:, 0]]  # (3, 2)
    expected = (vis - vis.mean(0)) / torch.sqrt(vis.var(0, unbiased=False) + bn.eps)
    torch.testing.assert_close(out.permute(0, 2, 3, 1)[holder.mask[:, 0]], expected)
    assert out[0, :, 0, 1].abs().sum() == 0


def test_sparsify_keeps_key_names():
    from monai_lessmore.ssl.backbone import resnet50_encoder

    net = resnet50_encoder()
    keys = list(net.state_dict())
    sparsify_(net)
    assert list(net.state_dict()) == keys


def test_spark_loss_only_masked_patches():
    target = torch.randn(1, 3, 64, 64)
    mask = torch.tensor([[[[True, False], [True, True]]]])  # patch 1 masked
    loss = SparKLoss(32)
    t = patchify(target, 32)
    t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6).sqrt()
    rec = torch.zeros(1, 3, 64, 64)
    expected = (t[0, 1] ** 2).mean()
    torch.testing.assert_close(loss(rec, target, mask), expected)
    # errors on visible patches are ignored
    rec2 = rec.clone()
    rec2[..., :32, :32] = 5.0
    torch.testing.assert_close(loss(rec2, target, mask), expected)


def test_spark_model_forward_backward():
    torch.manual_seed(0)
    model = SparKModel(decoder_width=32)
    loss = model(torch.randn(2, 3, 64, 64))
    loss.backward()
    assert torch.isfinite(loss)
    assert model.decoder.mask_tokens[0].grad is not None and model.backbone.conv1.weight.grad is not None
    with pytest.raises(ValueError, match="multiple of the 32 px patch"):
        model(torch.randn(1, 3, 48, 48))
