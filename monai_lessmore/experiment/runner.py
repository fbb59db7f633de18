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
baseline first, AUC / F1 / accuracy as mean ± std per task, with the kept fraction and pre-training time; then every
stage's wall time, iterations and loss plateau, and the recipe's paired per-seed comparisons), ``paired.csv``,
``auc_vs_kept_fraction.png`` and ``loss_curves.png``. A reduction with ``match_iterations: NAME`` pre-trains with the
epoch length of ``NAME`` (the bundle's ``epoch_length``): a compute-matched control with ``NAME``'s iterations.

Every stage writes ``stage.json`` (its settings, then its figures when done). A stage whose record says done with the
same settings is skipped, so a killed or failed experiment is resumed by running the same command again: the
pre-training resumes from its last checkpoint (the bundle's ``resume: auto``). A stage whose recorded settings differ
from the recipe's is refused with the keys that changed -- delete its folder to recompute it. A failing stage is
reported (``stage.json`` says ``failed`` with the error and traceback) and the experiment goes on with what does
not depend on it; the exit status is then 1. Options that do not change a stage's result (progress bars, workers,
device, caching, logging, checkpoint interval) are recorded but not compared. ``OUTPUT/.lessmore-experiment.lock``
keeps a second command from running into the same folder at the same time.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from monai_lessmore.experiment.config import METHODS, ExperimentError
from monai_lessmore.utils.files import atomic_write_json, file_hash, remove_stale_temps

__all__ = ["ExperimentRunner", "StageFailed", "SCRATCH"]

logger = logging.getLogger(__name__)

#: name of the from-scratch (random initialisation) row and folder
SCRATCH = "scratch"
#: bundle keys that change how a stage runs but not its result: recorded, not compared when resuming
NON_RESULT_KEYS = frozenset({"progress_bar", "num_workers", "device", "cache_rate", "log_every", "tensorboard",
                             "save_interval", "amp"})
#: bundle keys that the runner sets itself; a recipe that sets them is refused
RESERVED = {
    "pretrain": frozenset({"bundle_root", "dataset_dir", "output_dir", "export_path", "export_name", "reduction",
                           "reduction_method", "reduction_threshold", "reduction_cache_dir", "slice_store_dir",
                           "reduction_duplicates", "seed", "resume", "method", "epoch_length", "backbone"}),
    "downstream": frozenset({"bundle_root", "output_dir", "seed", "pretrained_encoder", "pretrained_bundle",
                             "backbone"}),
}
_PATH_KEYS = ("data_root", "npz_file", "csv_file")
_LOCK = ".lessmore-experiment.lock"


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


def _result_settings(settings: Any) -> Any:
    """``settings`` without :data:`NON_RESULT_KEYS` in any ``overrides`` mapping (what resuming compares)."""
    if isinstance(settings, dict):
        return {k: ({o: v for o, v in val.items() if o not in NON_RESULT_KEYS} if k == "overrides" and
                    isinstance(val, dict) else _result_settings(val)) for k, val in settings.items()}
    return settings


def _bundle_keys(files: Sequence[Path]) -> set[str]:
    keys: set[str] = set()
    for f in files:
        keys |= set(json.loads(Path(f).read_text(encoding="utf-8")))
    return keys


def _check_overrides(where: str, overrides: dict[str, Any], files: Sequence[Path], source: str,
                     reserved: frozenset[str]) -> None:
    """A misspelt override would silently add an unused key to the bundle config, and one of the keys the runner
    sets would break resuming or the baseline: refuse both, naming the key."""
    taken = sorted(k for k in overrides if str(k).split("#")[0] in reserved)
    if taken:
        raise ExperimentError(f"{source}: {where} sets {taken}, which the experiment sets itself (data, output "
                              "folders, reduction, seed and initialisation come from the recipe's pretrain.data, "
                              "reductions, seed and the stage); remove them")
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
        reductions: run only these reductions (names of the recipe); default all. The tables still show every
            reduction of the recipe whose stages are done.
        log: where progress lines go (one line per stage start, skip and end).
        check_paths: raise when data paths of the recipe do not exist (``False`` for ``--dry-run``, which lists them).

    Raises:
        ExperimentError: bad overrides, unknown reductions, missing data.
    """

    def __init__(
        self,
        recipe: dict[str, Any],
        output_dir: str | os.PathLike,
        *,
        reductions: Sequence[str] | None = None,
        log: Callable[[str], None] | None = None,
        check_paths: bool = True,
    ) -> None:
        from monai_lessmore.resources import bundle_template

        self.recipe = recipe
        self.out = Path(output_dir).resolve()  # records never hold a path relative to where the command ran
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        names = [r["name"] for r in recipe["reductions"]]
        if reductions:
            unknown = sorted(set(reductions) - set(names))
            if unknown:
                raise ExperimentError(f"--reductions: unknown reductions {unknown}; the recipe has {names}")
        self.reductions = [r for r in recipe["reductions"] if not reductions or r["name"] in reductions]
        self.pretrain_bundle = bundle_template("lessmore_ssl_pretrain")
        self.class_bundle = bundle_template("lessmore_classification")
        method = recipe["pretrain"]["method"]
        self.pretrain_files = [self.pretrain_bundle / "configs" / "train.json"] + [
            self.pretrain_bundle / "configs" / f for f in METHODS[method]
        ]
        self.class_files = [self.class_bundle / "configs" / "train.json"]
        _check_overrides("pretrain.overrides", recipe["pretrain"]["overrides"], self.pretrain_files, recipe["source"],
                         RESERVED["pretrain"])
        for task in recipe["downstream"]["tasks"]:
            _check_overrides(f"downstream task {task['name']} overrides", task["overrides"], self.class_files,
                             recipe["source"], RESERVED["downstream"])
            if "data" in task and any(k in task["overrides"] for k in ("dataset", *_PATH_KEYS)):
                raise ExperimentError(f"{recipe['source']}: task {task['name']} has both data (a generated set) and "
                                      "dataset/data_root/npz_file/csv_file overrides; keep one")
        self.missing = self._missing_paths()
        if self.missing and check_paths:
            raise ExperimentError(self._missing_message())
        self.failures: list[dict[str, str]] = []

    def _missing_paths(self) -> list[str]:
        missing = []
        data = self.recipe["pretrain"]["data"]
        if isinstance(data, str) and not Path(data).exists():
            missing.append(f"pretrain.data {data}")
        for task in self.recipe["downstream"]["tasks"]:
            for key in _PATH_KEYS:
                value = task["overrides"].get(key)
                if isinstance(value, str) and not Path(value).exists():
                    missing.append(f"task {task['name']} {key} {value}")
        return missing

    def _missing_message(self) -> str:
        return (f"{self.recipe['source']}: not found: {'; '.join(self.missing)}. Give --data-root DIR (the folder "
                f"that ${{data_root}} stands for, now {self.recipe.get('data_root')!r}) or fix the paths")

    def _task_overrides(self, task: dict[str, Any]) -> dict[str, Any]:
        """The task's overrides with its data paths made absolute (relative paths: from the current folder)."""
        out = dict(task["overrides"])
        for key in _PATH_KEYS:
            if isinstance(out.get(key), str):
                out[key] = str(Path(out[key]).resolve())
        return out

    # ---------------------------------------------------------------- stages
    def _stage(self, folder: Path, settings: dict[str, Any], work: Callable[[], dict[str, Any]], *,
               resumable: bool = False) -> dict[str, Any]:
        """Run ``work`` once for ``settings``: skipped when ``folder/stage.json`` says done with these settings.

        Args:
            folder: the stage's folder; ``stage.json`` records its state.
            settings: what the result depends on (plus :data:`NON_RESULT_KEYS` options, recorded, not compared).
            work: computes the stage; returns the figures to record.
            resumable: the stage resumes work left in ``folder`` (the pre-training's checkpoint), so an unfinished
                run with other settings is refused; other unfinished stages start over.

        Raises:
            ExperimentError: ``folder`` holds a done (or resumable, unfinished) stage with other settings.
            StageFailed: ``work`` raised; recorded in ``stage.json`` and :attr:`failures`.
        """
        record_file = folder / "stage.json"
        settings = _jsonable(settings)
        label = folder.relative_to(self.out).as_posix()
        record = self._record(folder)
        if record is not None and "settings" in record:
            same = _result_settings(record["settings"]) == _result_settings(settings)
            done = record.get("status") == "done"
            if done and same:
                self.log(f"[{label}] done before, skipped")
                return record
            if not same and (done or resumable):
                changed = _changed_keys(_result_settings(record["settings"]), _result_settings(settings))
                what = "was computed" if done else "was started (its checkpoint would be resumed)"
                raise ExperimentError(
                    f"{label} {what} with other settings (changed: {', '.join(changed)}); delete {folder} to "
                    f"recompute it, or run the experiment into another --output folder"
                )
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
            error = f"{type(cause).__name__}: {cause}"
            self.failures.append({"stage": label, "error": error})
            self.log(f"[{label}] FAILED: {error}")
            atomic_write_json(record_file, {"status": "failed", "settings": settings, "error": error,
                                            "traceback": traceback.format_exc()})
            raise StageFailed(label) from exc
        record = {"status": "done", "settings": settings, "stage_seconds": time.perf_counter() - t0,
                  "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **figures}
        atomic_write_json(record_file, record)
        self.log(f"[{label}] done in {record['stage_seconds']:.1f} s")
        return record

    @staticmethod
    def _record(folder: Path) -> dict[str, Any] | None:
        try:
            record = json.loads((folder / "stage.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _done(self, folder: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
        """The record of a stage done with ``settings`` (for reductions not run by this command), else ``None``."""
        record = self._record(folder)
        if (record is None or record.get("status") != "done"
                or _result_settings(record.get("settings")) != _result_settings(_jsonable(settings))):
            return None
        return record

    def _generated(self, spec: dict[str, Any], name: str) -> str:
        """Write a built-in dataset once (``data/<name>``) and return its path."""
        from monai_lessmore import phantom

        kind = spec["generate"]
        folder = self.out / "data" / name
        if kind == "phantom":
            args = {"volumes": 3, "slices": [40, 60], "size": 64, "seed": self.recipe["seed"]}
            path = folder / "volumes"
        else:
            args = {"per_split": [32, 16, 32], "size": 32, "seed": 1000 + self.recipe["seed"]}
            path = folder / "phantom_regions.npz"
        args.update({k: v for k, v in spec.items() if k != "generate"})  # the effective arguments are the settings

        def work() -> dict[str, Any]:
            if kind == "phantom":
                if path.exists():
                    shutil.rmtree(path)
                files = phantom.write_phantom_dataset(path, n_volumes=int(args["volumes"]), slices=tuple(args["slices"]),
                                                      size=int(args["size"]), seed=int(args["seed"]))
                return {"files": len(files)}
            phantom.write_phantom_classification(path, per_split=tuple(args["per_split"]), size=int(args["size"]),
                                                 seed=int(args["seed"]))
            return {}

        self._stage(folder, {"generate": kind, **args}, work)
        return str(path)

    # -- the settings of each stage: what its result depends on
    def _reduce_settings(self, red: dict[str, Any], data: str) -> dict[str, Any]:
        return {"data": data, "reducer": red["reducer"]}

    def _pretrain_settings(self, red: dict[str, Any], data: str, epoch_length: int | None = None) -> dict[str, Any]:
        pre = self.recipe["pretrain"]
        settings = {"method": pre["method"], "data": data, "reducer": red["reducer"], "overrides": pre["overrides"],
                    "seed": self.recipe["seed"], **self._backbone_setting()}
        if epoch_length is not None:  # a compute-matched control: the epoch length of another reduction
            settings.update({"match_iterations": red["match_iterations"], "epoch_length": epoch_length})
        return settings

    def _batch_size(self) -> int:
        """The pre-training batch size: the recipe's override, else the bundle's (the method's file last)."""
        batch = self.recipe["pretrain"]["overrides"].get("batch_size")
        for f in self.pretrain_files if batch is None else ():
            batch = json.loads(Path(f).read_text(encoding="utf-8")).get("batch_size", batch)
        return int(batch)

    def _epoch_length(self, red: dict[str, Any], data: str, *, run: bool = True) -> int | None:
        """Iterations per epoch of the reduction that ``red`` matches (``match_iterations``), else ``None``.

        The matched reduction's kept slices, in full batches (the pre-training loader drops the last partial
        batch). Its reduction stage is run when ``run`` (done before: skipped).

        Raises:
            StageFailed: the matched reduction failed, is not done (``run=False``), or keeps fewer slices than a batch.
        """
        target = red.get("match_iterations")
        if target is None:
            return None
        other = next(r for r in self.recipe["reductions"] if r["name"] == target)
        record = (self._try(self._reduce, other, data) if run
                  else self._done(self.out / "reduce" / target, self._reduce_settings(other, data)))
        if record is None:
            raise StageFailed(f"reduce/{target}")
        length = int(record["n_kept"]) // self._batch_size()
        if length < 1 and not run:
            raise StageFailed(f"pretrain/{red['name']}")
        if length < 1:
            error = (f"ValueError: {red['name']} matches the iterations of {target}, which keeps {record['n_kept']} "
                     f"slices, fewer than one batch of {self._batch_size()}; lower pretrain.overrides.batch_size")
            self.failures.append({"stage": f"pretrain/{red['name']}", "error": error})
            self.log(f"[pretrain/{red['name']}] FAILED: {error}")
            raise StageFailed(f"pretrain/{red['name']}")
        return length

    def _downstream_settings(self, task: dict[str, Any], encoder: dict[str, Any] | None,
                             data: str | None) -> dict[str, Any]:
        overrides = self._task_overrides(task)
        if data is not None:
            overrides.update({"dataset": "medmnist", "npz_file": data})
        return {"task": task["name"], "overrides": overrides, "seed": self.recipe["seed"], **self._backbone_setting(),
                "encoder_sha256": None if encoder is None else encoder["encoder_sha256"]}

    def _backbone_setting(self) -> dict[str, str]:
        """``{"backbone": name}`` for another backbone than the paper's ResNet50; nothing for the default, so the
        records of runs made before the option existed still match."""
        backbone = self.recipe.get("backbone") or "resnet50"
        return {} if backbone == "resnet50" else {"backbone": backbone}

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
            for f in filt.failures:
                self.log(f"[reduce/{red['name']}] skipped {f['source']}: {f['error']}")
            if not items:
                raise ValueError(f"no slice of {data} was kept ({len(volumes)} volumes found, {len(filt.failures)} "
                                 f"unreadable, {n_slices} slices read)")
            return {"n_volumes": len(filt.records), "n_slices": n_slices, "n_kept": len(items),
                    "kept_fraction": len(items) / n_slices, "reduce_seconds": seconds, "failures": filt.failures}

        return self._stage(folder, self._reduce_settings(red, data), work)

    def _filter_args(self, red: dict[str, Any]) -> dict[str, Any]:
        folder = self.out / "reduce" / red["name"]
        return {"config": red["reducer"], "cache_dir": str(folder / "cache"), "slice_store_dir": str(folder / "slices"),
                "on_error": "skip"}

    def _pretrain(self, red: dict[str, Any], data: str) -> dict[str, Any]:
        from ignite.engine import Events
        from monai.bundle import ConfigWorkflow

        pre = self.recipe["pretrain"]
        folder = self.out / "pretrain" / red["name"]
        run_dir, encoder = folder / "run", folder / "encoder.pt"
        epoch_length = self._epoch_length(red, data)
        overrides = {
            "bundle_root": str(self.pretrain_bundle), "dataset_dir": data, "output_dir": str(run_dir),
            "export_path": str(encoder), "seed": self.recipe["seed"], "progress_bar": False,
            "reduction": {"_target_": "monai_lessmore.data.SliceReductionFilter", **self._filter_args(red)},
            "backbone": self.recipe.get("backbone") or "resnet50", **pre["overrides"],
        }
        if epoch_length is not None:
            overrides["epoch_length"] = epoch_length

        def work() -> dict[str, Any]:
            wf = ConfigWorkflow(config_file=[str(f) for f in self.pretrain_files], run_id="training",
                                logging_file=False, workflow_type=None, **overrides)
            wf.initialize()
            n_items = len(wf.parser.get_parsed_content("datalist"))
            trainer = wf.parser.get_parsed_content("trainer")
            clock: dict[str, Any] = {"start_epoch": None, "seconds": 0.0, "epochs": 0, "t": 0.0}

            def started(engine: Any) -> None:  # after the resume handler: state.epoch is the epoch now running
                if clock["start_epoch"] is None:
                    clock["start_epoch"] = engine.state.epoch - 1
                clock["t"] = time.perf_counter()

            def completed(engine: Any) -> None:
                clock["seconds"] += time.perf_counter() - clock["t"]
                clock["epochs"] += 1

            trainer.add_event_handler(Events.EPOCH_STARTED, started)
            trainer.add_event_handler(Events.EPOCH_COMPLETED, completed)
            wf.run()
            epochs = int(trainer.state.epoch)
            if not encoder.is_file():
                raise RuntimeError(f"the pre-training ended without exporting {encoder}; see its log above")
            wf.finalize()
            per_epoch = clock["seconds"] / clock["epochs"] if clock["epochs"] else None
            start = epochs if clock["start_epoch"] is None else clock["start_epoch"]
            return {
                "n_train_slices": n_items, "epochs": epochs, "iterations": int(trainer.state.iteration),
                "resumed_from_epoch": start, "epochs_this_run": clock["epochs"],
                "train_seconds_this_run": clock["seconds"], "seconds_per_epoch": per_epoch,
                # the training loop's time (epochs only); a resumed run counts the epochs before it at its own rate
                "pretrain_seconds": None if per_epoch is None else per_epoch * epochs,
                "iterations_per_epoch": int(trainer.state.epoch_length),
                "epoch_loss": [float(x) for x in getattr(trainer.state, "loss_history", None) or []],
                "final_loss": (getattr(trainer.state, "loss_history", None) or [None])[-1],
                "encoder_sha256": file_hash(encoder),
            }

        record = self._stage(folder, self._pretrain_settings(red, data, epoch_length), work, resumable=True)
        return {**record, "encoder": str(encoder)}  # from this folder, wherever the experiment was run from

    def _downstream(self, task: dict[str, Any], init: str, encoder: dict[str, Any] | None,
                    data: str | None) -> dict[str, Any]:
        from monai.bundle import ConfigWorkflow

        folder = self.out / "downstream" / task["name"] / init
        settings = self._downstream_settings(task, encoder, data)
        overrides = {"bundle_root": str(self.class_bundle), "output_dir": str(folder / "protocol"),
                     "seed": self.recipe["seed"], "backbone": self.recipe.get("backbone") or "resnet50",
                     **settings["overrides"]}
        if encoder is not None:
            overrides["pretrained_encoder"] = encoder["encoder"]

        def work() -> dict[str, Any]:
            if (folder / "protocol").exists():  # an unfinished earlier attempt: start over, no mixed files
                shutil.rmtree(folder / "protocol")
            wf = ConfigWorkflow(config_file=[str(f) for f in self.class_files], run_id="training",
                                logging_file=False, workflow_type=None, **overrides)
            wf.initialize()
            wf.run()
            wf.finalize()
            results = json.loads((folder / "protocol" / "results.json").read_text(encoding="utf-8"))
            runs = results.get("runs", [])
            return {"summary": results["summary"], "protocol": results.get("protocol_description"),
                    "n_runs": len(runs), "seeds": [r.get("seed") for r in runs],
                    "run_seconds": [r.get("seconds") for r in runs]}

        return self._stage(folder, settings, work)

    # ---------------------------------------------------------------- the whole experiment
    def run(self) -> dict[str, Any]:
        """Run every stage not done yet, then write the tables and the plot.

        Returns:
            ``{"rows": [...], "failures": [...], "written": [paths]}``: one row per pre-training (the baseline
            first) with its stage records, the failed stages, the files written.

        Raises:
            ExperimentError: a stage's folder holds a result for other settings, or another command runs into
                the same folder.
        """
        with self._lock():
            return self._run()

    def _run(self) -> dict[str, Any]:
        from monai_lessmore.experiment.tables import write_results

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
        tasks = [t for t in tasks if "data" not in t or task_data[t["name"]] is not None]
        rows: list[dict[str, Any]] = []
        if self.recipe["downstream"]["baseline"] and tasks:
            rows.append({"name": SCRATCH, "baseline": True, "reduction": None, "pretrain": None,
                         "tasks": {t["name"]: self._try(self._downstream, t, SCRATCH, None, task_data[t["name"]])
                                   for t in tasks}})
        selected = {r["name"] for r in self.reductions}
        for red in self.recipe["reductions"]:
            if red["name"] in selected:
                row: dict[str, Any] = {"name": red["name"], "reduction": self._try(self._reduce, red, data),
                                       "tasks": {}}
                row["pretrain"] = self._try(self._pretrain, red, data) if row["reduction"] else None
                for t in tasks:
                    row["tasks"][t["name"]] = (self._try(self._downstream, t, red["name"], row["pretrain"],
                                                         task_data[t["name"]]) if row["pretrain"] else None)
            else:
                row = self._finished_row(red, data, tasks, task_data)
                if row is None:
                    continue
            rows.append(row)
        written = write_results(self.out, self.recipe, rows, self.failures)
        for path in written:
            self.log(f"wrote {path}")
        return {"rows": rows, "failures": self.failures, "written": written}

    def _finished_row(self, red: dict[str, Any], data: str, tasks: Sequence[dict[str, Any]],
                      task_data: dict[str, str | None]) -> dict[str, Any] | None:
        """The row of a reduction not selected by ``--reductions``, from its stages done earlier (else ``None``)."""
        reduction = self._done(self.out / "reduce" / red["name"], self._reduce_settings(red, data))
        if reduction is None:
            return None
        try:
            epoch_length = self._epoch_length(red, data, run=False)
        except StageFailed:
            return None
        pretrain = self._done(self.out / "pretrain" / red["name"], self._pretrain_settings(red, data, epoch_length))
        if pretrain is not None:
            pretrain = {**pretrain, "encoder": str(self.out / "pretrain" / red["name"] / "encoder.pt")}
        row = {"name": red["name"], "reduction": reduction, "pretrain": pretrain, "tasks": {}, "not_run": True}
        for t in tasks:
            folder = self.out / "downstream" / t["name"] / red["name"]
            row["tasks"][t["name"]] = None if pretrain is None else self._done(
                folder, self._downstream_settings(t, pretrain, task_data[t["name"]]))
        return row

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """``OUTPUT/.lessmore-experiment.lock`` held (``flock``) while the experiment runs; released however it ends."""
        self.out.mkdir(parents=True, exist_ok=True)
        fh = open(self.out / _LOCK, "a+")
        try:
            try:
                import fcntl

                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except (BlockingIOError, PermissionError):
                raise ExperimentError(f"another lessmore experiment runs into {self.out} (it holds "
                                      f"{self.out / _LOCK}); wait for it to end or use another --output") from None
            except (OSError, ImportError):  # no flock on this platform or filesystem: run unlocked
                pass
            yield
        finally:
            fh.close()

    def stage_folders(self) -> list[Path]:
        """The stage folders of the experiment, in the order they run."""
        tasks = self.recipe["downstream"]["tasks"]
        folders = []
        if isinstance(self.recipe["pretrain"]["data"], dict):
            folders.append(self.out / "data" / "pretrain")
        folders += [self.out / "data" / t["name"] for t in tasks if "data" in t]
        if self.recipe["downstream"]["baseline"]:
            folders += [self.out / "downstream" / t["name"] / SCRATCH for t in tasks]
        for red in self.reductions:
            folders += [self.out / "reduce" / red["name"], self.out / "pretrain" / red["name"]]
            folders += [self.out / "downstream" / t["name"] / red["name"] for t in tasks]
        return folders

    def describe(self) -> None:
        """Print the recipe's reductions, tasks, missing data and the state of every stage (``--dry-run``)."""
        pre = self.recipe["pretrain"]
        self.log(f"experiment {self.recipe['name']} ({self.recipe['source']}) into {self.out}")
        self.log(f"pre-training: {pre['method']} ({self.recipe.get('backbone') or 'resnet50'}) on {pre['data']}, "
                 f"overrides {pre['overrides']}")
        for red in self.reductions:
            match = (f", the iterations per epoch of {red['match_iterations']}" if red.get("match_iterations")
                     else "")
            self.log(f"reduction {red['name']}: {red['reducer']}{match}")
        for a, b in self.recipe.get("compare") or []:
            self.log(f"paired comparison: {a} - {b} per seed")
        for task in self.recipe["downstream"]["tasks"]:
            self.log(f"task {task['name']}: {task.get('data', '')} overrides {task['overrides']}")
        if self.missing:
            self.log(f"warning: {self._missing_message()}")
        for folder in self.stage_folders():
            record = self._record(folder)
            state = "to run" if record is None else record.get("status", "?")
            self.log(f"  {folder.relative_to(self.out).as_posix()}: {state}")

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
