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


# --- An independent re-implementation of the reference model (keyu-tian/SparK, ``pretrain/encoder.py``,
# ``pretrain/decoder.py``, ``pretrain/spark.py``), written from its source in its own style: one module-level
# active mask read by every sparse layer, sparse BN as a ``BatchNorm1d`` over the gathered visible positions, the
# reference's module names, and the loss computed inline. Our model's weights are loaded into it by name.

_REF_ACTIVE: torch.Tensor | None = None  # (B, 1, f, f) bool, True = visible


def _ref_active(h: int, w: int) -> torch.Tensor:
    a = _REF_ACTIVE
    return a.repeat_interleave(h // a.shape[-2], dim=2).repeat_interleave(w // a.shape[-1], dim=3)


class _RefConv(torch.nn.Conv2d):
    def forward(self, x):
        y = super().forward(x)
        return y * _ref_active(y.shape[2], y.shape[3])


class _RefMaxPool(torch.nn.MaxPool2d):
    def forward(self, x):
        y = super().forward(x)
        return y * _ref_active(y.shape[2], y.shape[3])


class _RefSparseBN(torch.nn.BatchNorm1d):
    def forward(self, x):
        ii = _ref_active(x.shape[2], x.shape[3]).squeeze(1).nonzero(as_tuple=True)
        bhwc = x.permute(0, 2, 3, 1)
        out = torch.zeros_like(bhwc)
        out[ii] = super().forward(bhwc[ii])
        return out.permute(0, 3, 1, 2)


def _ref_sparsify(m: torch.nn.Module) -> torch.nn.Module:
    out = m
    if isinstance(m, torch.nn.Conv2d):
        out = _RefConv(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                       bias=m.bias is not None)
    elif isinstance(m, torch.nn.MaxPool2d):
        out = _RefMaxPool(m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode)
    elif isinstance(m, torch.nn.BatchNorm2d):
        out = _RefSparseBN(m.num_features, eps=m.eps, momentum=m.momentum)
    for name, child in m.named_children():
        out.add_module(name, _ref_sparsify(child))
    return out


class _RefUNetBlock(torch.nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.up_sample = torch.nn.ConvTranspose2d(cin, cin, kernel_size=4, stride=2, padding=1, bias=True)
        self.conv = torch.nn.Sequential(
            torch.nn.Conv2d(cin, cin, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(cin), torch.nn.ReLU6(inplace=True),
            torch.nn.Conv2d(cin, cout, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return self.conv(self.up_sample(x))


class _RefLightDecoder(torch.nn.Module):
    def __init__(self, width=768):
        super().__init__()
        ch = [width // 2**i for i in range(6)]
        self.dec = torch.nn.ModuleList([_RefUNetBlock(a, b) for a, b in zip(ch[:-1], ch[1:])])
        self.proj = torch.nn.Conv2d(ch[-1], 3, kernel_size=1, bias=True)

    def forward(self, to_dec):
        x = 0
        for i, d in enumerate(self.dec):
            if i < len(to_dec):
                x = x + to_dec[i]
            x = d(x)
        return self.proj(x)


class _RefSparK(torch.nn.Module):
    def __init__(self, width=768, enc_chs=(256, 512, 1024, 2048)):
        super().__init__()
        from torchvision.models import resnet50

        cnn = resnet50()
        cnn.fc = torch.nn.Identity()  # the reference builds its encoder with num_classes=0
        self.sparse_encoder = _ref_sparsify(cnn)
        self.dense_decoder = _RefLightDecoder(width)
        self.mask_tokens = torch.nn.ParameterList()
        self.densify_norms, self.densify_projs = torch.nn.ModuleList(), torch.nn.ModuleList()
        d = width
        for i, e in enumerate(reversed(enc_chs)):
            self.mask_tokens.append(torch.nn.Parameter(torch.zeros(1, e, 1, 1)))
            self.densify_norms.append(_RefSparseBN(e))
            k = 1 if i == 0 else 3
            self.densify_projs.append(torch.nn.Conv2d(e, d, kernel_size=k, stride=1, padding=k // 2, bias=True))
            d //= 2

    def forward(self, inp, active):
        global _REF_ACTIVE
        _REF_ACTIVE = active
        r = self.sparse_encoder
        x = r.maxpool(r.relu(r.bn1(r.conv1(inp * _ref_active(inp.shape[2], inp.shape[3])))))
        feats = []
        for layer in (r.layer1, r.layer2, r.layer3, r.layer4):
            x = layer(x)
            feats.append(x)
        feats.reverse()
        cur, to_dec = active, []
        for i, f in enumerate(feats):
            f = self.densify_norms[i](f)
            f = torch.where(cur.expand_as(f), f, self.mask_tokens[i].expand_as(f))
            to_dec.append(self.densify_projs[i](f))
            cur = cur.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        rec = self.dense_decoder(to_dec)
        p = 32
        b, c, h, w = inp.shape

        def patchify(t):
            t = t.reshape(b, c, h // p, p, w // p, p)
            return torch.einsum("bchpwq->bhwpqc", t).reshape(b, (h // p) * (w // p), c * p * p)

        t, rp = patchify(inp), patchify(rec)
        t = (t - t.mean(dim=-1, keepdim=True)) / (t.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
        l2 = ((rp - t) ** 2).mean(dim=2)
        non_active = active.logical_not().int().view(b, -1)
        return l2.mul_(non_active).sum() / (non_active.sum() + 1e-8)


_OUR_TO_REF = [  # prefix of our name -> the reference's
    ("encoder.resnet.", "sparse_encoder."), ("decoder.blocks.", "dense_decoder.dec."),
    ("decoder.proj.", "dense_decoder.proj."), ("decoder.", ""),
]


def _ref_name(name: str) -> str:
    for a, b in _OUR_TO_REF:
        if name.startswith(a):
            name = b + name[len(a):]
            break
    return name.replace(".up.", ".up_sample.") if name.startswith("dense_decoder.dec.") else name


@pytest.fixture(scope="module")
def model_and_reference():
    torch.manual_seed(0)
    ours = SparKModel()  # the default decoder width: SparK's 768
    ref = _RefSparK()
    state = {_ref_name(k): v for k, v in ours.state_dict().items()}
    assert state.keys() == ref.state_dict().keys()  # the same structure, parameter for parameter
    ref.load_state_dict(state)
    return ours, ref


@pytest.mark.slow
def test_spark_equals_reference_loss_and_gradients(model_and_reference):
    """Identical weights, input and mask: the reference model's loss, every gradient and the updated BN running
    statistics to float precision (training mode: sparse BN statistics over visible positions in the encoder and
    before the mask-token fill in the decoder, no activation at the end of the U-Net blocks)."""
    ours, ref = model_and_reference
    ours.train(), ref.train()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 64, 64, generator=g)
    mask = random_patch_mask(2, (2, 2), 0.6, generator=g)  # 2 of 4 patches visible... round(4 * 0.4) = 2
    ours.zero_grad(), ref.zero_grad()
    loss = ours(x, mask=mask)
    ref_loss = ref(x, mask)
    loss.backward(), ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss)
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        q = ref_params[_ref_name(name)]
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    ref_state = ref.state_dict()
    for name, buf in ours.named_buffers():
        torch.testing.assert_close(buf, ref_state[_ref_name(name)], msg=lambda m: f"{name}: {m}")


def test_random_patch_mask_equals_reference():
    """SparK's ``mask()``: CPU noise, argsort, the first ``round(f * f * (1 - ratio))`` indices visible."""
    b, f, ratio = 3, 7, 0.6
    ours = random_patch_mask(b, (f, f), ratio, generator=torch.Generator().manual_seed(5))
    idx = torch.rand(b, f * f, generator=torch.Generator().manual_seed(5)).argsort(dim=1)[:, : round(f * f * (1 - ratio))]
    ref = torch.zeros(b, f * f, dtype=torch.bool).scatter_(1, idx, True).view(b, 1, f, f)
    assert torch.equal(ours, ref)


def test_decoder_initialisation_rules():
    """SparK's rules: conv std 0.02 (truncated normal) with zero bias, transposed conv Kaiming fan-out, BN (1, 0),
    mask tokens in [-0.02, 0.02]."""
    from monai_lessmore.ssl.spark import SparKDecoder

    torch.manual_seed(0)
    dec = SparKDecoder()
    assert dec.width == 768 and dec.blocks[0].up.in_channels == 768 and dec.proj.in_channels == 24
    conv = dec.blocks[0].conv[0].weight
    assert abs(conv.std().item() - 0.02) < 0.001 and conv.abs().max() < 2
    up = dec.blocks[0].up.weight
    fan_out = torch.nn.init._calculate_fan_in_and_fan_out(up)[1]
    assert abs(up.std().item() - (2 / fan_out) ** 0.5) / (2 / fan_out) ** 0.5 < 0.02
    assert not dec.blocks[0].up.bias.any() and not dec.proj.bias.any()
    bn = dec.blocks[1].conv[1]
    assert bn.weight.eq(1).all() and not bn.bias.any()
    for t in dec.mask_tokens:
        assert t.abs().max() <= 0.02 and t.std() > 0.005
    assert not any(isinstance(m, torch.nn.ReLU6) for m in [dec.blocks[0].conv[-1]])
    assert isinstance(dec.densify_norms[0], SparseBatchNorm2d)


def test_convert_sparse_bn_to_sync_keeps_state_and_outputs():
    """For DDP (the reference's SparseSyncBatchNorm2d): same keys, state and mask holder; eval outputs unchanged."""
    from monai_lessmore.ssl.spark import SparseSyncBatchNorm2d, convert_sparse_bn_to_sync

    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 1), torch.nn.BatchNorm2d(4))
    holder = sparsify_(net)
    net[1].running_mean.uniform_(-1, 1)
    net.eval()
    holder.mask = torch.tensor([[[[True, False], [True, True]]]])
    x = torch.randn(1, 2, 4, 4)
    before = net(x)
    keys = list(net.state_dict())
    convert_sparse_bn_to_sync(net)
    assert isinstance(net[1], SparseSyncBatchNorm2d) and net[1].holder is holder
    assert list(net.state_dict()) == keys
    torch.testing.assert_close(net(x), before)
    assert not net(x)[0, :, 0, 2:].any()  # masked patch stays empty
