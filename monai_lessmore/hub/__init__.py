"""The HASH-6 pre-trained ResNet50 as a MONAI bundle: checkpoint conversion, packaging, verified download.

Submodules: ``checkpoint`` (reading checkpoint files without running code in them unless trusted), ``convert``
(a SwAV/MoCo/SparK checkpoint -> a plain torchvision-key ``models/model.pt``), ``network`` (the bundle's feature
network and weight loading), ``handlers`` (features CSV/.npy writer), ``package`` (zip with a top-level ``<name>/``
folder + hash file), ``fetch`` (download with hash verification, then extract), ``commands`` (the ``lessmore
import-checkpoint`` / ``package-bundle`` / ``fetch-bundle`` commands).

The submodules are imported on use, so ``import monai_lessmore.hub`` (and the ``lessmore`` command line) stays light.
"""

from __future__ import annotations

__all__ = ["checkpoint", "commands", "convert", "fetch", "handlers", "network", "package"]
