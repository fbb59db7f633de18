"""SparK (Tian et al., ICLR 2023) for the ResNet50, as used by Wolf et al. 2024 (paper appendix C, Table 10).

Masked image modelling for CNNs: the image is split into 32x32 patches, 60 % of them are masked, and the encoder
computes on the visible patches only -- "sparse convolution". As SparK's reference code does, the sparse
computation is emulated with dense operators: the masked input is zero, and after every convolution, max-pool and
batch-norm the output is multiplied by the visible-patch mask at that resolution ("re-masking"), while batch-norm
statistics are computed over the visible positions only (:class:`SparseBatchNorm2d`). Visible outputs therefore
never see masked content or masked statistics. The decoder (:class:`SparKDecoder`) "densifies" every scale as the
reference code does: a sparse batch-norm over the visible positions, then the masked positions filled with a
learned mask token, then a projection to the decoder width; a light U-Net (SparK's ``LightDecoder``, width 768 at
stride 32, halved at each of its five x2 upsamplings) reconstructs the image. The loss (:class:`SparKLoss`) is the
L2 error of per-patch normalised pixels on masked patches only. Parameters are initialised by the reference code's
rules (:meth:`SparKDecoder.reset_parameters`), and the module computes the reference model's loss and gradients
to float precision (tested against an independent re-implementation of keyu-tian/SparK ``pretrain/``).

The encoder keeps torchvision's key names (:class:`SparseBatchNorm2d` is a ``BatchNorm2d``), so it exports as any
other ResNet50.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from monai_lessmore.ssl.backbone import resnet50_encoder

__all__ = ["random_patch_mask", "upsample_mask", "SparseBatchNorm2d", "SparseSyncBatchNorm2d", "sparsify_",
           "convert_sparse_bn_to_sync", "SparseEncoder", "SparKDecoder", "SparKLoss", "SparKModel", "patchify"]

#: channels and strides of the four ResNet50 stages the decoder consumes (layer1..layer4).
_RESNET50_STAGES = ((256, 4), (512, 8), (1024, 16), (2048, 32))


def random_patch_mask(batch: int, grid: Sequence[int], mask_ratio: float, *, device=None, generator=None) -> torch.Tensor:
    """``(B, 1, gh, gw)`` bool, True = **visible**; exactly ``round(gh * gw * (1 - mask_ratio))`` visible per image
    (at least one), as SparK's ``mask()``: the noise is drawn on the CPU (``generator`` is a CPU generator) and
    the kept indices moved to ``device``, so a seed gives the same mask on every device."""
    gh, gw = int(grid[0]), int(grid[1])
    n = gh * gw
    keep = max(1, round(n * (1 - float(mask_ratio))))
    noise = torch.rand(batch, n, generator=generator)
    idx = noise.argsort(dim=1)[:, :keep].to(device)
    mask = torch.zeros(batch, n, dtype=torch.bool, device=device)
    mask.scatter_(1, idx, True)
    return mask.view(batch, 1, gh, gw)


def upsample_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Patch-grid mask ``(B, 1, gh, gw)`` -> ``(B, 1, H, W)`` by repeating each patch (H, W multiples of gh, gw)."""
    gh, gw = mask.shape[-2:]
    h, w = int(size[0]), int(size[1])
    if h % gh or w % gw:
        raise ValueError(f"feature size {(h, w)} is not a multiple of the mask grid {(gh, gw)}")
    return mask.repeat_interleave(h // gh, dim=2).repeat_interleave(w // gw, dim=3)


class _MaskHolder:
    """The visible-patch mask of the current forward pass, shared by the sparse layers of one encoder."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None

    def at(self, x: torch.Tensor) -> torch.Tensor | None:
        return None if self.mask is None else upsample_mask(self.mask, x.shape[-2:])


def _sparse_bn(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, dense_forward) -> torch.Tensor:
    """Normalise the visible positions of ``x`` as one ``(N, C)`` batch (SparK's ``sp_bn_forward``); masked -> 0."""
    m = bn.holder.at(x) if bn.holder is not None else None
    if m is None:
        return dense_forward(x)
    sel = m[:, 0]  # (B, H, W)
    bhwc = x.permute(0, 2, 3, 1)
    active = bhwc[sel]  # (N, C): the visible positions of the whole batch
    normed = dense_forward(active[:, :, None, None])[:, :, 0, 0]
    out = torch.zeros_like(bhwc)
    out[sel] = normed.to(out.dtype)
    return out.permute(0, 3, 1, 2)


class SparseBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose statistics come from the visible positions only; masked positions output 0.

    Without a mask set it is an ordinary ``BatchNorm2d`` (same parameters, buffers and key names).
    """

    holder: _MaskHolder | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _sparse_bn(self, x, super().forward)


class SparseSyncBatchNorm2d(nn.SyncBatchNorm):
    """:class:`SparseBatchNorm2d` with statistics over the visible positions of all processes (SparK's
    ``SparseSyncBatchNorm2d``, its default under distributed training); see :func:`convert_sparse_bn_to_sync`."""

    holder: _MaskHolder | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _sparse_bn(self, x, super().forward)


def convert_sparse_bn_to_sync(module: nn.Module) -> nn.Module:
    """Replace every :class:`SparseBatchNorm2d` in ``module`` by a :class:`SparseSyncBatchNorm2d` sharing its mask
    holder, state and key names (in place; returns ``module``). Plain BatchNorm layers are left alone."""
    for name, child in module.named_children():
        if type(child) is SparseBatchNorm2d:
            sync = SparseSyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            sync.load_state_dict(child.state_dict())
            sync.holder = child.holder
            sync.train(child.training)
            ref = next(child.buffers(), None)
            setattr(module, name, sync if ref is None else sync.to(ref.device))
        else:
            convert_sparse_bn_to_sync(child)
    return module


def sparsify_(net: nn.Module) -> _MaskHolder:
    """Make ``net`` sparse in place: BatchNorm2d -> :class:`SparseBatchNorm2d` (state copied), and re-masking hooks
    on every Conv2d and MaxPool2d. Returns the mask holder to set before a forward pass."""
    holder = _MaskHolder()
    for name, module in list(net.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.BatchNorm2d:
                sbn = SparseBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
                sbn.load_state_dict(child.state_dict())
                sbn.holder = holder
                setattr(module, child_name, sbn)

    def remask(mod, inp, out):
        m = holder.at(out)
        return out if m is None else out * m.to(out.dtype)

    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
            module.register_forward_hook(remask)
    return holder


class SparseEncoder(nn.Module):
    """A ResNet50 made sparse; ``forward(x, mask)`` returns the four stage outputs (strides 4, 8, 16, 32).

    Args:
        backbone: the ResNet50 (``resnet50_encoder()`` when None); it is sparsified in place.
    """

    def __init__(self, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.resnet = backbone if backbone is not None else resnet50_encoder()
        self._holder = sparsify_(self.resnet)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
        r = self.resnet
        self._holder.mask = mask
        try:
            if mask is not None:
                x = x * upsample_mask(mask, x.shape[-2:]).to(x.dtype)
            x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
            feats = []
            for layer in (r.layer1, r.layer2, r.layer3, r.layer4):
                x = layer(x)
                feats.append(x)
            return feats
        finally:
            self._holder.mask = None


class _UNetBlock(nn.Module):
    """x2 transposed-conv upsampling, then conv-BN-ReLU6 and conv-BN (SparK's ``UNetBlock``: no activation at the
    end; the next block's input is the sum of this output and the next scale's densified features)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin, kernel_size=4, stride=2, padding=1, bias=True)
        self.conv = nn.Sequential(
            nn.Conv2d(cin, cin, 3, 1, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(inplace=True),
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.up(x))


class SparKDecoder(nn.Module):
    """Densify every scale and decode with a light U-Net back to the input resolution (SparK).

    For the encoder feature at stride ``32 / 2**i`` (deepest first): :class:`SparseBatchNorm2d` over the visible
    positions, masked positions replaced by the mask token ``i``, then a projection to ``width / 2**i`` channels
    (1x1 for the deepest scale, 3x3 otherwise; the identity when the deepest encoder width equals ``width``). The
    sum with the previous block's output enters U-Net block ``i``; after the four scales one more block reaches
    stride 1 and a 1x1 convolution gives the reconstruction.

    Args:
        width: decoder width at stride 32, halved at each of the 5 upsamplings (SparK's default: 768).
        out_channels: reconstructed channels (3).
        stages: ``(channels, stride)`` of the encoder features, shallow to deep.
    """

    def __init__(self, width: int = 768, out_channels: int = 3, stages: Sequence[Sequence[int]] = _RESNET50_STAGES) -> None:
        super().__init__()
        if int(width) < 32:
            raise ValueError(f"decoder width must be >= 32 (it is halved 5 times), got {width}")
        enc = [int(c) for c, _ in stages][::-1]  # deep -> shallow
        widths = [int(width) // 2**i for i in range(6)]
        self.width = int(width)
        self.mask_tokens = nn.ParameterList([nn.Parameter(torch.zeros(1, c, 1, 1)) for c in enc])
        self.holder = _MaskHolder()
        norms = []
        for c in enc:
            bn = SparseBatchNorm2d(c)
            bn.holder = self.holder
            norms.append(bn)
        self.densify_norms = nn.ModuleList(norms)
        self.densify_projs = nn.ModuleList(
            [nn.Identity() if i == 0 and c == widths[0]
             else nn.Conv2d(c, widths[i], kernel_size=1 if i == 0 else 3, padding=0 if i == 0 else 1)
             for i, c in enumerate(enc)]
        )
        self.blocks = nn.ModuleList([_UNetBlock(widths[i], widths[i + 1]) for i in range(5)])
        self.proj = nn.Conv2d(widths[5], out_channels, kernel_size=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """SparK's initialisation. Mask tokens: truncated normal (std 0.02, cut at +-0.02). U-Net blocks and the
        final projection (``LightDecoder.initialize``): convolutions truncated normal std 0.02 with zero bias,
        transposed convolutions Kaiming normal (fan-out, ReLU) with zero bias, batch-norms weight 1 and bias 0.
        The densify projections keep PyTorch's default initialisation, as in the reference code."""
        for t in self.mask_tokens:
            nn.init.trunc_normal_(t, mean=0.0, std=0.02, a=-0.02, b=0.02)
        for m in list(self.blocks.modules()) + [self.proj]:
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.ConvTranspose2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Args: feats: the encoder's stage outputs, shallow to deep; mask: ``(B, 1, gh, gw)`` bool, True = visible
        (the grid of the deepest feature)."""
        x = 0
        self.holder.mask = mask
        try:
            for i, f in enumerate(list(feats)[::-1]):
                f = self.densify_norms[i](f)  # sparse: statistics over visible positions, masked -> 0
                m = upsample_mask(mask, f.shape[-2:])
                f = torch.where(m, f, self.mask_tokens[i].to(f.dtype).expand_as(f))
                x = x + self.densify_projs[i](f)
                x = self.blocks[i](x)
        finally:
            self.holder.mask = None
        for block in self.blocks[len(feats) :]:
            x = block(x)
        return self.proj(x)


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, L, patch * patch * C)`` with L = (H / patch) * (W / patch), row-major patches."""
    b, c, h, w = x.shape
    gh, gw = h // patch, w // patch
    x = x.reshape(b, c, gh, patch, gw, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, patch * patch * c)


class SparKLoss(nn.Module):
    """L2 between reconstruction and per-patch normalised pixels, averaged over **masked** patches only (SparK).

    Args:
        patch_size: 32 (Table 10). eps: added to the patch variance (SparK: 1e-6).
    """

    def __init__(self, patch_size: int = 32, eps: float = 1e-6) -> None:
        super().__init__()
        self.patch_size, self.eps = int(patch_size), float(eps)

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Args: reconstruction, target ``(B, C, H, W)``; mask ``(B, 1, gh, gw)`` bool, True = visible."""
        t = patchify(target.float(), self.patch_size)
        mean, std = t.mean(dim=-1, keepdim=True), (t.var(dim=-1, keepdim=True) + self.eps).sqrt()
        t = (t - mean) / std
        r = patchify(reconstruction.float(), self.patch_size)
        l2 = ((r - t) ** 2).mean(dim=2)  # (B, L)
        masked = (~mask).flatten(1).float()
        return (l2 * masked).sum() / (masked.sum() + 1e-8)


class SparKModel(nn.Module):
    """Sparse ResNet50 encoder + :class:`SparKDecoder`; ``forward(x, mask_ratio)`` returns the loss.

    Args:
        decoder_width: see :class:`SparKDecoder`. patch_size: 32 (Table 10). mask_ratio: 0.6 (Table 10).
    """

    def __init__(self, decoder_width: int = 768, patch_size: int = 32, mask_ratio: float = 0.6) -> None:
        super().__init__()
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.encoder = SparseEncoder()
        self.decoder = SparKDecoder(decoder_width)
        self.loss_function = SparKLoss(patch_size)
        self.patch_size, self.mask_ratio = int(patch_size), float(mask_ratio)

    @property
    def backbone(self) -> nn.Module:
        """The ResNet50 inside the sparse encoder: what is exported (torchvision key names)."""
        return self.encoder.resnet

    def forward(self, x: torch.Tensor, mask_ratio: float | None = None, mask: torch.Tensor | None = None,
                return_reconstruction: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The loss; or, with ``return_reconstruction``, ``(reconstruction, mask)`` for a separate ``SparKLoss``
        (the bundle's training step)."""
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"SparK input {h}x{w} must be a multiple of the {self.patch_size} px patch; set input_size accordingly")
        if mask is None:
            ratio = self.mask_ratio if mask_ratio is None else float(mask_ratio)
            mask = random_patch_mask(x.shape[0], (h // self.patch_size, w // self.patch_size), ratio, device=x.device)
        feats = self.encoder(x, mask)
        rec = self.decoder(feats, mask)
        if return_reconstruction:
            return rec, mask
        return self.loss_function(rec, x, mask)
