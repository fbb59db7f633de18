"""DeepNet similarity: cosine similarity of ResNet50 output vectors (paper section 2.1, equation 3).

Following the perceptual similarity idea, the paper runs every slice through torchvision's ImageNet ResNet50 and
compares the *output vectors* of two slices by their cosine. The embedding costs one forward pass per slice, after
which all pairs are a single matrix product (:func:`pairwise_cosine`) — never a forward pass per pair.

"Output vectors" is read as the 2048-d global-average-pooled features (the layer before the classifier, ``fc``
replaced by identity): the usual embedding of a ResNet and what the paper's DeepNet needs, since ImageNet class
logits say little about CT anatomy. ``layer="fc"`` gives the 1000-d ImageNet logits instead, for users who read
the paper the other way.

Weights (never downloaded here): ``"imagenet"`` is torchvision's ``ResNet50_Weights.IMAGENET1K_V1`` (the original
``pretrained=True`` weights that "PyTorch's ResNet50 pre-trained on ImageNet" meant in 2024), read from the local
torch hub cache; a path loads a plain torchvision state dict; ``"random"`` gives an untrained network (tests).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_lessmore.networks.imagenet import IMAGENET_MEAN, IMAGENET_STD, IMAGENET_WEIGHTS_URL, imagenet_weights_path
from monai_lessmore.reduction.stack import as_slice_stack

__all__ = ["ResNet50Embedder", "pairwise_cosine", "pairwise_deepnet", "imagenet_weights_path", "IMAGENET_WEIGHTS_URL"]

_LAYERS = {"avgpool": 2048, "fc": 1000}
_SCALINGS = ("auto", "minmax", "uint8")


class ResNet50Embedder:
    """Embed CT slices with torchvision's ResNet50, one forward pass per slice, batched (paper equation 3).

    Preprocessing of each slice: intensities to 0..1 (``uint8`` / 255, otherwise per-slice min-max; a constant
    slice becomes 0), resize to ``size`` x ``size`` (bilinear, antialiased; None keeps the size), replicate to 3
    channels, normalise with the ImageNet mean/std. The network runs in eval mode under ``torch.inference_mode``.

    Args:
        weights: "imagenet" (torchvision IMAGENET1K_V1 from the local torch hub cache, never downloaded), a path to
            a torchvision ResNet50 state dict (``torch.save(model.state_dict(), path)``; loaded with
            ``weights_only=True``), or "random" for an untrained network. None is rejected as ambiguous.
        device: torch device, "cpu" or "cuda".
        batch_size: slices per forward pass.
        layer: "avgpool" for the 2048-d pooled features (default) or "fc" for the 1000-d ImageNet logits.
        size: side the slices are resized to (224, the ImageNet resolution); None keeps the slice size.
        scaling: "auto" (uint8 -> /255, anything else -> per-slice min-max), "minmax" or "uint8".

    Raises:
        FileNotFoundError: ``weights="imagenet"`` and the file is not in the torch hub cache, or a missing path.
        ValueError: bad options, or a weights file that does not match ResNet50 (missing/unexpected keys listed).
    """

    def __init__(
        self,
        weights: str | os.PathLike | None = "imagenet",
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        *,
        layer: str = "avgpool",
        size: int | None = 224,
        scaling: str = "auto",
    ) -> None:
        if layer not in _LAYERS:
            raise ValueError(f"layer must be one of {sorted(_LAYERS)}, got {layer!r}")
        if scaling not in _SCALINGS:
            raise ValueError(f"scaling must be one of {_SCALINGS}, got {scaling!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"size must be a positive integer or None, got {size!r}")
        self.layer = layer
        self.size = size
        self.scaling = scaling
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.weights = weights
        self.model = self._build(weights).to(self.device).eval()
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    @property
    def dim(self) -> int:
        """Length of the output vectors: 2048 for "avgpool", 1000 for "fc"."""
        return _LAYERS[self.layer]

    def _build(self, weights: str | os.PathLike | None) -> torch.nn.Module:
        from monai_lessmore.networks.resnet import ResNet50
        from monai_lessmore.networks.weights import load_encoder_weights, read_state_dict

        if weights is None:
            raise ValueError(
                "weights=None is ambiguous: pass weights='imagenet' (the paper's ImageNet ResNet50, read from the "
                f"local torch hub cache at {imagenet_weights_path()}), a path to a ResNet50 state dict, or "
                "weights='random' for an untrained network"
            )
        # avgpool: the 2048-d features (identity head); fc: the 1000 ImageNet logits
        model = ResNet50(num_classes=0 if self.layer == "avgpool" else 1000)
        if isinstance(weights, str) and weights == "random":
            return model
        if isinstance(weights, str) and weights == "imagenet":
            path = imagenet_weights_path()
            if not path.is_file():
                raise FileNotFoundError(
                    f"ImageNet ResNet50 weights not found in the local torch hub cache: {path} does not exist "
                    "(nothing is downloaded here). On a machine with internet, fetch "
                    f"{IMAGENET_WEIGHTS_URL} and copy it to that path (or set TORCH_HOME), or pass "
                    "weights=PATH to a ResNet50 state dict file"
                )
        else:
            path = Path(weights)
            if not path.is_file():
                raise FileNotFoundError(
                    f"weights file {path} does not exist; pass weights='imagenet', 'random' or an existing "
                    "ResNet50 state dict file"
                )
        # a backbone-only state dict (no classifier) is fine for the pooled features
        load_encoder_weights(
            model, read_state_dict(path), load_head=self.layer == "fc", strict=True, source=str(path),
            hint="save it with torch.save(resnet50.state_dict(), path)",
        )
        return model

    def preprocess(self, batch: torch.Tensor) -> torch.Tensor:
        """``(B, H, W)`` slices -> ``(B, 3, size, size)`` ImageNet-normalised float32 input."""
        uint8 = batch.dtype == torch.uint8
        x = batch.to(self.device, torch.float32)
        if self.scaling == "uint8" or (self.scaling == "auto" and uint8):
            x = x / 255.0
        else:
            lo = x.amin(dim=(1, 2), keepdim=True)
            span = x.amax(dim=(1, 2), keepdim=True) - lo
            safe = torch.where(span > 0, span, torch.ones_like(span))
            x = torch.where(span > 0, (x - lo) / safe, torch.zeros_like(x))  # a constant slice becomes 0
        x = x[:, None]
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = torch.nn.functional.interpolate(
                x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
            )
        return (x.expand(-1, 3, -1, -1) - self._mean) / self._std

    def embed(self, slices: Any) -> np.ndarray:
        """Output vectors of every slice, one forward pass per slice in batches: ``(N, dim)`` float32."""
        stack = as_slice_stack(slices)
        stack = torch.as_tensor(stack) if isinstance(stack, np.ndarray) else stack
        if not stack.dtype.is_floating_point and stack.dtype != torch.uint8:
            stack = stack.to(torch.float32)
        feats = []
        with torch.inference_mode():
            for start in range(0, stack.shape[0], self.batch_size):
                batch = self.preprocess(stack[start : start + self.batch_size])
                feats.append(self.model(batch).float().cpu())
        return torch.cat(feats).numpy()

    __call__ = embed


def pairwise_cosine(features: Any) -> np.ndarray:
    """Cosine similarity of every pair of feature vectors (paper equation 3), in float64.

    Args:
        features: ``(N, D)`` array or tensor.

    Returns:
        ``(N, N)`` float64 symmetric matrix in [-1, 1] with a diagonal of 1; a zero vector has similarity 0 to
        every other vector.
    """
    f = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    if f.ndim != 2 or f.shape[0] < 1:
        raise ValueError(f"features must be an (N, D) matrix with N >= 1, got shape {tuple(f.shape)}")
    f = f.detach().to("cpu", torch.float64)
    norm = f.norm(dim=1, keepdim=True)
    unit = torch.where(norm > 0, f / torch.where(norm > 0, norm, torch.ones_like(norm)), torch.zeros_like(f))
    sim = (unit @ unit.T).clamp_(-1.0, 1.0)
    sim.fill_diagonal_(1.0)
    return sim.numpy()


def pairwise_deepnet(slices: Any, *, embedder: ResNet50Embedder) -> np.ndarray:
    """DeepNet similarity of every pair of slices: :func:`pairwise_cosine` of ``embedder.embed(slices)``."""
    return pairwise_cosine(embedder.embed(slices))
