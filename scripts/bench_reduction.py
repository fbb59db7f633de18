#!/usr/bin/env python
"""Benchmark of the reduction, side by side against the references, in one run.

1. batched dHash vs ``imagehash.dhash`` on in-memory 512x512 8-bit slices, one thread (target >= 20x, 0 mismatches);
2. reducing a ``.nii.gz`` volume (load + HASH-6, what ``lessmore reduce`` does per volume) vs a bare nibabel load of
   the same file -- raw ``np.asarray(img.dataobj)`` and the usual ``img.get_fdata()`` (target <= 1.3x);
3. peak memory while reducing, in a fresh process, against the volume's in-memory (float32) size (target <= 3x);
4. ``--similarity``: all-pairs SSIM and MI vs loops over scikit-image (target >= 20x per core), ResNet50 cost per slice
   vs per pair, and from these the time the paper's PET-CT reduction (541,439 slices, ~600 per volume) would take on
   one CPU core, next to the paper's 421 h / 312 h / 6 h on an RTX 3090.

Usage::

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 python scripts/bench_reduction.py [--volume PATH]

Without ``--volume`` the largest NIfTI in ``../shared/data/ct/nifti`` is used when present, else a phantom is
written to a temporary folder. Figures go to stdout; copy them to docs/benchmarks.md with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
REPO = HERE.parent


def _best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def default_volumes() -> list[Path]:
    """The largest real NIfTI (256x256 head CT) and a typical 512x512 abdominal CT written from the real DICOM series
    to NIfTI (int16, as scanners export), when ../shared/data is present; else a 512x512 phantom."""
    shared = REPO.parent / "shared" / "data" / "ct"
    out: list[Path] = []
    files = sorted((shared / "nifti").glob("*.nii.gz"), key=lambda p: p.stat().st_size) if shared.is_dir() else []
    if files:
        out.append(files[-1])
    series = shared / "dicom" / "pancreas_ct"
    tmp = Path(tempfile.mkdtemp())
    if series.is_dir():
        import nibabel as nib

        from monai_lessmore.io import load_volume

        vol = load_volume(str(series))
        path = tmp / "pancreas_ct_from_dicom.nii.gz"
        data = np.ascontiguousarray(vol.array.transpose(2, 1, 0)).astype(np.int16)
        nib.save(nib.Nifti1Image(data, np.diag([-1.0, -1.0, 1.0, 1.0])), str(path))
        out.append(path)
    if not out:
        from monai_lessmore.phantom import write_phantom_dataset

        out.extend(write_phantom_dataset(tmp, n_volumes=1, slices=(300, 300), size=512))
    return out


def bench_dhash(n: int, size: int) -> dict:
    from bench_dhash_core import compare

    return compare(n=n, size=size)


def bench_volume(path: Path, repeat: int) -> dict:
    import nibabel as nib

    from monai_lessmore.io import load_volume
    from monai_lessmore.reduction import SliceReducer

    reducer = SliceReducer(method="hash", threshold=6, algorithm="leader")

    def bare():
        np.asarray(nib.load(str(path)).dataobj)

    def bare_fdata():
        nib.load(str(path)).get_fdata()

    def reduce():
        vol = load_volume(str(path))
        reducer.reduce(vol.slices(), rendered=vol.is_uint8_rendered)

    reduce()  # warm caches (imports, file cache) for all
    bare()
    t_bare = _best_of(bare, repeat)
    t_fdata = _best_of(bare_fdata, repeat)
    t_reduce = _best_of(reduce, repeat)
    vol = load_volume(str(path))
    return {
        "volume": str(path),
        "shape": list(vol.array.shape),
        "nibabel_dataobj_s": round(t_bare, 4),
        "nibabel_get_fdata_s": round(t_fdata, 4),
        "load_and_reduce_s": round(t_reduce, 4),
        "ratio_vs_dataobj": round(t_reduce / t_bare, 3),
        "ratio_vs_get_fdata": round(t_reduce / t_fdata, 3),
    }


_MEM_CHILD = r"""
import json, sys, tempfile
import numpy as np
from monai_lessmore.cli.reduce import process_volume
from monai_lessmore.io import load_volume
from monai_lessmore.phantom import write_phantom_dataset

def status(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
path, out = sys.argv[1], sys.argv[2]
# warm-up on a tiny volume: every lazily imported module (torch for the int8 path, ...) is loaded before the baseline
with tempfile.TemporaryDirectory() as warm:
    (tiny,) = write_phantom_dataset(warm, n_volumes=1, slices=(4, 4), size=16)
    process_volume(str(tiny), "warm", {"method": "hash", "threshold": 6}, out, "none", "index")
with open("/proc/self/clear_refs", "w") as fh:  # reset the peak resident size (VmHWM) to the current one
    fh.write("5")
base = status("VmRSS")
process_volume(path, "v", {"method": "hash", "threshold": 6}, out, "none", "index")
peak = status("VmHWM")
shape = load_volume(path).array.shape
import nibabel as nib
stored = int(np.prod(shape)) * nib.load(path).get_data_dtype().itemsize
print(json.dumps({"baseline_bytes": base, "peak_bytes": peak, "shape": shape, "stored_bytes": stored}))
"""


def bench_memory(path: Path) -> dict:
    with tempfile.TemporaryDirectory() as out:
        res = subprocess.run(
            [sys.executable, "-c", _MEM_CHILD, str(path), out], capture_output=True, text=True, check=True
        )
    info = json.loads(res.stdout.strip().splitlines()[-1])
    volume_bytes = int(np.prod(info["shape"])) * 4
    extra = info["peak_bytes"] - info["baseline_bytes"]
    return {
        "volume_float32_mib": round(volume_bytes / 2**20, 1),
        "volume_stored_mib": round(info["stored_bytes"] / 2**20, 1),
        "peak_increase_mib": round(extra / 2**20, 1),
        "ratio": round(extra / volume_bytes, 2),
        "ratio_to_stored": round(extra / info["stored_bytes"], 2),
    }


def bench_similarity(n: int, size: int) -> dict:
    import torch
    from bench_similarity_core import (
        PETCT_SLICES_PER_VOLUME,
        compare_deepnet,
        compare_nmi,
        compare_ssim,
        load_slices,
        petct_estimate,
    )

    torch.set_num_threads(1)
    slices, source = load_slices(n, size)
    ssim = compare_ssim(slices)
    mi = compare_nmi(slices)
    deep = compare_deepnet(slices)
    return {
        "source": source,
        "ssim": ssim,
        "mi": mi,
        "deepnet": deep,
        "petct_estimate": petct_estimate(
            {"ssim": ssim["s_per_pair"]["ours_float32"], "mi": mi["s_per_pair"]["ours"]},
            deep["s_per_slice_embedding"],
        ),
        "petct_estimate_reference_loops": petct_estimate(
            {"ssim": ssim["s_per_pair"]["skimage_float64"], "mi": mi["s_per_pair"]["skimage"]},
            # per-pair approach: every pair costs two forward passes; pairs per slice = (600 - 1) / 2
            deep["s_per_pair_two_forward_passes"] * (PETCT_SLICES_PER_VOLUME - 1) / 2,
            measured_on="one CPU core (scikit-image loops, two forward passes per pair)",
        ),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--volume", type=Path, default=None)
    p.add_argument("--slices", type=int, default=64, help="batch size for the dHash comparison")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--similarity", action="store_true", help="also benchmark SSIM, MI and DeepNet (minutes)")
    p.add_argument("--pairs-slices", type=int, default=32, help="slices for the similarity comparison")
    args = p.parse_args()
    paths = [args.volume] if args.volume else default_volumes()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")

    d = bench_dhash(args.slices, args.size)
    print(f"\n[1] dHash of {args.slices} in-memory {args.size}x{args.size} uint8 slices")
    print(json.dumps(d, indent=1))

    for path in paths:
        v = bench_volume(path, args.repeat)
        print(f"\n[2] load + HASH-6 reduce vs bare nibabel load ({Path(v['volume']).name}, shape {v['shape']})")
        print(json.dumps(v, indent=1))
        m = bench_memory(path)
        print(f"\n[3] peak memory increase while reducing {Path(path).name} (fresh process) vs its float32 size")
        print(json.dumps(m, indent=1))

    if args.similarity:
        sim = bench_similarity(args.pairs_slices, args.size)
        print(f"\n[4] SSIM / MI all pairs vs scikit-image loops, ResNet50 per slice vs per pair ({sim['source']})")
        print(json.dumps(sim, indent=1))


if __name__ == "__main__":
    main()
