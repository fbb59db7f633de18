"""ResNet50 + one linear layer for downstream classification, initialised randomly or from a pre-trained encoder.

Wolf et al. (2024), section 2.3: "We add one linear layer to the pre-trained encoder." The network is the package's
ResNet50 (:class:`monai_lessmore.networks.ResNet50`, torchvision's key names), so an encoder exported by the
pre-training bundle, the authors' SwAV checkpoints (keys prefixed ``model.``) or another bundle's
``models/model.pt`` load straight in through :func:`monai_lessmore.networks.load_encoder_weights`.
Loading never falls back silently to random weights: any missing encoder key is an error. ``backbone`` builds
another torchvision ResNet instead, for encoders pre-trained with the same ``backbone``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

from monai_lessmore.networks.resnet import ResNet
from monai_lessmore.networks.weights import EncoderLoadError, load_encoder_weights, read_state_dict

__all__ = ["ResNet50Classifier", "EncoderLoadError", "load_encoder_state_dict"]

_HINT = ("Refusing to train from a partly random encoder: export the encoder with torchvision key names (or pass "
         "the right key prefix).")


def load_encoder_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, prefix: str | None = None, source: str = "state dict"
) -> dict[str, list[str]]:
    """Load encoder weights into ``model``, keeping its freshly initialised linear head (``fc.*``).

    :func:`monai_lessmore.networks.load_encoder_weights` with the fine-tuning message; returns its report
    (``missing`` is always the head keys).
    """
    return load_encoder_weights(model, state, prefix=prefix, source=source, hint=_HINT)


class ResNet50Classifier(ResNet):
    """The package's ResNet50 whose ``fc`` is one ``Linear(2048, num_classes)`` (section 2.3).

    The state dict keeps torchvision's names (``conv1.weight`` ... ``fc.bias``) so it is a plain
    ``models/model.pt``. ``forward`` returns logits (one tensor, as ``verify_net_in_out`` expects);
    :meth:`features` returns the 2048-d penultimate features used for t-SNE.

    Args:
        num_classes: output classes (2 for COVID-CT, 11 for OrganS/AMNIST).
        pretrained_encoder: optional encoder state dict file (torchvision key names, or a known prefix).
        pretrained_bundle: optional MONAI bundle folder whose ``models/model.pt`` provides the encoder.
        encoder_key_prefix: prefix to strip from the file's keys (default: detected).
        backbone: the torchvision ResNet (``"resnet50"``, the paper's; ``"resnet18"`` ... for an encoder pre-trained
            with that backbone; the head is then ``Linear(512, num_classes)`` for ``resnet18``/``resnet34``).

    Raises:
        EncoderLoadError: see :func:`monai_lessmore.networks.load_encoder_weights`.
    """

    def __init__(
        self,
        num_classes: int = 2,
        pretrained_encoder: str | None = None,
        pretrained_bundle: str | None = None,
        encoder_key_prefix: str | None = None,
        backbone: str = "resnet50",
    ) -> None:
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if pretrained_encoder and pretrained_bundle:
            raise ValueError(
                "give either pretrained_encoder or pretrained_bundle, not both "
                f"(got {pretrained_encoder!r} and {pretrained_bundle!r})"
            )
        super().__init__(backbone, num_classes=int(num_classes))
        self.load_report: dict[str, list[str]] | None = None
        source = pretrained_encoder or pretrained_bundle
        if source:
            self.load_report = load_encoder_state_dict(
                self, read_state_dict(source), prefix=encoder_key_prefix, source=str(source)
            )

    def head_parameters(self) -> Sequence[nn.Parameter]:
        """Parameters of the linear head (trained alone in the first phase)."""
        return list(self.fc.parameters())
