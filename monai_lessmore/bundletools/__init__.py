"""Bundle tooling: turn a pre-training checkpoint into a MONAI bundle, zip it with its hash, download it verified.

Submodules: ``checkpoint`` (reading checkpoint files without running code in them unless trusted), ``convert``
(a SwAV/MoCo/SparK checkpoint -> a plain torchvision-key ``models/model.pt`` inside a copy of a shipped bundle
template), ``package`` (zip with a top-level ``<name>/`` folder + hash file), ``fetch`` (download with a timeout
and hash verification, then extract), ``load`` (:func:`monai.bundle.load` that names the missing weights instead of
looking the bundle up on the model zoo); their ``lessmore`` sub-commands are in :mod:`monai_lessmore.cli.bundle`.
The bundles' network is :class:`monai_lessmore.networks.ResNet50` and their feature
writer :class:`monai_lessmore.classification.handlers.FeatureWriter`.

The submodules are imported on use, so ``import monai_lessmore.bundletools`` (and the ``lessmore`` command line)
stays light.
"""

from __future__ import annotations

__all__ = ["checkpoint", "convert", "fetch", "load", "package"]
