"""The ``lessmore`` command line."""

from __future__ import annotations

from monai_lessmore.cli.main import main

__all__ = ["main"]
