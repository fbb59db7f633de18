"""Small shared utilities: atomic file writes, content digests."""

from __future__ import annotations

from monai_lessmore.utils.files import atomic_write_bytes, atomic_write_json, atomic_write_text, content_digest

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text", "content_digest"]
