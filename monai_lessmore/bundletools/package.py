"""Zip a bundle the way ``monai.bundle download`` expects, and write the zip's hash next to it.

Spec section 5: ``monai.bundle download`` takes a ``--url``, a GitHub release asset (``--source github --repo
owner/repo/tag``, file ``<name>_v<version>.zip``) or the Hugging Face hub; the zip holds one top-level ``<name>/``
folder, which ``monai.apps.utils.extractall(has_base=True)`` unpacks into ``<bundle_dir>/<name>``. The zip is
reproducible (sorted entries, fixed timestamps), so the same bundle gives the same hash. Weights are stored
uncompressed (float tensors do not compress); text files are deflated.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from monai.apps.utils import SUPPORTED_HASH_TYPES

from monai_lessmore.utils.files import atomic_open, atomic_write_text
from monai_lessmore.utils.files import file_hash as _file_hash

__all__ = ["PackageResult", "package_bundle", "file_hash", "HASH_TYPES", "EXCLUDED_DIRS", "EXCLUDED_SUFFIXES"]

#: the hash types ``monai.apps.utils.check_hash`` (and so ``download_url``/``large_files.yml``) accepts
HASH_TYPES = tuple(SUPPORTED_HASH_TYPES)
#: folders never packaged: run outputs and caches
EXCLUDED_DIRS = frozenset({"eval", "__pycache__", ".ipynb_checkpoints", ".git"})
#: source checkpoints stay out of the zip: the bundle carries the converted ``models/model.pt``
EXCLUDED_SUFFIXES = (".ckpt", ".pth.tar", ".tmp")
_STORED = (".pt", ".ts", ".pth", ".npy", ".npz", ".zip", ".gz", ".png", ".jpg")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass
class PackageResult:
    """What :func:`package_bundle` wrote."""

    zip_path: Path
    hash_path: Path
    hash_type: str
    hash_val: str
    name: str
    version: str
    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def file_hash(path: str | os.PathLike, hash_type: str = "sha256") -> str:
    """Hex digest of a file (``hash_type`` one of :data:`HASH_TYPES`)."""
    if hash_type not in HASH_TYPES:
        raise ValueError(f"hash_type must be one of {HASH_TYPES}, got {hash_type!r}")
    return _file_hash(path, hash_type)


def _bundle_files(bundle: Path) -> tuple[list[Path], list[str]]:
    files, skipped = [], []
    for p in sorted(bundle.rglob("*")):
        rel = p.relative_to(bundle)
        if not p.is_file() or EXCLUDED_DIRS & set(rel.parts[:-1]):
            continue
        if p.name.startswith("."):  # .gitkeep, editor files
            continue
        if p.name.endswith(EXCLUDED_SUFFIXES):
            skipped.append(rel.as_posix())
            continue
        files.append(p)
    return files, skipped


def _check_weights(model: Path) -> None:
    import torch

    try:
        state = torch.load(model, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{model} does not load with torch.load(weights_only=True) ({type(err).__name__}: {err}); monai.bundle.load "
            "could not read it. Convert the checkpoint: lessmore import-checkpoint SRC --bundle DIR"
        ) from err
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{model} is not a plain state dict of tensors (got {type(state).__name__})")


def package_bundle(
    bundle_dir: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    name: str | None = None,
    hash_type: str = "sha256",
    force: bool = False,
    require_weights: bool = True,
    exclude: Sequence[str] = (),
) -> PackageResult:
    """Write ``<name>/...`` of ``bundle_dir`` into a zip and its hash into ``<zip>.<hash_type>``.

    The hash file has the ``sha256sum`` format (``<hex>  <zip name>``), so ``sha256sum -c`` checks it; give the hex
    value to ``lessmore fetch-bundle --sha256`` or ``monai.apps.utils.download_url(hash_val=...)``.

    Args:
        bundle_dir: the bundle folder (with ``configs/metadata.json``).
        output: the zip path; default ``<bundle_dir>/../<name>_v<version>.zip`` (the GitHub-release file name
            ``monai.bundle download --source github`` looks for).
        name: the top-level folder in the zip; default the bundle folder's name.
        hash_type: one of :data:`HASH_TYPES`.
        force: replace an existing zip.
        require_weights: refuse a bundle without ``models/model.pt`` (``monai.bundle.load`` reads it).
        exclude: further relative paths (POSIX form) to leave out.

    Returns:
        A :class:`PackageResult`.

    Raises:
        ValueError: not a bundle, bad name/hash type, missing or unloadable weights.
        FileExistsError: the zip exists and ``force`` is False.
    """
    bundle = Path(bundle_dir).resolve()
    meta_file = bundle / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise ValueError(f"{bundle_dir} is not a MONAI bundle: {meta_file} is absent")
    try:
        version = str(json.loads(meta_file.read_text())["version"])
    except (ValueError, KeyError) as err:
        raise ValueError(f"{meta_file} must be JSON with a 'version' ({type(err).__name__}: {err})") from err
    name = name or bundle.name
    if not _NAME.match(name):
        raise ValueError(f"bundle name must be letters, digits, '_', '-', '.', got {name!r}")
    if hash_type not in HASH_TYPES:
        raise ValueError(f"hash_type must be one of {HASH_TYPES} (what monai's check_hash accepts), got {hash_type!r}")
    model = bundle / "models" / "model.pt"
    if require_weights:
        if not model.is_file():
            raise ValueError(
                f"{model} is absent: a bundle zip without weights cannot be loaded. Convert a checkpoint first "
                "(lessmore import-checkpoint SRC --bundle DIR) or pass --allow-missing-weights"
            )
        _check_weights(model)
    zip_path = Path(output) if output is not None else bundle.parent / f"{name}_v{version}.zip"
    hash_path = zip_path.with_name(f"{zip_path.name}.{hash_type}")
    if zip_path.resolve().is_relative_to(bundle):
        raise ValueError(f"--output {zip_path} is inside the bundle {bundle}; write the zip elsewhere")
    if zip_path.exists() and not force:
        raise FileExistsError(f"{zip_path} already exists; refusing to overwrite it (pass --force to replace it)")
    files, skipped = _bundle_files(bundle)
    files = [f for f in files if f.relative_to(bundle).as_posix() not in set(exclude)]
    with atomic_open(zip_path) as fh, zipfile.ZipFile(fh, "w") as zf:
        for f in files:
            info = zipfile.ZipInfo(f"{name}/{f.relative_to(bundle).as_posix()}", date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_STORED if f.name.endswith(_STORED) else zipfile.ZIP_DEFLATED
            with open(f, "rb") as src, zf.open(info, "w", force_zip64=True) as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    dst.write(chunk)
    digest = file_hash(zip_path, hash_type)
    atomic_write_text(hash_path, f"{digest}  {zip_path.name}\n")
    return PackageResult(zip_path=zip_path, hash_path=hash_path, hash_type=hash_type, hash_val=digest, name=name,
                         version=version, files=[f.relative_to(bundle).as_posix() for f in files], skipped=skipped)
