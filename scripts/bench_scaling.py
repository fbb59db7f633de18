#!/usr/bin/env python
"""How the cost of ``lessmore reduce`` (HASH-6) grows with the number of volumes and with workers, in one run.

For each count of phantom volumes (default 1, 4, 16, 64 of 256x256x60 int16 ``.nii.gz``, sized to finish in
minutes on a small machine) and each executor -- one process (``--workers 1``), a pool of two (``--workers 2``) and
a Dask LocalCluster of two workers (``--dask --workers 2``) -- ``lessmore reduce`` runs in a fresh process, start-up
included; repeated, median. Printed per row: wall seconds, slices per second, and wall seconds per slice with the
one-volume start-up subtracted (constant when the cost per slice is constant).

Usage::

    python scripts/bench_scaling.py [--counts 1 4 16 64] [--slices 60] [--size 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
_OURS = "import sys\nfrom monai_lessmore.cli.main import main\nsys.exit(main(sys.argv[1:]))\n"
EXECUTORS = {"1 process": ["--workers", "1"], "pool of 2": ["--workers", "2"], "dask 2 workers": ["--dask", "--workers", "2"]}


def _wall(args: list[str]) -> float:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    out = tempfile.mkdtemp()
    try:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", _OURS, "reduce", *args, "--method", "hash", "--threshold", "6",
                        "--output", out], check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--counts", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--slices", type=int, default=60)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--executors", nargs="+", default=list(EXECUTORS), choices=list(EXECUTORS))
    args = p.parse_args()
    sys.path.insert(0, str(REPO))
    from monai_lessmore.phantom import write_phantom_dataset

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        files = [str(f) for f in write_phantom_dataset(Path(tmp), n_volumes=max(args.counts),
                                                       slices=(args.slices, args.slices), size=args.size)]
        print(f"volumes: {args.size}x{args.size}x{args.slices} int16 phantom .nii.gz; median of {args.repeat} runs")
        print(f"{'executor':>16} {'volumes':>8} {'wall s':>8} {'slices/s':>9} {'ms/slice after start-up':>24}")
        for name in args.executors:
            base = None
            for n in sorted(args.counts):
                wall = float(np.median([_wall(files[:n] + EXECUTORS[name]) for _ in range(args.repeat)]))
                if base is None:
                    base = (n, wall)
                slices = n * args.slices
                marginal = "" if n == base[0] else f"{1e3 * (wall - base[1]) / ((n - base[0]) * args.slices):.2f}"
                print(f"{name:>16} {n:>8} {wall:>8.2f} {slices / wall:>9.1f} {marginal:>24}", flush=True)


if __name__ == "__main__":
    main()
