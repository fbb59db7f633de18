"""Every check that needs a GPU, in one run of at most six minutes on one GPU, with the bundles' own configs.

    python scripts/gpu_check.py                        # CUDA machine: the paper's settings (512 px, AMP), ~5 min
    python scripts/gpu_check.py --device cpu --tiny    # the same code paths at tiny sizes on CPU, ~2 min on 2 cores
    python scripts/gpu_check.py --list                 # the checks and their time budgets
    python scripts/gpu_check.py --wheel-command        # the pip command that fills .whl/ (see docs/benchmarks.md)

Checks (each one independent: a failure is recorded with its traceback and the next check runs):

- ``pretrain_swav`` / ``pretrain_moco`` / ``pretrain_spark``: the pre-training bundle's ``train.json`` (merged with
  ``train_moco.json`` / ``train_spark.json``) at the paper's settings (Wolf et al. 2024, Tables 8-10: input 512,
  batch 128 / 64 / 32, AMP) for a fixed number of iterations: slices/s, peak GPU memory, the fraction of step time
  spent waiting for data (target <= 10 %), finite losses.
- ``resume_*``: a run stopped after its first epoch and resumed from its checkpoint ends with the same
  checkpoint (weights, optimiser state, queue, AMP scaler) and the same losses as an uninterrupted run, within a
  stated tolerance, under stated determinism settings.
- ``ddp_swav_np1`` / ``ddp_moco_np1`` (and ``_np2`` on a machine with two GPUs): ``multi_gpu_train.json`` through
  ``torchrun`` (NCCL on GPUs, gloo on CPU).
- ``classification``: the fine-tuning bundle at 224 px, batch 64, a few iterations (frozen encoder, then all).
- ``reduce_ssim`` / ``reduce_mi`` / ``reduce_deepnet``: ``lessmore reduce --device cuda`` on a 300-slice volume keeps
  the same slices as ``--device cpu`` (the presets ssim10 / mi10 / deepnet10); the time of each. DeepNet reads a
  local randomly initialised ResNet50 file, so nothing is downloaded.

The data are synthetic (:mod:`monai_lessmore.phantom`), written to a scratch folder first (``setup_data``). The
package has no CUDA path for dHash (HASH runs on the CPU), so there is nothing to check there.

Output: ``OUTPUT/gpu_check.json`` and ``OUTPUT/gpu_check.md`` (``--output``; default ``$OUT`` if set, else
``gpu_check_out``), rewritten atomically after every check, so a run stopped from outside keeps what it measured.
Exit status: the number of failed checks. A machine without a package index gets the missing dependencies as
wheels in ``.whl/`` (``--wheel-command``); they are installed to ``/tmp/site`` when that folder exists.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WHEEL_DIR = REPO / ".whl"
WHEEL_SITE = Path("/tmp/site")

#: what the GPU machines lack (they have torch, torchvision, numpy, scipy, Pillow, scikit-image, scikit-learn,
#: numba, PyYAML, tqdm, tensorboard): carried as wheels. ``fire`` runs ``python -m monai.bundle``, which torchrun
#: starts; ``termcolor`` is fire's dependency. imagehash (and its PyWavelets) only serve the test suite's dHash oracle.
WHEELS_NEEDED = ("monai", "pytorch-ignite", "nibabel", "fire", "termcolor")
WHEELS_OPTIONAL = ("imagehash", "PyWavelets")
#: the platform tags pip needs to pick Linux x86-64 wheels for another machine (the pure-Python ones match any)
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")

#: the paper's reference times on an RTX 3090 (section 2.1) and the size of its PET-CT set, for the estimates
PAPER_HOURS = {"ssim": 421.0, "mi": 312.0, "deepnet": 6.0}
PETCT_SLICES, PETCT_PAIRS = 541_439, 162_160_980

#: relative tolerance of the resume check (``||a - b|| / ||b||`` per tensor; losses ``|a - b| / max(1, |b|)``)
RESUME_RTOL = 1e-3
#: data-wait target of the pre-training runs at the paper's settings on one GPU
DATA_WAIT_TARGET = 0.10


# -- environment -----------------------------------------------------------------------------------------------------
def install_carried_wheels(wheel_dir: Path = WHEEL_DIR, target: Path = WHEEL_SITE) -> list[str]:
    """Install the wheels of ``wheel_dir`` (no index, no dependencies) to ``target`` and put it on ``sys.path`` and
    ``PYTHONPATH`` (for the subprocesses); nothing happens without ``wheel_dir``. Returns the wheels' names.

    Raises:
        RuntimeError: pip failed; the message holds its output.
    """
    wheels = sorted(p.name for p in wheel_dir.glob("*.whl")) if wheel_dir.is_dir() else []
    if not wheels:
        return []
    stamp = target / ".gpu_check_wheels"
    if not (stamp.is_file() and stamp.read_text().split() == wheels):  # a warm machine keeps the last install
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--upgrade", "--target", str(target), *map(str, sorted(wheel_dir.glob("*.whl")))]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"installing the carried wheels of {wheel_dir} failed (exit {res.returncode}); keep one "
                               f"version of each package there:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
        stamp.write_text("\n".join(wheels) + "\n")
    _prepend_path(str(target))
    return wheels


def _prepend_path(path: str) -> None:
    if path not in sys.path:
        sys.path.insert(0, path)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != path]
    os.environ["PYTHONPATH"] = os.pathsep.join([path, *parts])


def wheel_command(python_version: str = "3.12") -> str:
    """The ``pip download`` command that fills ``.whl/`` for a Linux x86-64 machine with CPython ``python_version``,
    pinned to the versions installed here (those the test suite passed with); the optional wheels follow ``#``."""
    from importlib.metadata import PackageNotFoundError, version

    def pinned(names: tuple[str, ...]) -> list[str]:
        out = []
        for name in names:
            try:
                out.append(f"{name}=={version(name)}")
            except PackageNotFoundError:
                out.append(name)
        return out

    platforms = " ".join(f"--platform {p}" for p in WHEEL_PLATFORMS)
    return (f"python3 -m pip download --no-deps --only-binary=:all: --python-version {python_version} "
            f"--implementation cp {platforms} -d .whl {' '.join(pinned(WHEELS_NEEDED))}"
            f"   # optional, for the dHash tests: {' '.join(pinned(WHEELS_OPTIONAL))}")


def machine_info(device: str) -> dict[str, Any]:
    """Versions and hardware of this run."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def ver(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    cuda = torch.cuda.is_available()
    return {
        "platform": platform.platform(), "python": sys.version.split()[0], "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "device": device, "torch_threads": torch.get_num_threads(),
        "packages": {n: ver(n) for n in ("numpy", "torchvision", "monai", "pytorch-ignite", "nibabel", "numba",
                                         "scikit-image", "fire", "imagehash", "itk", "pydicom", "isal")},
    }


# -- settings --------------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """Sizes of every check: the paper's on a GPU, tiny ones for the CPU dry run (``--tiny``)."""

    device: str
    tiny: bool
    num_workers: int
    warmup: int = 2
    steps: int = 8
    input_size: int | None = None  # None: the bundle's (512, Tables 8-10)
    batch_size: int | None = None  # None: the bundle's per-method batch (128 / 64 / 32)
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    volume_slices: int = 300
    volume_size: int = 512
    resume_iterations: int = 2  # per epoch; two epochs
    ddp_batch: int = 32
    ddp_iterations: int = 3
    ddp_workers: int = 4
    cls_image_size: int = 224
    cls_batch: int = 64
    cls_per_split: tuple[int, int, int] = (96, 32, 32)  # images per class: 192 train = 3 iterations per epoch
    cls_phantom_size: int = 64
    cls_workers: int = 4
    budgets: dict[str, float] = field(default_factory=dict)
    time_limit: float = 360.0

    @classmethod
    def make(cls, device: str, tiny: bool, num_workers: int | None) -> "Plan":
        cpus = os.cpu_count() or 1
        if not tiny:
            workers = max(1, min(12, cpus - 2)) if num_workers is None else num_workers
            return cls(device=device, tiny=False, num_workers=workers, budgets=dict(BUDGETS))
        return cls(
            device=device, tiny=True, num_workers=0 if num_workers is None else num_workers, warmup=1, steps=2,
            input_size=64, batch_size=4,
            method_overrides={"swav": {"crop_sizes": [32, 16], "num_crops": [2, 2]}, "moco": {"crop_size": 32},
                              "spark": {"decoder_width": 64}},
            volume_slices=20, volume_size=64, resume_iterations=1, ddp_batch=4, ddp_iterations=2, ddp_workers=0,
            cls_image_size=64, cls_batch=4, cls_per_split=(4, 2, 2), cls_phantom_size=32, cls_workers=0,
            budgets={k: 240.0 for k in BUDGETS}, time_limit=1800.0,
        )


#: seconds per check on one GPU (they sum to the six-minute limit); checks are run in this order
BUDGETS: dict[str, float] = {
    "setup_data": 40, "pretrain_swav": 40, "pretrain_moco": 25, "pretrain_spark": 25,
    "resume_swav": 30, "resume_moco": 25, "resume_spark": 25, "ddp_swav_np1": 35, "ddp_moco_np1": 30,
    "classification": 25, "reduce_ssim": 20, "reduce_mi": 15, "reduce_deepnet": 25,
}
METHODS = ("swav", "moco", "spark")
REDUCE_METHODS = ("ssim", "mi", "deepnet")


# -- running checks --------------------------------------------------------------------------------------------------
class CheckTimeout(BaseException):
    """A check ran past its budget (a BaseException, so that no ``except Exception`` on the way swallows it)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`CheckTimeout` in the main thread after ``seconds`` (SIGALRM; Python code only: a long CUDA or C
    call ends first)."""
    def expire(signum: int, frame: Any) -> None:
        raise CheckTimeout(f"ran past its time budget of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Context:
    """What the checks share: the plan, the scratch folder and what ``setup_data`` wrote there."""

    plan: Plan
    scratch: Path
    out_dir: Path
    data: dict[str, Any] = field(default_factory=dict)

    def need_data(self) -> dict[str, Any]:
        if not self.data:
            raise RuntimeError("the synthetic data are missing: check setup_data failed (see its error)")
        return self.data


def _free_cuda() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - a broken CUDA context is reported by the next check that uses it
        pass


def run_check(name: str, fn: Callable[[Context], dict[str, Any]], ctx: Context, budget: float) -> dict[str, Any]:
    """Run one check within ``budget`` seconds; its record holds ``passed``, the figures or the error."""
    start = time.perf_counter()
    record: dict[str, Any] = {"name": name, "budget_s": round(budget, 1)}
    try:
        with time_limit(budget):
            result = fn(ctx)
        record.update(result)
        record["passed"] = bool(result.get("passed", True))
    except (Exception, CheckTimeout) as exc:  # noqa: BLE001 - every failure is recorded, the next check runs
        record.update({"passed": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
    record["seconds"] = round(time.perf_counter() - start, 2)
    _free_cuda()
    return record


# -- setup -----------------------------------------------------------------------------------------------------------
def _batch(plan: Plan, method: str) -> int:
    from monai_lessmore.ssl.throughput import bundle_parser

    return plan.batch_size or int(bundle_parser(method).get("batch_size"))


def _write_volume(folder: str, index: int, slices: int, size: int) -> str:
    """One phantom volume ``phantom_<index>.nii.gz``: what ``write_phantom_dataset(n_volumes=N, slices=(s, s))``
    writes as its volume ``index`` (seed ``index``), so that volumes can be written in parallel."""
    from monai_lessmore.phantom import write_phantom_dataset

    part = Path(folder) / f".part{index:02d}"
    (path,) = write_phantom_dataset(part, n_volumes=1, slices=(slices, slices), size=size, seed=index)
    final = Path(folder) / f"phantom_{index:02d}.nii.gz"
    os.replace(path, final)
    part.rmdir()
    return str(final)


def pretrain_overrides(plan: Plan, ctx: Context, method: str, run_dir: Path, **extra: Any) -> dict[str, Any]:
    """Config overrides of a pre-training run on the synthetic data (the paper's settings unless ``--tiny``)."""
    data = ctx.need_data()
    kw: dict[str, Any] = {
        "dataset_dir": data["pretrain_dir"], "output_dir": str(run_dir), "export_path": str(run_dir / "encoder.pt"),
        "reduction_method": "none", "reduction_cache_dir": data["cache_dir"], "num_workers": plan.num_workers,
        "progress_bar": False, "tensorboard": False, "resume": None, "device": f"$torch.device('{plan.device}')",
        "max_epochs": 1, "log_every": 10**6, "save_interval": 10**6, "amp": True,
    }
    if plan.input_size is not None:
        kw["input_size"] = plan.input_size
    if plan.batch_size is not None:
        kw["batch_size"] = plan.batch_size
    kw.update(plan.method_overrides.get(method, {}))
    kw.update(extra)
    return kw


def check_setup_data(ctx: Context) -> dict[str, Any]:
    """Phantom CT volumes (pre-training, and the reduce volume), the slice store, the classification set and a
    randomly initialised ResNet50 weights file for DeepNet."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    from monai_lessmore.networks.resnet import ResNet50
    from monai_lessmore.phantom import write_phantom_classification
    from monai_lessmore.ssl.throughput import bundle_parser

    plan = ctx.plan
    need = max((plan.warmup + plan.steps) * _batch(plan, m) for m in METHODS)
    n_volumes = max(2, math.ceil(need / plan.volume_slices))
    folder = ctx.scratch / "phantom"
    folder.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    workers = max(1, min(n_volumes, os.cpu_count() or 1))
    # spawn, not fork: the parent may hold threads (torch), and nothing of CUDA may be inherited
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        paths = list(pool.map(_write_volume, [str(folder)] * n_volumes, range(n_volumes),
                              [plan.volume_slices] * n_volumes, [plan.volume_size] * n_volumes))
    volumes_s = time.perf_counter() - t
    cache = ctx.scratch / "reduction_cache"
    t = time.perf_counter()
    # the slice store (kept slices written once, uncompressed) as the bundle builds it; every run reads it
    parser = bundle_parser("swav", {"dataset_dir": str(folder), "reduction_method": "none",
                                    "reduction_cache_dir": str(cache)})
    n_slices = len(parser.get_parsed_content("datalist"))
    store_s = time.perf_counter() - t
    npz = write_phantom_classification(ctx.scratch / "classification.npz", per_split=plan.cls_per_split,
                                       size=plan.cls_phantom_size)
    torch.manual_seed(0)
    weights = ctx.scratch / "resnet50_random.pt"
    torch.save(ResNet50(num_classes=0).state_dict(), weights)
    ctx.data.update({"pretrain_dir": str(folder), "cache_dir": str(cache), "reduce_volume": paths[0],
                     "classification_npz": str(npz), "deepnet_weights": str(weights)})
    return {"volumes": n_volumes, "slices_per_volume": plan.volume_slices, "size": plan.volume_size,
            "slices": n_slices, "volumes_seconds": round(volumes_s, 2), "slice_store_seconds": round(store_s, 2),
            "writer_processes": workers}


# -- pre-training throughput -----------------------------------------------------------------------------------------
def check_pretrain(method: str) -> Callable[[Context], dict[str, Any]]:
    def check(ctx: Context) -> dict[str, Any]:
        from monai_lessmore.ssl.throughput import measure_training

        plan = ctx.plan
        batch = _batch(plan, method)
        run_dir = ctx.scratch / f"pretrain_{method}"
        kw = pretrain_overrides(plan, ctx, method, run_dir, max_slices=(plan.warmup + plan.steps) * batch)
        r = measure_training(method, kw, steps=plan.steps, warmup=plan.warmup)
        enforced = not plan.tiny and plan.device.startswith("cuda")
        wait_ok = r["data_wait_fraction"] <= DATA_WAIT_TARGET
        return {
            "method": method, "input_size": plan.input_size or 512, "batch_size": r["batch_size"],
            "amp_requested": True, "amp_used": r["amp"], "num_workers": plan.num_workers,
            "warmup_iterations": plan.warmup, "timed_iterations": r["iterations"],
            "images_per_s": r["images_per_s"], "data_wait_fraction": r["data_wait_fraction"],
            "data_wait_target": DATA_WAIT_TARGET, "data_wait_ok": wait_ok, "data_wait_enforced": enforced,
            "peak_gpu_memory_mib": r["peak_gpu_memory_mib"], "peak_gpu_reserved_mib": r["peak_gpu_reserved_mib"],
            "losses": r["losses"], "loss_finite": r["loss_finite"],
            "passed": r["loss_finite"] and (wait_ok or not enforced),
        }

    return check


# -- resume ----------------------------------------------------------------------------------------------------------
class ReseedEachEpoch:
    """At every epoch start, seed torch/numpy/random and the dataset's random transforms from ``seed + epoch``, so
    an epoch's data and augmentations do not depend on what ran before it in the process (as a resumed run's
    first epoch)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Any) -> None:
        from monai.data.utils import set_rnd
        from monai.utils import set_determinism

        seed = self.seed + int(engine.state.epoch)
        set_determinism(seed)
        set_rnd(engine.data_loader.dataset, seed)


class RecordLosses:
    """``{iteration: loss}`` of a run."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        self.losses[int(engine.state.iteration)] = float(engine.state.output["loss"])


class StopAfterEpoch:
    """Stop the run at the end of epoch ``epoch``, after the checkpoint handler wrote that epoch."""

    def __init__(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED(once=self.epoch), lambda e: e.terminate())


def _run_workflow(method: str, overrides: dict[str, Any], handlers: list[Any]) -> None:
    """``monai.bundle run training`` in this process, with ``handlers`` as the config's ``extra_handlers``."""
    from monai.bundle import ConfigWorkflow

    from monai_lessmore.ssl.throughput import config_files, shutdown_loader_workers

    wf = ConfigWorkflow(config_file=[str(f) for f in config_files(method)], run_id="training", logging_file=False,
                        workflow_type=None, **{**overrides, "extra_handlers": handlers})
    wf.initialize()
    try:
        wf.run()
    finally:
        shutdown_loader_workers(wf.parser.get_parsed_content("train_loader"))
        wf.finalize()


def compare_states(a: Any, b: Any, path: str = "") -> dict[str, Any]:
    """Largest relative difference ``||a - b|| / ||b||`` over the tensors of two nested checkpoints, whether all
    are bit-identical, and the first entries that differ in structure or in a non-float value."""
    import torch

    out: dict[str, Any] = {"max_rel_diff": 0.0, "worst": None, "bitwise_equal": True, "mismatch": []}

    def merge(sub: dict[str, Any]) -> None:
        if sub["max_rel_diff"] > out["max_rel_diff"]:
            out["max_rel_diff"], out["worst"] = sub["max_rel_diff"], sub["worst"]
        out["bitwise_equal"] &= sub["bitwise_equal"]
        out["mismatch"] += sub["mismatch"]

    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            out["mismatch"].append(f"{path}: keys differ ({sorted(set(a) ^ set(b), key=str)[:5]})")
        for k in sorted(set(a) & set(b), key=str):
            merge(compare_states(a[k], b[k], f"{path}/{k}"))
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            merge(compare_states(x, y, f"{path}/{i}"))
    elif isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            out["mismatch"].append(f"{path}: {tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}")
        elif not torch.equal(a, b):
            out["bitwise_equal"] = False
            if a.is_floating_point():
                diff = float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))
                out["max_rel_diff"], out["worst"] = diff, path
            else:
                out["mismatch"].append(f"{path}: integer tensor differs")
    elif isinstance(a, float) and isinstance(b, float):
        if a != b:
            out["bitwise_equal"] = False
            diff = abs(a - b) / max(1.0, abs(b))
            if diff > out["max_rel_diff"]:
                out["max_rel_diff"], out["worst"] = diff, path
    elif a != b:
        out["mismatch"].append(f"{path}: {a!r} vs {b!r}"[:200])
    return out


def check_resume(method: str) -> Callable[[Context], dict[str, Any]]:
    def check(ctx: Context) -> dict[str, Any]:
        import torch

        plan = ctx.plan
        batch = _batch(plan, method)
        epochs, seed = 2, 0
        runs = {}
        for name in ("uninterrupted", "interrupted"):
            run_dir = ctx.scratch / f"resume_{method}" / name
            # num_workers 0: persistent loader workers would keep their augmentation state across epochs
            kw = pretrain_overrides(plan, ctx, method, run_dir, max_slices=plan.resume_iterations * batch,
                                    num_workers=0, max_epochs=epochs, save_interval=1, resume="auto", seed=seed)
            losses = RecordLosses()
            if name == "uninterrupted":
                _run_workflow(method, kw, [ReseedEachEpoch(seed), losses])
            else:
                _run_workflow(method, kw, [ReseedEachEpoch(seed), losses, StopAfterEpoch(1)])
                stopped = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
                first = RecordLosses()
                first.losses = dict(losses.losses)
                losses = RecordLosses()
                _run_workflow(method, kw, [ReseedEachEpoch(seed), losses])  # resume="auto": its checkpoint.pt
                losses.losses = {**first.losses, **losses.losses}
                runs["stopped_at_iteration"] = int(stopped["trainer"]["iteration"])
            runs[name] = {"losses": losses.losses,
                          "checkpoint": torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)}
        a, b = runs["interrupted"], runs["uninterrupted"]
        states = compare_states(a["checkpoint"], b["checkpoint"])
        iters = sorted(b["losses"])
        loss_diff = max((abs(a["losses"].get(i, math.nan) - b["losses"][i]) / max(1.0, abs(b["losses"][i]))
                         for i in iters), default=math.nan)
        resumed_iters = [i for i in iters if i > runs["stopped_at_iteration"]]
        passed = (not states["mismatch"] and states["max_rel_diff"] <= RESUME_RTOL and loss_diff <= RESUME_RTOL
                  and sorted(a["losses"]) == iters and bool(resumed_iters)
                  and all(math.isfinite(x) for x in b["losses"].values()))
        return {
            "method": method, "batch_size": batch, "epochs": epochs, "iterations_per_epoch": plan.resume_iterations,
            "stopped_at_iteration": runs["stopped_at_iteration"], "resumed_iterations": resumed_iters,
            "losses_uninterrupted": [b["losses"][i] for i in iters],
            "losses_resumed": [a["losses"].get(i) for i in iters],
            "max_rel_loss_diff": loss_diff, "checkpoint_max_rel_diff": states["max_rel_diff"],
            "checkpoint_worst_entry": states["worst"], "checkpoint_bitwise_equal": states["bitwise_equal"],
            "checkpoint_mismatches": states["mismatch"][:10], "rtol": RESUME_RTOL,
            "compared": "the final checkpoints (model, optimiser, queue, AMP scaler, trainer) and every iteration's loss",
            "determinism": ("monai.utils.set_determinism(seed) at start (cudnn.deterministic=True, benchmark=False); "
                            "torch/numpy/random and the dataset's random transforms re-seeded with seed + epoch at "
                            "every epoch start; num_workers 0; CUBLAS_WORKSPACE_CONFIG="
                            f"{os.environ.get('CUBLAS_WORKSPACE_CONFIG')}; torch.use_deterministic_algorithms not set"),
            "passed": passed,
        }

    return check


# -- torchrun --------------------------------------------------------------------------------------------------------
def _cli_value(v: Any) -> str:
    """``v`` as MONAI's bundle command line reads it back: python-fire parses Python literals (``None``, ``False``,
    lists), not JSON (``null`` and ``false`` would arrive as strings)."""
    return repr(v) if isinstance(v, (list, tuple, dict, bool)) or v is None else str(v)


def _run_process_group(cmd: list[str], *, timeout: float | None, **kwargs: Any) -> int:
    """Run ``cmd`` in a session of its own and return its exit status; on a timeout, an error or an interrupt the
    whole process group is killed (torchrun's workers included), so nothing outlives the check."""
    proc = subprocess.Popen(cmd, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
    try:
        return proc.wait(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group can outlive its leader: workers left behind
        proc.wait()


def check_ddp(method: str, nproc: int) -> Callable[[Context], dict[str, Any]]:
    def check(ctx: Context) -> dict[str, Any]:
        from monai_lessmore.ssl.throughput import config_files

        plan = ctx.plan
        run_dir = ctx.scratch / f"ddp_{method}_np{nproc}"
        kw = pretrain_overrides(plan, ctx, method, run_dir, batch_size=plan.ddp_batch, num_workers=plan.ddp_workers,
                                max_slices=nproc * plan.ddp_batch * plan.ddp_iterations)
        del kw["device"]  # multi_gpu_train.json: cuda:LOCAL_RANK when CUDA is visible, else the CPU
        files = "[" + ",".join(f"'{f}'" for f in config_files(method, "multi_gpu_train.json")) + "]"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "monai.bundle", "run", "training", "--config_file", files]
        for k, v in kw.items():
            cmd += [f"--{k}", _cli_value(v)]
        tmp = ctx.scratch / "tmp"  # torchrun leaves its torchelastic_* folders in TMPDIR: in the scratch folder
        tmp.mkdir(exist_ok=True)
        env = {**os.environ, "TMPDIR": str(tmp)}
        if not plan.device.startswith("cuda"):
            env.update({"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
        log = ctx.out_dir / f"ddp_{method}_np{nproc}.log"
        remaining = signal.getitimer(signal.ITIMER_REAL)[0] or None
        t = time.perf_counter()
        try:
            with open(log, "w") as fh:
                returncode = _run_process_group(cmd, cwd=REPO, env=env, stdout=fh,
                                                timeout=max(1.0, remaining - 2) if remaining else None)
        except subprocess.TimeoutExpired:
            raise CheckTimeout(f"torchrun ran past the budget; its output is in {log.name}") from None
        seconds = time.perf_counter() - t
        tail = log.read_text(errors="replace")[-3000:]
        if returncode:
            raise RuntimeError(f"torchrun exited {returncode} (output in {log.name}):\n{tail}")
        history = json.loads((run_dir / "loss_history.json").read_text())["epoch_loss"]
        import torch

        ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
        finite = bool(history) and all(math.isfinite(x) for x in history)
        per_epoch = int(ckpt["trainer"]["epoch_length"])
        return {
            "method": method, "nproc_per_node": nproc, "backend": "nccl" if plan.device.startswith("cuda") else "gloo",
            "batch_per_process": plan.ddp_batch, "iterations": per_epoch, "seconds_with_start_up": round(seconds, 2),
            "epoch_loss": history, "loss_finite": finite, "log": log.name,
            "sync_bn": bool(plan.device.startswith("cuda") and method != "moco"),
            "passed": finite and per_epoch == plan.ddp_iterations and (run_dir / "encoder.pt").is_file(),
        }

    return check


# -- classification --------------------------------------------------------------------------------------------------
def check_classification(ctx: Context) -> dict[str, Any]:
    import torch
    from monai.bundle import ConfigParser

    from monai_lessmore.resources import bundle_template
    from monai_lessmore.ssl.throughput import StepTimer

    plan = ctx.plan
    data = ctx.need_data()
    parser = ConfigParser()
    parser.read_config(str(bundle_template("lessmore_classification") / "configs" / "train.json"))
    parser.update({"dataset": "medmnist", "npz_file": data["classification_npz"], "image_size": plan.cls_image_size,
                   "batch_size": plan.cls_batch, "max_epochs": 2, "freeze_epochs": 1, "num_runs": 1,
                   "protocol": "runs", "progress_bar": False, "output_dir": str(ctx.scratch / "classification"),
                   "device": plan.device, "num_workers": plan.cls_workers, "seed": 0})
    protocol = parser.get_parsed_content("finetune_protocol")
    timer = StepTimer(warmup=1, batch_key="image")
    protocol.train_handlers.append(timer)  # attached last: its ITERATION_COMPLETED call ends each iteration
    cuda = plan.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    results = protocol.run()
    r = timer.result()
    run = results["runs"][0]
    history = [h["train_loss"] for h in run["history"]]
    finite = r["loss_finite"] and all(math.isfinite(x) for x in history)
    return {
        "image_size": plan.cls_image_size, "batch_size": plan.cls_batch, "epochs": 2, "frozen_epochs": 1,
        "train_images": run["n_train"], "timed_iterations": r["iterations"], "images_per_s": r["images_per_s"],
        "data_wait_fraction": r["data_wait_fraction"], "amp": False,
        "peak_gpu_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "epoch_train_loss": history, "loss_finite": finite, "test": run["test"], "passed": finite,
    }


# -- reduction on the GPU --------------------------------------------------------------------------------------------
def _kept_slices(manifest: Path) -> list[int]:
    import csv

    with open(manifest, newline="") as fh:
        return [int(row["slice_index"]) for row in csv.DictReader(fh) if row["kept"] == "1"]


def check_reduce(method: str) -> Callable[[Context], dict[str, Any]]:
    def check(ctx: Context) -> dict[str, Any]:
        from monai_lessmore.cli.main import main as lessmore

        plan = ctx.plan
        data = ctx.need_data()
        args = ["reduce", data["reduce_volume"], "--config", f"{method}10", "--no-progress"]
        if method == "deepnet":
            args += ["--deepnet-weights", data["deepnet_weights"]]
        legs = {}
        for leg, device in (("device", plan.device), ("cpu", "cpu")):
            out = ctx.scratch / f"reduce_{method}_{leg}"
            t = time.perf_counter()
            code = lessmore([*args, "--output", str(out), "--device", device])
            seconds = time.perf_counter() - t
            if code:
                raise RuntimeError(f"lessmore reduce --device {device} exited {code}")
            legs[leg] = {"seconds": seconds, "kept": _kept_slices(out / "manifest.csv")}
        dev, cpu = legs["device"], legs["cpu"]
        differ = sorted(set(dev["kept"]) ^ set(cpu["kept"]))
        n = plan.volume_slices
        per_unit = dev["seconds"] / (n if method == "deepnet" else n * (n - 1) / 2)
        estimate_h = per_unit * (PETCT_SLICES if method == "deepnet" else PETCT_PAIRS) / 3600
        return {
            "method": method, "preset": f"{method}10", "slices": n, "device": plan.device,
            "kept_device": len(dev["kept"]), "kept_cpu": len(cpu["kept"]), "same_kept_slices": not differ,
            "differing_slices": differ[:50], "seconds_device": dev["seconds"], "seconds_cpu": cpu["seconds"],
            "speedup": cpu["seconds"] / dev["seconds"],
            "petct_estimate_hours": estimate_h, "paper_rtx3090_hours": PAPER_HOURS[method],
            "estimate_note": ("this volume's wall time on --device (reading, rendering and hashing included) "
                              f"scaled to PET-CT's {'slices' if method == 'deepnet' else 'within-volume pairs'}"),
            "passed": not differ,
        }

    return check


# -- the run ---------------------------------------------------------------------------------------------------------
def build_checks(plan: Plan) -> list[tuple[str, Callable[[Context], dict[str, Any]]]]:
    import torch

    checks: list[tuple[str, Callable[[Context], dict[str, Any]]]] = [("setup_data", check_setup_data)]
    checks += [(f"pretrain_{m}", check_pretrain(m)) for m in METHODS]
    checks += [(f"resume_{m}", check_resume(m)) for m in METHODS]
    gpus = torch.cuda.device_count() if plan.device.startswith("cuda") else 0
    for nproc in (1, 2) if gpus >= 2 else (1,):
        checks += [(f"ddp_{m}_np{nproc}", check_ddp(m, nproc)) for m in ("swav", "moco")]
    checks.append(("classification", check_classification))
    checks += [(f"reduce_{m}", check_reduce(m)) for m in REDUCE_METHODS]
    return checks


def _fmt(x: Any, spec: str = ".1f", scale: float = 1.0, unit: str = "") -> str:
    return "-" if x is None else f"{x * scale:{spec}}{unit}"


def figures(r: dict[str, Any]) -> str:
    """The few numbers of a check record that the Markdown table shows."""
    if "error" in r:
        return r["error"].splitlines()[0][:160]
    name = r["name"]
    if name.startswith("pretrain_"):
        wait = "" if r["data_wait_enforced"] else " (not enforced)"
        return (f"{r['images_per_s']:.1f} slices/s, data wait {100 * r['data_wait_fraction']:.1f} %{wait}, peak "
                f"{_fmt(r['peak_gpu_memory_mib'], '.2f', 1 / 1024, ' GiB')}, batch {r['batch_size']}, "
                f"AMP {'on' if r['amp_used'] else 'off'}, last loss {r['losses'][-1]:.4f}")
    if name.startswith("resume_"):
        return (f"checkpoint max rel. diff {r['checkpoint_max_rel_diff']:.1e}, loss {r['max_rel_loss_diff']:.1e} "
                f"(rtol {r['rtol']:.0e}), bitwise {'yes' if r['checkpoint_bitwise_equal'] else 'no'}")
    if name.startswith("ddp_"):
        return (f"{r['backend']}, {r['nproc_per_node']} process(es), {r['iterations']} iterations, "
                f"{r['seconds_with_start_up']:.1f} s with start-up, epoch loss {r['epoch_loss'][-1]:.4f}")
    if name == "classification":
        return (f"{r['images_per_s']:.1f} images/s, peak {_fmt(r['peak_gpu_memory_mib'], '.2f', 1 / 1024, ' GiB')}, "
                f"test AUC {r['test'].get('auc', float('nan')):.3f}")
    if name.startswith("reduce_"):
        same = "same kept slices" if r["same_kept_slices"] else f"{len(r['differing_slices'])} slices differ"
        return (f"{same} ({r['kept_device']}/{r['slices']}); {r['device']} {r['seconds_device']:.2f} s, cpu "
                f"{r['seconds_cpu']:.2f} s; PET-CT estimate {r['petct_estimate_hours']:.1f} h "
                f"(paper {r['paper_rtx3090_hours']:.0f} h)")
    if name == "setup_data":
        return f"{r['volumes']} volumes x {r['slices_per_volume']} slices of {r['size']} px, {r['slices']} slices"
    return ""


def markdown(record: dict[str, Any]) -> str:
    m = record["machine"]
    gpu = ", ".join(m["gpus"]) or "no GPU"
    lines = [f"# gpu_check: {record['mode']}, {gpu}", "",
             f"{record['started']}; torch {m['torch']} (CUDA {m['cuda']}), Python {m['python']}, "
             f"{m['cpu_count']} CPUs; {record['n_failed']} of {len(record['checks'])} checks failed; "
             f"{record['seconds']:.0f} s in all.", "",
             "| check | result | seconds (budget) | figures |", "|---|---|---|---|"]
    for r in record["checks"]:
        lines.append(f"| {r['name']} | {'pass' if r['passed'] else '**FAIL**'} | {r['seconds']:.1f} ({r['budget_s']:.0f}) "
                     f"| {figures(r)} |")
    for note in record["notes"]:
        lines += ["", f"- {note}"]
    return "\n".join(lines) + "\n"


def write_outputs(out_dir: Path, record: dict[str, Any]) -> None:
    from monai_lessmore.utils.files import atomic_write_json, atomic_write_text

    record["n_failed"] = sum(not r["passed"] for r in record["checks"])
    atomic_write_json(out_dir / "gpu_check.json", record)
    atomic_write_text(out_dir / "gpu_check.md", markdown(record))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (64 px, batch 4, 2 iterations, a 20-slice "
                    "volume): the CPU dry run of the same code paths")
    ap.add_argument("--output", default=None, help="folder of gpu_check.json / .md (default: $OUT if set, else "
                    "gpu_check_out)")
    ap.add_argument("--checks", nargs="+", default=None, metavar="NAME", help="run only these checks (setup_data "
                    "always runs); see --list")
    ap.add_argument("--num-workers", type=int, default=None, help="loader workers of the pre-training runs "
                    "(default: min(12, CPUs - 2) on a GPU, 0 with --tiny)")
    ap.add_argument("--time-limit", type=float, default=None, help="seconds for all checks (default 360; 1800 "
                    "with --tiny); a check gets at most what is left")
    ap.add_argument("--keep-data", action="store_true", help="keep the scratch folder (synthetic data, runs)")
    ap.add_argument("--list", action="store_true", help="print the checks and their budgets, run nothing")
    ap.add_argument("--wheel-command", action="store_true", help="print the pip download command for .whl/")
    ns = ap.parse_args(argv)
    if ns.device != "cpu" and not ns.device.startswith("cuda"):
        ap.error(f"--device must be cuda, cuda:N or cpu, got {ns.device!r}")
    if ns.device == "cpu" and not ns.tiny and not (ns.list or ns.wheel_command):
        ap.error("--device cpu needs --tiny: the paper's settings (512 px, batch 128) take hours on a CPU")
    if ns.num_workers is not None and ns.num_workers < 0:
        ap.error(f"--num-workers must be >= 0, got {ns.num_workers}")
    return ns


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    if ns.wheel_command:
        print(wheel_command())
        return 0
    wheels = install_carried_wheels()
    _prepend_path(str(REPO))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # cuBLAS is deterministic in one stream with a fixed workspace (PyTorch's reproducibility notes); set before
    # CUDA starts, for the resume checks
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    plan = Plan.make(ns.device, ns.tiny, ns.num_workers)
    if ns.time_limit is not None:
        plan.time_limit = ns.time_limit
    checks = build_checks(plan)
    if ns.list:
        for name, _ in checks:
            print(f"{name:18s} {plan.budgets.get(name, 0):6.0f} s")
        print(f"{'time limit':18s} {plan.time_limit:6.0f} s")
        return 0
    if ns.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: error: --device cuda, but torch sees no CUDA device (torch.cuda.is_available() is False); "
              "run with --device cpu --tiny for the CPU dry run", file=sys.stderr)
        return 2
    if ns.checks:
        unknown = sorted(set(ns.checks) - {n for n, _ in checks})
        if unknown:
            print(f"gpu_check: error: unknown --checks {unknown}; choose from {[n for n, _ in checks]}",
                  file=sys.stderr)
            return 2
        checks = [(n, f) for n, f in checks if n == "setup_data" or n in ns.checks]
    out_dir = Path(ns.output or os.environ.get("OUT") or "gpu_check_out")
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    ctx = Context(plan=plan, scratch=scratch, out_dir=out_dir)
    mode = f"{ns.device}{' tiny' if ns.tiny else ', the paper settings'}"
    notes = [
        "slices/s counts dataset images (one CT slice); SwAV makes 8 crops of each, MoCo v2 2, SparK 1.",
        f"data-wait target <= {100 * DATA_WAIT_TARGET:.0f} % of step time: "
        + ("enforced (a failure when missed)." if not plan.tiny and plan.device.startswith("cuda")
           else "reported, not enforced in this mode (tiny steps on a CPU)."),
        "AMP is requested by the bundle (amp: true) and used on CUDA only; the classification bundle has no AMP.",
        "dHash has no CUDA path in the package (HASH runs on the CPU): not checked.",
    ]
    if plan.tiny:
        notes.append("--tiny: sizes are not the paper's; timings say nothing about a GPU. The reduce checks compare "
                     f"--device {plan.device} with --device cpu.")
    record: dict[str, Any] = {
        "script": "scripts/gpu_check.py", "mode": mode, "argv": sys.argv[1:] if argv is None else list(argv),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(ns.device), "carried_wheels": wheels, "plan": asdict(plan),
        "checks": [], "notes": notes, "seconds": 0.0, "n_failed": 0,
    }
    # a SIGTERM (a scheduler's stop, ``timeout``) unwinds like Ctrl-C: the scratch folder and every child go
    signal.signal(signal.SIGTERM, _interrupt)
    start = time.perf_counter()
    print(f"gpu_check: {mode}; {len(checks)} checks, time limit {plan.time_limit:.0f} s; output {out_dir}", flush=True)
    try:
        for name, fn in checks:
            left = plan.time_limit - (time.perf_counter() - start)
            budget = min(plan.budgets.get(name, 60.0), left)
            elapsed = time.perf_counter() - start
            if budget < 1:
                r = {"name": name, "budget_s": 0.0, "seconds": 0.0, "passed": False,
                     "error": f"not run: the time limit of {plan.time_limit:.0f} s was reached"}
            else:
                print(f"[{elapsed:6.1f} s] {name} (budget {budget:.0f} s) ...", flush=True)
                r = run_check(name, fn, ctx, budget)
            record["checks"].append(r)
            record["seconds"] = time.perf_counter() - start
            write_outputs(out_dir, record)
            status = "passed" if r["passed"] else "FAILED"
            print(f"[{record['seconds']:6.1f} s] {name} {status} in {r['seconds']:.1f} s: {figures(r)}", flush=True)
    finally:
        if not ns.keep_data:
            shutil.rmtree(scratch, ignore_errors=True)
    print(markdown(record))
    return int(record["n_failed"])


if __name__ == "__main__":
    raise SystemExit(main())
