"""Time the batched SSIM, MI and DeepNet similarities against their per-pair references, side by side.

On the same slices of one volume (by default 32 consecutive real CT slices in HU from
``../shared/data/ct/dicom/pancreas_ct`` when present, else synthetic CT-like slices; 32 slices = 496 pairs). The
all-pairs functions do some work once per slice, which each slice's ``(N - 1) / 2`` pairs share: with more slices
(real volumes have 100-600) the per-pair cost falls a little further; ``--n`` changes the count.

(a) :func:`~monai_lessmore.reduction.ssim.pairwise_ssim` vs a Python loop over
    ``skimage.metrics.structural_similarity`` (gaussian_weights, sigma 1.5, population covariance) for all pairs;
(b) :func:`~monai_lessmore.reduction.mi.pairwise_nmi` vs a loop over ``normalized_mutual_information``;
(c) ResNet50 embedding, one forward pass per slice, vs the per-pair approach (two forward passes per pair).

Each side is timed several times, interleaved, and the best run is kept (least disturbed by other processes). The
comparison is per CPU core: run it single-threaded::

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 python scripts/bench_similarity_core.py

(the script also sets these and ``torch.set_num_threads(1)`` itself when run as a program).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # before numpy/torch are imported: one thread for a per-core comparison
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["load_slices", "compare_ssim", "compare_nmi", "compare_deepnet", "petct_estimate"]

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_CT = Path(os.environ.get("LESSMORE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")) / "ct"


#: the paper's PET-CT pre-training dataset (section 2.2) and its reduction times on an RTX 3090 (section 3.2)
PETCT_SLICES = 541_439
PETCT_SLICES_PER_VOLUME = 600
PAPER_GPU_HOURS = {"ssim": 421.0, "mi": 312.0, "deepnet": 6.0}


def petct_estimate(s_per_pair: dict[str, float], s_per_slice_deepnet: float, measured_on: str = "one CPU core") -> dict:
    """Hours for the paper's PET-CT at the measured speed: every pair within each ~600-slice volume (SSIM, MI), or
    one ResNet50 forward pass per slice plus the all-pairs cosine (DeepNet; the cosine is negligible)."""
    volumes = PETCT_SLICES / PETCT_SLICES_PER_VOLUME
    pairs = volumes * PETCT_SLICES_PER_VOLUME * (PETCT_SLICES_PER_VOLUME - 1) / 2
    hours = {name: pairs * t / 3600 for name, t in s_per_pair.items()}
    hours["deepnet"] = PETCT_SLICES * s_per_slice_deepnet / 3600
    return {
        "pairs_within_volumes": int(pairs),
        "measured_on": measured_on,
        "hours": {k: round(v, 1) for k, v in hours.items()},
        "paper_hours_rtx3090": PAPER_GPU_HOURS,
    }


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _interleaved_best(fns: dict[str, Callable[[], object]], repeats: int) -> tuple[dict[str, float], dict]:
    """Run every function ``repeats`` times, round-robin; return the best time and the last result of each."""
    best = {k: float("inf") for k in fns}
    results: dict = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            seconds, results[name] = _timed(fn)
            best[name] = min(best[name], seconds)
    return best, results


def _synthetic(n: int, size: int, seed: int) -> np.ndarray:
    """Smooth CT-like slices in HU (air outside a slowly changing body, noise inside), float32."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size), dtype=np.float32)
    for i in range(n):
        body = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.16 + 0.01 * np.sin(i / 7)).astype(np.float64)
        tissue = 40 + 300 * np.sin(6 * xx + i / 10) * np.cos(5 * yy) + rng.normal(0, 20, (size, size))
        out[i] = np.rint(-1000 * (1 - body) + body * tissue)
    return out


def load_slices(n: int = 32, size: int = 512, seed: int = 0) -> tuple[np.ndarray, str]:
    """``n`` consecutive real CT slices in HU (float32, centre-cropped to ``size``) or synthetic ones.

    Returns:
        ``(slices, source)`` where source names the data used.
    """
    folder = SHARED_CT / "dicom" / "pancreas_ct"
    files = sorted(folder.glob("*.dcm"), key=lambda p: int(p.stem.split("-")[-1])) if folder.is_dir() else []
    if len(files) >= n and size <= 512:
        import pydicom

        start = (len(files) - n) // 2
        slices = []
        for f in files[start : start + n]:
            ds = pydicom.dcmread(f)
            hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            top, left = (hu.shape[0] - size) // 2, (hu.shape[1] - size) // 2
            slices.append(hu[top : top + size, left : left + size])
        return np.stack(slices).astype(np.float32), f"{folder.name} slices {start + 1}..{start + n} (HU)"
    return _synthetic(n, size, seed), "synthetic CT-like slices (HU)"


def _all_pairs(n: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def compare_ssim(slices: np.ndarray, *, repeats: int = 2, device: str = "cpu") -> dict:
    """Seconds per pair of a scikit-image loop and of ``pairwise_ssim`` (float64 and float32) on ``slices``.

    scikit-image is timed on the slices as given (float32 HU computes in float32) and on float64 copies (its most
    exact result, used as the accuracy reference for both of our dtypes).
    """
    from skimage.metrics import structural_similarity

    from monai_lessmore.reduction.ssim import pairwise_ssim

    n = len(slices)
    pairs = _all_pairs(n)
    data_range = float(slices.max() - slices.min())
    as64 = slices.astype(np.float64)
    opts = dict(data_range=data_range, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)

    def loop(vol: np.ndarray) -> np.ndarray:
        out = np.eye(n)
        for i, j in pairs:
            out[i, j] = out[j, i] = structural_similarity(vol[i], vol[j], **opts)
        return out

    fns = {
        "skimage_input_dtype": lambda: loop(slices),
        "skimage_float64": lambda: loop(as64),
        "ours_float64": lambda: pairwise_ssim(slices, data_range=data_range, dtype="float64", device=device),
        "ours_float32": lambda: pairwise_ssim(slices, data_range=data_range, dtype="float32", device=device),
    }
    best, res = _interleaved_best(fns, repeats)
    per_pair = {k: v / len(pairs) for k, v in best.items()}
    ref = res["skimage_float64"]
    return {
        "pairs": len(pairs),
        "input_dtype": str(slices.dtype),
        "s_per_pair": per_pair,
        "max_abs_err_vs_skimage_float64": {
            "ours_float64": float(np.abs(res["ours_float64"] - ref).max()),
            "ours_float32": float(np.abs(res["ours_float32"] - ref).max()),
            "skimage_input_dtype": float(np.abs(res["skimage_input_dtype"] - ref).max()),
        },
        "speedup": {
            "float32_vs_skimage_input_dtype": per_pair["skimage_input_dtype"] / per_pair["ours_float32"],
            "float32_vs_skimage_float64": per_pair["skimage_float64"] / per_pair["ours_float32"],
            "float64_vs_skimage_input_dtype": per_pair["skimage_input_dtype"] / per_pair["ours_float64"],
            "float64_vs_skimage_float64": per_pair["skimage_float64"] / per_pair["ours_float64"],
        },
    }


def compare_nmi(slices: np.ndarray, *, bins: int = 100, repeats: int = 3, device: str = "cpu") -> dict:
    """Seconds per pair of a ``normalized_mutual_information`` loop and of ``pairwise_nmi`` on ``slices``."""
    from skimage.metrics import normalized_mutual_information

    from monai_lessmore.reduction.mi import pairwise_nmi

    n = len(slices)
    pairs = _all_pairs(n)

    def loop() -> np.ndarray:
        out = np.full((n, n), 2.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for i, j in pairs:
                out[i, j] = out[j, i] = normalized_mutual_information(slices[i], slices[j], bins=bins)
        return out

    best, res = _interleaved_best({"skimage": loop, "ours": lambda: pairwise_nmi(slices, bins=bins, device=device)},
                                  repeats)
    per_pair = {k: v / len(pairs) for k, v in best.items()}
    return {
        "pairs": len(pairs),
        "bins": bins,
        "s_per_pair": per_pair,
        "max_abs_err_vs_skimage": float(np.nanmax(np.abs(res["ours"] - res["skimage"]))),
        "speedup": per_pair["skimage"] / per_pair["ours"],
    }


def compare_deepnet(slices: np.ndarray, *, size: int = 224, sample_pairs: int = 3, device: str = "cpu",
                    batch_size: int = 16) -> dict:
    """ResNet50 cost: one forward pass per slice (ours) vs two forward passes per pair (the per-pair approach).

    The per-pair approach is timed on ``sample_pairs`` pairs (two slices through the network, then the cosine) and
    extrapolated to all pairs; the weights do not change the cost, so a randomly initialised network is used.
    """
    import torch

    from monai_lessmore.reduction.deepnet import ResNet50Embedder, pairwise_cosine

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        emb = ResNet50Embedder(weights="random", device=device, batch_size=batch_size, size=size)
    n = len(slices)
    pairs = _all_pairs(n)
    emb.embed(slices[:2])  # warm-up
    t_embed, feats = _timed(lambda: emb.embed(slices))
    t_cos, _ = _timed(lambda: pairwise_cosine(feats))

    def per_pair(i: int, j: int) -> float:
        f = emb.embed(slices[[i, j]])
        return float(torch.nn.functional.cosine_similarity(torch.from_numpy(f[:1]), torch.from_numpy(f[1:])))

    t_pairs, _ = _timed(lambda: [per_pair(i, j) for i, j in pairs[:sample_pairs]])
    s_per_pair_naive = t_pairs / sample_pairs
    ours_total = t_embed + t_cos
    naive_total = s_per_pair_naive * len(pairs)
    return {
        "slices": n,
        "pairs": len(pairs),
        "input_size": size,
        "s_per_slice_embedding": t_embed / n,
        "s_all_pairs_cosine": t_cos,
        "s_per_pair_two_forward_passes": s_per_pair_naive,
        "ours_total_s": ours_total,
        "per_pair_approach_total_s": naive_total,
        "ours_s_per_pair": ours_total / len(pairs),
        "speedup": naive_total / ours_total,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=32, help="slices of one volume (pairs = n(n-1)/2)")
    parser.add_argument("--size", type=int, default=512, help="slice side in pixels")
    parser.add_argument("--bins", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip", nargs="*", default=[], choices=["ssim", "mi", "deepnet"])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    slices, source = load_slices(args.n, args.size)
    results: dict = {"source": source, "shape": list(slices.shape), "torch_threads": torch.get_num_threads(),
                     "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "device": args.device}
    if "ssim" not in args.skip:
        results["ssim"] = compare_ssim(slices, device=args.device)
        print("SSIM", json.dumps(results["ssim"], indent=1), flush=True)
    if "mi" not in args.skip:
        results["mi"] = compare_nmi(slices, bins=args.bins, device=args.device)
        print("MI", json.dumps(results["mi"], indent=1), flush=True)
    if "deepnet" not in args.skip:
        results["deepnet"] = compare_deepnet(slices, device=args.device)
        print("DeepNet", json.dumps(results["deepnet"], indent=1), flush=True)
    if not args.skip:
        on = "one CPU core (1 thread)" if args.device == "cpu" else torch.cuda.get_device_name(torch.device(args.device))
        results["petct_estimate"] = petct_estimate(
            {"ssim": results["ssim"]["s_per_pair"]["ours_float32"], "mi": results["mi"]["s_per_pair"]["ours"]},
            results["deepnet"]["s_per_slice_embedding"],
            measured_on=on,
        )
        print("PET-CT estimate", json.dumps(results["petct_estimate"], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    main()
