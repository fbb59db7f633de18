"""Time reading training slices: straight from a ``.nii.gz`` volume vs from the filter's slice store, side by side.

Pre-training reads one kept slice per sample, in random order. From a ``.nii.gz`` that means decompressing the
volume up to the slice; with ``SliceReductionFilter(slice_store_dir=...)`` the kept slices were written once,
uncompressed, and a read is one memory-mapped slice. Both paths go through ``LoadSliced`` and must give equal
arrays (checked here too).

    python scripts/bench_slice_loading.py [--volume CT.nii.gz] [--reads 40]

Default volume: the real pancreas DICOM series (``../shared/data/ct/dicom/pancreas_ct``, 134 x 512 x 512)
converted to a temporary ``.nii.gz``; without it, a 512 x 512 phantom.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_CT = Path(os.environ.get("LESSMORE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")) / "ct"


def default_volume(tmp: str) -> tuple[str, str]:
    import nibabel as nib

    from monai_lessmore.io import load_volume

    series = SHARED_CT / "dicom" / "pancreas_ct"
    out = os.path.join(tmp, "volume.nii.gz")
    if series.is_dir():
        vol = load_volume(str(series))
        source = f"{series.name} (real DICOM series, converted)"
        data = vol.array
    else:
        from monai_lessmore.phantom import make_phantom

        data = make_phantom(n_slices=134, size=512)
        source = "phantom 134 x 512 x 512"
    # (S, H, W) -> NIfTI (W, H, S) with an LPS-to-RAS affine, as a converter would write it
    nib.save(nib.Nifti1Image(np.asarray(data).transpose(2, 1, 0).astype(np.int16), np.diag([-1.0, -1, 1, 1])), out)
    return out, source


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volume", default=None, help="a .nii.gz CT volume (default: see above)")
    ap.add_argument("--reads", type=int, default=40, help="random slice reads per side")
    ap.add_argument("--seed", type=int, default=0)
    ns = ap.parse_args(argv)

    from monai_lessmore.data import SliceReductionFilter
    from monai_lessmore.transforms import LoadSliced

    tmp = tempfile.mkdtemp(prefix="bench_slices_")
    path, source = (ns.volume, ns.volume) if ns.volume else default_volume(tmp)
    t0 = time.perf_counter()
    stored = SliceReductionFilter(method="all", slice_store_dir=os.path.join(tmp, "store"))([{"image": path}])
    t_store = time.perf_counter() - t0
    plain = SliceReductionFilter(method="all")([{"image": path}])
    load = LoadSliced("image", render="minmax")
    rng = np.random.default_rng(ns.seed)
    picks = rng.integers(0, len(plain), ns.reads)
    best = {"volume": float("inf"), "store": float("inf")}
    for _ in range(2):  # interleaved, best of two
        for name, items in (("volume", plain), ("store", stored)):
            t = time.perf_counter()
            for k in picks:
                load(dict(items[k]))
            best[name] = min(best[name], time.perf_counter() - t)
    for k in picks[:5]:
        np.testing.assert_array_equal(load(dict(plain[k]))["image"], load(dict(stored[k]))["image"])
    result = {
        "volume": source,
        "slices": len(plain),
        "reads": ns.reads,
        "ms_per_slice_from_nii_gz": round(best["volume"] / ns.reads * 1e3, 2),
        "ms_per_slice_from_store": round(best["store"] / ns.reads * 1e3, 3),
        "speedup": round(best["volume"] / best["store"], 1),
        "store_write_s_incl_reduction": round(t_store, 2),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    main()
