"""Benchmark of the cross-volume duplicate search (``lessmore duplicates``) on 1,000,000 slice hashes.

Data: the dHashes of the real CT volumes in ``../shared/data/ct`` (or of the manifest given with ``--manifest``),
replicated into synthetic volumes until ``--n`` slices:

* a synthetic *patient* is a real volume's hash sequence, cropped to 60-100 % of its slices at a random start, with
  a persistent change (4-12 bits, the same for every slice: another anatomy) and per-slice noise (0.5-2.5 bits);
* bits are drawn by how often each bit flips between adjacent slices of the real volumes (the unstable bits of
  dHash), so the replicas differ where real slices differ;
* 1 % of the volumes get a planted duplicate: a copy shifted by up to 10 slices, cropped to 70-100 %, with 0.5-2
  bits of noise per slice (another reconstruction of the same scan).

Measured, side by side in one run:

1. ``near_pairs`` (plan + search) on all ``--n`` hashes with ``--threads`` threads, in a fresh process: seconds
   (median of ``--repeats``) and the process's peak resident memory;
2. on a ``--subset``-slice subset (whole volumes): ``near_pairs`` vs the numpy brute force (``brute_force_pairs``),
   checked equal, and vs a BK-tree (imagededup's ``BKTree`` when importable, else a plain BK-tree written here),
   whose queries are timed on ``--bk-queries`` hashes and scaled to all (its result on those checked equal);
3. the numpy brute force on all ``--n`` hashes, timed on ``--brute-rows`` rows against all hashes and scaled by
   rows (the work is linear in rows);
4. how many planted duplicate volume pairs the volume stage finds (``find_duplicates``).

Usage::

    python scripts/bench_duplicates.py [--n 1000000] [--threads 2] [--manifest RUN/manifest.csv]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def real_hashes(manifest: str | None) -> list[np.ndarray]:
    from monai_lessmore.reduction.dhash import hex_to_hash

    if manifest is None:
        from monai_lessmore.cli.reduce import ReduceJob

        data = ROOT.parent / "shared" / "data" / "ct"
        if not data.is_dir():
            sys.exit(f"no real CT at {data}; pass --manifest of a reduce run")
        out = tempfile.mkdtemp(prefix="bench_dups_")
        print(f"hashing the real CT under {data} (lessmore reduce into {out}) ...", flush=True)
        ReduceJob([str(data)], out, {"method": "hash", "threshold": 6}, progress=False).run()
        manifest = os.path.join(out, "manifest.csv")
    per: dict[str, list[str]] = {}
    with open(manifest, newline="") as fh:
        for row in csv.DictReader(fh):
            per.setdefault(row["volume"], []).append(row["hash"])
    return [hex_to_hash(v) for _, v in sorted(per.items())]


def synthesize(bases: list[np.ndarray], n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    allh = np.concatenate(bases)
    vid = np.concatenate([np.full(len(b), k) for k, b in enumerate(bases)])
    bits = ((allh[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)
    same = vid[1:] == vid[:-1]
    q = np.maximum((bits[1:][same] != bits[:-1][same]).mean(0), 0.005)
    q = q / q.sum()
    weights = np.uint64(1) << np.arange(64, dtype=np.uint64)

    def masks(count: int, mean_bits: float) -> np.ndarray:
        flips = rng.random((count, 64)) < np.minimum(0.5, mean_bits * q)
        return (flips.astype(np.uint64) * weights).sum(1).astype(np.uint64)

    out, vols, planted, total, v, base_of = [], [], [], 0, 0, []
    while total < n:
        base = int(rng.integers(len(bases)))
        b = bases[base]
        length = max(1, int(len(b) * rng.uniform(0.6, 1.0)))
        s0 = rng.integers(0, len(b) - length + 1)
        seq = b[s0:s0 + length] ^ masks(1, rng.uniform(4, 12))[0]
        seq = seq ^ masks(len(seq), rng.uniform(0.5, 2.5))
        out.append(seq)
        vols.append(np.full(len(seq), v))
        base_of.append(base)
        v, total = v + 1, total + len(seq)
        if rng.random() < 0.01:
            shift = rng.integers(0, min(10, len(seq)))
            length = max(1, int((len(seq) - shift) * rng.uniform(0.7, 1.0)))
            dup = seq[shift:shift + length] ^ masks(length, rng.uniform(0.5, 2.0))
            out.append(dup)
            vols.append(np.full(len(dup), v))
            base_of.append(base)
            planted.append((v - 1, v))
            v, total = v + 1, total + len(dup)
    h = np.concatenate(out)[:n]
    vol = np.concatenate(vols)[:n].astype(np.int32)
    return h, vol, [p for p in planted if p[1] <= vol[-1]], base_of


def child(path: str, threads: int, repeats: int) -> None:
    """Fresh process: time the full search; print JSON with seconds and peak memory."""
    from monai_lessmore.duplicates.search import near_pairs

    z = np.load(path)
    h, vol = z["h"], z["vol"]
    near_pairs(h[:20000], 6, volumes=vol[:20000], num_threads=threads)  # load the compiled kernels
    times, stats = [], {}
    for _ in range(repeats):
        t = time.perf_counter()
        i, j, d = near_pairs(h, 6, volumes=vol, num_threads=threads, stats=stats)
        times.append(time.perf_counter() - t)
        del i, j, d
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"times": times, "stats": {k: str(v) for k, v in stats.items()}, "peak_mib": peak,
                      "n_pairs": int(near_pairs(h, 6, volumes=vol, num_threads=threads)[0].shape[0])}))


class _BKTree:
    """A plain BK-tree (Burkhard and Keller 1973) on integers with the Hamming distance."""

    def __init__(self, values):
        it = iter(values)
        self.root = (next(it), {})
        for x in it:
            node = self.root
            while True:
                dist = bin(node[0] ^ x).count("1")
                if dist in node[1]:
                    node = node[1][dist]
                else:
                    node[1][dist] = (x, {})
                    break

    def search(self, x, tol):
        found, stack = [], [self.root]
        while stack:
            v, children = stack.pop()
            dist = bin(v ^ x).count("1")
            if dist <= tol:
                found.append((v, dist))
            stack.extend(c for k, c in children.items() if dist - tol <= k <= dist + tol)
        return found


def bk_tree(h: np.ndarray, queries: np.ndarray, tol: int):
    """Build a BK-tree of ``h`` and query ``queries``; returns (kind, build s, query s, hits per query)."""
    try:
        from imagededup.handlers.search.bktree import BKTree

        def hamming(a: str, b: str) -> int:
            return bin(int(a, 16) ^ int(b, 16)).count("1")

        t = time.perf_counter()
        tree = BKTree({str(k): f"{int(x):016x}" for k, x in enumerate(h)}, hamming)
        build = time.perf_counter() - t
        t = time.perf_counter()
        hits = [sorted(int(name) for name, _ in tree.search(f"{int(h[q]):016x}", tol=tol)) for q in queries]
        return "imagededup BKTree", build, time.perf_counter() - t, hits
    except ImportError:
        t = time.perf_counter()
        index: dict[int, list[int]] = {}
        for k, x in enumerate(h.tolist()):
            index.setdefault(x, []).append(k)
        tree = _BKTree(index)
        build = time.perf_counter() - t
        t = time.perf_counter()
        hits = [sorted(k for v, _ in tree.search(int(h[q]), tol) for k in index[v]) for q in queries]
        return "plain BK-tree (imagededup not importable)", build, time.perf_counter() - t, hits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--subset", type=int, default=50_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bk-queries", type=int, default=300)
    ap.add_argument("--brute-rows", type=int, default=4000)
    ap.add_argument("--parts", default="1234", help="which measurements to run (digits 1-4, default all)")
    ap.add_argument("--manifest", default=None, help="manifest.csv of a reduce run of real CT (default: hash ../shared/data/ct)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.child:
        return child(ns.child, ns.threads, ns.repeats)

    bases = real_hashes(ns.manifest)
    h, vol, planted, base_of = synthesize(bases, ns.n)
    print(f"data: {len(h)} hashes in {vol[-1] + 1} volumes from {len(bases)} real volumes "
          f"({sum(map(len, bases))} real slices); {len(planted)} planted duplicate volumes")
    full = float("nan")
    if "1" in ns.parts:
        full = _part1(h, vol, ns)
    if "2" in ns.parts:
        _part2(h, vol, ns)
    if "3" in ns.parts:
        _part3(h, vol, ns, full)
    if "4" in ns.parts:
        _part4(h, vol, planted, base_of, ns)


def _part1(h, vol, ns) -> float:
    tmp = tempfile.NamedTemporaryFile(suffix=".npz", delete=False)
    tmp.close()
    try:
        np.savez(tmp.name, h=h, vol=vol)
        cmd = [sys.executable, __file__, "--child", tmp.name, "--threads", str(ns.threads), "--repeats", str(ns.repeats)]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    finally:
        os.unlink(tmp.name)
    full = float(np.median(res["times"]))
    print(f"[1] near_pairs, {len(h)} hashes, threshold 6, {ns.threads} threads: median {full:.2f} s "
          f"(runs {', '.join(f'{t:.2f}' for t in res['times'])}); {res['n_pairs']} cross-volume pairs "
          f"({res['n_pairs'] / len(h):.2f} per slice); {res['stats']['plan']}; {int(res['stats']['checked']) / 1e6:.0f}M "
          f"candidates; peak memory of the process {res['peak_mib']:.0f} MiB")
    return full


def _part2(h, vol, ns) -> None:
    from monai_lessmore.duplicates.search import brute_force_pairs, near_pairs
    from monai_lessmore.reduction.dhash import _popcount

    cut = int(np.searchsorted(vol, vol[min(ns.subset, len(vol)) - 1], side="left"))
    hs, vs_ = h[:cut], vol[:cut]
    near_pairs(hs[:5000], 6, volumes=vs_[:5000], num_threads=ns.threads)  # load the compiled kernels
    t_mih, t_bf = [], []
    for _ in range(ns.repeats):
        t = time.perf_counter()
        got = near_pairs(hs, 6, volumes=vs_, num_threads=ns.threads)
        t_mih.append(time.perf_counter() - t)
        t = time.perf_counter()
        want = brute_force_pairs(hs, 6, volumes=vs_)
        t_bf.append(time.perf_counter() - t)
    equal = all(np.array_equal(a, b) for a, b in zip(got, want))
    mih, bf = float(np.median(t_mih)), float(np.median(t_bf))
    print(f"[2] subset of {cut} hashes ({vs_[-1] + 1} volumes): near_pairs {mih:.3f} s, numpy brute force {bf:.2f} s "
          f"-> {bf / mih:.0f}x; {len(got[0])} pairs, equal to brute force: {equal}")
    rng = np.random.default_rng(1)
    queries = rng.choice(cut, size=min(ns.bk_queries, cut), replace=False)
    kind, build, query, hits = bk_tree(hs, queries, 6)
    per_query = query / len(queries)
    bk_total = build + per_query * cut
    # check the BK-tree's answers against ours on the sampled queries (all partners within 6, any volume)
    dist_ok = all(sorted(np.flatnonzero(_popcount(hs ^ hs[q]) <= 6).tolist()) == hits[t] for t, q in enumerate(queries))
    print(f"    {kind}: build {build:.1f} s, {1e3 * per_query:.1f} ms per query ({len(queries)} timed, "
          f"answers equal to brute force: {dist_ok}) -> all {cut} queries ~{bk_total:.0f} s -> {bk_total / mih:.0f}x "
          f"near_pairs")


def _part3(h, vol, ns, full: float) -> None:
    from monai_lessmore.reduction.dhash import _popcount

    rows = min(ns.brute_rows, len(h))
    t = time.perf_counter()
    for a in range(0, rows, 50):  # 50 rows x 1M hashes: 400 MB of XOR per step
        d = _popcount(h[a:a + 50, None] ^ h[None, :])
        np.nonzero((d <= 6) & (vol[a:a + 50, None] != vol[None, :]))
    per_row = (time.perf_counter() - t) / rows
    bf_full = per_row * len(h) / 2  # i < j: half of all rows against all
    print(f"[3] numpy brute force, {len(h)} hashes: {1e3 * per_row:.2f} ms per row against all ({rows} rows timed) "
          f"-> ~{bf_full:.0f} s for all pairs, {bf_full / full:.0f}x near_pairs")


def _part4(h, vol, planted, base_of, ns) -> None:
    from monai_lessmore.duplicates.volumes import VolumeSet, find_duplicates

    names = [f"v{k:06d}" for k in range(int(vol[-1]) + 1)]
    starts = np.searchsorted(vol, np.arange(len(names) + 1))
    t = time.perf_counter()
    found = find_duplicates(VolumeSet(names, [h[starts[k]:starts[k + 1]] for k in range(len(names))]),
                            threshold=6, num_threads=ns.threads)
    t_vol = time.perf_counter() - t
    pairs = {(r["volume_a"], r["volume_b"]) for r in found["rows"]}
    want_pairs = {(names[a], names[b]) for a, b in planted}
    others = pairs - want_pairs
    same_base = sum(base_of[int(a[1:])] == base_of[int(b[1:])] for a, b in others)
    print(f"[4] find_duplicates (search + volume pairs) {t_vol:.1f} s: {len(pairs)} duplicate volume pairs at min "
          f"fraction 0.5; planted found {len(want_pairs & pairs)}/{len(want_pairs)}; {len(others)} others, "
          f"{same_base} of them two replicas of the same real volume (near copies when both persistent changes are small)")


if __name__ == "__main__":
    main()
