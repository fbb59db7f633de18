"""Reading and validating ResNet50 weights: one reader, one loader, for every network of the package.

Files are read with ``torch.load(weights_only=True)`` (no code in them runs). A training checkpoint's
``state_dict`` is unwrapped, a MONAI bundle folder stands for its ``models/model.pt``, and the key prefixes seen in
practice -- DataParallel ``module.``, the authors' Lightning SwAV ``model.``, lightly/solo ``backbone.``,
``encoder.`` -- are stripped. Loading never falls back silently to random weights: a missing encoder key or a
wrong shape is an :class:`EncoderLoadError` that lists the missing and unexpected keys. Checkpoints of other
layouts (MoCo, SparK ...) are converted first with ``lessmore import-checkpoint``
(:mod:`monai_lessmore.bundletools.convert`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "EncoderLoadError", "HEAD_KEYS", "KNOWN_PREFIXES", "read_state_dict", "strip_prefix", "load_encoder_weights",
    "head_classes", "load_pretrained",
]

logger = logging.getLogger(__name__)

#: the linear head of torchvision's ResNet50
HEAD_KEYS = ("fc.weight", "fc.bias")
#: prefixes seen in practice: DataParallel, Lightning SwAV (the authors'), lightly/solo, ours
KNOWN_PREFIXES = ("module.", "model.", "backbone.", "encoder.")


class EncoderLoadError(ValueError):
    """Weights do not fit ResNet50, or cannot be read safely; the message lists the missing/unexpected keys."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, read with ``torch.load(weights_only=True)``.

    Args:
        path: a state dict file, a checkpoint with a ``state_dict`` entry (Lightning, ignite), or a MONAI bundle
            folder (its ``models/model.pt`` is read).

    Raises:
        EncoderLoadError: the file is absent, needs full unpickling, or holds no dict of tensors.
    """
    path = Path(path)
    if path.is_dir():
        bundle_model = path / "models" / "model.pt"
        if not bundle_model.is_file():
            raise EncoderLoadError(f"{path} is a folder but not a bundle with models/model.pt ({bundle_model} absent)")
        path = bundle_model
    if not path.is_file():
        raise EncoderLoadError(f"weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise EncoderLoadError(
            f"{path} cannot be loaded with torch.load(weights_only=True) ({type(e).__name__}: {e}); "
            "save a plain state dict: torch.save(model.state_dict(), path)"
        ) from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EncoderLoadError(f"{path} does not hold a state dict of tensors (got {type(obj).__name__})")
    return dict(obj)


def strip_prefix(
    state: Mapping[str, torch.Tensor], expected: set[str], prefix: str | None = None
) -> dict[str, torch.Tensor]:
    """``state`` with ``prefix`` removed from its keys; by default the one of ``""`` and :data:`KNOWN_PREFIXES`
    that matches most of ``expected``. Keys without the prefix are kept as they are (and so reported as unexpected)."""
    candidates = [prefix] if prefix is not None else [""] + list(KNOWN_PREFIXES)
    best, best_hits = dict(state), -1
    for p in candidates:
        stripped = {(k[len(p):] if p and k.startswith(p) else k): v for k, v in state.items()}
        hits = len(expected & stripped.keys())
        if hits > best_hits:
            best, best_hits = stripped, hits
    return best


def load_encoder_weights(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    prefix: str | None = None,
    load_head: bool = False,
    strict: bool = False,
    source: str = "state dict",
    hint: str = "export the encoder with torchvision key names (or pass the right key prefix)",
) -> dict[str, list[str]]:
    """Load ResNet50 weights into ``model`` (a :class:`~monai_lessmore.networks.ResNet50` or anything with
    torchvision's key names), checking every encoder key.

    Args:
        model: the network; its ``fc.*`` tensors (absent for ``num_classes=0``) are the head.
        state: the weights (e.g. from :func:`read_state_dict`).
        prefix: key prefix to strip (default: detected, see :func:`strip_prefix`).
        load_head: also load ``fc.*`` from ``state`` (an error when it has none); by default the model's head
            keeps its fresh initialisation and ``state``'s ``fc.*`` are ignored.
        strict: keys of ``state`` the model does not have are an error (default: a warning).
        source: the file name, for messages.
        hint: how to fix a file that does not fit, appended to the error.

    Returns:
        ``{"missing": [...], "unexpected": [...]}``: model keys left as initialised (only head keys) and keys of
        ``state`` the model does not have.

    Raises:
        EncoderLoadError: an encoder key is missing, a tensor shape does not match, the head is required but absent,
            or (``strict``) unexpected keys.
    """
    own = model.state_dict()
    arch = str(getattr(model, "arch", "resnet50")).replace("resnet", "ResNet")  # for messages
    head = [k for k in HEAD_KEYS if k in own]
    encoder_keys = [k for k in own if k not in head]
    state = strip_prefix(state, set(own), prefix)
    missing = sorted(k for k in encoder_keys if k not in state)
    unexpected = sorted(k for k in state if k not in own and not (k in HEAD_KEYS and not head))
    if missing or (strict and unexpected):
        raise EncoderLoadError(
            f"{source} does not fit torchvision's {arch}: {len(missing)} of the {len(encoder_keys)} encoder keys "
            f"are missing, e.g. {missing[:8]}; {len(unexpected)} unexpected keys, e.g. {unexpected[:8]}. {hint}"
        )
    wanted = list(encoder_keys)
    if load_head and head:
        if not all(k in state for k in head):
            raise EncoderLoadError(
                f"the network has a {own['fc.weight'].shape[0]}-class head but {source} has no fc.weight/fc.bias"
            )
        wanted += head
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in wanted
             if state[k].shape != own[k].shape]
    if wrong:
        raise EncoderLoadError(f"{source}: tensor shapes do not match {arch}: {wrong[:8]}; a file of another "
                               f"ResNet depth needs the same backbone")
    result = model.load_state_dict({k: state[k] for k in wanted}, strict=False)
    report = {"missing": sorted(result.missing_keys), "unexpected": unexpected}
    logger.info(f"loaded {len(wanted)} {arch} tensors from {source}; left as initialised: {report['missing']}")
    if unexpected:
        logger.warning(f"{source}: ignored {len(unexpected)} keys not in {arch}, e.g. {unexpected[:8]}")
    return report


def head_classes(head_file: str | Path | None) -> int:
    """Outputs of the linear head in ``head_file`` (its ``fc.weight`` rows); 0 when no head file is given."""
    if head_file is None or head_file == "":
        return 0
    state = read_state_dict(head_file)
    if "fc.weight" not in state:
        raise EncoderLoadError(
            f"head_file {head_file} has no fc.weight/fc.bias (keys e.g. {sorted(state)[:5]}); give a file with a "
            "linear head on the 2048-d features, e.g. a run's model.pt of the lessmore_classification bundle"
        )
    return int(state["fc.weight"].shape[0])


def load_pretrained(network: nn.Module, model_file: str | Path, head_file: str | Path | None = None) -> nn.Module:
    """Load a bundle's encoder from ``model_file`` and, for a network with a head, ``fc.*`` from ``head_file``.

    ``fc.*`` in ``model_file`` is used when ``head_file`` is not given (a fine-tuned classifier file holds both).

    Args:
        network: a :class:`~monai_lessmore.networks.ResNet50` (``num_classes=0`` for features).
        model_file: a bundle's ``models/model.pt`` (or the bundle folder, or any torchvision-key state dict).
        head_file: a state dict with ``fc.weight``/``fc.bias`` for ``network.fc``.

    Returns:
        ``network`` in eval mode.

    Raises:
        EncoderLoadError: missing encoder keys, wrong shapes, or a head that is needed but absent.
    """
    state = read_state_dict(model_file)
    source = str(model_file)
    if head_file:
        head = read_state_dict(head_file)
        state = {**{k: v for k, v in state.items() if k not in HEAD_KEYS},
                 **{k: head[k] for k in HEAD_KEYS if k in head}}
        source = f"{model_file} with the head of {head_file}"
    hint = "convert the checkpoint first: lessmore import-checkpoint SRC --bundle DIR"
    try:
        load_encoder_weights(network, state, load_head=True, source=source, hint=hint)
    except EncoderLoadError as err:
        if "-class head but" in str(err) and not head_file:
            raise EncoderLoadError(f"{err}: pass head_file (a state dict with the linear head)") from None
        raise
    return network.eval()
