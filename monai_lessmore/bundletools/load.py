"""Load a bundle's network with :func:`monai.bundle.load`, but say what to do when its weights are missing.

``monai.bundle.load(name=..., bundle_dir=...)`` downloads the bundle by name from MONAI's model zoo whenever
``<bundle_dir>/<name>/models/model.pt`` does not exist, even when the bundle folder is there. The bundles of this
package ship without weights (the HASH-6 encoder is converted from the authors' checkpoint by
``lessmore import-checkpoint``; a pre-training run exports its own), so that lookup can only fail, over the network,
with a message about the model zoo. :func:`load_bundle` checks first and names the command that makes the weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["MissingWeightsError", "load_bundle"]

_MAKE_WEIGHTS = {
    "lessmore_hash6_resnet50": "run `lessmore import-checkpoint CHECKPOINT --bundle {bundle}` (the authors' HASH-6 "
    "checkpoint) or `lessmore fetch-bundle URL` to get a packaged copy",
    "lessmore_ssl_pretrain": "pre-train first (`python -m monai.bundle run training --config_file "
    "{bundle}/configs/train.json ...`): it exports the encoder to {model}",
    "lessmore_classification": "fine-tune first (`python -m monai.bundle run training --config_file "
    "{bundle}/configs/train.json ...`)",
}


class MissingWeightsError(FileNotFoundError):
    """The bundle folder exists but holds no weights file; the message names the command that writes it."""


def load_bundle(name: str, bundle_dir: str | os.PathLike, *, model_file: str | None = None, **kwargs: Any) -> Any:
    """:func:`monai.bundle.load` for a bundle folder on disk, never falling through to a model-zoo download.

    Args:
        name: bundle folder name under ``bundle_dir`` (e.g. ``"lessmore_hash6_resnet50"``).
        bundle_dir: folder holding the bundle.
        model_file: weights file relative to the bundle (default ``models/model.pt``, ``models/model.ts`` with
            ``load_ts_module=True``).
        kwargs: passed to :func:`monai.bundle.load` (``workflow_type``, ``device``, ``net_override``, ...).

    Raises:
        FileNotFoundError: ``bundle_dir/name`` is not a bundle folder (no ``configs/``).
        MissingWeightsError: the bundle has no weights file; the message says how to make it.
    """
    bundle = Path(bundle_dir) / name
    if not (bundle / "configs").is_dir():
        raise FileNotFoundError(f"{bundle}: not a bundle folder (no configs/); check name= and bundle_dir=")
    if model_file is None:
        model_file = os.path.join("models", "model.ts" if kwargs.get("load_ts_module") else "model.pt")
    weights = bundle / model_file
    if not weights.is_file():
        how = _MAKE_WEIGHTS.get(name, "write the weights there first").format(bundle=bundle, model=weights)
        raise MissingWeightsError(
            f"{bundle}: no weights ({weights} does not exist), so monai.bundle.load would look the bundle up on "
            f"MONAI's model zoo instead; {how}"
        )
    import monai.bundle

    return monai.bundle.load(name=name, bundle_dir=str(bundle_dir), model_file=model_file, **kwargs)
