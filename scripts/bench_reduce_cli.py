#!/usr/bin/env python
"""``lessmore reduce`` (HASH-6, one worker) against a bare nibabel load of the same ``.nii.gz`` files, in one run.

Each side runs as its own fresh process, start-up included, the two interleaved and repeated (median):

* reference: ``python -c "[np.asarray(nib.load(f).dataobj) for f in files]"``;
* ours: ``lessmore reduce FILES --workers 1 --method hash --threshold 6 --output DIR``.

Printed per run: wall time and CPU time (user + system of the child) of both and their ratios. On a shared machine
the CPU-time ratio is the steadier one; both are printed. Also printed, each in a fresh process:

* start-up: ``lessmore reduce`` on a 4-slice volume (imports, compiled-kernel cache loading);
* peak memory while reducing one volume (``bench_reduction.bench_memory``: ``VmHWM`` after resetting it) against the
  volume in its stored dtype;
* random reads of one 512x512 slice from a ``.nii.gz`` without a slice store (``read_slice``), median ms.

Usage::

    python scripts/bench_reduce_cli.py [--volumes 4] [--slices 300] [--size 512] [--repeat 3]
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


def _run(code: str, args: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of ``python -c code args`` in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *args], check=True, env=_env(), stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def bench_cli(files: list[str], repeat: int) -> dict:
    rows = []
    for _ in range(repeat):
        out = tempfile.mkdtemp()
        try:
            bare = _run(_BARE, files)
            ours = _run(_OURS, ["reduce", *files, "--workers", "1", "--method", "hash", "--threshold", "6",
                                "--output", out])
        finally:
            shutil.rmtree(out, ignore_errors=True)
        rows.append({"bare_wall_s": bare[0], "bare_cpu_s": bare[1], "ours_wall_s": ours[0], "ours_cpu_s": ours[1],
                     "ratio_wall": ours[0] / bare[0], "ratio_cpu": ours[1] / bare[1]})
    med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    return {"runs": rows, "median": med}


def bench_startup(tiny: str, repeat: int) -> dict:
    times = []
    for _ in range(repeat):
        out = tempfile.mkdtemp()
        try:
            times.append(_run(_OURS, ["reduce", tiny, "--workers", "1", "--output", out]))
        finally:
            shutil.rmtree(out, ignore_errors=True)
    bare = [_run("import numpy, nibabel", []) for _ in range(repeat)]
    return {
        "reduce_tiny_wall_s": float(np.median([t[0] for t in times])),
        "reduce_tiny_cpu_s": float(np.median([t[1] for t in times])),
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--volumes", type=int, default=4)
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    sys.path.insert(0, str(REPO))
    from monai_lessmore.phantom import write_phantom_dataset

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
              f"(ours {m['ours_cpu_s']:.2f} s, bare {m['bare_cpu_s']:.2f} s); target <= 1.0, stretch 0.7")
        s = bench_startup(str(tiny), args.repeat)
        print(f"[start-up] lessmore reduce of a 4-slice volume: {s['reduce_tiny_wall_s']:.2f} s wall, "
              f"{s['reduce_tiny_cpu_s']:.2f} s CPU (import numpy + nibabel alone: {s['import_numpy_nibabel_cpu_s']:.2f} s CPU)")
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
