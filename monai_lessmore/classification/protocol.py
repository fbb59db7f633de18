"""The downstream evaluation protocol: N runs on a fixed split or stratified k-fold, results.json + Markdown table.

Wolf et al. (2024), section 2.3: "For the two publicly available challenges, we perform five downstream runs with
the given train/validation/test split ... For the internal task, a five-fold stratified cross-validation is
performed. For each fold, four parts of the data are used for training and validation (90 % training, 10 %
validation), and the remaining part ... is used for testing. The mean and standard deviation of accuracy, AUC
score, and F1-score over the five runs are reported."

The engines, their handlers and the metrics are declared in the bundle config (``trainer_def``, ``evaluator_def``,
``train_handlers``, ``val_handlers``, ``key_metric``, ``additional_metrics``): a user changes them there. What this
module adds is what differs from run to run: a fresh network and optimiser, the run's data loaders, the run's
validator given to the ``ValidationHandler`` of ``train_handlers``, a ``CheckpointSaver`` keeping the
best-validation weights (the key metric, AUC in the bundle) as ``<output_dir>/<run>/model.pt`` (a plain state
dict), the test of that checkpoint and one log line per epoch with the time left for the run. Standard deviations
are population standard deviations (numpy's default, ``ddof=0``).
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Events
from ignite.metrics import Metric
from monai.data import CacheDataset, DataLoader, Dataset
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import CheckpointSaver, ValidationHandler
from monai.utils import set_determinism

from monai_lessmore.classification.data import ClassificationData, check_images, subset_items
from monai_lessmore.classification.folds import stratified_group_kfold, stratified_group_split
from monai_lessmore.classification.handlers import FreezeThenUnfreeze, PredictionCSVWriter
from monai_lessmore.utils.files import atomic_write_json, atomic_write_text

__all__ = ["FineTuneProtocol", "summarize", "results_markdown", "format_mean_std", "plural", "warn_if_size_differs",
           "METRIC_NAMES"]

logger = logging.getLogger(__name__)

PROTOCOLS = ("auto", "runs", "kfold")
#: the metrics of the paper's tables (section 2.3), in table order
METRIC_NAMES = ("auc", "f1", "accuracy")


def plural(n: int, word: str) -> str:
    """``"1 run"``, ``"5 runs"``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def format_mean_std(mean: float, std: float, digits: int = 3) -> str:
    """``0.812 ± 0.006``, the paper's table format."""
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and population standard deviation of every test metric over runs (the metrics every run has)."""
    names = [m for m in runs[0]["test"] if all(m in r["test"] for r in runs)] if runs else list(METRIC_NAMES)
    out = {}
    for name in names:
        values = [float(r["test"][name]) for r in runs]
        out[name] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}
    return out


def results_markdown(results: dict[str, Any]) -> str:
    """A Markdown table in the paper's format (mean ± std) plus one row per run."""
    s = results["summary"]
    lines = [
        "| Task | Initialisation | Protocol | AUC | F1 | Accuracy |",
        "|---|---|---|---|---|---|",
        f"| {results['task']} | {results['initialisation']} | {results['protocol_description']} | "
        + " | ".join(format_mean_std(s[m]["mean"], s[m]["std"]) for m in METRIC_NAMES)
        + " |",
        "",
        "| Run | Seed | Train/val/test | Best epoch | Val AUC | Test AUC | Test F1 | Test accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        sizes = f"{r['n_train']}/{r['n_val']}/{r['n_test']}"
        test = " | ".join(f"{r['test'][m]:.3f}" for m in METRIC_NAMES)
        lines.append(f"| {r['name']} | {r['seed']} | {sizes} | {r['best_epoch']} | {r['best_val_auc']:.3f} | {test} |")
    return "\n".join(lines) + "\n"


def warn_if_size_differs(model_file: str | Path, image_size: int | Sequence[int]) -> int | None:
    """Warn when ``model_file`` was fine-tuned (by this protocol) at another input size than ``image_size``.

    A ResNet50 accepts any input size, so a model fine-tuned on 64 px slices runs on 224 px ones without an error
    but with other features; the protocol records the size in ``run.json`` beside ``model.pt``.

    Args:
        model_file: the weights about to be used.
        image_size: the size the caller resizes to.

    Returns:
        The recorded size, or ``None`` when ``model_file`` has no ``run.json`` recording one.
    """
    record = Path(model_file).parent / "run.json"
    try:
        trained = json.loads(record.read_text()).get("image_size")
    except (OSError, ValueError):
        return None
    if trained is not None and trained != image_size:
        logger.warning(f"{model_file} was fine-tuned on {trained} px images (see {record}) but inputs are resized "
                       f"to {image_size} px: pass --image_size {trained} to use the size it learnt")
    return trained


def _subset_sizes(subset: int | Sequence[int] | None) -> tuple[int, int, int]:
    if subset is None or subset == 0:
        return 0, 0, 0
    if isinstance(subset, int):
        return subset, subset, subset
    sizes = tuple(int(x) for x in subset)
    if len(sizes) != 3:
        raise ValueError(f"subset must be an int or [train, val, test] sizes, got {subset!r}")
    return sizes  # type: ignore[return-value]


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(seconds))))


class FineTuneProtocol:
    """Fine-tune and test a classifier N times (fixed split) or over k folds, then write the results.

    Args:
        data: a :class:`~monai_lessmore.classification.data.ClassificationData` adapter.
        train_transforms: MONAI transform applied to training items.
        eval_transforms: MONAI transform applied to validation/test items.
        network_def: callable returning a fresh network (``_mode_: callable`` in the config).
        optimizer_def: callable ``params -> optimizer`` (the paper: Adam, lr 1e-4, weight decay 5e-4).
        trainer_def: callable returning the run's trainer given ``train_data_loader``, ``network``, ``optimizer`` and
            ``train_handlers`` (a ``monai.engines.SupervisedTrainer`` with ``_mode_: callable``: epochs, loss...).
        evaluator_def: callable returning an evaluator given ``val_data_loader``, ``network``, ``key_val_metric``,
            ``additional_metrics`` and ``val_handlers``; it validates each epoch and tests the selected checkpoint.
        key_metric: ``{name: metric}``, the metric of model selection (the paper's AUC); each evaluator gets a copy.
        additional_metrics: ``{name: metric}`` also computed on validation and test.
        train_handlers: handlers attached to every run's trainer (in the bundle: freeze-then-unfreeze, progress bar,
            validation); a ``monai.handlers.ValidationHandler`` among them is given each run's validator, one is
            added (every epoch) when there is none.
        val_handlers: handlers attached to every run's validator, besides the protocol's ``CheckpointSaver``.
        protocol: ``"runs"`` (N seeds on the fixed split), ``"kfold"`` (stratified k-fold) or ``"auto"`` (runs when
            the data have a fixed split, else k-fold).
        num_runs: N for ``"runs"`` (paper: 5).
        num_folds: k for ``"kfold"`` (paper: 5).
        val_fraction: validation share inside each fold (paper: 0.1).
        batch_size: batch size (paper: 64).
        num_workers: data loader workers.
        device: torch device string (network and batches).
        output_dir: where ``results.json``, ``results.md`` and one folder per run go.
        seed: base seed; run i uses ``seed + i``.
        subset: tiny runs: keep at most this many items per split (``runs``) or in the pool (``kfold``, first entry);
            ``[train, val, test]`` gives one size per split; 0 keeps everything.
        verify_images: decode every file-backed image before training and fail listing every unreadable file.
        cache_rate: share of each split's items whose preprocessing is cached in memory (MONAI's ``CacheDataset``:
            the transforms up to the first random one), built once and reused by every epoch and every run on the
            same items (fixed split: all runs); 0 (default) caches nothing. The bundle's transforms are all
            deterministic, so 1.0 preprocesses every image once -- what dominates a CPU epoch at small sizes
            (COVID-CT's images are decoded and anti-aliased from up to ~1,000 px) -- at the cost of holding the
            preprocessed split in memory (3 x size x size float32 per image).
        task: task name for the tables.
        initialisation: initialisation name for the tables (e.g. ``random``, or the encoder file).
        image_size: input size the transforms resize to, recorded in ``run.json`` so that inference can warn about
            another size (:func:`warn_if_size_differs`).
    """

    def __init__(
        self,
        data: ClassificationData,
        train_transforms: Callable,
        eval_transforms: Callable,
        network_def: Callable[[], torch.nn.Module],
        optimizer_def: Callable[..., torch.optim.Optimizer],
        trainer_def: Callable[..., SupervisedTrainer],
        evaluator_def: Callable[..., SupervisedEvaluator],
        key_metric: Mapping[str, Metric],
        additional_metrics: Mapping[str, Metric] | None = None,
        train_handlers: Sequence[Any] = (),
        val_handlers: Sequence[Any] = (),
        protocol: str = "auto",
        num_runs: int = 5,
        num_folds: int = 5,
        val_fraction: float = 0.1,
        batch_size: int = 64,
        num_workers: int = 0,
        device: str | torch.device = "cpu",
        output_dir: str = "./eval",
        seed: int = 0,
        subset: int | Sequence[int] | None = 0,
        verify_images: bool = True,
        cache_rate: float = 0.0,
        task: str = "",
        initialisation: str = "random",
        image_size: int | Sequence[int] | None = None,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if protocol == "auto":
            protocol = "runs" if data.has_fixed_split else "kfold"
        if protocol == "runs" and not data.has_fixed_split:
            raise ValueError(f"protocol 'runs' needs a fixed train/val/test split; {type(data).__name__} has none: "
                             "use --protocol kfold")
        for name, value, low in (("num_runs", num_runs, 1), ("num_folds", num_folds, 2), ("batch_size", batch_size, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if not isinstance(key_metric, Mapping) or len(key_metric) != 1:
            raise ValueError(f"key_metric must be one {{name: metric}} pair, got {key_metric!r}")
        self.data = data
        self.train_transforms = train_transforms
        self.eval_transforms = eval_transforms
        self.network_def = network_def
        self.optimizer_def = optimizer_def
        self.trainer_def = trainer_def
        self.evaluator_def = evaluator_def
        self.key_metric = dict(key_metric)
        self.key_metric_name = next(iter(self.key_metric))
        self.additional_metrics = dict(additional_metrics or {})
        self.train_handlers = list(train_handlers)
        self.val_handlers = list(val_handlers)
        self.protocol = protocol
        self.num_runs, self.num_folds, self.val_fraction = num_runs, num_folds, float(val_fraction)
        self.batch_size = batch_size
        self.num_workers = int(num_workers)
        self.device = torch.device(device)
        self.output_dir = Path(output_dir)
        self.seed = int(seed)
        self.subset = _subset_sizes(subset)
        self.verify_images = bool(verify_images)
        if not 0.0 <= float(cache_rate) <= 1.0:
            raise ValueError(f"cache_rate must be in [0, 1], got {cache_rate}")
        self.cache_rate = float(cache_rate)
        self._caches: dict[tuple[int, int], Dataset] = {}
        self.task = task or type(data).__name__
        self.initialisation = initialisation
        self.image_size = image_size

    # -- splits -----------------------------------------------------------------------------------------------------
    def plan(self) -> list[dict[str, Any]]:
        """The runs: ``[{"name", "seed", "train", "val", "test"}, ...]`` (items are data dictionaries)."""
        if self.protocol == "runs":
            parts = [subset_items(self.data.split(p), n, seed=self.seed) for p, n in zip(("train", "val", "test"),
                                                                                      self.subset)]
            return [{"name": f"run_{i}", "seed": self.seed + i, "train": parts[0], "val": parts[1], "test": parts[2]}
                    for i in range(self.num_runs)]
        pool = subset_items(self.data.items(), self.subset[0], seed=self.seed)
        labels = [d["label"] for d in pool]
        groups = [d["group"] for d in pool] if pool and all("group" in d for d in pool) else None
        folds = stratified_group_kfold(labels, self.num_folds, groups, seed=self.seed)
        runs = []
        for f in range(self.num_folds):
            rest = np.flatnonzero(folds != f)
            tr, va = stratified_group_split([labels[i] for i in rest], self.val_fraction,
                                            None if groups is None else [groups[i] for i in rest], seed=self.seed + f)
            runs.append({"name": f"fold_{f}", "seed": self.seed + f, "train": [pool[rest[i]] for i in tr],
                         "val": [pool[rest[i]] for i in va], "test": [pool[i] for i in np.flatnonzero(folds == f)]})
        return runs

    # -- one run ----------------------------------------------------------------------------------------------------
    def _dataset(self, items: list[dict[str, Any]], transform: Callable) -> Dataset:
        if self.cache_rate == 0.0:
            return Dataset(items, transform)
        key = (id(items), id(transform))  # the plan's split lists are shared by every run on them
        if key not in self._caches:
            self._caches[key] = CacheDataset(items, transform, cache_rate=self.cache_rate, num_workers=None,
                                              progress=False)
        return self._caches[key]

    def _loader(self, items: list[dict[str, Any]], transform: Callable, shuffle: bool) -> DataLoader:
        return DataLoader(self._dataset(items, transform), batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers)

    def _evaluator(self, items: list[dict[str, Any]], network: torch.nn.Module, handlers: list[Any]) -> Any:
        # metric objects keep their state per engine: every evaluator gets its own copies
        return self.evaluator_def(
            val_data_loader=self._loader(items, self.eval_transforms, False), network=network,
            key_val_metric=copy.deepcopy(self.key_metric), additional_metrics=copy.deepcopy(self.additional_metrics),
            val_handlers=handlers,
        )

    def _train_handlers(self, validator: Any) -> list[Any]:
        handlers = list(self.train_handlers)
        validation = [h for h in handlers if isinstance(h, ValidationHandler)]
        if not validation:
            validation = [ValidationHandler(interval=1)]
            handlers.append(validation[0])
        for h in validation:
            h.set_validator(validator)
        return handlers

    def run_one(self, run: dict[str, Any], index: int = 0, total: int = 1) -> dict[str, Any]:
        """Train with model selection on the validation key metric, then test the selected checkpoint.

        Args:
            run: one entry of :meth:`plan`.
            index: its position in the plan (for the log lines).
            total: the plan's length.
        """
        start = time.time()
        run_dir = self.output_dir / run["name"]
        run_dir.mkdir(parents=True, exist_ok=True)
        set_determinism(seed=run["seed"])
        network = self.network_def().to(self.device)
        optimizer = self.optimizer_def(network.parameters())
        saver = CheckpointSaver(save_dir=str(run_dir), save_dict={"model": network}, save_key_metric=True,
                                key_metric_n_saved=1, key_metric_filename="model.pt")
        validator = self._evaluator(run["val"], network, [saver, *self.val_handlers])
        trainer = self.trainer_def(
            train_data_loader=self._loader(run["train"], self.train_transforms, True), network=network,
            optimizer=optimizer, train_handlers=self._train_handlers(validator),
        )
        history: list[dict[str, float]] = []
        losses: list[float] = []
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"].detach()))
        )
        label = f"{run['name']} ({index + 1}/{total})"

        @trainer.on(Events.EPOCH_COMPLETED)
        def _log(engine: SupervisedTrainer) -> None:  # runs after the ValidationHandler (attached before)
            epoch, max_epochs = engine.state.epoch, engine.state.max_epochs
            row = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                   **{f"val_{k}": float(v) for k, v in validator.state.metrics.items()}}
            losses.clear()
            history.append(row)
            elapsed = time.time() - start
            eta = elapsed / epoch * (max_epochs - epoch)
            logger.info(f"{label} epoch {epoch}/{max_epochs} "
                        + " ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch")
                        + f" | {_duration(elapsed)} elapsed, run ETA {_duration(eta)}")

        trainer.run()
        set_determinism(seed=None)
        model_file = run_dir / "model.pt"
        network.load_state_dict(torch.load(model_file, map_location=self.device, weights_only=True))
        tester = self._evaluator(run["test"], network,
                                 [PredictionCSVWriter(str(run_dir / "test_predictions.csv"), self.data.class_names)])
        tester.run()
        freeze = [h.freeze_epochs for h in self.train_handlers if isinstance(h, FreezeThenUnfreeze)]
        record = {
            "name": run["name"], "seed": run["seed"], "n_train": len(run["train"]), "n_val": len(run["val"]),
            "n_test": len(run["test"]), "best_epoch": int(validator.state.best_metric_epoch),
            "best_val_auc": float(validator.state.best_metric), "key_metric": self.key_metric_name,
            "test": {k: float(v) for k, v in tester.state.metrics.items()},
            "model_file": str(model_file), "image_size": self.image_size, "max_epochs": trainer.state.max_epochs,
            "freeze_epochs": freeze[0] if freeze else 0, "seconds": round(time.time() - start, 1), "history": history,
        }
        atomic_write_json(run_dir / "run.json", record)
        logger.info(f"{label} test " + " ".join(f"{k} {v:.4f}" for k, v in record["test"].items())
                    + f" | run took {_duration(record['seconds'])}")
        return record

    # -- everything -------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run the whole protocol and write ``results.json`` and ``results.md`` into ``output_dir``."""
        plan = self.plan()
        if self.verify_images:
            seen = {id(d): d for r in plan for part in ("train", "val", "test") for d in r[part]}
            check_images(list(seen.values()))
        runs = []
        for i, r in enumerate(plan):
            runs.append(self.run_one(r, i, len(plan)))
            if self.protocol == "kfold":  # the next fold has other items: its caches are its own
                self._caches.clear()
        self._caches.clear()
        description = (f"{plural(self.num_runs, 'run')}, fixed split" if self.protocol == "runs"
                       else f"{self.num_folds}-fold stratified CV")
        results = {
            "task": self.task, "initialisation": self.initialisation, "protocol": self.protocol,
            "protocol_description": description, "class_names": list(self.data.class_names),
            "settings": {"max_epochs": runs[0]["max_epochs"], "freeze_epochs": runs[0]["freeze_epochs"],
                         "batch_size": self.batch_size, "num_runs": self.num_runs, "num_folds": self.num_folds,
                         "val_fraction": self.val_fraction, "seed": self.seed, "subset": list(self.subset),
                         "image_size": self.image_size, "device": str(self.device),
                         "optimizer": repr(self.optimizer_def)},
            "summary": summarize(runs), "runs": runs,
        }
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.output_dir / "results.json", results)
        atomic_write_text(self.output_dir / "results.md", results_markdown(results))
        logger.info("results:\n" + results_markdown(results))
        return results
