"""View-making transforms of the three methods (paper appendices A-C), in plain torch with torchvision's semantics.

The operations re-state ``torchvision.transforms`` (``RandomResizedCrop``, ``ColorJitter``,
``RandomGrayscale``, ``GaussianBlur``, ``RandomHorizontalFlip``, ``Normalize``; tested against
``torchvision.transforms.v2.functional``) so that every random number is drawn from MONAI's ``self.R``: views are
reproducible with ``set_random_state`` and MONAI's DataLoader seeds each worker, whereas torchvision's transforms
draw from torch's global generator.

Each ``<Method>Transform`` maps one ``(3, H, W)`` float image in ``[0, 1]`` (a CT slice min-max rendered as the
authors' PNGs, resized to the input size 512 and replicated to 3 channels by the bundle's MONAI preprocessing)
to a list of ``(3, h, w)`` views; a gray image (one channel, or three made by ``expand``) is processed as one
channel, with bit-identical views; :class:`MakeViewsd` applies it inside a MONAI ``Compose`` and stores the list under
``"views"``, which the default collate turns into one batch tensor per view.
"""

from __future__ import annotations

import math
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable
from torch import nn

from monai_lessmore.networks.imagenet import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["SwAVTransform", "MoCoTransform", "SparKTransform", "MakeViewsd", "MakeViewsD", "MakeViewsDict",
           "IMAGENET_MEAN", "IMAGENET_STD",
           "random_resized_crop", "color_jitter", "adjust_hue", "gaussian_blur"]

#: ImageNet normalisation, as all three reference implementations normalise their inputs.
_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _check_pair(name: str, lo: float, hi: float) -> None:
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"{name} must satisfy 0 < min <= max <= 1, got ({lo}, {hi})")


#: torchvision's ``rgb_to_grayscale`` weights (ITU-R 601 luma as torchvision rounds it: they sum to 0.9999).
_LUMA = (0.2989, 0.587, 0.114)


def _luma(img: torch.Tensor) -> torch.Tensor:
    """Luma ``(1, H, W)`` as torchvision's ``rgb_to_grayscale`` (weights 0.2989, 0.587, 0.114).

    A one-channel image stands for a gray RGB image (three equal channels): the same three products are summed in
    the same order, so the result is bit-identical to that of the replicated image.
    """
    r, g, b = _LUMA
    if img.shape[0] == 1:
        return r * img + g * img + b * img
    return (r * img[0] + g * img[1] + b * img[2]).unsqueeze(0)


def _is_gray(img: torch.Tensor) -> bool:
    return img.shape[0] == 1 or (torch.equal(img[0], img[1]) and torch.equal(img[1], img[2]))


def adjust_hue(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Shift the hue of a ``(3, H, W)`` ``[0, 1]`` RGB image by ``factor`` (in ``[-0.5, 0.5]``, a fraction of the
    colour wheel), as torchvision's ``adjust_hue``: RGB -> HSV, ``h = (h + factor) mod 1``, HSV -> RGB.

    A gray image (one channel, or equal channels) has saturation 0, for which the HSV round trip returns the value
    channel exactly: it is returned unchanged.
    """
    if not -0.5 <= factor <= 0.5:
        raise ValueError(f"hue factor must be in [-0.5, 0.5], got {factor}")
    if _is_gray(img):
        return img
    maxc, minc = img.max(dim=0).values, img.min(dim=0).values
    chroma = maxc - minc
    gray = maxc == minc
    sat = chroma / torch.where(gray, torch.ones_like(maxc), maxc)
    safe = torch.where(gray, torch.ones_like(chroma), chroma)
    rc, gc, bc = ((maxc - img[i]) / safe for i in range(3))
    r, g = img[0], img[1]
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.fmod(hue / 6.0 + 1.0, 1.0)
    hue = torch.where(gray, torch.zeros_like(hue), hue)
    hue = torch.remainder(hue + factor, 1.0)
    # back to RGB: sector i of the hue circle, fraction f within it
    h6 = hue * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = i.to(torch.int64) % 6
    v = maxc
    p = (v * (1.0 - sat)).clamp(0, 1)
    q = (v * (1.0 - sat * f)).clamp(0, 1)
    t = (v * (1.0 - sat * (1.0 - f))).clamp(0, 1)
    table = torch.stack([  # (6 sectors, 3 channels, H, W)
        torch.stack([v, t, p]), torch.stack([q, v, p]), torch.stack([p, v, t]),
        torch.stack([p, q, v]), torch.stack([t, p, v]), torch.stack([v, p, q]),
    ])
    return torch.gather(table, 0, i[None, None].expand(1, 3, *i.shape))[0]


def random_resized_crop(img: torch.Tensor, size: int, scale: Sequence[float], rng: np.random.RandomState,
                        ratio: Sequence[float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """torchvision's ``RandomResizedCrop``: area fraction in ``scale``, log-uniform aspect in ``ratio``, 10 tries
    then a centre crop; bilinear resize with anti-aliasing."""
    h, w = img.shape[-2:]
    area = h * w
    box = None
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        ar = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            box = (int(rng.randint(0, h - ch + 1)), int(rng.randint(0, w - cw + 1)), ch, cw)
            break
    if box is None:  # fallback as torchvision: centre crop at the clamped aspect ratio
        in_ratio = w / h
        if in_ratio < min(ratio):
            cw, ch = w, int(round(w / min(ratio)))
        elif in_ratio > max(ratio):
            ch, cw = h, int(round(h * max(ratio)))
        else:
            cw, ch = w, h
        box = ((h - ch) // 2, (w - cw) // 2, ch, cw)
    i, j, ch, cw = box
    crop = img[:, i : i + ch, j : j + cw].unsqueeze(0)
    return nn.functional.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def color_jitter(img: torch.Tensor, jitter: Sequence[float], rng: np.random.RandomState) -> torch.Tensor:
    """torchvision's ``ColorJitter(brightness, contrast, saturation, hue)`` in a random order, on ``[0, 1]`` RGB.

    The hue factor is drawn uniformly in ``[-hue, hue]`` and applied with :func:`adjust_hue`; on gray images (the
    CT slices here, which brightness/contrast/saturation keep gray) it changes nothing, as in torchvision.
    """
    b, c, s, h = jitter
    for op in rng.permutation(4):
        if op == 0 and b > 0:
            img = (img * rng.uniform(max(0.0, 1 - b), 1 + b)).clamp(0, 1)
        elif op == 1 and c > 0:
            f = rng.uniform(max(0.0, 1 - c), 1 + c)
            img = (f * img + (1 - f) * _luma(img).mean()).clamp(0, 1)
        elif op == 2 and s > 0:
            f = rng.uniform(max(0.0, 1 - s), 1 + s)
            img = (f * img + (1 - f) * _luma(img)).clamp(0, 1)
        elif op == 3 and h > 0:
            img = adjust_hue(img, rng.uniform(-h, h))
    return img


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur, kernel ``2 * ceil(3 sigma) + 1``, reflect padding (PIL's radius == sigma)."""
    r = int(math.ceil(3 * sigma))
    r = min(r, img.shape[-1] - 1, img.shape[-2] - 1)
    if r < 1:
        return img
    x = torch.arange(-r, r + 1, dtype=img.dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    kh, kv = k.view(1, 1, 1, -1), k.view(1, 1, -1, 1)

    def one(channel: torch.Tensor) -> torch.Tensor:
        out = nn.functional.pad(channel[None, None], (r, r, r, r), mode="reflect")
        return nn.functional.conv2d(nn.functional.conv2d(out, kh), kv)[0, 0]

    # one channel per call: the same kernel call for every channel whatever the channel count, so a gray image
    # gives bit-identical results as one channel or replicated to three
    return torch.stack([one(img[c]) for c in range(img.shape[0])])


class _ViewPipeline(Randomizable):
    """One augmentation pipeline: crop -> colour jitter -> grayscale -> blur -> flip -> normalise.

    All random draws come from ``self.R`` (MONAI convention), so ``set_random_state`` / the DataLoader worker
    seeding of MONAI make the views reproducible.
    """

    def __init__(self, size: int, scale: Sequence[float], jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.2),
                 jitter_p: float = 0.8, grayscale_p: float = 0.2, blur_p: float = 0.5,
                 blur_sigma: Sequence[float] = (0.1, 2.0), flip_p: float = 0.0, normalize: bool = True) -> None:
        _check_pair("crop scale", *scale)
        if len(jitter) != 4:
            raise ValueError(f"jitter must be (brightness, contrast, saturation, hue), got {list(jitter)}")
        if min(jitter) < 0 or not jitter[3] <= 0.5:
            raise ValueError(f"jitter strengths must be >= 0 and hue <= 0.5 (as torchvision's ColorJitter), got {list(jitter)}")
        for name, p in (("jitter_p", jitter_p), ("grayscale_p", grayscale_p), ("blur_p", blur_p), ("flip_p", flip_p)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        self.size, self.scale, self.jitter = int(size), tuple(scale), tuple(jitter)
        self.jitter_p, self.grayscale_p, self.blur_p, self.flip_p = jitter_p, grayscale_p, blur_p, flip_p
        self.blur_sigma, self.normalize = tuple(blur_sigma), normalize

    def randomize(self, data: Any = None) -> None:  # draws happen inline, in a fixed order, from self.R
        pass

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """One view of a ``(3, H, W)`` image, or of a ``(1, H, W)`` gray image standing for its 3-channel
        replication. A gray image (also a 3-channel one made by ``expand``, stride 0) stays one channel through
        every operation, which keeps it gray and gives bit-identical values at a third of the work; the channels
        are replicated just before the per-channel normalisation."""
        R = self.R
        if img.shape[0] == 3 and img.stride(0) == 0:
            img = img[:1]
        out = random_resized_crop(img, self.size, self.scale, R)
        if R.rand() < self.jitter_p:
            out = color_jitter(out, self.jitter, R)
        if R.rand() < self.grayscale_p:
            out = _luma(out) if out.shape[0] == 1 else _luma(out).expand(3, -1, -1)
        if R.rand() < self.blur_p:
            out = gaussian_blur(out, R.uniform(*self.blur_sigma))
        if R.rand() < self.flip_p:
            out = out.flip(-1)
        out = out.expand(3, -1, -1)
        if self.normalize:
            out = (out - _MEAN.to(out)) / _STD.to(out)
        return out.contiguous()


class _MultiView(Randomizable):
    """Base of the method transforms: a list of ``(count, pipeline)``; one shared random state."""

    groups: list

    def _seed_from_global(self) -> None:
        """Seed from numpy's global generator: reproducible under ``monai.utils.set_determinism``, different per
        DDP rank when each rank uses its own seed."""
        self.set_random_state(seed=int(np.random.randint(0, 2**31 - 1)))

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> "_MultiView":
        super().set_random_state(seed, state)
        for _, p in self.groups:
            p.set_random_state(state=self.R)
        return self

    def randomize(self, data: Any = None) -> None:
        pass

    def __call__(self, image: torch.Tensor) -> list[torch.Tensor]:
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"expected a (3, H, W) image in [0, 1] (or (1, H, W) gray), got shape {tuple(image.shape)}")
        return [p(image) for n, p in self.groups for _ in range(n)]


class SwAVTransform(_MultiView):
    """SwAV multi-crop (paper Table 8): 2 x 224 px (scale 0.90-1.0) + 6 x 96 px (scale 0.10-0.33),
    colour jitter (0.4, 0.4, 0.2, 0.2) p=0.8, grayscale p=0.2, Gaussian blur p=0.5 (sigma 0.1-2), **no flips**.

    The paper's appendix A text says "four small crops of size 94"; its Table 8 (and the spec) say 6 x 96, used here.
    """

    def __init__(
        self,
        crop_sizes: Sequence[int] = (224, 96),
        num_crops: Sequence[int] = (2, 6),
        min_scale: Sequence[float] = (0.90, 0.10),
        max_scale: Sequence[float] = (1.0, 0.33),
        jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.2),
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: float = 0.5,
        blur_sigma: Sequence[float] = (0.1, 2.0),
        normalize: bool = True,
    ) -> None:
        if len({len(crop_sizes), len(num_crops), len(min_scale), len(max_scale)}) != 1:
            raise ValueError(f"crop_sizes, num_crops, min_scale and max_scale need one entry per crop group, got "
                             f"{list(crop_sizes)}, {list(num_crops)}, {list(min_scale)}, {list(max_scale)}")
        if sum(num_crops) < 2:
            raise ValueError(f"SwAV needs at least 2 crops in total, got num_crops={list(num_crops)}")
        self.groups = [
            (int(n), _ViewPipeline(size, (lo, hi), jitter, jitter_p, grayscale_p, blur_p, blur_sigma, 0.0, normalize))
            for size, n, lo, hi in zip(crop_sizes, num_crops, min_scale, max_scale)
        ]
        self._seed_from_global()


class MoCoTransform(_MultiView):
    """MoCo v2 (paper appendix B): two 224 px crops (MoCo v2's scale 0.2-1.0), colour jitter (0.4, 0.4, 0.2, 0.2)
    p=0.8, grayscale p=0.2, Gaussian blur p=0.5 (sigma 0.1-2), horizontal flip p=0.5."""

    def __init__(self, crop_size: int = 224, scale: Sequence[float] = (0.2, 1.0), jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.2),
                 jitter_p: float = 0.8, grayscale_p: float = 0.2, blur_p: float = 0.5,
                 blur_sigma: Sequence[float] = (0.1, 2.0), flip_p: float = 0.5, normalize: bool = True) -> None:
        self.groups = [(2, _ViewPipeline(crop_size, scale, jitter, jitter_p, grayscale_p, blur_p, blur_sigma, flip_p, normalize))]
        self._seed_from_global()


class SparKTransform(_MultiView):
    """SparK (paper appendix C, Table 10): random resized crop (SparK's scale 0.67-1.0) + horizontal flip; one view.

    The crop keeps the input size (512 in the paper), which must be a multiple of the 32 px mask patch.
    """

    def __init__(self, input_size: int = 512, scale: Sequence[float] = (0.67, 1.0), flip_p: float = 0.5, normalize: bool = True) -> None:
        if int(input_size) % 32:
            raise ValueError(f"SparK input_size must be a multiple of 32 (the mask patch), got {input_size}")
        self.groups = [(1, _ViewPipeline(input_size, scale, (0, 0, 0, 0), 0.0, 0.0, 0.0, (0.1, 2.0), flip_p, normalize))]
        self._seed_from_global()


class MakeViewsd(MapTransform, Randomizable):
    """Apply a view transform (e.g. :class:`SwAVTransform`) to ``d[key]``, store the views under ``views_key``.

    The source key is removed so only tensors are collated.
    """

    def __init__(self, keys: KeysCollection, transform: Any, views_key: str = "views", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        self.transform = transform
        self.views_key = views_key

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> "MakeViewsd":
        super().set_random_state(seed, state)
        if isinstance(self.transform, Randomizable):
            self.transform.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        pass

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = torch.as_tensor(d.pop(key)).float()
            if img.ndim != 3:
                raise ValueError(f"MakeViewsd expects a (C, H, W) image under {key!r}, got shape {tuple(img.shape)}")
            if img.shape[0] == 1:
                img = img.expand(3, -1, -1)  # gray CT as 3 channels; the view pipelines work on one of them
            d[self.views_key] = [v.contiguous() for v in self.transform(img)]
        return d


MakeViewsD = MakeViewsDict = MakeViewsd
