"""Files that ship with the package: the bundle templates, the bundle metadata schema and the reduction presets.

In a source checkout they are the top-level ``bundles/`` and ``configs/`` folders, the copies a user reads and
edits. A wheel carries the same files inside the package (``monai_lessmore/_data/bundles``,
``monai_lessmore/_data/configs``), copied there at build time by ``setup.py``; they are found through
:mod:`importlib.resources`, so an installed package works from any folder. An editable install
(``pip install -e .``) and ``PYTHONPATH=checkout`` read the checkout's own folders.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

__all__ = ["data_dir", "bundle_template", "bundle_names", "metadata_schema", "configs_dir", "METADATA_SCHEMA"]

#: file name of the bundle metadata schema (MONAI's ``meta_schema_20220324.json``, kept offline)
METADATA_SCHEMA = "meta_schema_20220324.json"


def _package_dir() -> Path:
    return Path(str(importlib.resources.files("monai_lessmore")))


def data_dir(kind: str) -> Path:
    """The folder holding the package's ``kind`` files (``"bundles"`` or ``"configs"``).

    The copy inside the installed package (``monai_lessmore/_data/KIND``) when there is one; otherwise the
    top-level ``KIND/`` folder of the source checkout the package is imported from.

    Raises:
        FileNotFoundError: neither exists (a broken installation); the message names both places.
    """
    if kind not in ("bundles", "configs"):
        raise ValueError(f"kind must be 'bundles' or 'configs', got {kind!r}")
    package = _package_dir()
    shipped = package / "_data" / kind
    if shipped.is_dir():
        return shipped
    checkout = package.parent
    if (checkout / "setup.cfg").is_file() and (checkout / kind).is_dir():
        return checkout / kind
    raise FileNotFoundError(
        f"the package's {kind}/ folder is missing: neither {shipped} (installed wheel) nor {checkout / kind} "
        "(source checkout) exists; reinstall monai-lessmore from its wheel or a complete source checkout"
    )


def bundle_names() -> list[str]:
    """Names of the bundle templates that ship with the package (folders with ``configs/metadata.json``)."""
    root = data_dir("bundles")
    return sorted(p.name for p in root.iterdir() if (p / "configs" / "metadata.json").is_file())


def bundle_template(name: str) -> Path:
    """The folder of the shipped bundle ``name`` (e.g. ``"lessmore_ssl_pretrain"``).

    Raises:
        FileNotFoundError: no such bundle; the message lists the shipped ones.
    """
    path = data_dir("bundles") / name
    if not (path / "configs" / "metadata.json").is_file():
        raise FileNotFoundError(f"no bundle {name!r} ships with monai-lessmore ({path}); shipped: {bundle_names()}")
    return path


def metadata_schema() -> Path:
    """The JSON schema the bundles' ``configs/metadata.json`` validate against (``monai.bundle verify_metadata``)."""
    path = data_dir("bundles") / "schemas" / METADATA_SCHEMA
    if not path.is_file():
        raise FileNotFoundError(f"the bundle metadata schema {path} is missing; reinstall monai-lessmore")
    return path


def configs_dir() -> Path:
    """The folder of the reduction presets (``configs/reduction/*.yaml``) and experiment recipes."""
    return data_dir("configs")
