#!/usr/bin/env python
"""``lessmore reduce`` (HASH-6, one worker) against a bare nibabel load of the same ``.nii.gz`` files, in one run.

Each side runs as its own fresh process, start-up included, the two interleaved and repeated (median):

* reference: ``python -c "[np.asarray(nib.load(f).dataobj) for f in files]"``;
* ours: ``lessmore reduce FILES --workers 1 --method hash --threshold 6 --output DIR``, as it runs by default,
  with ``LESSMORE_COMPILE_AFTER_PIXELS=0`` (the compiled kernels from the first call, paying numba's start-up) and
  with ``LESSMORE_STREAM_GZIP=0`` (each file inflated whole before it is rendered, instead of in a thread while the
  slices already read are rendered).

The package is byte-compiled first (``compileall``), as pip does when it installs a wheel: where
``PYTHONDONTWRITEBYTECODE`` is set, a source checkout would otherwise compile every module it imports in every run
(measured: 0.05 s of CPU and 0.03 s of wall time for ``lessmore reduce``), a cost that neither an installed package
nor the bare load, whose numpy and nibabel are installed, pays.

Printed per run: wall time and CPU time (user + system of the child) of both and their ratios. On a shared machine
the CPU-time ratio is the steadier one; both are printed. Also printed, each in a fresh process:

* start-up: ``lessmore reduce`` on a 4-slice volume, by default and with the compiled kernels from the first call
  (``LESSMORE_COMPILE_AFTER_PIXELS=0``: numba's start-up and kernel-cache loading);
* peak memory while reducing one volume (``bench_reduction.bench_memory``: ``VmHWM`` after resetting it) against the
  volume in its stored dtype;
* random reads of one 512x512 slice from a ``.nii.gz`` without a slice store (``read_slice``), median ms.

``--readers BASELINE`` measures the readers instead, against ``BASELINE``, a checkout of the code before a change
(e.g. ``git archive <commit> | tar -x -C /tmp/base``); each case runs in fresh processes, the baseline and ours
interleaved, repeated (median): wall and CPU seconds (all threads) of the step after a warm-up on a tiny input of
the same kind, and the peak resident memory it added (``VmHWM`` after resetting it) against the stored volume:

* ``process_volume`` (what ``lessmore reduce`` does per volume, HASH-6) of a ``.nrrd`` and a ``.mha`` int16 volume;
* ``load_volume(..., lazy=True)`` of a DICOM series (``../shared/data/ct/dicom/pancreas_ct`` and the JPEG 2000
  ``totalseg_example_ct`` when present, and a synthetic series of ``--slices`` files), ours one file at a time (the
  default) and in two threads; and how long one JPEG 2000 decode keeps another Python thread from running (GIL);
* :class:`~monai_lessmore.data.SliceReductionFilter` (HASH-6) of one ``.nii.gz``.

Usage::

    python scripts/bench_reduce_cli.py [--volumes 4] [--slices 300] [--size 512] [--repeat 3] [--only-cli]
    python scripts/bench_reduce_cli.py --readers /tmp/base [--slices 300] [--size 512] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
_BARE = "import sys, numpy as np, nibabel as nib\nfor f in sys.argv[1:]:\n    np.asarray(nib.load(f).dataobj)\n"
_OURS = "import sys\nfrom monai_lessmore.cli.main import main\nsys.exit(main(sys.argv[1:]))\n"


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _run(code: str, args: list[str], **env: str) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of ``python -c code args`` in a fresh process (``env``: extra
    environment variables)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *args], check=True, env={**_env(), **env}, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def bench_cli(files: list[str], repeat: int) -> dict:
    """The bare load, ``lessmore reduce`` as it runs by default, and ``lessmore reduce`` with its compiled kernels
    from the first call (``LESSMORE_COMPILE_AFTER_PIXELS=0``), interleaved, each in a fresh process."""
    rows = []
    reduce_args = ["reduce", *files, "--workers", "1", "--method", "hash", "--threshold", "6", "--output"]
    for _ in range(repeat):
        outs = [tempfile.mkdtemp() for _ in range(3)]
        try:
            bare = _run(_BARE, files)
            ours = _run(_OURS, [*reduce_args, outs[0]])
            compiled = _run(_OURS, [*reduce_args, outs[1]], LESSMORE_COMPILE_AFTER_PIXELS="0")
            first = _run(_OURS, [*reduce_args, outs[2]], LESSMORE_STREAM_GZIP="0")
        finally:
            for out in outs:
                shutil.rmtree(out, ignore_errors=True)
        rows.append({"bare_wall_s": bare[0], "bare_cpu_s": bare[1], "ours_wall_s": ours[0], "ours_cpu_s": ours[1],
                     "compiled_wall_s": compiled[0], "compiled_cpu_s": compiled[1],
                     "read_first_wall_s": first[0], "read_first_cpu_s": first[1],
                     "ratio_wall": ours[0] / bare[0], "ratio_cpu": ours[1] / bare[1],
                     "ratio_cpu_compiled": compiled[1] / bare[1], "ratio_wall_read_first": first[0] / bare[0]})
    med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    return {"runs": rows, "median": med}


def bench_startup(tiny: str, repeat: int) -> dict:
    """``lessmore reduce`` of a 4-slice volume as it runs by default (numpy kernels: the work is too small to pay
    for starting numba) and with the compiled kernels from the first call (``LESSMORE_COMPILE_AFTER_PIXELS=0``:
    numba's start-up), interleaved with the bare ``import numpy, nibabel``."""
    times, compiled, bare = [], [], []
    for _ in range(repeat):
        for sink, env in ((times, {}), (compiled, {"LESSMORE_COMPILE_AFTER_PIXELS": "0"})):
            out = tempfile.mkdtemp()
            try:
                sink.append(_run(_OURS, ["reduce", tiny, "--workers", "1", "--output", out], **env))
            finally:
                shutil.rmtree(out, ignore_errors=True)
        bare.append(_run("import numpy, nibabel", []))
    return {
        "reduce_tiny_wall_s": float(np.median([t[0] for t in times])),
        "reduce_tiny_cpu_s": float(np.median([t[1] for t in times])),
        "reduce_tiny_compiled_cpu_s": float(np.median([t[1] for t in compiled])),
        "import_numpy_nibabel_cpu_s": float(np.median([t[1] for t in bare])),
    }


_READS = r"""
import json, sys, time
import numpy as np
from monai_lessmore.io import read_slice
path, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
idx = rng.integers(0, int(sys.argv[3]), n)
read_slice(path, 0)
times, cpu = [], []
for i in idx:
    t, c = time.perf_counter(), time.process_time()
    read_slice(path, int(i))
    times.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
try:
    import indexed_gzip  # noqa: F401
    have = True
except ImportError:
    have = False
print(json.dumps({"median_ms": 1e3 * float(np.median(times)), "p90_ms": 1e3 * float(np.percentile(times, 90)),
                  "median_cpu_ms": 1e3 * float(np.median(cpu)), "indexed_gzip": have}))
"""


def bench_random_reads(path: str, n_slices: int, n: int = 40) -> dict:
    res = subprocess.run([sys.executable, "-c", _READS, path, str(n), str(n_slices)], capture_output=True,
                         text=True, check=True, env=_env())
    return json.loads(res.stdout.strip().splitlines()[-1])


_READER_CHILD = r"""
import json, sys, time
import monai_lessmore

what, path, warm, out, threads = sys.argv[1:6]

def status(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

def step(p):
    if what == "reduce":
        from monai_lessmore.cli.reduce import process_volume
        process_volume(p, "v", {"method": "hash", "threshold": 6}, out, "none", "index")
    elif what == "filter":
        from monai_lessmore.data import SliceReductionFilter
        SliceReductionFilter(method="hash", threshold=6)([{"image": p}])
    else:
        from monai_lessmore.io import load_volume
        load_volume(p, lazy=True, **({} if threads == "default" else {"num_threads": int(threads)})).slices()

step(warm)  # imports, decoders and compiled kernels loaded before the baseline
with open("/proc/self/clear_refs", "w") as fh:  # reset the peak resident size (VmHWM) to the current one
    fh.write("5")
base = status("VmRSS")
wall, cpu = time.perf_counter(), time.process_time()
step(path)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({"wall_s": wall, "cpu_s": cpu, "peak_mib": (status("VmHWM") - base) / 2**20,
                  "code": monai_lessmore.__file__}))
"""


def _reader_run(code_root: Path, what: str, path: str, warm: str, threads: str = "default") -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(code_root)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    with tempfile.TemporaryDirectory() as out:
        res = subprocess.run([sys.executable, "-c", _READER_CHILD, what, path, warm, out, threads], env=env, cwd=out,
                             capture_output=True, text=True, check=True)
    info = json.loads(res.stdout.strip().splitlines()[-1])
    if not info["code"].startswith(str(code_root)):
        raise RuntimeError(f"the child ran {info['code']}, not the code in {code_root}")
    return info


def bench_readers(baseline: Path, cases: list[tuple[str, str, str, str, float]], repeat: int) -> None:
    """Each case ``(label, what, path, warm, stored MiB)``: the baseline, ours and (for DICOM) ours decoding in two
    threads, interleaved, ``repeat`` times; prints the medians side by side."""
    for label, what, path, warm, stored in cases:
        variants = [("baseline", baseline, "default"), ("ours", REPO, "default")]
        if what == "load":  # ours decodes one file at a time by default
            variants.append(("ours 2 threads", REPO, "2"))
        runs: dict[str, list[dict]] = {name: [] for name, _, _ in variants}
        for _ in range(repeat):
            for name, root, threads in variants:
                runs[name].append(_reader_run(root, what, path, warm, threads))
        med = {name: {k: float(np.median([r[k] for r in rs])) for k in ("wall_s", "cpu_s", "peak_mib")}
               for name, rs in runs.items()}
        base = med["baseline"]
        print(f"[{label}] stored volume {stored:.0f} MiB; median of {repeat}")
        for name, m in med.items():
            walls = ", ".join(f"{r['wall_s']:.2f}" for r in runs[name])
            print(f"  {name:>13}: {m['wall_s']:.2f} s wall (runs {walls}), {m['cpu_s']:.2f} s CPU, "
                  f"+{m['peak_mib']:.0f} MiB peak = {m['peak_mib'] / stored:.2f}x stored"
                  + ("" if name == "baseline" else f"; vs baseline: {m['wall_s'] / base['wall_s']:.2f}x wall, "
                     f"{m['cpu_s'] / base['cpu_s']:.2f}x CPU, {m['peak_mib'] / base['peak_mib']:.2f}x memory"))


def gil_probe(files: list[str], repeat: int = 5) -> dict:
    """Whether decoding one DICOM file lets another Python thread run: the longest pause of a thread that only
    reads the clock, while the main thread sleeps (the GIL released) and while it decodes (median over files)."""
    import threading

    import pydicom

    def longest_pause(fn) -> float:
        gaps: list[float] = []
        done = threading.Event()

        def probe() -> None:
            last = time.perf_counter()
            while not done.is_set():
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        thread = threading.Thread(target=probe)
        thread.start()
        time.sleep(0.01)
        fn()
        done.set()
        thread.join()
        return max(gaps)

    pydicom.dcmread(files[0]).pixel_array  # decoders loaded
    picks = [files[i % len(files)] for i in range(repeat)]
    decode = [longest_pause(lambda f=f: pydicom.dcmread(f).pixel_array) for f in picks]
    sleep = [longest_pause(lambda: time.sleep(0.05)) for _ in picks]
    return {"decode_ms": 1e3 * float(np.median(decode)), "sleep_ms": 1e3 * float(np.median(sleep))}


def reader_cases(tmp: Path, slices: int, size: int) -> list[tuple[str, str, str, str, float]]:
    """Inputs of :func:`bench_readers`: phantom volumes as .nrrd/.mha/.nii.gz and DICOM series, with tiny warm-ups."""
    import itk

    from monai_lessmore.io import load_volume
    from monai_lessmore.phantom import write_phantom_dataset
    from tests.io.conftest import write_series

    (big,) = write_phantom_dataset(tmp / "big", n_volumes=1, slices=(slices, slices), size=size)
    (tiny,) = write_phantom_dataset(tmp / "tiny", n_volumes=1, slices=(4, 4), size=32)
    hu = {name: np.rint(load_volume(str(p)).array).astype(np.int16) for name, p in (("big", big), ("tiny", tiny))}
    stored = hu["big"].nbytes / 2**20
    cases = []
    for ext in (".nrrd", ".mha"):
        for name, arr in hu.items():
            image = itk.image_from_array(np.ascontiguousarray(arr[::-1]))  # (z, y, x), z superior first -> flipped
            itk.imwrite(image, str(tmp / f"{name}{ext}"))
        cases.append((f"reduce {size}x{size}x{slices} int16 {ext}", "reduce", str(tmp / f"big{ext}"),
                      str(tmp / f"tiny{ext}"), stored))
    write_series(tmp / "dcm_tiny", hu["tiny"] + 1024, intercept=-1024.0)
    shared = REPO.parent / "shared" / "data" / "ct" / "dicom" / "pancreas_ct"
    if shared.is_dir():
        cases.append(("load DICOM pancreas_ct (134 files 512x512 uint16)", "load", str(shared),
                      str(tmp / "dcm_tiny"), 134 * 512 * 512 * 2 / 2**20))
    j2k = shared.parent / "totalseg_example_ct"
    if j2k.is_dir():
        cases.append(("load DICOM totalseg_example_ct (20 files 512x512, JPEG 2000)", "load", str(j2k),
                      str(tmp / "dcm_tiny"), 20 * 512 * 512 * 2 / 2**20))
    write_series(tmp / "dcm_big", (hu["big"] + 1024).astype(np.uint16), intercept=-1024.0)
    cases.append((f"load DICOM synthetic ({slices} files {size}x{size} uint16)", "load", str(tmp / "dcm_big"),
                  str(tmp / "dcm_tiny"), stored))
    cases.append((f"SliceReductionFilter {size}x{size}x{slices} int16 .nii.gz", "filter", str(big), str(tiny), stored))
    return cases


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--volumes", type=int, default=4)
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--only-cli", action="store_true", help="only the reduce against the bare load")
    p.add_argument("--readers", type=Path, default=None, metavar="BASELINE",
                   help="benchmark the readers against the code checked out in BASELINE instead")
    args = p.parse_args()
    sys.path.insert(0, str(REPO))
    from monai_lessmore.phantom import write_phantom_dataset

    if args.readers is not None:
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.1f}; "
              f"baseline code: {args.readers.resolve()}")
        j2k = REPO.parent / "shared" / "data" / "ct" / "dicom" / "totalseg_example_ct"
        if j2k.is_dir():
            g = gil_probe(sorted(str(f) for f in j2k.iterdir()))
            print(f"[GIL] longest pause of a clock-reading thread while one JPEG 2000 file of {j2k.name} is decoded: "
                  f"{g['decode_ms']:.0f} ms (while sleeping 50 ms instead: {g['sleep_ms']:.0f} ms)")
        with tempfile.TemporaryDirectory() as tmp:
            bench_readers(args.readers.resolve(), reader_cases(Path(tmp), args.slices, args.size), args.repeat)
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
        return

    import compileall

    compileall.compile_dir(str(REPO / "monai_lessmore"), quiet=1)  # see the module docstring
    try:
        import isal  # noqa: F401
        gz = "isal"
    except ImportError:
        gz = "zlib"
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.1f}, "
          f"gzip via {gz}")
    with tempfile.TemporaryDirectory() as tmp:
        files = [str(f) for f in write_phantom_dataset(Path(tmp) / "v", n_volumes=args.volumes,
                                                       slices=(args.slices, args.slices), size=args.size)]
        (tiny,) = write_phantom_dataset(Path(tmp) / "t", n_volumes=1, slices=(4, 4), size=32)
        mib = sum(os.path.getsize(f) for f in files) / 2**20
        print(f"{len(files)} phantom volumes {args.size}x{args.size}x{args.slices} int16, {mib:.0f} MiB of .nii.gz")
        cli = bench_cli(files, args.repeat)
        for r in cli["runs"]:
            print("  run: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()))
        m = cli["median"]
        print(f"[reduce vs bare nibabel load] median wall ratio {m['ratio_wall']:.2f} "
              f"(ours {m['ours_wall_s']:.2f} s, bare {m['bare_wall_s']:.2f} s), median CPU ratio {m['ratio_cpu']:.2f} "
              f"(ours {m['ours_cpu_s']:.2f} s, bare {m['bare_cpu_s']:.2f} s); targets <= 0.8 (8 volumes of 300 slices), <= 0.7 (one of 600); "
              f"with the compiled kernels from the first call: CPU ratio {m['ratio_cpu_compiled']:.2f} "
              f"({m['compiled_cpu_s']:.2f} s); reading each .nii.gz whole before rendering it "
              f"(LESSMORE_STREAM_GZIP=0): wall ratio {m['ratio_wall_read_first']:.2f} ({m['read_first_wall_s']:.2f} s)")
        if args.only_cli:
            return
        s = bench_startup(str(tiny), args.repeat)
        print(f"[start-up] lessmore reduce of a 4-slice volume: {s['reduce_tiny_wall_s']:.2f} s wall, "
              f"{s['reduce_tiny_cpu_s']:.2f} s CPU; with the compiled kernels from the first call "
              f"(LESSMORE_COMPILE_AFTER_PIXELS=0): {s['reduce_tiny_compiled_cpu_s']:.2f} s CPU "
              f"(import numpy + nibabel alone: {s['import_numpy_nibabel_cpu_s']:.2f} s CPU)")
        sys.path.insert(0, str(REPO / "scripts"))
        from bench_reduction import bench_memory

        mem = bench_memory(Path(files[0]))
        print(f"[peak memory] +{mem['peak_increase_mib']:.0f} MiB while reducing one volume of "
              f"{mem['volume_stored_mib']:.0f} MiB stored: {mem['ratio_to_stored']:.2f}x the stored volume "
              "(target <= 1.5x + constant)")
        rd = bench_random_reads(files[0], args.slices)
        print(f"[random slice reads, no slice store] median {rd['median_ms']:.1f} ms wall ({rd['median_cpu_ms']:.1f} ms CPU), "
              f"p90 {rd['p90_ms']:.1f} ms per "
              f"{args.size}x{args.size} slice (indexed_gzip installed: {rd['indexed_gzip']}; target <= 40 ms)")


if __name__ == "__main__":
    main()
