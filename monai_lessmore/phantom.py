"""A synthetic CT phantom: the embedded default dataset of the main job (no external data needed).

Each volume is a torso in Hounsfield units whose anatomy changes smoothly along the body axis -- body outline
with a fat layer, spine, liver, kidneys, lungs, heart, bowel gas -- with per-slice acquisition noise. Consecutive
slices are therefore near-duplicates, as in real CT, while slices far apart differ: exactly the redundancy the
paper's reduction removes. Volumes differ in slice count (slice thickness) and body size, so kept fractions vary.

The NIfTI files are written as int16 HU with an LPS-to-RAS affine such that :func:`monai_lessmore.io.load_volume`
returns the generated ``(S, H, W)`` array as stored (truncated to whole HU by the int16 file).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["make_phantom", "write_phantom_dataset",
           "write_phantom_classification"]

AIR, FAT, SOFT, LIVER, KIDNEY, LUNG, BLOOD, BONE, CORTEX, GAS, CONTRAST = -1000, -100, 40, 60, 30, -850, 150, 700, 1200, -950, 300


def _bump(z: np.ndarray, start: float, stop: float) -> np.ndarray:
    """Smooth 0..1..0 profile over ``[start, stop]`` (organ size along the body axis)."""
    t = np.clip((z - start) / (stop - start), 0.0, 1.0)
    return np.sin(np.pi * t) ** 0.6 * ((z > start) & (z < stop))


def make_phantom(
    n_slices: int = 240, size: int = 128, *, seed: int = 0, noise_hu: float = 12.0, n_blobs: int = 60
) -> np.ndarray:
    """Generate one phantom volume.

    Args:
        n_slices: number of axial slices (the same anatomy is covered whatever the count: fewer = thicker).
        size: in-plane size in pixels (square slices).
        seed: random seed (body shape, organ placement, gas bubbles, noise).
        noise_hu: standard deviation of the per-voxel noise in HU.
        n_blobs: number of high-contrast blobs (bowel gas, contrast-filled loops, fat) spread along the body.

    Returns:
        ``(n_slices, size, size)`` float32 array in HU, slices ordered inferior to superior.
    """
    if n_slices < 1 or size < 8:
        raise ValueError(f"need n_slices >= 1 and size >= 8, got n_slices={n_slices}, size={size}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    z_all = np.linspace(0.0, 1.0, n_slices)
    body_a, body_b = 0.80 + 0.08 * rng.random(), 0.58 + 0.06 * rng.random()
    shift = 0.04 * (rng.random(2) - 0.5)
    phase = rng.random(2)
    # bowel loops, vessels and nodules: high-contrast blobs, each spanning a few centimetres of the body axis
    blobs = rng.random((n_blobs, 5))  # x, y, z start, radius, kind
    vol = np.empty((n_slices, size, size), dtype=np.float32)

    def ellipse(cx, cy, ax, by):
        return ((xx - cx - shift[0]) / max(ax, 1e-6)) ** 2 + ((yy - cy - shift[1]) / max(by, 1e-6)) ** 2 <= 1.0

    for k, z in enumerate(z_all):
        sl = np.full((size, size), AIR, dtype=np.float32)
        # body outline breathes slowly along z; a fat layer under the skin
        a = body_a * (0.90 + 0.06 * np.sin(2.0 * np.pi * z) + 0.04 * np.sin(2.0 * np.pi * (5.0 * z + phase[0])))
        b = body_b * (0.92 + 0.04 * np.cos(2.0 * np.pi * z) + 0.04 * np.sin(2.0 * np.pi * (4.0 * z + phase[1])))
        sl[ellipse(0, 0, a, b)] = FAT
        sl[ellipse(0, 0, a - 0.06, b - 0.06)] = SOFT
        # liver (abdomen), kidneys (lower abdomen), lungs and heart (thorax)
        s = _bump(z, 0.15, 0.55)
        if s > 0:
            sl[ellipse(-0.28, -0.05, 0.38 * s, 0.30 * s)] = LIVER
        s = _bump(z, 0.05, 0.35)
        if s > 0:
            for cx in (-0.35, 0.35):
                sl[ellipse(cx, 0.22, 0.12 * s, 0.16 * s)] = KIDNEY
        s = _bump(z, 0.45, 1.0)
        if s > 0:
            for cx in (-0.36, 0.36):
                sl[ellipse(cx, -0.02, 0.26 * s, 0.36 * s)] = LUNG
        s = _bump(z, 0.55, 0.85)
        if s > 0:
            sl[ellipse(0.08, -0.18, 0.22 * s, 0.18 * s)] = BLOOD
        for bx, by, bz, br, kind in blobs:
            start = 0.95 * bz
            s = _bump(z, start, start + 0.05 + 0.1 * br)
            if s > 0:
                r = (0.06 + 0.14 * br) * s
                sl[ellipse(0.9 * (bx - 0.5), 0.6 * (by - 0.5), r, 0.8 * r)] = (GAS, CONTRAST, FAT)[int(kind * 3)]
        # spine: cortical ring around cancellous bone, vertebrae every ~1/12 of the length
        vert = 0.85 + 0.15 * np.cos(2.0 * np.pi * 12.0 * z)
        sl[ellipse(0, 0.42, 0.11 * vert, 0.10 * vert)] = CORTEX
        sl[ellipse(0, 0.42, 0.08 * vert, 0.07 * vert)] = BONE
        vol[k] = sl
    vol += rng.normal(0.0, noise_hu, size=vol.shape).astype(np.float32)
    return vol


def write_phantom_dataset(
    out_dir: str | os.PathLike,
    *,
    n_volumes: int = 4,
    slices: tuple[int, int] = (180, 320),
    size: int = 128,
    seed: int = 0,
) -> list[Path]:
    """Write ``n_volumes`` phantom volumes as ``phantom_XX.nii.gz`` into ``out_dir``.

    Slice counts are spread evenly over ``slices`` (inclusive), with 1 mm in-plane pixels and a slice spacing that
    covers the same 300 mm of anatomy. Existing files of the same name are replaced atomically.

    Returns:
        The written paths.
    """
    import nibabel as nib

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"phantom output {out} exists and is not a directory; choose another path")
    out.mkdir(parents=True, exist_ok=True)
    counts = np.linspace(slices[0], slices[1], n_volumes).round().astype(int)
    paths = []
    for i, n in enumerate(counts):
        vol = make_phantom(int(n), size, seed=seed + i)
        spacing = 300.0 / int(n)
        # LPS view (rows anterior->posterior, columns right->left) stored as (x, y, z) with an LPS->RAS affine
        affine = np.diag([-1.0, -1.0, spacing, 1.0])
        img = nib.Nifti1Image(np.ascontiguousarray(vol.transpose(2, 1, 0)).astype(np.int16), affine)
        img.header.set_xyzt_units("mm")
        path = out / f"phantom_{i:02d}.nii.gz"
        tmp = out / f".{path.name}.tmp.nii.gz"
        nib.save(img, tmp)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def write_phantom_classification(
    path: str | os.PathLike,
    *,
    per_split: tuple[int, int, int] = (32, 16, 32),
    size: int = 32,
    seed: int = 1000,
    n_volumes: int = 4,
) -> Path:
    """Write a labelled 2-D task from phantom volumes as a MedMNIST-format ``.npz`` (no external data needed).

    Class 0: axial slices of the lower part of the body (bottom 40 % of the body axis: pelvis, bowel, kidneys);
    class 1: the upper part (top 40 %: lungs and heart). The slices are min-max rendered to 8 bit per slice (as the
    authors' exported PNGs) and resized to ``size`` x ``size``; classes are balanced in every split, drawn without
    replacement from one shuffled pool of all volumes' slices (so no slice appears twice, but neighbouring slices of
    one volume may fall into different splits). Use it where a real labelled set is not
    at hand (the tiny experiment preset, tests); it is far easier than any clinical task.

    Args:
        path: the ``.npz`` to write (atomically).
        per_split: images per class in the train, val and test splits.
        size: image size in pixels.
        seed: seed of the phantom volumes (other seeds than the pre-training phantom's).
        n_volumes: phantom volumes the slices are drawn from.

    Returns:
        ``path``.
    """
    import torch
    import torch.nn.functional as F

    from monai_lessmore.utils.files import atomic_open

    need = sum(per_split)
    slices_per_volume = max(64, int(np.ceil(need / n_volumes / 0.4)) + 8)
    pools: list[list[np.ndarray]] = [[], []]
    for v in range(n_volumes):
        vol = make_phantom(slices_per_volume, max(64, size), seed=seed + v)
        z = np.linspace(0.0, 1.0, slices_per_volume)
        for label, mask in ((0, z < 0.4), (1, z > 0.6)):
            pools[label].extend(vol[k] for k in np.flatnonzero(mask))
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    order = [rng.permutation(len(p)) for p in pools]
    start = 0
    for split, n in zip(("train", "val", "test"), per_split):
        images, labels = [], []
        for label in (0, 1):
            for k in order[label][start : start + n]:
                hu = pools[label][k]
                lo, hi = float(hu.min()), float(hu.max())
                u8 = np.round(255.0 * (hu - lo) / max(hi - lo, 1e-6))
                t = torch.from_numpy(u8.astype(np.float32))[None, None]
                small = F.interpolate(t, size=(size, size), mode="area")[0, 0].numpy()
                images.append(np.clip(np.round(small), 0, 255).astype(np.uint8))
                labels.append(label)
        arrays[f"{split}_images"] = np.stack(images)
        arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.uint8)[:, None]
        start += n
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out) as fh:
        np.savez(fh, **arrays)
    return out
