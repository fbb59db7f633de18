"""The downstream evaluation protocol: N runs on a fixed split or stratified k-fold, results.json + Markdown table.

Wolf et al. (2024), section 2.3: "For the two publicly available challenges, we perform five downstream runs with
the given train/validation/test split ... For the internal task, a five-fold stratified cross-validation is
performed. For each fold, four parts of the data are used for training and validation (90 % training, 10 %
validation), and the remaining part ... is used for testing. The mean and standard deviation of accuracy, AUC
score, and F1-score over the five runs are reported."

Each run is a plain MONAI ``SupervisedTrainer`` with handlers: :class:`FreezeThenUnfreeze`, a ``ValidationHandler``
running a ``SupervisedEvaluator`` whose key metric is the validation AUC, and a ``CheckpointSaver`` keeping the
best-AUC weights as ``<output_dir>/<run>/model.pt`` (a plain state dict). The test metrics come from that selected
checkpoint. Standard deviations are population standard deviations (numpy's default, ``ddof=0``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import CheckpointSaver, ValidationHandler
from monai.utils import set_determinism

from monai_lessmore.classification.data import ClassificationData, check_images, subset_items
from monai_lessmore.classification.folds import stratified_group_kfold, stratified_group_split
from monai_lessmore.classification.handlers import FreezeThenUnfreeze, PredictionCSVWriter
from monai_lessmore.classification.metrics import METRIC_NAMES, make_metrics

__all__ = ["FineTuneProtocol", "summarize", "results_markdown", "format_mean_std"]

logger = logging.getLogger(__name__)

PROTOCOLS = ("auto", "runs", "kfold")


def format_mean_std(mean: float, std: float, digits: int = 3) -> str:
    """``0.812 ± 0.006``, the paper's table format."""
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and population standard deviation of every test metric over runs."""
    out = {}
    for name in METRIC_NAMES:
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


def _subset_sizes(subset: int | Sequence[int] | None) -> tuple[int, int, int]:
    if subset is None or subset == 0:
        return 0, 0, 0
    if isinstance(subset, int):
        return subset, subset, subset
    sizes = tuple(int(x) for x in subset)
    if len(sizes) != 3:
        raise ValueError(f"subset must be an int or [train, val, test] sizes, got {subset!r}")
    return sizes  # type: ignore[return-value]


class FineTuneProtocol:
    """Fine-tune and test a classifier N times (fixed split) or over k folds, then write the results.

    Args:
        data: a :class:`~monai_lessmore.classification.data.ClassificationData` adapter.
        train_transforms: MONAI transform applied to training items.
        eval_transforms: MONAI transform applied to validation/test items.
        network_def: callable returning a fresh network (``_mode_: callable`` in the config).
        optimizer_def: callable ``params -> optimizer`` (the paper: Adam, lr 1e-4, weight decay 5e-4).
        loss_function: the training loss.
        protocol: ``"runs"`` (N seeds on the fixed split), ``"kfold"`` (stratified k-fold) or ``"auto"`` (runs when
            the data have a fixed split, else k-fold).
        num_runs: N for ``"runs"`` (paper: 5).
        num_folds: k for ``"kfold"`` (paper: 5).
        val_fraction: validation share inside each fold (paper: 0.1).
        max_epochs: training epochs per run (authors' notebooks: 70).
        freeze_epochs: epochs training only the head (paper: 10).
        batch_size: batch size (paper: 64).
        num_workers: data loader workers.
        device: torch device string.
        output_dir: where ``results.json``, ``results.md`` and one folder per run go.
        seed: base seed; run i uses ``seed + i``.
        subset: tiny runs: keep at most this many items per split (``runs``) or in the pool (``kfold``, first entry);
            ``[train, val, test]`` gives one size per split; 0 keeps everything.
        verify_images: decode every file-backed image before training and fail listing every unreadable file.
        task: task name for the tables.
        initialisation: initialisation name for the tables (e.g. ``random``, or the encoder file).
    """

    def __init__(
        self,
        data: ClassificationData,
        train_transforms: Callable,
        eval_transforms: Callable,
        network_def: Callable[[], torch.nn.Module],
        optimizer_def: Callable[..., torch.optim.Optimizer],
        loss_function: Callable,
        protocol: str = "auto",
        num_runs: int = 5,
        num_folds: int = 5,
        val_fraction: float = 0.1,
        max_epochs: int = 70,
        freeze_epochs: int = 10,
        batch_size: int = 64,
        num_workers: int = 0,
        device: str | torch.device = "cpu",
        output_dir: str = "./eval",
        seed: int = 0,
        subset: int | Sequence[int] | None = 0,
        verify_images: bool = True,
        task: str = "",
        initialisation: str = "random",
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if protocol == "auto":
            protocol = "runs" if data.has_fixed_split else "kfold"
        if protocol == "runs" and not data.has_fixed_split:
            raise ValueError(f"protocol 'runs' needs a fixed train/val/test split; {type(data).__name__} has none: "
                             "use --protocol kfold")
        for name, value, low in (("num_runs", num_runs, 1), ("num_folds", num_folds, 2), ("max_epochs", max_epochs, 1),
                                 ("batch_size", batch_size, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if not isinstance(freeze_epochs, int) or freeze_epochs < 0:
            raise ValueError(f"freeze_epochs must be an int >= 0, got {freeze_epochs!r}")
        self.data = data
        self.train_transforms = train_transforms
        self.eval_transforms = eval_transforms
        self.network_def = network_def
        self.optimizer_def = optimizer_def
        self.loss_function = loss_function
        self.protocol = protocol
        self.num_runs, self.num_folds, self.val_fraction = num_runs, num_folds, float(val_fraction)
        self.max_epochs, self.freeze_epochs, self.batch_size = max_epochs, freeze_epochs, batch_size
        self.num_workers = int(num_workers)
        self.device = torch.device(device)
        self.output_dir = Path(output_dir)
        self.seed = int(seed)
        self.subset = _subset_sizes(subset)
        self.verify_images = bool(verify_images)
        self.task = task or type(data).__name__
        self.initialisation = initialisation

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
    def _loader(self, items: list[dict[str, Any]], transform: Callable, shuffle: bool) -> DataLoader:
        return DataLoader(Dataset(items, transform), batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers)

    def _evaluator(
        self, items: list[dict[str, Any]], network: torch.nn.Module, prefix: str, handlers: list[Any]
    ) -> SupervisedEvaluator:
        metrics = make_metrics(self.data.num_classes, prefix=prefix)
        key = f"{prefix}auc"
        return SupervisedEvaluator(
            device=self.device, val_data_loader=self._loader(items, self.eval_transforms, False), network=network,
            key_val_metric={key: metrics.pop(key)}, additional_metrics=metrics, val_handlers=handlers,
            decollate=False,
        )

    def run_one(self, run: dict[str, Any]) -> dict[str, Any]:
        """Train with model selection on validation AUC, then test the selected checkpoint."""
        start = time.time()
        run_dir = self.output_dir / run["name"]
        run_dir.mkdir(parents=True, exist_ok=True)
        set_determinism(seed=run["seed"])
        network = self.network_def().to(self.device)
        optimizer = self.optimizer_def(network.parameters())
        saver = CheckpointSaver(save_dir=str(run_dir), save_dict={"model": network}, save_key_metric=True,
                                key_metric_n_saved=1, key_metric_filename="model.pt")
        validator = self._evaluator(run["val"], network, "val_", [saver])
        trainer = SupervisedTrainer(
            device=self.device, max_epochs=self.max_epochs,
            train_data_loader=self._loader(run["train"], self.train_transforms, True), network=network,
            optimizer=optimizer, loss_function=self.loss_function, decollate=False,
            train_handlers=[FreezeThenUnfreeze(self.freeze_epochs), ValidationHandler(validator=validator, interval=1)],
        )
        history: list[dict[str, float]] = []
        losses: list[float] = []
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"].detach()))
        )

        @trainer.on(Events.EPOCH_COMPLETED)
        def _log(engine: SupervisedTrainer) -> None:  # runs after the ValidationHandler (attached first)
            row = {"epoch": engine.state.epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                   **{k: float(v) for k, v in validator.state.metrics.items()}}
            losses.clear()
            history.append(row)
            logger.info(f"{run['name']} epoch {row['epoch']}/{self.max_epochs} "
                        + " ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch"))

        trainer.run()
        set_determinism(seed=None)
        model_file = run_dir / "model.pt"
        network.load_state_dict(torch.load(model_file, map_location=self.device, weights_only=True))
        tester = self._evaluator(run["test"], network, "test_",
                                 [PredictionCSVWriter(str(run_dir / "test_predictions.csv"), self.data.class_names)])
        tester.run()
        record = {
            "name": run["name"], "seed": run["seed"], "n_train": len(run["train"]), "n_val": len(run["val"]),
            "n_test": len(run["test"]), "best_epoch": int(validator.state.best_metric_epoch),
            "best_val_auc": float(validator.state.best_metric),
            "test": {m: float(tester.state.metrics[f"test_{m}"]) for m in METRIC_NAMES},
            "model_file": str(model_file), "seconds": round(time.time() - start, 1), "history": history,
        }
        (run_dir / "run.json").write_text(json.dumps(record, indent=2))
        logger.info(f"{run['name']} test " + " ".join(f"{k} {v:.4f}" for k, v in record["test"].items()))
        return record

    # -- everything -------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run the whole protocol and write ``results.json`` and ``results.md`` into ``output_dir``."""
        plan = self.plan()
        if self.verify_images:
            seen = {id(d): d for r in plan for part in ("train", "val", "test") for d in r[part]}
            check_images(list(seen.values()))
        runs = [self.run_one(r) for r in plan]
        description = (f"{self.num_runs} runs, fixed split" if self.protocol == "runs"
                       else f"{self.num_folds}-fold stratified CV")
        results = {
            "task": self.task, "initialisation": self.initialisation, "protocol": self.protocol,
            "protocol_description": description, "class_names": list(self.data.class_names),
            "settings": {"max_epochs": self.max_epochs, "freeze_epochs": self.freeze_epochs,
                         "batch_size": self.batch_size, "num_runs": self.num_runs, "num_folds": self.num_folds,
                         "val_fraction": self.val_fraction, "seed": self.seed, "subset": list(self.subset),
                         "device": str(self.device), "optimizer": repr(self.optimizer_def)},
            "summary": summarize(runs), "runs": runs,
        }
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "results.json").write_text(json.dumps(results, indent=2))
        (self.output_dir / "results.md").write_text(results_markdown(results))
        logger.info("results:\n" + results_markdown(results))
        return results
