"""Reduction presets: the paper's settings (HASH-3/6/12, EveryN-10, SSIM/MI/DeepNet to 10 %) as config files.

A preset is a small YAML or JSON mapping of :class:`~monai_lessmore.reduction.SliceReducer` arguments. The ones that
ship with the package live in the top-level ``configs/reduction/`` folder (inside the wheel:
:func:`monai_lessmore.resources.configs_dir`); a user's own file works the same way::

    lessmore reduce INPUT --output DIR --config hash6
    lessmore reduce INPUT --output DIR --config my_settings.yaml --threshold 12
    SliceReductionFilter(config="ssim10", cache_dir="cache")
    ReduceSlicesd(keys="image", config="configs/reduction/mi10.yaml")

Options given explicitly override the file, key by key. The amount of reduction is one choice among
``threshold``, ``fraction``, ``count`` and ``every_n``: giving one of them replaces the file's.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["REDUCER_KEYS", "AMOUNT_KEYS", "preset_names", "preset_path", "load_reduction_config", "merge_reduction_config"]

#: the keys a reduction config may hold: the arguments of :class:`~monai_lessmore.reduction.SliceReducer`
REDUCER_KEYS = (
    "method", "threshold", "fraction", "count", "algorithm", "every_n", "window", "device", "bins",
    "deepnet_weights", "mixed_size",
)
#: mutually exclusive ways to say how much is kept
AMOUNT_KEYS = ("threshold", "fraction", "count", "every_n")
_SUFFIXES = (".yaml", ".yml", ".json")


def _presets_dir() -> Path:
    from monai_lessmore.resources import configs_dir

    return configs_dir() / "reduction"


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def preset_names() -> list[str]:
    """Names of the shipped presets (``hash3``, ``hash6``, ``hash12``, ``everyn10``, ``ssim10``, ``mi10``, ``deepnet10``)."""
    return sorted(p.stem for p in _presets_dir().iterdir() if p.suffix in _SUFFIXES)


def preset_path(name: str) -> Path:
    """The file of the shipped preset ``name``; ``"HASH-6"``, ``"hash6"`` and ``"SSIM-10 %"`` style names all work.

    Raises:
        ValueError: no such preset; the message lists the shipped ones.
    """
    wanted = _normalise(name)
    for path in sorted(_presets_dir().iterdir()):
        if path.suffix in _SUFFIXES and _normalise(path.stem) == wanted:
            return path
    raise ValueError(f"no reduction preset {name!r}: give a YAML/JSON file or one of {preset_names()}")


def load_reduction_config(config: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """The reducer arguments of a preset name, a YAML/JSON file, or a mapping.

    Raises:
        FileNotFoundError: ``config`` looks like a path (has a separator or a YAML/JSON suffix) that does not exist.
        ValueError: not a preset name, not a mapping, or keys that are not reducer arguments (the message names
            the file and lists the allowed keys).
    """
    if isinstance(config, Mapping):
        data, source = dict(config), "reduction config"
    else:
        text = os.fspath(config)
        path = Path(text)
        if not path.is_file():
            if os.sep in text or "/" in text or path.suffix in _SUFFIXES:
                raise FileNotFoundError(f"reduction config {text} does not exist; give a file or one of {preset_names()}")
            path = preset_path(text)
        source = str(path)
        raw = path.read_text(encoding="utf-8")
        import yaml  # here: most runs give no config file, and importing yaml costs ~20 ms of start-up

        try:
            data = json.loads(raw) if path.suffix == ".json" else yaml.safe_load(raw)
        except (ValueError, yaml.YAMLError) as err:
            kind = "JSON" if path.suffix == ".json" else "YAML"
            raise ValueError(f"reduction config {source} is not valid {kind}: {err}") from err
        if not isinstance(data, Mapping):
            raise ValueError(f"reduction config {source} must hold a mapping of reducer options, got {type(data).__name__}")
        data = dict(data)
    unknown = sorted(str(k) for k in data if k not in REDUCER_KEYS)
    if unknown:
        raise ValueError(f"reduction config {source}: unknown keys {unknown}; allowed: {list(REDUCER_KEYS)}")
    return data


def merge_reduction_config(
    config: str | os.PathLike | Mapping[str, Any] | None, overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """``config``'s reducer arguments overridden by the non-``None`` entries of ``overrides``.

    An override of one of :data:`AMOUNT_KEYS` drops the config's other amount keys (``--config hash6 --fraction
    0.1`` keeps 10 % instead of using threshold 6). Without ``config`` the non-``None`` overrides are returned.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    if config is None:
        return given
    merged = load_reduction_config(config)
    if any(k in given for k in AMOUNT_KEYS):
        merged = {k: v for k, v in merged.items() if k not in AMOUNT_KEYS}
    merged.update(given)
    return merged
