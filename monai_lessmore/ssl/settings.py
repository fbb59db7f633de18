"""Which bundle settings each pre-training method reads, and a warning for those set for the wrong method.

The three methods share one ``train.json``; a few settings belong to one method only. SwAV's multi-crop sizes are
a list, ``crop_sizes``, MoCo v2's single crop is ``crop_size``: with SwAV's small-settings overrides
(``--crop_sizes "[32,16]"``) a MoCo run would silently make 224 px crops of a 64 px input. Each method's config
gives its own settings a value and the others' ``null``; :func:`check_method_settings` warns about a value given
to a setting the chosen method ignores, and about crops larger than the input.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Mapping

__all__ = ["METHOD_SETTINGS", "check_method_settings"]

logger = logging.getLogger(__name__)

#: the settings read by one method only (every other setting of ``train.json`` serves all three)
METHOD_SETTINGS: dict[str, tuple[str, ...]] = {
    "swav": ("crop_sizes", "num_crops", "min_scale", "max_scale", "freeze_prototypes_niters", "queue_start_epoch"),
    "moco": ("crop_size", "key_momentum"),
    "spark": ("patch_size", "mask_ratio", "decoder_width", "clip_grad_norm", "weight_decay_end"),
}

#: what to set instead, for the settings most often carried over from another method's command line
_INSTEAD = {
    ("moco", "crop_sizes"): "MoCo makes two crops of one size: set crop_size",
    ("swav", "crop_size"): "SwAV's crops are a list: set crop_sizes (and num_crops)",
    ("spark", "crop_sizes"): "SparK crops to input_size",
    ("spark", "crop_size"): "SparK crops to input_size",
}


def check_method_settings(method: str, settings: Mapping[str, Any], input_size: int | None = None,
                          backbone: str = "resnet50") -> list[str]:
    """Warn (``UserWarning``) about each setting in ``settings`` that ``method`` ignores but has a value (not
    ``None``), and about crops larger than ``input_size``. Returns the warning messages.

    Args:
        method: ``"swav"``, ``"moco"`` or ``"spark"``.
        settings: the method-specific settings of the merged config (the bundle's ``method_settings``).
        input_size: the side of the resized slice the crops are taken from.
        backbone: the encoder's torchvision name; SparK's sparse encoder and decoder are built for ``"resnet50"``.

    Raises:
        ValueError: an unknown method, or SparK with another backbone than ResNet50.
    """
    if method not in METHOD_SETTINGS:
        raise ValueError(f"method must be one of {tuple(METHOD_SETTINGS)}, got {method!r}")
    if method == "spark" and backbone != "resnet50":
        raise ValueError(f"backbone={backbone!r}: SparK's decoder is built on ResNet50's stage widths; use "
                         "backbone 'resnet50' with SparK, or SwAV / MoCo v2 for another ResNet")
    owner = {k: m for m, keys in METHOD_SETTINGS.items() for k in keys}
    messages = []
    for key, value in settings.items():
        if value is None or owner.get(key, method) == method:
            continue
        hint = _INSTEAD.get((method, key), f"it is a {owner[key]} setting")
        messages.append(f"{key}={value!r} is ignored by {method}: {hint}")
    if input_size is not None:
        sizes = settings.get("crop_sizes") if method == "swav" else [settings.get("crop_size")] if method == "moco" else []
        too_big = [int(s) for s in (sizes or []) if s is not None and int(s) > int(input_size)]
        if too_big:
            messages.append(f"{method} crops of {too_big} px are larger than the {input_size} px input: every crop is "
                            f"upsampled; lower the crop size or raise input_size")
    for message in messages:
        warnings.warn(message, UserWarning, stacklevel=2)
    return messages
