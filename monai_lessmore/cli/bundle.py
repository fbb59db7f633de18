"""The ``lessmore import-checkpoint``, ``package-bundle`` and ``fetch-bundle`` commands (wired in :mod:`monai_lessmore.cli.main`).

Each returns the exit status: 0 on success, 2 on bad input (the message says what was given and how to fix it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from monai_lessmore.cli.args import positive_seconds

__all__ = ["add_bundle_parsers", "run_import_checkpoint", "run_package_bundle", "run_fetch_bundle", "BUNDLE_COMMANDS"]

BUNDLE_COMMANDS = ("import-checkpoint", "package-bundle", "fetch-bundle")
#: fetch-bundle's connect/read timeout, in seconds (the parser stays light: the download code is imported on use)
DEFAULT_TIMEOUT = 30.0


def add_bundle_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the three sub-commands to the ``lessmore`` parser."""
    i = sub.add_parser(
        "import-checkpoint",
        help="convert a SwAV/MoCo/SparK ResNet50 checkpoint (e.g. the authors' .ckpt) into a bundle's models/model.pt",
    )
    i.add_argument("source", metavar="SRC", help="the checkpoint: Lightning .ckpt, MoCo/SparK .pth, or a pre-training export")
    i.add_argument("--bundle", required=True, metavar="DIR", help="bundle folder receiving models/model.pt (created from the lessmore_hash6_resnet50 template when it is not a bundle)")
    i.add_argument("--trust-pickle", action="store_true", help="allow full unpickling of SRC when torch.load(weights_only=True) cannot read it; unpickling can execute code embedded in the file: only for files you trust")
    i.add_argument("--force", action="store_true", help="replace an existing DIR/models/model.pt")
    i.add_argument("--prefix", default=None, help="key prefix of the encoder in SRC (default: detected, e.g. 'model.' for the authors' SwAV)")
    i.add_argument("--no-template", action="store_true", help="write only models/model.pt, never copy the bundle template")

    p = sub.add_parser("package-bundle", help="zip a bundle with a top-level <name>/ folder (as monai.bundle download expects) and write its hash")
    p.add_argument("directory", metavar="DIR", help="the bundle folder (configs/metadata.json, models/model.pt)")
    p.add_argument("--output", "-o", default=None, metavar="ZIP", help="zip path (default: DIR/../<name>_v<version>.zip, the GitHub-release name)")
    p.add_argument("--name", default=None, help="top-level folder name in the zip (default: DIR's name)")
    p.add_argument("--hash-type", default="sha256", help="hash written to ZIP.<hash-type>: one of MONAI's check_hash types (md5, sha1, sha256, sha512; default sha256)")
    p.add_argument("--force", action="store_true", help="replace an existing zip")
    p.add_argument("--allow-missing-weights", action="store_true", help="package a bundle without models/model.pt")

    f = sub.add_parser("fetch-bundle", help="download a bundle zip, verify its SHA-256, and extract it (monai.bundle download --url plus the hash check)")
    f.add_argument("url", metavar="URL", help="http(s):// or file:// URL of the zip")
    f.add_argument("--name", required=True, help="bundle name = the zip's top-level folder")
    f.add_argument("--sha256", required=True, metavar="HEX", help="expected SHA-256 of the zip (the .sha256 file written by package-bundle)")
    f.add_argument("--bundle-dir", default=".", metavar="DIR", help="folder receiving <name>/ (default: current folder)")
    f.add_argument("--force", action="store_true", help="replace an existing <bundle-dir>/<name>")
    f.add_argument("--timeout", type=positive_seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS", help=f"seconds to wait for the connection and for each read before giving up (default {DEFAULT_TIMEOUT:g})")
    f.add_argument("--no-progress", action="store_true", help="no progress bar (shown for bundles of 1 MiB or more)")


def _error(command: str, exc: BaseException) -> int:
    print(f"lessmore {command}: error: {exc}", file=sys.stderr)
    return 2


def run_import_checkpoint(ns: argparse.Namespace) -> int:
    """``lessmore import-checkpoint``."""
    from monai_lessmore.bundletools.checkpoint import CheckpointError
    from monai_lessmore.bundletools.convert import DEFAULT_TEMPLATE, BundleExistsError, ConversionError, import_checkpoint

    try:
        report = import_checkpoint(
            ns.source, ns.bundle, trust_pickle=ns.trust_pickle, force=ns.force, prefix=ns.prefix,
            template=None if ns.no_template else DEFAULT_TEMPLATE,
        )
    except (CheckpointError, ConversionError, BundleExistsError, NotADirectoryError) as exc:
        return _error("import-checkpoint", exc)
    print(report.summary())
    print(f"wrote {Path(ns.bundle) / 'models' / 'model.pt'} (plain state dict, torch.load(weights_only=True)) and "
          f"{Path(ns.bundle) / 'models' / 'conversion.json'}")
    return 0


def run_package_bundle(ns: argparse.Namespace) -> int:
    """``lessmore package-bundle``."""
    from monai_lessmore.bundletools.package import package_bundle

    try:
        res = package_bundle(ns.directory, ns.output, name=ns.name, hash_type=ns.hash_type, force=ns.force,
                             require_weights=not ns.allow_missing_weights)
    except (ValueError, FileExistsError) as exc:
        return _error("package-bundle", exc)
    print(f"wrote {res.zip_path} ({len(res.files)} files under {res.name}/) and {res.hash_path}")
    if res.skipped:
        print(f"left out: {res.skipped}")
    print(f"{res.hash_type}: {res.hash_val}")
    return 0


def run_fetch_bundle(ns: argparse.Namespace) -> int:
    """``lessmore fetch-bundle``."""
    from monai_lessmore.bundletools.fetch import BundleDownloadError, fetch_bundle

    try:
        target = fetch_bundle(ns.url, name=ns.name, bundle_dir=ns.bundle_dir, hash_val=ns.sha256, force=ns.force,
                              progress=not ns.no_progress, timeout=ns.timeout)
    except (BundleDownloadError, FileExistsError, ValueError) as exc:
        return _error("fetch-bundle", exc)
    print(f"verified sha256 and extracted {target}")
    return 0
