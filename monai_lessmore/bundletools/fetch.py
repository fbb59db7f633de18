"""Download a bundle zip, verify its hash, and extract it -- what ``monai.bundle download --url`` does, plus the hash.

``monai.bundle.download(url=...)`` calls ``monai.apps.utils.download_url(..., hash_val=None)``: it never checks the
zip's hash, and if ``<bundle_dir>/<name>`` already exists and is not empty, ``extractall`` silently keeps the old
files. :func:`fetch_bundle` downloads with the same ``download_url`` into a temporary folder, compares the hash
(:func:`monai_lessmore.bundletools.package.package_bundle` writes it next to the zip), checks the zip holds one top-level
``<name>/`` folder with ``configs/metadata.json``, and only then moves the bundle into place.
"""

from __future__ import annotations

import os
import http.client
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path
from urllib.error import ContentTooShortError, URLError

from monai_lessmore.bundletools.package import HASH_TYPES, file_hash

__all__ = ["BundleDownloadError", "fetch_bundle"]


class BundleDownloadError(RuntimeError):
    """The download failed, was truncated, has the wrong hash, or is not a bundle zip; nothing was extracted."""


def _check_zip(zpath: Path, name: str, url: str) -> None:
    if not zipfile.is_zipfile(zpath):
        raise BundleDownloadError(
            f"the file downloaded from {url} ({zpath.stat().st_size} bytes) is not a zip archive (truncated or not a "
            "bundle); nothing was extracted"
        )
    with zipfile.ZipFile(zpath) as zf:
        names = zf.namelist()
        bad = zf.testzip()
    if bad is not None:
        raise BundleDownloadError(f"the zip from {url} is damaged: CRC check of {bad} failed; nothing was extracted")
    tops = sorted({n.split("/", 1)[0] for n in names})
    if tops != [name]:
        raise BundleDownloadError(
            f"the zip from {url} must hold exactly one top-level folder {name!r}/ (as monai.bundle download expects); "
            f"found top-level entries {tops[:10]}. Pass the bundle's name, or re-package it with lessmore package-bundle"
        )
    if f"{name}/configs/metadata.json" not in names:
        raise BundleDownloadError(f"the zip from {url} has no {name}/configs/metadata.json: it is not a MONAI bundle")


def fetch_bundle(
    url: str,
    *,
    name: str,
    bundle_dir: str | os.PathLike,
    hash_val: str,
    hash_type: str = "sha256",
    force: bool = False,
    progress: bool = False,
) -> Path:
    """Download the bundle zip at ``url``, verify it, and extract it to ``<bundle_dir>/<name>``.

    Args:
        url: where the zip is (``http(s)://`` or ``file://``).
        name: the bundle name = the zip's top-level folder.
        bundle_dir: the folder that receives ``<name>/``.
        hash_val: the expected hex digest of the zip (the ``.sha256`` file written by ``lessmore package-bundle``).
        hash_type: one of ``md5``, ``sha1``, ``sha256``, ``sha512``.
        force: replace an existing ``<bundle_dir>/<name>``.
        progress: show a download progress bar.

    Returns:
        The extracted bundle folder.

    Raises:
        BundleDownloadError: network error, truncated download, hash mismatch, not a zip, wrong layout.
        FileExistsError: ``<bundle_dir>/<name>`` exists and ``force`` is False.
        ValueError: a bad argument.
    """
    from monai.apps.utils import download_url, extractall

    if hash_type not in HASH_TYPES:
        raise ValueError(f"hash_type must be one of {HASH_TYPES}, got {hash_type!r}")
    hash_val = (hash_val or "").strip().lower()
    if not hash_val or any(c not in "0123456789abcdef" for c in hash_val):
        raise ValueError(f"hash_val must be the zip's hex {hash_type} digest (see the .{hash_type} file), got {hash_val!r}")
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"name must be the bundle's folder name, got {name!r}")
    root = Path(bundle_dir)
    target = root / name
    if target.exists() and not force:
        raise FileExistsError(f"{target} already exists; refusing to overwrite it (pass --force to replace it)")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=root) as tmp:
        zpath = Path(tmp) / f"{name}.zip"
        try:
            with warnings.catch_warnings():  # "no hash value provided": the hash is checked below, with the digest shown
                warnings.filterwarnings("ignore", message="No hash value provided")
                download_url(url=url, filepath=zpath, hash_val=None, progress=progress)
        except ContentTooShortError as err:
            got = len(err.content) if getattr(err, "content", None) is not None else "fewer"
            raise BundleDownloadError(
                f"the download from {url} was truncated ({got} bytes received, {err}); nothing was extracted, retry"
            ) from err
        except (URLError, OSError, RuntimeError, http.client.HTTPException) as err:
            raise BundleDownloadError(f"could not download {url}: {type(err).__name__}: {err}") from err
        if not zpath.is_file():
            raise BundleDownloadError(f"downloading {url} produced no file")
        actual = file_hash(zpath, hash_type)
        if actual != hash_val:
            raise BundleDownloadError(
                f"hash mismatch for {url}: expected {hash_type} {hash_val}, got {actual} ({zpath.stat().st_size} bytes). "
                "The download is corrupted, truncated or was tampered with; it was deleted and nothing was extracted."
            )
        _check_zip(zpath, name, url)
        extracted = Path(tmp) / "x"
        extractall(filepath=zpath, output_dir=extracted, has_base=True)
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(extracted / name), str(target))
    return target
