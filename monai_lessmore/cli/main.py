"""The ``lessmore`` command line.

``lessmore reduce INPUT... --output DIR`` reduces a dataset on disk (see :mod:`monai_lessmore.cli.reduce`);
``lessmore reduce ... --dask`` / ``--scheduler ADDRESS`` runs it on a Dask cluster
(:mod:`monai_lessmore.cli.dask_backend`); ``lessmore report DIR`` draws figures of a run
(:mod:`monai_lessmore.cli.report`); ``lessmore duplicates DIR`` finds duplicate volumes of a run
(:mod:`monai_lessmore.duplicates.run`); ``lessmore demo`` is the main job on the embedded synthetic phantom (no external
data needed). ``lessmore experiment RECIPE`` runs the paper's experiment from a recipe
(:mod:`monai_lessmore.experiment`). ``lessmore import-checkpoint`` / ``package-bundle`` / ``fetch-bundle`` turn a
pre-training checkpoint into the pre-trained ResNet50 bundle, zip it with its hash, and download it with hash
verification (:mod:`monai_lessmore.cli.bundle`, on :mod:`monai_lessmore.bundletools`).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any, Sequence

# light imports only: the parser is built, and the first volume of `lessmore reduce` starts being read
# (monai_lessmore.cli.readahead), before numpy and nibabel are imported
from monai_lessmore.cli.args import METHOD_NAMES, SLICE_ORDERS, positive_seconds
from monai_lessmore.cli.bundle import add_bundle_parsers, run_fetch_bundle, run_import_checkpoint, run_package_bundle

__all__ = ["main", "build_parser"]


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (0.1 keeps 10 % of each volume), got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _size(text: str) -> tuple[int, int]:
    from monai_lessmore.reduction.preprocess import validate_size

    try:
        parts = [int(v) for v in text.lower().split("x")]
        size = validate_size(parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be HxW or N with positive integers (e.g. 512x512), got {text!r}") from None
    assert size is not None
    return size


def _hamming(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer Hamming distance 0..64, got {text!r}") from None
    if not 0 <= value <= 64:
        raise argparse.ArgumentTypeError(f"must be an integer Hamming distance 0..64, got {text}")
    return value


def _add_reduction_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reduction")
    g.add_argument("--config", default=None, metavar="FILE|PRESET", help="reduction settings from a YAML/JSON file or a shipped preset (hash3, hash6, hash12, everyn10, ssim10, mi10, deepnet10; see configs/reduction); the options below override it")
    g.add_argument("--method", default=None, choices=sorted(set(METHOD_NAMES) | {"none"}), help="similarity method (default: hash)")
    g.add_argument("--threshold", type=float, default=None, help="similarity threshold, inclusive (hash: Hamming distance 0..64, default 6)")
    g.add_argument("--fraction", type=_fraction, default=None, help="keep this fraction of each volume instead, in (0, 1]")
    g.add_argument("--count", type=_positive_int, default=None, help="keep this many slices of each volume instead")
    g.add_argument("--algorithm", choices=("leader", "greedy"), default=None, help="leader (authors' code, default with a threshold) or greedy (paper's text, default with --fraction)")
    g.add_argument("--every-n", type=_positive_int, default=None, help="for --method everyn: keep every n-th slice (default 10)")
    g.add_argument("--window", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None, help="HU window for rendering (default: per-slice min-max, as the authors)")
    g.add_argument("--order", choices=SLICE_ORDERS, default="index", help="slice order: index (default: anatomical; slice folders by numeric index, DICOM by position), filename (slice folders: the authors' string sort) or instance (DICOM: InstanceNumber, as the authors' released data)")
    g.add_argument("--device", default=None, help="cpu (default) or cuda, for ssim/mi/deepnet")
    g.add_argument("--bins", type=_positive_int, default=None, help="histogram bins for mi (default 100)")
    g.add_argument("--deepnet-weights", default=None, help="deepnet: 'imagenet' (default; local torch cache only) or a state-dict file")
    g.add_argument("--mixed-size", type=_size, default=None, metavar="HxW", help="ssim/mi/deepnet: resample the slices of volumes whose slices differ in size to HxW (or N for NxN) before comparing them (default: refuse such volumes)")


def _reducer_args(ns: argparse.Namespace) -> dict[str, Any]:
    """The reducer arguments: ``--config`` (file or preset) overridden by the options given on the command line.

    Raises:
        ValueError, FileNotFoundError: a bad ``--config``.
    """
    from monai_lessmore.reduction.presets import merge_reduction_config

    given = {key: getattr(ns, key) for key in ("method", "threshold", "fraction", "count", "algorithm", "every_n",
                                               "window", "device", "bins", "deepnet_weights", "mixed_size")}
    args: dict[str, Any] = {"method": "hash", "device": "cpu", **merge_reduction_config(ns.config, given)}
    method = args["method"]
    threshold = args.get("threshold")
    if threshold is not None and method == "hash" and float(threshold).is_integer():
        args["threshold"] = int(threshold)
    if method != "mi":
        args.pop("bins", None)
    if method != "deepnet":
        args.pop("deepnet_weights", None)
    if method not in ("ssim", "mi", "deepnet"):
        args.pop("mixed_size", None)
    args.setdefault("algorithm", None)
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lessmore",
        description="Selective reduction of CT slices before self-supervised pre-training (Wolf et al., 2024).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("reduce", help="reduce volumes on disk; writes manifest.csv and summary.json")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="volume file, DICOM series folder, slice folder, or a folder of many volumes")
    p.add_argument("--output", "-o", required=True, help="output folder")
    _add_reduction_args(p)
    p.add_argument("--export", choices=("none", "png", "nifti"), default="none", help="also write the kept slices (default: none)")
    p.add_argument("--workers", type=_positive_int, default=None, help="volumes processed in parallel (default 1); with --dask: worker processes of the local cluster")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--verify-digests", action="store_true", help="on a re-run, read and hash every finished volume to check its record, instead of trusting an unchanged stat of its files (for file systems that do not keep change times)")
    # --- Dask scale-out and report ---
    g = p.add_argument_group("Dask cluster (one task per volume; records, manifest and summary written here by the client)")
    where = g.add_mutually_exclusive_group()
    where.add_argument("--dask", action="store_true", help="run on a local Dask cluster of --workers processes, one thread each")
    where.add_argument("--scheduler", metavar="ADDRESS", default=None, help="run on an existing Dask cluster, e.g. tcp://HOST:8786 (dask-jobqueue: cluster.scheduler_address); inputs must be readable by the workers at the same paths, and with --export the output folder too")
    g.add_argument("--connect-timeout", type=positive_seconds, default=10.0, metavar="SECONDS", help="seconds to wait for --scheduler (default 10)")
    p.add_argument("--report", action="store_true", help="also write the report figures (as `lessmore report DIR`) at the end")

    e = sub.add_parser("experiment", help="the paper's experiment from a recipe: reduce, pre-train, fine-tune per reduction; results.md/.csv and a plot")
    e.add_argument("recipe", metavar="RECIPE", help="a recipe YAML file or a shipped preset: tiny (about a minute, no external data), cpu-small (about half an hour on 2 CPU cores), cpu-long (trained until the loss levels off, under 2 hours on 2 CPU cores), paper (the paper's settings, for a GPU); see configs/experiments")
    e.add_argument("--output", "-o", default=None, help="experiment folder (default: lessmore_experiment_<name>); run the same command again to resume it")
    e.add_argument("--data-root", default=None, metavar="DIR", help="replaces the recipe's data_root (${data_root} in its paths)")
    e.add_argument("--reductions", default=None, metavar="NAMES", help="comma-separated reductions of the recipe to run (default: all), e.g. ALL,HASH-6")
    e.add_argument("--dry-run", action="store_true", help="print the resolved recipe and each stage's state, run nothing")

    d = sub.add_parser("demo", help="main job on the embedded synthetic CT phantom (no external data)")
    d.add_argument("--output", "-o", default="lessmore_demo", help="output folder (default: lessmore_demo)")
    d.add_argument("--volumes", type=_positive_int, default=4, help="phantom volumes to generate (default 4)")
    d.add_argument("--workers", type=_positive_int, default=1)
    d.add_argument("--no-progress", action="store_true")
    d.add_argument("--no-pretrain", action="store_true", help="skip the short SwAV pre-training on the kept slices")
    d.add_argument("--pretrain-epochs", type=_positive_int, default=2, help="epochs of the demo pre-training (default 2)")

    r = sub.add_parser("report", help="figures of a reduce run: first kept slices per method, kept fraction per volume")
    r.add_argument("directory", metavar="DIR", help="the --output folder of a `lessmore reduce` run (holds summary.json)")
    r.add_argument("--methods", default=None, help="comma-separated methods for the slice figure, e.g. hash,everyn,ssim (default: all,everyn,hash and the run's own method)")
    r.add_argument("--volume", default=None, help="example volume's name (default: the first in the manifest)")
    r.add_argument("--output", "-o", default=None, help="slice figure path (default: DIR/report_slices.png); the histogram goes to DIR/report_fractions.png")
    r.add_argument("--slices", type=_positive_int, default=5, help="kept slices shown per method (default 5)")
    r.add_argument("--device", default="cpu", help="cpu or cuda, for ssim/mi/deepnet rows")
    r.add_argument("--deepnet-weights", default="imagenet", help="deepnet row: 'imagenet' (local torch cache only) or a state-dict file")
    # --- duplicate volumes of a reduce run ---
    u = sub.add_parser("duplicates", help="duplicate volumes of a reduce run (same scan twice); writes DIR/duplicates.csv")
    u.add_argument("directory", metavar="RUN_DIR", help="the --output folder of a `lessmore reduce` run (manifest.csv, summary.json)")
    u.add_argument("--threshold", type=_hamming, default=6, help="Hamming distance of two matching slices, inclusive, 0..64 (default 6)")
    u.add_argument("--min-fraction", type=_fraction, default=None, help="two volumes are duplicates when this fraction of the slices of either has a match in the other (default 0.5)")
    u.add_argument("--scope", choices=("dataset", "study", "patient"), default="dataset", help="compare all volumes (default), or only within a study / patient (DICOM StudyInstanceUID / PatientID, else the folder above the series)")
    u.add_argument("--workers", type=_positive_int, default=None, help="threads of the search (default 1); with --dask: worker processes of the local cluster")
    ug = u.add_argument_group("Dask cluster (the search pieces run as tasks; outputs written here by the client)")
    uw = ug.add_mutually_exclusive_group()
    uw.add_argument("--dask", action="store_true", help="run on a local Dask cluster of --workers processes")
    uw.add_argument("--scheduler", metavar="ADDRESS", default=None, help="run on an existing Dask cluster, e.g. tcp://HOST:8786")
    ug.add_argument("--connect-timeout", type=positive_seconds, default=10.0, metavar="SECONDS", help="seconds to wait for --scheduler (default 10)")
    # --- pre-trained ResNet50 bundle: import-checkpoint, package-bundle, fetch-bundle ---
    add_bundle_parsers(sub)
    return parser


def _print_summary(summary: dict[str, Any], out=None) -> None:
    out = sys.stdout if out is None else out
    vols = summary["volumes"]
    if vols:
        width = max(len(n) for n in vols)
        print(f"{'volume':<{width}}  slices    kept  fraction", file=out)
        for name, v in vols.items():
            print(f"{name:<{width}}  {v['n_slices']:6d}  {v['n_kept']:6d}  {100 * v['kept_fraction']:7.1f} %", file=out)
    for name, v in vols.items():
        for w in v.get("warnings", []):
            print(f"warning: {name}: {w}", file=out)
    frac = summary["kept_fraction"]
    total = "n/a" if frac is None else f"{100 * frac:.1f} %"
    print(
        f"kept {summary['n_kept']} of {summary['n_slices']} slices in {summary['n_volumes']} volumes ({total}); "
        f"{len(summary['failures'])} failed",
        file=out,
    )


def _print_failures(summary: dict[str, Any]) -> None:
    """Each failure once, in full (while running, each got one short line)."""
    for f in summary["failures"]:
        print(f"lessmore reduce: failed: {f['source']}: {f['error']}", file=sys.stderr)


def _run_reduce(
    inputs, output, reducer_args, export, workers, order, progress,
    *, dask=False, scheduler=None, connect_timeout=10.0, report=False, verify_digests=False,
) -> int:
    from monai_lessmore.cli.reduce import DiskFullError, OutputLocked, ReduceJob

    if scheduler is not None and workers is not None:
        print("lessmore reduce: error: --workers applies to local runs and --dask; the cluster at --scheduler "
              "has its own workers (scale it, e.g. cluster.scale(...) with dask-jobqueue)", file=sys.stderr)
        return 2
    workers = 1 if workers is None else workers
    try:
        job = ReduceJob(inputs, output, reducer_args, export=export, workers=workers, order=order, progress=progress,
                        verify_digests=verify_digests)
    except ValueError as exc:
        print(f"lessmore reduce: error: {exc}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        if dask or scheduler is not None:
            # connect before anything is written: an unreachable scheduler leaves the output folder untouched
            from monai_lessmore.cli.dask_backend import DaskExecutor, SchedulerUnreachable, dask_client

            try:
                client = stack.enter_context(dask_client(scheduler, n_workers=workers, connect_timeout=connect_timeout))
            except SchedulerUnreachable as exc:
                print(f"lessmore reduce: error: {exc}", file=sys.stderr)
                return 2
            n_workers = len(client.scheduler_info().get("workers", {}))
            print(f"lessmore reduce: Dask cluster {client.scheduler.address} with {n_workers} workers", file=sys.stderr)
            if n_workers == 0:
                print("lessmore reduce: the cluster has no workers yet; volumes wait until workers join", file=sys.stderr)
            job.executor = DaskExecutor(client)
        try:
            summary = job.run()
        except OutputLocked as exc:
            print(f"lessmore reduce: error: {exc}", file=sys.stderr)
            return 2
        except DiskFullError as exc:
            if exc.summary is not None:
                _print_summary(exc.summary)
                _print_failures(exc.summary)
            print(f"lessmore reduce: error: {exc}", file=sys.stderr)
            return 1
    _print_summary(summary)
    print(f"wrote {Path(output) / 'manifest.csv'} and {Path(output) / 'summary.json'}")
    _print_failures(summary)
    if report and summary["volumes"]:
        _run_report(output)
    return 1 if summary["failures"] else 0


def _run_report(directory, **kwargs: Any) -> int:
    from monai_lessmore.cli.report import ReportError, make_report

    try:
        written = make_report(directory, **kwargs)
    except ReportError as exc:
        print(f"lessmore report: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {written['slices']} and {written['fractions']}")
    return 0


def _run_duplicates(ns: argparse.Namespace) -> int:
    from monai_lessmore.duplicates.run import DaskSearch, DuplicatesError, print_summary, run_duplicates
    from monai_lessmore.duplicates.volumes import DEFAULT_MIN_FRACTION

    if ns.scheduler is not None and ns.workers is not None:
        print("lessmore duplicates: error: --workers applies to local runs and --dask; the cluster at --scheduler "
              "has its own workers", file=sys.stderr)
        return 2
    workers = 1 if ns.workers is None else ns.workers
    if not (Path(ns.directory) / "manifest.csv").is_file():
        print(f"lessmore duplicates: error: {Path(ns.directory) / 'manifest.csv'} not found; RUN_DIR must be the "
              "--output folder of a `lessmore reduce` run", file=sys.stderr)
        return 2
    kwargs = dict(threshold=ns.threshold, scope=ns.scope,
                  min_fraction=DEFAULT_MIN_FRACTION if ns.min_fraction is None else ns.min_fraction)
    with contextlib.ExitStack() as stack:
        executor = None
        if ns.dask or ns.scheduler is not None:
            from monai_lessmore.cli.dask_backend import SchedulerUnreachable, dask_client

            try:
                client = stack.enter_context(dask_client(ns.scheduler, n_workers=workers, connect_timeout=ns.connect_timeout))
            except SchedulerUnreachable as exc:
                print(f"lessmore duplicates: error: {exc}", file=sys.stderr)
                return 2
            executor = DaskSearch(client)
            print(f"lessmore duplicates: Dask cluster {client.scheduler.address} with {executor.n_workers} workers",
                  file=sys.stderr)
        try:
            summary = run_duplicates(ns.directory, num_threads=workers, executor=executor, **kwargs)
        except DuplicatesError as exc:
            print(f"lessmore duplicates: error: {exc}", file=sys.stderr)
            return 2
    print_summary(summary, ns.directory)
    return 0


def _run_demo(ns: argparse.Namespace) -> int:
    """The main job on the embedded default: phantom volumes -> HASH-6 reduction -> a short SwAV pre-training
    whose encoder is exported in torchvision ResNet50 key names."""
    import os
    import subprocess

    from monai_lessmore.phantom import write_phantom_dataset

    out = Path(ns.output)
    if out.exists() and not out.is_dir():
        print(f"lessmore demo: error: --output {out} exists and is not a directory", file=sys.stderr)
        return 2
    paths = write_phantom_dataset(out / "phantom", n_volumes=ns.volumes)
    print(f"wrote {len(paths)} synthetic CT volumes to {out / 'phantom'}; reducing with HASH-6 (leader)")
    code = _run_reduce(
        [str(out / "phantom")], str(out / "reduced"), {"method": "hash", "threshold": 6, "algorithm": "leader"},
        "png", ns.workers, "index", not ns.no_progress,
    )
    print(f"kept slices exported as PNG to {out / 'reduced' / 'slices'}")
    if code or ns.no_pretrain:
        return code
    from monai_lessmore.resources import bundle_template

    bundle = bundle_template("lessmore_ssl_pretrain")
    run_dir = (out / "pretrain").resolve()
    encoder = run_dir / "encoder.pt"
    # tiny settings (the paper's are 512 px, batch 128, 800 epochs): a CPU run of about a minute
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--config_file", str(bundle / "configs" / "train.json"),
        "--bundle_root", str(bundle), "--dataset_dir", str((out / "phantom").resolve()),
        "--output_dir", str(run_dir), "--export_path", str(encoder), "--reduction_cache_dir", str(run_dir / "cache"),
        "--max_epochs", str(ns.pretrain_epochs), "--batch_size", "4", "--input_size", "64",
        "--crop_sizes", "[32,16]", "--num_crops", "[2,2]", "--max_slices", "16", "--num_workers", "0",
        "--warmup_epochs", "0", "--progress_bar", "False",
    ]
    print(f"pre-training SwAV for {ns.pretrain_epochs} epochs on 16 of the kept slices (tiny CPU settings) ...",
          flush=True)
    from monai_lessmore.utils.logging import QUIET_WARNINGS_ENV

    res = subprocess.run(cmd, env={**os.environ, **QUIET_WARNINGS_ENV})
    if res.returncode or not encoder.is_file():
        print(f"lessmore demo: pre-training failed (exit {res.returncode}); see the log above", file=sys.stderr)
        return 1
    print(f"exported the pre-trained encoder (torchvision ResNet50 key names) to {encoder}")
    return 0


def _run_experiment(ns: argparse.Namespace) -> int:
    import logging

    from monai_lessmore.experiment import ExperimentError, ExperimentRunner, load_experiment

    if not logging.getLogger().handlers:  # the stages' progress lines (one per epoch of each run) on stderr
        logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(levelname)s - %(message)s")

    try:
        recipe = load_experiment(ns.recipe, data_root=ns.data_root)
        output = ns.output or f"lessmore_experiment_{recipe['name']}"
        names = [n.strip() for n in ns.reductions.split(",") if n.strip()] if ns.reductions else None
        runner = ExperimentRunner(recipe, output, reductions=names, check_paths=not ns.dry_run)
        if ns.dry_run:
            runner.describe()
            return 0
        result = runner.run()
    except ExperimentError as exc:
        print(f"lessmore experiment: error: {exc}", file=sys.stderr)
        return 2
    if result["failures"]:
        print(f"lessmore experiment: {len(result['failures'])} stages failed (listed in {Path(output) / 'results.md'}); "
              "run the same command again to retry them", file=sys.stderr)
        return 1
    return 0


def _import_nibabel_without_pydicom() -> None:
    """Import nibabel with pydicom held back, in a command-line process that has imported neither yet.

    nibabel imports pydicom at once (and pydicom imports ``requests`` and ``tqdm`` where they are installed) only
    to parse DICOM-in-NIfTI header extensions (code 2), which the command line never reads: it reads voxels,
    affine and scaling, and writes headers of its own. Held back, such an extension stays raw bytes
    (``nibabel.nifti1.Nifti1Extension``), and the import takes about 0.2 s less CPU: time that
    ``lessmore reduce`` otherwise takes from the thread inflating its first volume on a two-core machine. pydicom
    itself stays importable (the DICOM reader imports it when a series comes); only nibabel's ``have_dicom`` is
    False in this process. A library user's process is never touched: this runs from :func:`main` alone.
    """
    if "nibabel" in sys.modules or "pydicom" in sys.modules:
        return
    sys.modules["pydicom"] = None  # type: ignore[assignment]  # `import pydicom` raises ImportError meanwhile
    try:
        import nibabel  # noqa: F401
    except ImportError:  # a nibabel that cannot do without pydicom: imported as usual below, afresh
        for name in [m for m in sys.modules if m == "nibabel" or m.startswith("nibabel.")]:
            del sys.modules[name]  # its submodules imported so far saw no pydicom
    finally:
        if "pydicom" in sys.modules and sys.modules["pydicom"] is None:
            del sys.modules["pydicom"]
    import nibabel  # noqa: F401,F811


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lessmore`` console script; returns the exit status."""
    from monai_lessmore.utils.logging import configure_console

    configure_console()
    ns = build_parser().parse_args(argv)
    if ns.command == "reduce":
        from monai_lessmore.cli.readahead import start_reduce_readahead

        read_ahead = start_reduce_readahead(
            ns.inputs, workers=ns.workers, distributed=ns.dask or ns.scheduler is not None, output=ns.output
        )
        _import_nibabel_without_pydicom()
        try:
            try:
                reducer_args = _reducer_args(ns)
            except (ValueError, FileNotFoundError) as exc:
                print(f"lessmore reduce: error: --config: {exc}", file=sys.stderr)
                return 2
            return _run_reduce(
                ns.inputs, ns.output, reducer_args, ns.export, ns.workers, ns.order, not ns.no_progress,
                dask=ns.dask, scheduler=ns.scheduler, connect_timeout=ns.connect_timeout, report=ns.report,
                verify_digests=ns.verify_digests,
            )
        finally:
            if read_ahead:  # not taken (another volume came first, an error): stop it, free its buffer
                from monai_lessmore.utils.gzstream import cancel_readaheads

                cancel_readaheads()
    if ns.command == "report":
        return _run_report(
            ns.directory, methods=ns.methods, volume=ns.volume, output=ns.output, n_show=ns.slices,
            device=ns.device, deepnet_weights=ns.deepnet_weights,
        )
    if ns.command == "duplicates":
        _import_nibabel_without_pydicom()
        return _run_duplicates(ns)
    if ns.command == "import-checkpoint":
        return run_import_checkpoint(ns)
    if ns.command == "package-bundle":
        return run_package_bundle(ns)
    if ns.command == "fetch-bundle":
        return run_fetch_bundle(ns)
    if ns.command == "demo":
        return _run_demo(ns)
    if ns.command == "experiment":
        return _run_experiment(ns)
    raise AssertionError(ns.command)


if __name__ == "__main__":
    sys.exit(main())
