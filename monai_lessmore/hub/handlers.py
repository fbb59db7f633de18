"""Ignite handler of the pre-trained ResNet50 bundle: write the 2048-d features of an evaluator run.

Class probabilities (when the bundle is given a linear head) are written by
:class:`monai_lessmore.classification.handlers.PredictionCSVWriter`, the fine-tuning bundle's writer.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from monai_lessmore.utils.files import atomic_write_bytes, atomic_write_text

__all__ = ["FeatureWriter"]

logger = logging.getLogger(__name__)

_FORMATS = ("npy", "csv")


class FeatureWriter:
    """Collect ``engine.state.output["pred"]`` (``(B, D)`` features) and the batch ``id`` strings; write them at the end.

    ``npy`` writes ``features.npy`` (``(N, D)`` float32, rows in input order) and ``features_ids.txt`` (one id per
    line); ``csv`` writes ``features.csv`` (``id, f0 ... f{D-1}``). Files are written atomically.

    Args:
        output_dir: folder for the files (created).
        formats: any of ``"npy"``, ``"csv"``.
    """

    def __init__(self, output_dir: str, formats: Sequence[str] = _FORMATS) -> None:
        if not output_dir:
            raise ValueError(f"output_dir must be a folder path, got {output_dir!r}")
        formats = [formats] if isinstance(formats, str) else list(formats)
        bad = [f for f in formats if f not in _FORMATS]
        if not formats or bad:
            raise ValueError(f"formats must be a non-empty list of {list(_FORMATS)}, got {formats!r}")
        self.output_dir = Path(output_dir)
        self.formats = formats
        self.ids: list[str] = []
        self.features: list[np.ndarray] = []

    def attach(self, engine: Engine) -> None:
        """Collect each iteration, write when the run completes."""
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        """Forget what was collected."""
        self.ids.clear()
        self.features.clear()

    def collect(self, engine: Engine) -> None:
        """Append this batch's features (expects ``decollate=False``)."""
        out = engine.state.output
        pred = out["pred"] if isinstance(out, dict) else out[0]["pred"]
        feats = torch.as_tensor(pred).detach().float().cpu().reshape(len(pred), -1).numpy()
        batch = engine.state.batch
        ids = batch.get("id") if isinstance(batch, dict) else None
        ids = [str(i) for i in ids] if ids is not None else [str(len(self.ids) + i) for i in range(len(feats))]
        self.ids.extend(ids)
        self.features.append(feats)

    def write(self, engine: Engine | None = None) -> dict[str, Path]:
        """Write the files; returns ``{format: path}``."""
        feats = np.concatenate(self.features) if self.features else np.zeros((0, 0), np.float32)
        written: dict[str, Path] = {}
        if "npy" in self.formats:
            buf = io.BytesIO()
            np.save(buf, feats.astype(np.float32))
            written["npy"] = atomic_write_bytes(self.output_dir / "features.npy", buf.getvalue())
            atomic_write_text(self.output_dir / "features_ids.txt", "".join(f"{i}\n" for i in self.ids))
        if "csv" in self.formats:
            text = io.StringIO()
            writer = csv.writer(text)
            writer.writerow(["id", *[f"f{j}" for j in range(feats.shape[1] if feats.ndim == 2 else 0)]])
            for i, row in zip(self.ids, feats):
                writer.writerow([i, *[f"{v:.7g}" for v in row]])
            written["csv"] = atomic_write_text(self.output_dir / "features.csv", text.getvalue())
        logger.info(f"wrote features of {len(self.ids)} slices ({feats.shape}) to {sorted(map(str, written.values()))}")
        return written
