"""Time the per-slice data work of pre-training, side by side: reading, then making the views.

1. Reading a training slice straight from a ``.nii.gz`` volume vs from the filter's slice store.
2. The bundle's view transforms (SwAV multi-crop, MoCo v2, SparK) on a 512 x 512 gray slice: the one-channel path
   (the slice replicated to 3 channels by ``expand``, as ``MakeViewsd`` does) vs the same slice as a contiguous
   3-channel copy (every operation on three equal channels). The views are bit-identical (checked).

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
    result["views_ms_per_slice"] = bench_views(load(dict(stored[len(stored) // 2]))["image"])
    print(json.dumps(result, indent=1))
    return result


def bench_views(image: "np.ndarray", repeats: int = 20) -> dict:
    """ms per slice of each method's view transform: one-channel path vs a contiguous 3-channel copy."""
    import torch
    from monai.bundle import ConfigParser

    configs = REPO_ROOT / "bundles" / "lessmore_ssl_pretrain" / "configs"
    files = {"swav": ["train.json"], "moco": ["train.json", "train_moco.json"], "spark": ["train.json", "train_spark.json"]}
    gray = torch.nn.functional.interpolate(torch.as_tensor(np.asarray(image), dtype=torch.float32)[None] / 255.0,
                                           size=(512, 512), mode="bilinear")[0]
    out = {}
    for method, names in files.items():
        parser = ConfigParser()
        parser.read_config([str(configs / n) for n in names])
        transform = parser.get_parsed_content("view_transform")
        inputs = {"one_channel": gray.expand(3, -1, -1), "three_channels": gray.expand(3, -1, -1).contiguous()}
        best = {k: float("inf") for k in inputs}
        views = {}
        for _ in range(2):
            for name, img in inputs.items():
                transform.set_random_state(seed=0)
                t = time.perf_counter()
                for _ in range(repeats):
                    views[name] = transform(img)
                best[name] = min(best[name], (time.perf_counter() - t) / repeats)
        assert all(torch.equal(a, b) for a, b in zip(views["one_channel"], views["three_channels"]))
        out[method] = {k: round(v * 1e3, 2) for k, v in best.items()}
        out[method]["speedup"] = round(best["three_channels"] / best["one_channel"], 2)
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    main()
