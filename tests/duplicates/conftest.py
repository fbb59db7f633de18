"""A hand-written reduce run: the files ``lessmore duplicates`` reads, with known duplicates."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest


def write_run(run: Path, volumes: dict[str, np.ndarray], kept: dict[str, int] | None = None,
              sources: dict[str, str] | None = None) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    sources = sources or {n: f"/data/{n}.nii.gz" for n in volumes}
    with open(run / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(("volume", "source", "slice_index", "kept", "hash"))
        for name in sorted(volumes):
            for k, h in enumerate(volumes[name]):
                w.writerow((name, sources[name], k, int(k % 3 == 0), f"{int(h):016x}"))
    summary = {"volumes": {n: {"source": sources[n], "n_slices": len(v),
                               "n_kept": (kept or {}).get(n, (len(v) + 2) // 3)} for n, v in volumes.items()}}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def flip(h: np.ndarray, rng: np.random.Generator, n_bits: int) -> np.ndarray:
    out = h.copy()
    for k in range(len(out)):
        for b in rng.choice(64, size=n_bits, replace=False):
            out[k] ^= np.uint64(1 << int(b))
    return out


@pytest.fixture
def planted_run(tmp_path):
    """Volumes: ``a`` (60 slices), ``a_recon`` (slices 5..54 of a, 2 bits flipped), ``a_crop`` (slices 10..29 of a
    exactly), ``b`` and ``c`` unrelated (random)."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**63, size=60, dtype=np.uint64)
    vols = {
        "a": a,
        "a_recon": flip(a[5:55], rng, 2),
        "a_crop": a[10:30].copy(),
        "b": rng.integers(0, 2**63, size=40, dtype=np.uint64),
        "c": rng.integers(0, 2**63, size=30, dtype=np.uint64),
    }
    return write_run(tmp_path / "run", vols), vols
