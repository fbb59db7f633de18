"""Ignite handlers of the fine-tuning and pre-trained bundles: freeze-then-unfreeze, probabilities and features writers.

Wolf et al. (2024), section 2.3: "Only the linear layer is trained during the first ten epochs before the complete
model is fine-tuned."
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from ignite.engine import Engine, Events

from monai_lessmore.utils.files import atomic_write_bytes, atomic_write_text

__all__ = ["FreezeThenUnfreeze", "PredictionCSVWriter", "FeatureWriter"]

logger = logging.getLogger(__name__)


class FreezeThenUnfreeze:
    """Train only the head for the first ``freeze_epochs`` epochs, then the whole network.

    At every ``EPOCH_STARTED`` the handler sets ``requires_grad`` of every parameter whose name does not start with
    one of ``trainable`` to ``epoch <= freeze_epochs``. Frozen parameters get no gradient, so Adam (with weight decay)
    leaves them untouched. BatchNorm running statistics are buffers, not parameters: as with any ``requires_grad``
    freeze they keep adapting in train mode during the first phase.

    Args:
        freeze_epochs: epochs with a frozen encoder (the paper's 10); 0 trains everything from the start.
        trainable: parameter-name prefixes trained in the first phase (the head ``fc``).
        network: the network; default ``engine.network`` of the MONAI trainer it is attached to.
    """

    def __init__(self, freeze_epochs: int = 10, trainable: Sequence[str] = ("fc",), network: nn.Module | None = None):
        if isinstance(freeze_epochs, bool) or not isinstance(freeze_epochs, int) or freeze_epochs < 0:
            raise ValueError(f"freeze_epochs must be an int >= 0, got {freeze_epochs!r}")
        if isinstance(trainable, str) or not trainable or not all(isinstance(t, str) and t for t in trainable):
            raise ValueError(f"trainable must be a non-empty list of parameter-name prefixes, got {trainable!r}")
        self.freeze_epochs = freeze_epochs
        self.trainable = tuple(trainable)
        self.network = network  # None: the network of the engine, looked up at every event (one handler, many runs)
        self.frozen = False

    def attach(self, engine: Engine) -> None:
        """Attach to a trainer (a MONAI ``SupervisedTrainer`` or any engine when ``network`` was given)."""
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def _network(self, engine: Engine | None) -> nn.Module:
        # MONAI workflows attach handlers before they set ``engine.network``: look it up at the first event
        network = self.network if self.network is not None else getattr(engine, "network", None)
        if network is None:
            raise ValueError("FreezeThenUnfreeze needs a network: pass network= or attach it to a MONAI trainer")
        names = [n for n, _ in network.named_parameters()]
        if not any(n.startswith(self.trainable) for n in names):
            raise ValueError(f"no parameter name starts with {self.trainable}; parameter names look like {names[:3]}")
        return network

    def set_frozen(self, frozen: bool, engine: Engine | None = None) -> None:
        """Freeze (``True``) or unfreeze the non-head parameters."""
        for name, p in self._network(engine).named_parameters():
            p.requires_grad_(not frozen or name.startswith(self.trainable))
        if frozen != self.frozen:
            logger.info(("froze all but " + ", ".join(self.trainable)) if frozen else "unfroze the whole network")
        self.frozen = frozen

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch == 1:
            self.frozen = False  # a new run: announce the freeze again
        self.set_frozen(engine.state.epoch <= self.freeze_epochs, engine)

    def state_dict(self) -> dict[str, Any]:
        """Handler state for checkpoints."""
        return {"freeze_epochs": self.freeze_epochs, "trainable": list(self.trainable), "frozen": self.frozen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the freeze is re-applied at the next epoch start."""
        self.freeze_epochs = int(state_dict["freeze_epochs"])
        self.trainable = tuple(state_dict["trainable"])
        self.frozen = bool(state_dict["frozen"])


class PredictionCSVWriter:
    """Write per-image class probabilities of an evaluator run to a CSV (``id, prob_<class>..., pred[, label]``).

    Expects the engine output as a batch dictionary with ``pred`` logits (``decollate=False``) and the batch's
    ``id`` strings; ``label`` is written when present.

    Args:
        output_file: CSV path (parent folders are created).
        class_names: column names for the probabilities.
    """

    def __init__(self, output_file: str, class_names: Sequence[str]):
        if not output_file:
            raise ValueError(f"output_file must be a path, got {output_file!r}")
        if not class_names:
            raise ValueError(f"class_names must list the classes, got {class_names!r}")
        self.output_file = Path(output_file)
        self.class_names = [str(c) for c in class_names]
        self.rows: list[list[Any]] = []

    def attach(self, engine: Engine) -> None:
        """Collect rows each iteration and write them when the run completes."""
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def collect(self, engine: Engine) -> None:
        """Append this batch's probabilities."""
        out = engine.state.output
        batch = engine.state.batch
        logits = out["pred"] if isinstance(out, dict) else out[0]["pred"]
        probs = torch.softmax(torch.as_tensor(logits).float(), dim=1).detach().cpu()
        if probs.shape[1] != len(self.class_names):
            raise ValueError(f"the network gives {probs.shape[1]} outputs but class_names has {len(self.class_names)}")
        ids = batch.get("id", [str(len(self.rows) + i) for i in range(len(probs))])
        labels = batch.get("label")
        for i, p in enumerate(probs):
            row = [ids[i], *[f"{v:.6f}" for v in p.tolist()], self.class_names[int(p.argmax())]]
            if labels is not None:
                row.append(self.class_names[int(torch.as_tensor(labels[i]).reshape(-1)[0])])
            self.rows.append(row)

    def write(self, engine: Engine) -> None:
        """Write the CSV."""
        self.output_file.parent.mkdir(parents=True, exist_ok=True)
        header = ["id", *[f"prob_{c}" for c in self.class_names], "pred"]
        if self.rows and len(self.rows[0]) > len(header):
            header.append("label")
        with open(self.output_file, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(self.rows)
        logger.info(f"wrote {len(self.rows)} predictions to {self.output_file}")


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
