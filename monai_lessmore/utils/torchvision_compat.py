"""Import torchvision even when its compiled operators do not match the installed torch.

The registry's torchvision wheels are built against the CUDA build of torch. Next to the CPU-only torch wheel,
torchvision's ``_C`` extension cannot load (it links ``libtorch_cuda``), and torchvision 0.28 then fails *at import*:
``torchvision/_meta_registrations.py`` registers meta kernels for ``torchvision::nms``/``qnms``, operators that were
never defined ("operator torchvision::nms does not exist"). Everything this package uses from torchvision -- the
ResNet50 model and the v2 image transforms -- is pure Python and needs none of those operators.

:func:`import_torchvision` is the one place that handles this: on exactly that error it declares the two operator
*schemas* (no kernels, so calling ``torchvision.ops.nms`` still fails loudly), warns once, and imports again. With
matching torch/torchvision builds it is a plain import.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

import torch

__all__ = ["import_torchvision"]

_SHIM_LIBS: list = []  # the declarations live as long as their Library object


def import_torchvision(submodule: str | None = None) -> ModuleType:
    """``import torchvision`` (or ``torchvision.<submodule>``), tolerating mismatched compiled operators.

    Args:
        submodule: e.g. ``"models"`` or ``"transforms.v2"``.

    Returns:
        The imported module.
    """
    name = "torchvision" if submodule is None else f"torchvision.{submodule}"
    try:
        return importlib.import_module(name)
    except RuntimeError as err:
        if "torchvision::" not in str(err) or _SHIM_LIBS:
            raise
        warnings.warn(
            f"torchvision's compiled operators could not be loaded ({err}): torch {torch.__version__} and the "
            "installed torchvision are builds for different platforms. The models and transforms monai-lessmore "
            "uses are pure Python and work; torchvision.ops (nms, roi_align, ...) does not. Install matching "
            "torch/torchvision builds to silence this.",
            RuntimeWarning,
            stacklevel=2,
        )
        lib = torch.library.Library("torchvision", "FRAGMENT")  # schemas only, no kernels
        for op in ("nms", "qnms"):
            try:
                lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            except RuntimeError:  # already declared by a partial import
                pass
        _SHIM_LIBS.append(lib)
        return importlib.import_module(name)
