"""The pre-trained ResNet50 bundle's network: 2048-d features, or class logits when a linear head is given.

The bundle ships only the encoder (``models/model.pt``, torchvision key names without ``fc.*``, spec section 6).
:class:`ResNet50Features` is torchvision's ResNet50 whose ``fc`` is an identity, so ``forward`` returns the pooled
2048-d features as one tensor (what ``verify_net_in_out`` checks) and its state dict is exactly the encoder's; with
``num_classes > 0`` it is the classifier of the fine-tuning bundle (one linear layer, Wolf et al. 2024 section 2.3).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch.nn as nn

from monai_lessmore.classification.network import EncoderLoadError, encoder_state_dict_from_file
from monai_lessmore.networks.resnet import ResNet50

__all__ = ["ResNet50Features", "head_classes", "load_pretrained", "FEATURE_DIM"]

logger = logging.getLogger(__name__)

FEATURE_DIM = 2048
_HEAD = ("fc.weight", "fc.bias")


class ResNet50Features(ResNet50):
    """torchvision's ResNet50 returning ``(B, 2048)`` features (``num_classes=0``) or ``(B, num_classes)`` logits.

    Args:
        num_classes: 0 for features (``fc`` is :class:`torch.nn.Identity`), else the outputs of a linear head.
    """

    def __init__(self, num_classes: int = 0) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0 (0 = 2048-d features), got {num_classes!r}")
        super().__init__(num_classes=max(num_classes, 1))
        self.num_classes = num_classes
        if num_classes == 0:
            self.fc = nn.Identity()


def head_classes(head_file: str | Path | None) -> int:
    """Outputs of the linear head in ``head_file`` (its ``fc.weight`` rows); 0 when no head file is given."""
    if head_file is None or head_file == "":
        return 0
    state = encoder_state_dict_from_file(head_file)
    if "fc.weight" not in state:
        raise EncoderLoadError(
            f"head_file {head_file} has no fc.weight/fc.bias (keys e.g. {sorted(state)[:5]}); give a file with a "
            "linear head on the 2048-d features, e.g. a run's model.pt of the lessmore_classification bundle"
        )
    return int(state["fc.weight"].shape[0])


def load_pretrained(network: nn.Module, model_file: str | Path, head_file: str | Path | None = None) -> nn.Module:
    """Load the encoder from ``model_file`` and, for a network with a head, ``fc.*`` from ``head_file``.

    Every encoder key must be in ``model_file`` (no silent random layers). ``fc.*`` in ``model_file`` is used when
    ``head_file`` is not given (a fine-tuned classifier file holds both).

    Args:
        network: a :class:`ResNet50Features`.
        model_file: the bundle's ``models/model.pt`` (or a bundle folder, or any torchvision-key state dict).
        head_file: a state dict with ``fc.weight``/``fc.bias`` for ``network.fc``.

    Returns:
        ``network`` in eval mode.

    Raises:
        EncoderLoadError: missing encoder keys, wrong shapes, or a head that is needed but absent.
    """
    state = encoder_state_dict_from_file(model_file)
    own = network.state_dict()
    encoder_keys = [k for k in own if not k.startswith("fc.")]
    missing = [k for k in encoder_keys if k not in state]
    if missing:
        raise EncoderLoadError(
            f"{model_file} lacks {len(missing)} of the {len(encoder_keys)} ResNet50 encoder keys, e.g. {missing[:5]} "
            f"(it holds e.g. {sorted(state)[:5]}); convert the checkpoint first: lessmore import-checkpoint SRC --bundle DIR"
        )
    wanted = {k: state[k] for k in encoder_keys}
    if "fc.weight" in own:
        head = encoder_state_dict_from_file(head_file) if head_file else state
        if not all(k in head for k in _HEAD):
            raise EncoderLoadError(
                f"the network has a {own['fc.weight'].shape[0]}-class head but {head_file or model_file} has no "
                "fc.weight/fc.bias: pass head_file (a state dict with the linear head)"
            )
        wanted.update({k: head[k] for k in _HEAD})
    wrong = [f"{k}: file {tuple(v.shape)} vs network {tuple(own[k].shape)}" for k, v in wanted.items()
             if v.shape != own[k].shape]
    if wrong:
        raise EncoderLoadError(f"{model_file}: tensor shapes do not match the network: {wrong[:5]}")
    network.load_state_dict(wanted, strict=True)
    logger.info(f"loaded {len(encoder_keys)} encoder tensors from {model_file}" + (f", head from {head_file}" if head_file else ""))
    return network.eval()
