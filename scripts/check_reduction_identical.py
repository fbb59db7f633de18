#!/usr/bin/env python
"""Bit-identity check of the reduction across code changes: run it before and after, compare the two files.

Writes one JSON with, for every input and setting, what ``lessmore reduce`` records per volume (kept indices,
every slice's dHash, threshold) plus a SHA-256 of the 8-bit rendering of every slice and of the float32 array the
reader returns. Inputs: the real CT in ``../shared/data`` (NIfTI, DICOM, slice folder) when present, a 512x512
phantom, and synthetic NIfTI/NRRD/MHA files covering every stored orientation class, int16/uint8/uint16/float32
storage, non-integer ``scl_slope``/``scl_inter``, constant and one-slice volumes.

Usage::

    python scripts/check_reduction_identical.py --write before.json      # on the old commit
    python scripts/check_reduction_identical.py --compare before.json    # on the new one: exits 1 on any difference
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data" / "ct"

SETTINGS = {
    "hash6": {"method": "hash", "threshold": 6},
    "hash3": {"method": "hash", "threshold": 3},
    "hash12_greedy": {"method": "hash", "threshold": 12, "algorithm": "greedy"},
    "hash_frac": {"method": "hash", "fraction": 0.1},
    "hash6_window": {"method": "hash", "threshold": 6, "window": [-1000, 1000]},
    "everyn": {"method": "everyn", "every_n": 10},
    "ssim_frac": {"method": "ssim", "fraction": 0.25},
}


def synthetic_inputs(tmp: Path) -> list[str]:
    import nibabel as nib

    from monai_lessmore.phantom import make_phantom, write_phantom_dataset

    paths = [str(p) for p in write_phantom_dataset(tmp / "phantom", n_volumes=1, slices=(60, 60), size=512)]
    rng = np.random.default_rng(0)
    base = make_phantom(24, 64, seed=3)  # (S, H, W) HU
    xyz = np.ascontiguousarray(base.transpose(2, 1, 0))
    affines = {
        "ras": np.diag([1.0, 1.0, 2.0, 1.0]),
        "lps": np.diag([-1.0, -1.0, 2.0, 1.0]),
        "flip_z": np.diag([1.0, 1.0, -2.0, 1.0]),
        "zyx": np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1]]),
        "coronal": np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 2.0, 0, 0], [0, 0, 0, 1]]),
    }
    for name, aff in affines.items():
        for dtype in ("int16", "float32", "uint8", "uint16"):
            data = xyz.astype(np.float64)
            if dtype == "uint8":
                data = np.clip((data + 1024) / 16, 0, 255)
            elif dtype == "uint16":
                data = data + 1024
            data = np.rint(data).astype(dtype) if dtype != "float32" else (data + rng.normal(0, 3, data.shape)).astype(dtype)
            p = tmp / f"syn_{name}_{dtype}.nii.gz"
            nib.save(nib.Nifti1Image(data, aff), str(p))
            paths.append(str(p))
    # scaled int16 (non-integer slope and intercept), and a plain .nii
    img = nib.Nifti1Image(np.rint(xyz).astype(np.int16), affines["ras"])
    img.header.set_slope_inter(0.5, -1000.25)
    nib.save(img, str(tmp / "syn_scaled.nii.gz"))
    img = nib.Nifti1Image(np.rint(xyz).astype(np.int16), affines["lps"])
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, str(tmp / "syn_scaled_int.nii"))
    const = np.zeros((32, 32, 5), dtype=np.int16)
    const[..., 2] = 7
    nib.save(nib.Nifti1Image(const, np.eye(4)), str(tmp / "syn_const.nii.gz"))
    nib.save(nib.Nifti1Image(np.rint(xyz[..., :1]).astype(np.int16), np.eye(4)), str(tmp / "syn_one.nii.gz"))
    paths += [str(tmp / n) for n in ("syn_scaled.nii.gz", "syn_scaled_int.nii", "syn_const.nii.gz", "syn_one.nii.gz")]
    try:
        import itk

        for ext, dtype in ((".nrrd", np.int16), (".mha", np.float32)):
            image = itk.image_from_array(np.ascontiguousarray(np.rint(base[::-1]).astype(dtype)))
            image.SetSpacing((0.8, 0.8, 2.0))
            p = tmp / f"syn_itk{ext}"
            itk.imwrite(image, str(p))
            paths.append(str(p))
        # every stored orientation class and dtype through ITK's LPS direction matrix (z, y, x arrays)
        zyx = np.ascontiguousarray(base[::-1])
        directions = {
            "flip_z": np.diag([1.0, 1.0, -1.0]),
            "ras": np.diag([-1.0, -1.0, 1.0]),
            "coronal": np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]]),
            "oblique": np.array([[0.96, -0.28, 0], [0.28, 0.96, 0], [0, 0, 1.0]]),
        }
        for (name, direction), (ext, dtype) in zip(directions.items(), (
                (".nrrd", np.int16), (".mha", np.uint16), (".nrrd", np.float64), (".mha", np.int32))):
            data = zyx + (1024 if dtype in (np.uint16, np.int32) else 0)
            if dtype == np.float64:
                data = data + rng.normal(0, 3, data.shape)
            data = data if dtype == np.float64 else np.rint(data)
            image = itk.image_from_array(np.ascontiguousarray(data.astype(dtype)))
            image.SetSpacing((0.8, 0.7, 2.0))
            image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction)))
            p = tmp / f"syn_itk_{name}_{np.dtype(dtype).name}{ext}"
            itk.imwrite(image, str(p))
            paths.append(str(p))
        image = itk.image_from_array(np.clip(np.rint((zyx + 1024) / 16), 0, 255).astype(np.uint8))
        itk.imwrite(image, str(tmp / "syn_itk_uint8.mhd"))
        paths.append(str(tmp / "syn_itk_uint8.mhd"))
    except ImportError:
        pass
    paths += dicom_inputs(tmp, base)
    return paths


def dicom_inputs(tmp: Path, base: np.ndarray) -> list[str]:
    """Synthetic DICOM series: stored uint16 with intercept -1024, int16 without rescale tags, and a series whose
    RescaleSlope/RescaleIntercept change from file to file (non-integer)."""
    sys.path.insert(0, str(REPO))
    from tests.io.conftest import write_series

    hu = np.rint(base).astype(np.int64)
    write_series(tmp / "dcm_u16", (hu + 1024).astype(np.uint16), intercept=-1024.0)
    write_series(tmp / "dcm_norescale", hu.astype(np.int16), slope=None, intercept=None)
    folder = tmp / "dcm_perslice"
    write_series(folder, hu.astype(np.int16))
    import pydicom

    for k, f in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(f)
        ds.RescaleSlope, ds.RescaleIntercept = 1.0 + 0.25 * (k % 3), -0.5 * k
        ds.save_as(f)
    return [str(tmp / n) for n in ("dcm_u16", "dcm_norescale", "dcm_perslice")]


def real_inputs() -> list[str]:
    out: list[str] = []
    if SHARED.is_dir():
        out += sorted(str(p) for p in (SHARED / "nifti").glob("*.nii.gz"))
        out += [str(SHARED / "dicom" / "pancreas_ct"), str(SHARED / "dicom" / "totalseg_example_ct")]
        folder = SHARED / "slices" / "covid19_ct_seg"
        ids = sorted({p.name.rsplit("_", 1)[0] for p in folder.glob("*.jpg")})[:3]
        out += [str(folder / i) for i in ids]
    return out


def digest(arr: np.ndarray) -> str:
    arr = np.ascontiguousarray(arr)
    return hashlib.sha256(str((arr.dtype.str, arr.shape)).encode() + arr.tobytes()).hexdigest()[:16]


def run(sources: list[str], root: Path) -> dict:
    from monai_lessmore.cli.reduce import process_volume
    from monai_lessmore.io import load_volume
    from monai_lessmore.reduction import SliceReducer

    out: dict = {}
    for src in sources:
        key = src.replace(str(root), "<tmp>").replace(str(SHARED), "<shared>")
        vol = load_volume(src)
        entry = {"array": digest(vol.array), "meta": {k: str(vol.meta.get(k)) for k in ("spacing", "stored_dtype")}}
        u8 = SliceReducer().render(vol.slices(), rendered=vol.is_uint8_rendered)
        entry["rendered"] = [digest(s) for s in u8] if isinstance(u8, list) else digest(u8)
        for name, args in SETTINGS.items():
            if name == "ssim_frac" and vol.num_slices > 140:
                continue
            with tempfile.TemporaryDirectory() as d:
                try:
                    rec = process_volume(src, "v", args, d, "none", "index")
                except Exception as err:  # an error is a result too: it must stay the same
                    entry[name] = f"{type(err).__name__}: {str(err).replace(str(root), '<tmp>')}"
                    continue
            entry[name] = {k: rec[k] for k in ("n_slices", "kept", "hashes", "threshold", "params", "warnings")}
        out[key] = json.loads(json.dumps(entry).replace(str(root), "<tmp>"))  # warnings name the folder
        print(key, entry["hash6"]["n_slices"] if isinstance(entry["hash6"], dict) else entry["hash6"], file=sys.stderr)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", type=Path)
    g.add_argument("--compare", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        result = run(real_inputs() + synthetic_inputs(root), root)
    if args.write:
        args.write.write_text(json.dumps(result, indent=1, sort_keys=True))
        print(f"wrote {len(result)} inputs x {len(SETTINGS)} settings to {args.write}")
        return 0
    before = json.loads(args.compare.read_text())
    bad = [k for k in sorted(set(before) | set(result)) if before.get(k) != result.get(k)]
    for k in bad:
        old, new = before.get(k) or {}, result.get(k) or {}
        diff = [f for f in sorted(set(old) | set(new)) if old.get(f) != new.get(f)]
        print(f"DIFFERENT {k}: {diff}")
    print(f"{len(result)} inputs compared: {'all identical' if not bad else f'{len(bad)} differ'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
