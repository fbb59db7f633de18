"""The paper's experiment as one command: reduce -> pre-train -> fine-tune per reduction, then the tables.

For every reduction of a recipe (:mod:`monai_lessmore.experiment.config`) the runner

1. **reduces** the pre-training volumes (:class:`~monai_lessmore.data.SliceReductionFilter`, the filter of the
   pre-training bundle, with its reduction cache and slice store in ``reduce/<NAME>/``);
2. **pre-trains** with the pre-training bundle (``lessmore_ssl_pretrain``, SwAV by default, MoCo v2 / SparK by
   merging their config) on the kept slices -- its filter reads the cache of step 1 -- and exports the encoder to
   ``pretrain/<NAME>/encoder.pt``;
3. **fine-tunes** on every downstream task with the classification bundle's protocol (``lessmore_classification``:
   N runs on a fixed split or k folds, AUC/F1/accuracy), into ``downstream/<TASK>/<NAME>/``; the from-scratch
   baseline (``downstream/<TASK>/scratch/``) comes first, as in the paper's Table 3;

and writes ``results.csv``, ``results.md`` (the layout of the paper's Tables 4-7: one row per pre-training, the
baseline first, AUC / F1 / accuracy as mean ± std per task, with the kept fraction and pre-training time) and
``auc_vs_kept_fraction.png``.

Every stage writes ``stage.json`` (its settings, then its figures when done). A stage whose record says done with the
same settings is skipped, so a killed or failed experiment is resumed by running the same command again: the
pre-training resumes from its last checkpoint (the bundle's ``resume: auto``). A stage whose recorded settings differ
from the recipe's is refused with the keys that changed -- delete its folder to recompute it. A failing stage is
reported and the experiment goes on with what does not depend on it; the exit status is then 1.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from monai_lessmore.experiment.config import METHODS, ExperimentError
from monai_lessmore.utils.files import atomic_write_json, file_hash, remove_stale_temps

__all__ = ["ExperimentRunner", "StageFailed", "SCRATCH"]

logger = logging.getLogger(__name__)

#: name of the from-scratch (random initialisation) row and folder
SCRATCH = "scratch"


class StageFailed(RuntimeError):
    """A stage raised; the experiment records it and continues with the stages that do not depend on it."""


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "(value)"]


def _bundle_keys(files: Sequence[Path]) -> set[str]:
    keys: set[str] = set()
    for f in files:
        keys |= set(json.loads(Path(f).read_text(encoding="utf-8")))
    return keys


def _check_overrides(where: str, overrides: dict[str, Any], files: Sequence[Path], source: str) -> None:
    """A misspelt override would silently add an unused key to the bundle config: refuse it, naming the key."""
    known = _bundle_keys(files)
    unknown = sorted(k for k in overrides if str(k).split("#")[0] not in known)
    if unknown:
        names = ", ".join(Path(f).name for f in files)
        raise ExperimentError(f"{source}: {where} has keys that the bundle config ({names}) does not define: {unknown}")


class ExperimentRunner:
    """Run a resolved recipe (:func:`~monai_lessmore.experiment.config.load_experiment`) into ``output_dir``.

    Args:
        recipe: the resolved recipe.
        output_dir: the experiment folder (created; an existing one is resumed).
        reductions: run only these reductions (names of the recipe); default all.
        log: where progress lines go (one line per stage start, skip and end).
    """

    def __init__(
        self,
        recipe: dict[str, Any],
        output_dir: str | os.PathLike,
        *,
        reductions: Sequence[str] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        from monai_lessmore.resources import bundle_template

        self.recipe = recipe
        self.out = Path(output_dir)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        names = [r["name"] for r in recipe["reductions"]]
        if reductions:
            unknown = sorted(set(reductions) - set(names))
            if unknown:
                raise ExperimentError(f"unknown reductions {unknown}; the recipe has {names}")
        self.reductions = [r for r in recipe["reductions"] if not reductions or r["name"] in reductions]
        self.pretrain_bundle = bundle_template("lessmore_ssl_pretrain")
        self.class_bundle = bundle_template("lessmore_classification")
        method = recipe["pretrain"]["method"]
        self.pretrain_files = [self.pretrain_bundle / "configs" / "train.json"] + [
            self.pretrain_bundle / "configs" / f for f in METHODS[method]
        ]
        self.class_files = [self.class_bundle / "configs" / "train.json"]
        _check_overrides("pretrain.overrides", recipe["pretrain"]["overrides"], self.pretrain_files, recipe["source"])
        for task in recipe["downstream"]["tasks"]:
            _check_overrides(f"downstream task {task['name']} overrides", task["overrides"], self.class_files,
                             recipe["source"])
        self._check_paths()
        self.failures: list[dict[str, str]] = []

    def _check_paths(self) -> None:
        """Missing data fail before anything runs, naming the recipe key and ``--data-root``."""
        source, missing = self.recipe["source"], []
        data = self.recipe["pretrain"]["data"]
        if isinstance(data, str) and not Path(data).exists():
            missing.append(f"pretrain.data {data}")
        for task in self.recipe["downstream"]["tasks"]:
            for key in ("data_root", "npz_file", "csv_file"):
                value = task["overrides"].get(key)
                if isinstance(value, str) and not Path(value).exists():
                    missing.append(f"task {task['name']} {key} {value}")
        if missing:
            raise ExperimentError(f"{source}: not found: {'; '.join(missing)}. Give --data-root DIR (the folder that "
                                  f"${{data_root}} stands for, now {self.recipe.get('data_root')!r}) or fix the paths")

    # ---------------------------------------------------------------- stages
    def _stage(self, folder: Path, settings: dict[str, Any], work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run ``work`` once for ``settings``: skipped when ``folder/stage.json`` says done with these settings."""
        record_file = folder / "stage.json"
        settings = _jsonable(settings)
        label = str(folder.relative_to(self.out))
        if record_file.is_file():
            try:
                record = json.loads(record_file.read_text(encoding="utf-8"))
            except ValueError:
                record = {}
            if record.get("settings") != settings and "settings" in record:
                changed = _changed_keys(record["settings"], settings)
                raise ExperimentError(
                    f"{label} was computed with other settings (changed: {', '.join(changed)}); delete {folder} to "
                    f"recompute it, or run the experiment into another --output folder"
                )
            if record.get("status") == "done":
                self.log(f"[{label}] done before, skipped")
                return record
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(folder, recursive=True)
        atomic_write_json(record_file, {"status": "running", "settings": settings})
        self.log(f"[{label}] running ...")
        t0 = time.perf_counter()
        try:
            figures = work()
        except ExperimentError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported, recorded, the experiment goes on
            from monai_lessmore.utils.logging import config_error_cause

            cause = config_error_cause(exc)  # not MONAI's "Failed to evaluate ConfigExpression" wrapper
            self.failures.append({"stage": label, "error": f"{type(cause).__name__}: {cause}"})
            self.log(f"[{label}] FAILED: {type(cause).__name__}: {cause}")
            logger.debug("stage %s failed:\n%s", label, traceback.format_exc())
            raise StageFailed(label) from exc
        record = {"status": "done", "settings": settings, "stage_seconds": time.perf_counter() - t0,
                  "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **figures}
        atomic_write_json(record_file, record)
        self.log(f"[{label}] done in {record['stage_seconds']:.1f} s")
        return record

    def _generated(self, spec: dict[str, Any], name: str) -> str:
        """Write a built-in dataset once (``data/<name>``) and return its path."""
        from monai_lessmore import phantom

        kind = spec["generate"]
        args = {k: v for k, v in spec.items() if k != "generate"}
        folder = self.out / "data" / name

        def work() -> dict[str, Any]:
            if kind == "phantom":
                target = folder / "volumes"
                if target.exists():
                    shutil.rmtree(target)
                slices = tuple(args.get("slices", (40, 60)))
                paths = phantom.write_phantom_dataset(target, n_volumes=int(args.get("volumes", 3)),
                                                      slices=slices, size=int(args.get("size", 64)),
                                                      seed=int(args.get("seed", self.recipe["seed"])))
                return {"path": str(target), "files": len(paths)}
            path = phantom.write_phantom_classification(
                folder / "phantom_regions.npz", per_split=tuple(args.get("per_split", (32, 16, 32))),
                size=int(args.get("size", 32)), seed=int(args.get("seed", 1000 + self.recipe["seed"])),
            )
            return {"path": str(path)}

        return self._stage(folder, {"generate": kind, **args}, work)["path"]

    def _reduce(self, red: dict[str, Any], data: str) -> dict[str, Any]:
        folder = self.out / "reduce" / red["name"]

        def work() -> dict[str, Any]:
            from monai_lessmore.data import SliceReductionFilter
            from monai_lessmore.io import discover_volumes

            volumes = discover_volumes(data)
            if not volumes:
                raise ValueError(f"pretrain.data {data} holds no readable CT volumes")
            filt = SliceReductionFilter(**self._filter_args(red))
            t0 = time.perf_counter()
            items = filt([{"image": str(v)} for v in volumes])
            seconds = time.perf_counter() - t0
            n_slices = sum(int(r.get("n_slices", 0)) for r in filt.records)
            if filt.failures:
                for f in filt.failures:
                    self.log(f"[reduce/{red['name']}] skipped {f['source']}: {f['error']}")
            return {"n_volumes": len(filt.records), "n_slices": n_slices, "n_kept": len(items),
                    "kept_fraction": len(items) / n_slices if n_slices else None, "reduce_seconds": seconds,
                    "failures": filt.failures}

        return self._stage(folder, {"data": data, "reducer": red["reducer"]}, work)

    def _filter_args(self, red: dict[str, Any]) -> dict[str, Any]:
        folder = self.out / "reduce" / red["name"]
        return {"config": red["reducer"], "cache_dir": str(folder / "cache"), "slice_store_dir": str(folder / "slices"),
                "on_error": "skip"}

    def _pretrain(self, red: dict[str, Any], data: str) -> dict[str, Any]:
        from monai.bundle import ConfigWorkflow

        pre = self.recipe["pretrain"]
        folder = self.out / "pretrain" / red["name"]
        run_dir, encoder = folder / "run", folder / "encoder.pt"
        overrides = {
            "bundle_root": str(self.pretrain_bundle), "dataset_dir": data, "output_dir": str(run_dir),
            "export_path": str(encoder), "seed": self.recipe["seed"], "progress_bar": False,
            "reduction": {"_target_": "monai_lessmore.data.SliceReductionFilter", **self._filter_args(red)},
            **pre["overrides"],
        }
        settings = {"method": pre["method"], "data": data, "reducer": red["reducer"], "overrides": pre["overrides"],
                    "seed": self.recipe["seed"]}

        def work() -> dict[str, Any]:
            history = run_dir / "loss_history.json"
            start_epoch = json.loads(history.read_text())["epoch"] if history.is_file() else 0
            wf = ConfigWorkflow(config_file=[str(f) for f in self.pretrain_files], run_id="training",
                                logging_file=False, workflow_type=None, **overrides)
            wf.initialize()
            n_items = len(wf.parser.get_parsed_content("datalist"))
            t0 = time.perf_counter()
            wf.run()
            seconds = time.perf_counter() - t0
            trainer = wf.parser.get_parsed_content("trainer")
            epochs = int(trainer.state.epoch)
            if not encoder.is_file():
                raise RuntimeError(f"the pre-training ended without exporting {encoder}; see its log above")
            ran = epochs - start_epoch
            per_epoch = seconds / ran if ran > 0 else None
            wf.finalize()
            return {
                "n_train_slices": n_items, "epochs": epochs, "iterations": int(trainer.state.iteration),
                "resumed_from_epoch": start_epoch, "train_seconds_this_run": seconds,
                "seconds_per_epoch": per_epoch,
                # resumed runs: the epochs before the kill are counted at this run's rate
                "pretrain_seconds": None if per_epoch is None else per_epoch * epochs,
                "final_loss": (getattr(trainer.state, "loss_history", None) or [None])[-1],
                "encoder": str(encoder), "encoder_sha256": file_hash(encoder),
            }

        return self._stage(folder, settings, work)

    def _downstream(self, task: dict[str, Any], init: str, encoder: dict[str, Any] | None, data: str | None) -> dict[str, Any]:
        from monai.bundle import ConfigWorkflow

        folder = self.out / "downstream" / task["name"] / init
        task_overrides = dict(task["overrides"])
        if data is not None:
            task_overrides.update({"dataset": "medmnist", "npz_file": data})
        overrides = {"bundle_root": str(self.class_bundle), "output_dir": str(folder / "protocol"),
                     "seed": self.recipe["seed"], **task_overrides}
        if encoder is not None:
            overrides["pretrained_encoder"] = encoder["encoder"]
        settings = {"task": task["name"], "overrides": task_overrides, "seed": self.recipe["seed"],
                    "encoder_sha256": None if encoder is None else encoder["encoder_sha256"]}

        def work() -> dict[str, Any]:
            wf = ConfigWorkflow(config_file=[str(f) for f in self.class_files], run_id="training",
                                logging_file=False, workflow_type=None, **overrides)
            wf.initialize()
            wf.run()
            wf.finalize()
            results = json.loads((folder / "protocol" / "results.json").read_text(encoding="utf-8"))
            return {"summary": results["summary"], "protocol": results.get("protocol_description"),
                    "n_runs": len(results.get("runs", []))}

        return self._stage(folder, settings, work)

    # ---------------------------------------------------------------- the whole experiment
    def run(self) -> dict[str, Any]:
        """Run every stage not done yet, then write the tables and the plot; returns the collected results."""
        from monai_lessmore.experiment.tables import write_results

        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / "experiment.json", _jsonable({
            "recipe": self.recipe, "reductions_run": [r["name"] for r in self.reductions],
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "environment": _environment(),
        }))
        pre = self.recipe["pretrain"]
        tasks = self.recipe["downstream"]["tasks"]
        data = (str(Path(pre["data"]).resolve()) if isinstance(pre["data"], str)
                else self._try(self._generated, pre["data"], "pretrain"))
        task_data = {t["name"]: self._try(self._generated, t["data"], t["name"]) if "data" in t else None
                     for t in tasks}
        if data is None:  # nothing can run without the pre-training data
            return {"rows": [], "failures": self.failures,
                    "written": write_results(self.out, self.recipe, [], self.failures)}
        failed_data = {t["name"] for t in tasks if "data" in t and task_data[t["name"]] is None}
        tasks = [t for t in tasks if t["name"] not in failed_data]
        rows: list[dict[str, Any]] = []
        if self.recipe["downstream"]["baseline"] and tasks:
            rows.append({"name": SCRATCH, "baseline": True, "reduction": None, "pretrain": None,
                         "tasks": {t["name"]: self._try(self._downstream, t, SCRATCH, None, task_data[t["name"]])
                                   for t in tasks}})
        for red in self.reductions:
            row: dict[str, Any] = {"name": red["name"], "reduction": self._try(self._reduce, red, data), "tasks": {}}
            row["pretrain"] = self._try(self._pretrain, red, data) if row["reduction"] else None
            for t in tasks:
                row["tasks"][t["name"]] = (self._try(self._downstream, t, red["name"], row["pretrain"],
                                                     task_data[t["name"]]) if row["pretrain"] else None)
            rows.append(row)
        written = write_results(self.out, self.recipe, rows, self.failures)
        for path in written:
            self.log(f"wrote {path}")
        return {"rows": rows, "failures": self.failures, "written": written}

    def stage_folders(self) -> list[Path]:
        """The stage folders of the experiment, in the order they run."""
        tasks = [t["name"] for t in self.recipe["downstream"]["tasks"]]
        folders = []
        if self.recipe["downstream"]["baseline"]:
            folders += [self.out / "downstream" / t / SCRATCH for t in tasks]
        for red in self.reductions:
            folders += [self.out / "reduce" / red["name"], self.out / "pretrain" / red["name"]]
            folders += [self.out / "downstream" / t / red["name"] for t in tasks]
        return folders

    def describe(self) -> None:
        """Print the recipe's reductions, tasks and the state of every stage (``--dry-run``)."""
        pre = self.recipe["pretrain"]
        self.log(f"experiment {self.recipe['name']} ({self.recipe['source']}) into {self.out}")
        self.log(f"pre-training: {pre['method']} on {pre['data']}, overrides {pre['overrides']}")
        for red in self.reductions:
            self.log(f"reduction {red['name']}: {red['reducer']}")
        for task in self.recipe["downstream"]["tasks"]:
            self.log(f"task {task['name']}: {task.get('data', '')} overrides {task['overrides']}")
        for folder in self.stage_folders():
            try:
                state = json.loads((folder / "stage.json").read_text(encoding="utf-8")).get("status", "?")
            except (OSError, ValueError):
                state = "to run"
            self.log(f"  {folder.relative_to(self.out)}: {state}")

    def _try(self, stage: Callable[..., Any], *args: Any) -> Any:
        try:
            return stage(*args)
        except StageFailed:
            return None


def _environment() -> dict[str, Any]:
    import numpy
    import torch

    import monai
    import monai_lessmore

    return {"python": platform.python_version(), "platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "monai": monai.__version__,
            "numpy": numpy.__version__, "monai_lessmore": monai_lessmore.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
