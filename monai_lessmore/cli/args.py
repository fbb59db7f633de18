"""Argument types shared by the ``lessmore`` sub-commands (``argparse`` ``type=`` callables: a bad value exits 2)."""

from __future__ import annotations

import argparse

__all__ = ["positive_seconds", "METHOD_NAMES", "SLICE_ORDERS"]

# The choices of the parser, here so that building it imports neither numpy nor nibabel (``lessmore reduce`` starts
# reading its first volume before those imports; see monai_lessmore.cli.readahead). They are the keys of
# monai_lessmore.reduction.methods.METHODS and monai_lessmore.io.slice_folder.SLICE_ORDERS, which a test checks.
#: similarity methods of ``--method``
METHOD_NAMES = ("all", "everyn", "hash", "ssim", "mi", "deepnet")
#: slice orders of ``--order``
SLICE_ORDERS = ("index", "filename", "instance")


def positive_seconds(text: str) -> float:
    """A positive number of seconds (timeouts)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value
