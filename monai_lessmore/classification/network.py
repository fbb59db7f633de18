"""ResNet50 + one linear layer for downstream classification, initialised randomly or from a pre-trained encoder.

Wolf et al. (2024), section 2.3: "We add one linear layer to the pre-trained encoder." The encoder is torchvision's
ResNet50 (:mod:`monai_lessmore.networks.resnet`) with its key names unchanged (spec section 3),
so an encoder exported by the pre-training bundle, the authors' SwAV checkpoints (keys prefixed ``model.``, spec
section 6) or another bundle's ``models/model.pt`` load straight in.
Loading never falls back silently to random weights: any missing encoder key is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn

from monai_lessmore.networks.resnet import ResNet50

__all__ = ["ResNet50Classifier", "EncoderLoadError", "load_encoder_state_dict", "encoder_state_dict_from_file"]

logger = logging.getLogger(__name__)

HEAD_PREFIX = "fc."
# prefixes seen in practice: DataParallel ("module."), Lightning SwAV ("model."), lightly/solo ("backbone.")
_KNOWN_PREFIXES = ("module.", "model.", "backbone.", "encoder.")


class EncoderLoadError(ValueError):
    """An encoder file does not fit ResNet50; the message lists the missing/unexpected keys."""


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]  # Lightning / ignite checkpoints
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EncoderLoadError(f"{path} does not hold a state dict of tensors (got {type(obj).__name__})")
    return dict(obj)


def encoder_state_dict_from_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict with ``torch.load(weights_only=True)`` (a plain dict or a checkpoint with ``state_dict``).

    A directory is taken as a MONAI bundle and its ``models/model.pt`` is read.
    """
    path = Path(path)
    if path.is_dir():
        bundle_model = path / "models" / "model.pt"
        if not bundle_model.is_file():
            raise EncoderLoadError(f"{path} is a folder but not a bundle with models/model.pt ({bundle_model} absent)")
        path = bundle_model
    if not path.is_file():
        raise EncoderLoadError(f"encoder file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise EncoderLoadError(
            f"{path} cannot be loaded with torch.load(weights_only=True) ({type(e).__name__}: {e}); "
            "save a plain state dict: torch.save(model.state_dict(), path)"
        ) from e
    return _unwrap(obj, path)


def _strip_prefix(state: dict[str, torch.Tensor], expected: set[str], prefix: str | None) -> dict[str, torch.Tensor]:
    candidates = [prefix] if prefix is not None else [""] + list(_KNOWN_PREFIXES)
    best, best_hits = state, -1
    for p in candidates:
        # keys without the prefix are kept as they are, so they are reported as unexpected
        stripped = {(k[len(p):] if p and k.startswith(p) else k): v for k, v in state.items()}
        hits = len(expected & stripped.keys())
        if hits > best_hits:
            best, best_hits = stripped, hits
    return best


def load_encoder_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, prefix: str | None = None, source: str = "state dict"
) -> dict[str, list[str]]:
    """Load encoder weights into ``model``, keeping the freshly initialised linear head (``fc.*``).

    Args:
        model: a :class:`ResNet50Classifier` (torchvision key names).
        state: the encoder state dict; ``fc.*`` entries in it are ignored (the head always starts fresh).
        prefix: a key prefix to strip (e.g. ``"model."``); by default the best of ``""``, ``module.``, ``model.``,
            ``backbone.``, ``encoder.`` is used.
        source: the file name, for messages.

    Returns:
        ``{"missing": [...], "unexpected": [...]}``; missing is always a subset of the head keys.

    Raises:
        EncoderLoadError: when an encoder key is missing or a tensor shape does not match.
    """
    own = model.state_dict()
    encoder_keys = {k for k in own if not k.startswith(HEAD_PREFIX)}
    state = _strip_prefix(dict(state), encoder_keys, prefix)
    missing = sorted(encoder_keys - state.keys())
    unexpected = sorted(k for k in state.keys() - own.keys())
    if missing:
        raise EncoderLoadError(
            f"{source} does not fit torchvision's ResNet50: {len(missing)} encoder keys are missing, e.g. "
            f"{missing[:8]}; unexpected keys, e.g. {unexpected[:8]}. Refusing to train from a partly random "
            "encoder: export the encoder with torchvision key names (or pass the right key prefix)."
        )
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in sorted(encoder_keys)
             if state[k].shape != own[k].shape]
    if wrong:
        raise EncoderLoadError(f"{source}: tensor shapes do not match ResNet50: {wrong[:8]}")
    result = model.load_state_dict({k: state[k] for k in encoder_keys}, strict=False)
    report = {"missing": sorted(result.missing_keys), "unexpected": unexpected}
    logger.info(f"loaded encoder from {source}: missing keys {report['missing']} (head, freshly initialised)")
    if unexpected:
        logger.warning(f"{source}: ignored {len(unexpected)} keys not in ResNet50, e.g. {unexpected[:8]}")
    return report


class ResNet50Classifier(ResNet50):
    """torchvision's ResNet50 (:mod:`monai_lessmore.networks.resnet`) whose ``fc`` is one ``Linear(2048, num_classes)`` (section 2.3).

    The state dict keeps torchvision's names (``conv1.weight`` ... ``fc.bias``) so it is a plain
    ``models/model.pt``. ``forward`` returns logits (one tensor, as ``verify_net_in_out`` expects);
    :meth:`features` returns the 2048-d penultimate features used for t-SNE.

    Args:
        num_classes: output classes (2 for COVID-CT, 11 for OrganS/AMNIST).
        pretrained_encoder: optional encoder state dict file (torchvision key names, or a known prefix).
        pretrained_bundle: optional MONAI bundle folder whose ``models/model.pt`` provides the encoder.
        encoder_key_prefix: prefix to strip from the file's keys (default: detected).

    Raises:
        EncoderLoadError: see :func:`load_encoder_state_dict`.
    """

    def __init__(
        self,
        num_classes: int = 2,
        pretrained_encoder: str | None = None,
        pretrained_bundle: str | None = None,
        encoder_key_prefix: str | None = None,
    ) -> None:
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if pretrained_encoder and pretrained_bundle:
            raise ValueError(
                "give either pretrained_encoder or pretrained_bundle, not both "
                f"(got {pretrained_encoder!r} and {pretrained_bundle!r})"
            )
        super().__init__(num_classes=int(num_classes))
        self.load_report: dict[str, list[str]] | None = None
        source = pretrained_encoder or pretrained_bundle
        if source:
            state = encoder_state_dict_from_file(source)
            self.load_report = load_encoder_state_dict(self, state, prefix=encoder_key_prefix, source=str(source))

    def head_parameters(self) -> Sequence[nn.Parameter]:
        """Parameters of the linear head (trained alone in the first phase)."""
        return list(self.fc.parameters())
