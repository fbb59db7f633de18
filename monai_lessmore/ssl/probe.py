"""A downstream probe during pre-training: every N epochs, embed a small labelled set with the current encoder
and score it with k-NN (and optionally logistic regression), so checkpoints can be chosen by a downstream metric.

The paper's authors report that the pre-training loss did not tell which checkpoint would do best downstream
(Wolf et al. 2024, discussion); a k-NN probe on frozen features is the usual cheap proxy (e.g. the k-NN monitor of
lightly and of DINO). :class:`DownstreamProbe` is an ignite handler for the pre-training bundle's trainer. It is
off unless ``enabled`` is true.

Protocol: ``n_items`` labelled images of any dataset the classification bundle reads
(:func:`monai_lessmore.classification.data.build_data`: COVID-CT, MedMNIST ``.npz``, CSV, class folders; every
class represented, :func:`~monai_lessmore.classification.data.subset_items`) are preprocessed once (min-max to
[0, 1], resized, ImageNet-normalised, 3 channels, as the pre-training views) and kept in memory. At each probe the
encoder's weights (:func:`monai_lessmore.ssl.export.encoder_state_dict`) are copied into an evaluation ResNet50,
so the training network's state (BN statistics, SparK's masks) is never touched; the pooled features are
L2-normalised and scored by stratified ``folds``-fold cross-validation (scikit-learn) of a cosine k-NN classifier
(distance-weighted votes) and, with ``logistic=True``, of a logistic regression. Reported: accuracy and AUC
(binary: of the positive class; multi-class: one-vs-rest macro average).

Results go to ``engine.state.metrics`` (``probe_knn_acc``, ``probe_knn_auc``, ...), TensorBoard (``probe/...``),
and ``metrics_file`` (JSON, one record per probe). The encoder with the best ``metric`` so far is written to
``best_file`` (a plain state dict in torchvision key names, as the bundle exports, plus ``best_file`` with the
suffix ``.json`` recording epoch and metrics), atomically; a resumed run continues from the recorded best.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

from monai_lessmore.utils.files import atomic_write_bytes, atomic_write_text

__all__ = ["DownstreamProbe", "knn_probe_scores", "PROBE_METRICS"]

logger = logging.getLogger(__name__)

#: the metrics a probe reports (``metric`` must be one of them; logistic ones need ``logistic=True``).
PROBE_METRICS = ("knn_acc", "knn_auc", "logreg_acc", "logreg_auc")

_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _auc(labels: np.ndarray, proba: np.ndarray, n_classes: int) -> float:
    from sklearn.metrics import roc_auc_score

    present = np.unique(labels)
    if len(present) < 2:
        return float("nan")
    if n_classes == 2:
        return float(roc_auc_score(labels, proba[:, 1]))
    p = proba[:, present]
    p = p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)
    return float(roc_auc_score(labels, p, multi_class="ovr", average="macro", labels=present))


def knn_probe_scores(features: np.ndarray, labels: np.ndarray, *, k: int = 20, folds: int = 5, logistic: bool = False,
                     seed: int = 0) -> dict[str, float]:
    """Cross-validated k-NN (cosine, distance-weighted) and optionally logistic-regression scores of ``features``.

    Args:
        features: ``(N, D)``. labels: ``(N,)`` ints ``0..K-1``.
        k: neighbours (capped at the training fold's size). folds: stratified folds (capped by the smallest class).
        logistic: also fit a logistic regression (scikit-learn, L2, ``C=1``) on standardised features.
        seed: fold shuffling.

    Returns:
        ``{"knn_acc", "knn_auc"[, "logreg_acc", "logreg_auc"]}``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels).astype(int)
    features = np.asarray(features, dtype=np.float64)
    counts = np.bincount(labels)
    n_folds = int(min(folds, counts[counts > 0].min()))
    if n_folds < 2:
        raise ValueError(f"the probe set needs at least 2 images of every class it holds (class counts {counts.tolist()})")
    n_classes = int(labels.max()) + 1
    cv = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    k = max(1, min(int(k), len(labels) - math.ceil(len(labels) / n_folds)))
    out = {}
    models = {"knn": KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="distance")}
    if logistic:
        models["logreg"] = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    for name, model in models.items():
        proba = cross_val_predict(model, features, labels, cv=cv, method="predict_proba")
        full = np.zeros((len(labels), n_classes))
        full[:, np.unique(labels)] = proba  # columns of the classes present
        out[f"{name}_acc"] = float((full.argmax(1) == labels).mean())
        out[f"{name}_auc"] = _auc(labels, full, n_classes)
    return out


class DownstreamProbe:
    """Every ``interval`` epochs: embed a labelled probe set with the current encoder, score it, keep the best.

    Args:
        dataset: ``covid_ct``, ``medmnist``, ``csv`` or ``folder`` (as the classification bundle's ``--dataset``).
        data_root, npz_file, csv_file, class_names: as :func:`monai_lessmore.classification.data.build_data`.
        enabled: the one switch; False (default) attaches nothing and reads no data.
        interval: probe every this many epochs (and after the last epoch).
        n_items: probe set size (every class represented; ``None``/0 = all).
        image_size: probe input size (224).
        k, folds, logistic: see :func:`knn_probe_scores`.
        metric: one of :data:`PROBE_METRICS`, for ``best_file``.
        output_dir: where ``best_file`` and ``metrics_file`` go by default (the run folder, beside the checkpoint).
        best_file: default ``<output_dir>/best_probe.pt``. metrics_file: default ``<output_dir>/probe_metrics.json``.
        log_dir: TensorBoard folder (default ``output_dir``); None or "" with ``tensorboard=False`` for none.
        tensorboard: write ``probe/<metric>`` scalars.
        batch_size: embedding batch size. device: default: the encoder's. split: the split of the data's fixed
            split to draw from (``None``: all items). seed: subset and fold seed.
    """

    def __init__(
        self,
        dataset: str = "covid_ct",
        data_root: str | None = None,
        npz_file: str | None = None,
        csv_file: str | None = None,
        class_names: Sequence[str] | None = None,
        *,
        enabled: bool = False,
        interval: int = 10,
        n_items: int | None = 500,
        image_size: int = 224,
        k: int = 20,
        folds: int = 5,
        logistic: bool = False,
        metric: str = "knn_auc",
        output_dir: str | os.PathLike = ".",
        best_file: str | os.PathLike | None = None,
        metrics_file: str | os.PathLike | None = None,
        log_dir: str | os.PathLike | None = None,
        tensorboard: bool = True,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        split: str | None = None,
        seed: int = 0,
    ) -> None:
        if isinstance(enabled, str):
            enabled = enabled.strip().lower() in ("true", "1", "yes", "on")
        self.enabled = bool(enabled)
        if int(interval) < 1:
            raise ValueError(f"probe interval must be >= 1 epoch, got {interval}")
        if metric not in PROBE_METRICS:
            raise ValueError(f"probe metric must be one of {PROBE_METRICS}, got {metric!r}")
        if metric.startswith("logreg") and not logistic:
            raise ValueError(f"probe metric {metric!r} needs logistic=True")
        if int(image_size) < 32 or int(batch_size) < 1:
            raise ValueError(f"probe image_size must be >= 32 and batch_size >= 1, got {image_size}, {batch_size}")
        self.data_args = dict(dataset=dataset, data_root=data_root, npz_file=npz_file, csv_file=csv_file,
                              class_names=class_names)
        self.interval, self.n_items, self.image_size = int(interval), n_items, int(image_size)
        self.k, self.folds, self.logistic, self.metric = int(k), int(folds), bool(logistic), metric
        out = Path(output_dir)
        self.best_file = Path(best_file) if best_file else out / "best_probe.pt"
        self.metrics_file = Path(metrics_file) if metrics_file else out / "probe_metrics.json"
        self.log_dir = (Path(log_dir) if log_dir else out) if tensorboard else None
        self.batch_size, self.device, self.split, self.seed = int(batch_size), device, split, int(seed)
        self.images: torch.Tensor | None = None  # (N, 1, S, S) preprocessed, one channel
        self.labels: np.ndarray | None = None
        self.history: list[dict[str, Any]] = []
        self.best: float | None = None
        self._writer = None
        self._evaluator = None

    # -- data -------------------------------------------------------------------------------------------------
    def load(self) -> None:
        """Read and preprocess the probe set once (errors name the file or argument)."""
        from monai.transforms import Compose, EnsureTyped, Resized, ScaleIntensityd

        from monai_lessmore.classification.data import build_data, subset_items
        from monai_lessmore.classification.transforms import ReadClassificationImaged

        data = build_data(**self.data_args)
        items = data.split(self.split) if self.split else data.items()
        items = subset_items(items, self.n_items, seed=self.seed)
        pre = Compose([
            ReadClassificationImaged(keys="image"),
            ScaleIntensityd(keys="image", minv=0.0, maxv=1.0),
            Resized(keys="image", spatial_size=(self.image_size, self.image_size), mode="bilinear", anti_aliasing=True),
            EnsureTyped(keys="image", dtype=torch.float32, track_meta=False),
        ])
        imgs = [pre(dict(d))["image"][:1] for d in items]
        self.images = torch.stack(imgs)
        self.labels = np.asarray([int(d["label"]) for d in items])
        logger.info("probe set: %d images of %d classes from %s", len(items), len(np.unique(self.labels)),
                    self.data_args["dataset"])

    # -- ignite -------------------------------------------------------------------------------------------------
    def attach(self, engine: Engine) -> None:
        """Probe every ``interval`` epochs and after the last one; nothing when not enabled."""
        if not self.enabled:
            return
        self._restore_best()
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self._final)

    def _final(self, engine: Engine) -> None:
        if engine.state.epoch % self.interval:
            self(engine)

    def _restore_best(self) -> None:
        record = self.best_file.with_suffix(".json")
        if record.is_file():
            try:
                self.best = float(json.loads(record.read_text())["value"])
            except (ValueError, KeyError, json.JSONDecodeError) as err:
                logger.warning("ignoring unreadable probe record %s (%s)", record, err)
        if self.metrics_file.is_file():
            try:
                self.history = list(json.loads(self.metrics_file.read_text())["probes"])
            except (ValueError, KeyError, json.JSONDecodeError, TypeError) as err:
                logger.warning("ignoring unreadable probe metrics %s (%s)", self.metrics_file, err)

    def __call__(self, engine: Engine) -> dict[str, float]:
        """Run one probe on ``engine.network`` and record it."""
        if not self._is_main():
            return {}
        t0 = time.perf_counter()
        scores = self.evaluate(engine.network)
        epoch = int(engine.state.epoch)
        seconds = time.perf_counter() - t0
        for name, value in scores.items():
            engine.state.metrics[f"probe_{name}"] = value
        self.history.append({"epoch": epoch, **scores, "seconds": round(seconds, 3)})
        atomic_write_text(self.metrics_file, json.dumps({"metric": self.metric, "probes": self.history}, indent=1))
        self._log_tensorboard(scores, epoch)
        value = scores[self.metric]
        if not math.isnan(value) and (self.best is None or value > self.best):
            self.best = value
            self._save_best(epoch, scores)
        logger.info("probe at epoch %d: %s (%.1f s; best %s %.4f)", epoch,
                    ", ".join(f"{k} {v:.4f}" for k, v in scores.items()), seconds, self.metric, self.best or float("nan"))
        return scores

    # -- work -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, network: torch.nn.Module) -> np.ndarray:
        """``(N, D)`` L2-normalised features of the probe set with ``network``'s encoder weights (D = 2048 for a
        ResNet50)."""
        from monai_lessmore.networks import resnet_encoder
        from monai_lessmore.ssl.export import encoder_arch, encoder_state_dict

        if self.images is None:
            self.load()
        state = encoder_state_dict(network)
        device = torch.device(self.device) if self.device else next(iter(state.values())).device
        if self._evaluator is None:
            self._evaluator = resnet_encoder(encoder_arch(network)).eval()
        net = self._evaluator.to(device)
        net.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, strict=True)
        mean, std = _MEAN.to(device), _STD.to(device)
        feats = []
        for i in range(0, len(self.images), self.batch_size):
            x = self.images[i : i + self.batch_size].to(device).expand(-1, 3, -1, -1)
            feats.append(torch.nn.functional.normalize(net((x - mean) / std).float(), dim=1).cpu())
        return torch.cat(feats).numpy()

    def evaluate(self, network: torch.nn.Module) -> dict[str, float]:
        """Embed and score (see :func:`knn_probe_scores`)."""
        feats = self.embed(network)
        return knn_probe_scores(feats, self.labels, k=self.k, folds=self.folds, logistic=self.logistic, seed=self.seed)

    def _save_best(self, epoch: int, scores: Mapping[str, float]) -> None:
        """The probed encoder (the evaluation copy holds exactly its weights) and its record, atomically."""
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in self._evaluator.state_dict().items() if not k.startswith("fc.")}, buf)
        atomic_write_bytes(self.best_file, buf.getvalue())
        atomic_write_text(self.best_file.with_suffix(".json"),
                          json.dumps({"metric": self.metric, "value": scores[self.metric], "epoch": epoch, **scores}, indent=1))

    def _log_tensorboard(self, scores: Mapping[str, float], epoch: int) -> None:
        if self.log_dir is None:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        for name, value in scores.items():
            self._writer.add_scalar(f"probe/{name}", value, epoch)
        self._writer.flush()

    @staticmethod
    def _is_main() -> bool:
        return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0

    # -- checkpointing ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Best value and history, for the run's checkpoint."""
        return {"best": self.best, "history": list(self.history)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.best = state.get("best")
        self.history = list(state.get("history", []))
