"""Download a bundle zip, verify its hash, and extract it -- what ``monai.bundle download --url`` does, plus the hash.

``monai.bundle.download(url=...)`` calls ``monai.apps.utils.download_url(..., hash_val=None)``: it never checks the
zip's hash, it has no network timeout (a server that stalls holds it for as long as it likes), and if
``<bundle_dir>/<name>`` already exists and is not empty, ``extractall`` silently keeps the old files.
:func:`fetch_bundle` streams the zip with a connect/read timeout into a temporary folder beside the target,
compares the hash (:func:`monai_lessmore.bundletools.package.package_bundle` writes it next to the zip), checks the
zip holds one top-level ``<name>/`` folder with ``configs/metadata.json``, and only then moves the bundle into
place. On any failure the temporary folder ``.NAME.PID-XXXX.tmp/`` and the partial zip are removed; folders left by a
killed run are removed by the next one (:func:`monai_lessmore.utils.files.remove_stale_temps`).
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from urllib.error import URLError

from monai_lessmore.bundletools.package import HASH_TYPES, file_hash
from monai_lessmore.utils.files import remove_stale_temps

__all__ = ["BundleDownloadError", "fetch_bundle", "DEFAULT_TIMEOUT", "PROGRESS_MIN_BYTES"]

#: seconds a connection attempt or a read may wait for the server
DEFAULT_TIMEOUT = 30.0  # the command line's default (monai_lessmore.cli.bundle) is the same
#: downloads at least this large (or of unknown size) show a progress bar when ``progress`` is on
PROGRESS_MIN_BYTES = 1 << 20
_CHUNK = 1 << 16


class BundleDownloadError(RuntimeError):
    """The download failed, was truncated, has the wrong hash, or is not a bundle zip; nothing was extracted."""


def _download(url: str, dest: Path, *, timeout: float, progress: bool) -> None:
    """Stream ``url`` to ``dest``; every failure is a :class:`BundleDownloadError` that says what was received."""
    received, total = 0, None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
            length = response.headers.get("Content-Length") if hasattr(response, "headers") else None
            total = int(length) if length and length.isdigit() else None
            bar = None
            if progress and (total is None or total >= PROGRESS_MIN_BYTES):
                from tqdm.auto import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name, leave=False)
            read = getattr(response, "read1", response.read)  # read1: what has arrived, so the count is exact
            try:
                while True:
                    chunk = read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    received += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
    except (socket.timeout, TimeoutError) as err:
        raise BundleDownloadError(
            f"the download from {url} stalled: no data for {timeout:g} s after {received} bytes"
            f"{f' of {total}' if total is not None else ''} (timeout {timeout:g} s; raise it with --timeout); "
            "nothing was extracted"
        ) from err
    except http.client.IncompleteRead as err:
        raise BundleDownloadError(
            f"the download from {url} was truncated ({received + len(err.partial)} of {total} bytes received); "
            "nothing was extracted, retry"
        ) from err
    except (URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", None)
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise BundleDownloadError(
                f"could not connect to {url} within {timeout:g} s (raise it with --timeout)"
            ) from err
        raise BundleDownloadError(f"could not download {url}: {type(err).__name__}: {err}") from err
    if total is not None and received != total:
        raise BundleDownloadError(
            f"the download from {url} was truncated ({received} of {total} bytes received); nothing was extracted, retry"
        )


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
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download the bundle zip at ``url``, verify it, and extract it to ``<bundle_dir>/<name>``.

    Args:
        url: where the zip is (``http(s)://`` or ``file://``).
        name: the bundle name = the zip's top-level folder.
        bundle_dir: the folder that receives ``<name>/``.
        hash_val: the expected hex digest of the zip (the ``.sha256`` file written by ``lessmore package-bundle``).
        hash_type: one of ``md5``, ``sha1``, ``sha256``, ``sha512``.
        force: replace an existing ``<bundle_dir>/<name>``.
        progress: show a download progress bar (tqdm, on stderr) for a zip of at least :data:`PROGRESS_MIN_BYTES`.
        timeout: seconds to wait for the connection and for each read; a server that stalls longer fails the
            download.

    Returns:
        The extracted bundle folder.

    Raises:
        BundleDownloadError: network error or timeout, truncated download, hash mismatch, not a zip, wrong layout.
        FileExistsError: ``<bundle_dir>/<name>`` exists and ``force`` is False.
        ValueError: a bad argument.
    """
    from monai.apps.utils import extractall

    if hash_type not in HASH_TYPES:
        raise ValueError(f"hash_type must be one of {HASH_TYPES}, got {hash_type!r}")
    hash_val = (hash_val or "").strip().lower()
    if not hash_val or any(c not in "0123456789abcdef" for c in hash_val):
        raise ValueError(f"hash_val must be the zip's hex {hash_type} digest (see the .{hash_type} file), got {hash_val!r}")
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"name must be the bundle's folder name, got {name!r}")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    root = Path(bundle_dir)
    target = root / name
    if target.exists() and not force:
        raise FileExistsError(f"{target} already exists; refusing to overwrite it (pass --force to replace it)")
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(root)  # what killed fetches (and other writers of this package) left here
    with tempfile.TemporaryDirectory(prefix=f".{name}.{os.getpid()}-", suffix=".tmp", dir=root) as tmp:
        zpath = Path(tmp) / f"{name}.zip"
        _download(url, zpath, timeout=timeout, progress=progress)
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
