"""``lessmore duplicates RUN_DIR`` on hand-written runs: pairs, offsets, groups, outputs, errors."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from monai_lessmore.cli.main import main
from monai_lessmore.duplicates.run import DuplicatesError, load_run, run_duplicates, scope_keys
from monai_lessmore.duplicates.search import brute_force_pairs
from monai_lessmore.duplicates.volumes import DUPLICATE_COLUMNS, VolumeSet, duplicate_groups, find_duplicates, volume_pairs

from .conftest import flip, write_run


def _rows(run):
    with open(run / "duplicates.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_cli_finds_planted_duplicates(planted_run, capsys):
    run, _ = planted_run
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main(["duplicates", str(run)]) == 0
    out = capsys.readouterr().out
    rows = _rows(run)
    assert list(rows[0]) == list(DUPLICATE_COLUMNS)
    got = {(r["volume_a"], r["volume_b"]): r for r in rows}
    assert set(got) == {("a", "a_crop"), ("a", "a_recon"), ("a_crop", "a_recon")}
    r = got[("a", "a_recon")]
    assert int(r["offset"]) == -5  # a_recon[k] is a[k + 5]
    assert float(r["fraction_b"]) == 1.0 and float(r["fraction_a"]) == pytest.approx(50 / 60)
    assert float(r["median_distance"]) == 2.0
    assert int(got[("a", "a_crop")]["offset"]) == -10 and float(got[("a", "a_crop")]["median_distance"]) == 0.0
    summary = json.loads((run / "duplicates.json").read_text())
    assert summary["groups"] == [{"keep": "a", "drop": ["a_crop", "a_recon"]}]
    # kept slices of the dropped volumes, as the hand-written summary gives them: ceil(20/3) + ceil(50/3)
    assert summary["removed_kept_slices"] == 7 + 17
    assert summary["kept_slices_after_duplicates"] == summary["kept_slices"] - 24
    assert "3 duplicate volume pairs" in out and "removes 24 of the" in out
    assert "1 group: " in out and "drops 2 volumes;" in out
    for name, data in before.items():  # inputs untouched, no temporary files left
        assert (run / name).read_bytes() == data
    assert sorted(p.name for p in run.iterdir()) == sorted([*before, "duplicates.csv", "duplicates.json"])


def test_min_fraction_and_threshold(planted_run):
    run, _ = planted_run
    # with threshold 1 the recon (2 bits flipped per slice) no longer matches
    s = run_duplicates(run, threshold=1)
    assert {(r["volume_a"], r["volume_b"]) for r in s["rows"]} == {("a", "a_crop")}
    s = run_duplicates(run, threshold=6, min_fraction=1.0)
    # a_crop is fully inside a and a_recon; a_recon fully matched in a
    assert {(r["volume_a"], r["volume_b"]) for r in s["rows"]} == {("a", "a_crop"), ("a", "a_recon"), ("a_crop", "a_recon")}


def test_scope_folder_separates(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2**63, size=30, dtype=np.uint64)
    vols = {"p1_ct": a, "p1_ct2": flip(a, rng, 1), "p2_ct": a.copy()}
    src = {"p1_ct": str(tmp_path / "p1" / "ct.nii.gz"), "p1_ct2": str(tmp_path / "p1" / "ct2.nii.gz"),
           "p2_ct": str(tmp_path / "p2" / "ct.nii.gz")}
    run = write_run(tmp_path / "run", vols, sources=src)
    every = run_duplicates(run, scope="dataset")
    assert len(every["rows"]) == 3
    study = run_duplicates(run, scope="study")
    assert [(r["volume_a"], r["volume_b"]) for r in study["rows"]] == [("p1_ct", "p1_ct2")]
    assert study["scope_keys"] == {"StudyInstanceUID": 0, "folder": 3}


def test_scope_reads_dicom_tags(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    sources, firsts = [], []
    for series, study in (("s1", "1.2.3"), ("s2", "1.2.3"), ("s3", "9.9.9")):
        d = tmp_path / "patient" / series
        d.mkdir(parents=True)
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = f"1.2.3.4.{len(sources)}"
        ds.StudyInstanceUID, ds.PatientID = study, "P" + study[0]
        ds.save_as(d / "1.dcm", enforce_file_format=True)
        sources.append(str(d))
        firsts.append(str(d / "1.dcm"))
    vs = VolumeSet(["s1", "s2", "s3"], [np.zeros(2, np.uint64)] * 3, sources)
    ids, counts = scope_keys(vs, firsts, "study")
    assert ids[0] == ids[1] != ids[2] and counts == {"StudyInstanceUID": 3, "folder": 0}
    ids, counts = scope_keys(vs, firsts, "patient")
    assert ids[0] == ids[1] != ids[2] and counts["PatientID"] == 3


def test_groups_keeper_rule():
    n = {"x": 10, "y": 30, "z": 30, "w": 5, "u": 7, "v": 7}
    groups = duplicate_groups([("x", "y"), ("z", "x"), ("u", "v")], n)
    # transitive: x~y and x~z join y, z; most slices wins, ties by name
    assert groups == [{"keep": "u", "drop": ["v"]}, {"keep": "y", "drop": ["x", "z"]}]
    assert duplicate_groups([("x", "y"), ("z", "x")], n, present=["x", "z"]) == [{"keep": "z", "drop": ["x"]}]


def test_find_duplicates_equals_brute_force_aggregation():
    """Fractions computed from the fast search equal those from all pairs of hashes."""
    from monai_lessmore.reduction.dhash import hamming_matrix

    rng = np.random.default_rng(4)
    base = rng.integers(0, 2**63, size=25, dtype=np.uint64)
    vols = [flip(base, rng, int(rng.integers(0, 9))) for _ in range(12)]
    vs = VolumeSet([f"v{k:02d}" for k in range(12)], vols)
    found = find_duplicates(vs, threshold=6, min_fraction=0.01)
    dist = hamming_matrix(vs.flat)
    for r in found["rows"]:
        a, b = vs.names.index(r["volume_a"]), vs.names.index(r["volume_b"])
        sub = dist[vs.starts[a]:vs.starts[a + 1], vs.starts[b]:vs.starts[b + 1]] <= 6
        assert r["fraction_a"] == pytest.approx(sub.any(1).mean(), abs=1e-6)
        assert r["fraction_b"] == pytest.approx(sub.any(0).mean(), abs=1e-6)
        assert r["slice_pairs"] == sub.sum()
    pairs = {(r["volume_a"], r["volume_b"]) for r in found["rows"]}
    expect = {(vs.names[a], vs.names[b]) for a in range(12) for b in range(a + 1, 12)
              if (dist[vs.starts[a]:vs.starts[a + 1], vs.starts[b]:vs.starts[b + 1]] <= 6).any()}
    assert pairs == expect


def test_errors_exit_2(tmp_path, planted_run, capsys):
    assert main(["duplicates", str(tmp_path / "nothing")]) == 2
    assert "manifest.csv not found" in capsys.readouterr().err
    run, _ = planted_run
    for args in (["--threshold", "65"], ["--min-fraction", "0"], ["--scope", "site"], ["--workers", "0"]):
        with pytest.raises(SystemExit) as exc:
            main(["duplicates", str(run), *args])
        assert exc.value.code == 2
    (run / "manifest.csv").write_text("volume,source,slice_index,kept,hash\na,/x,0,1,zz\n")
    with pytest.raises(DuplicatesError, match="line 2"):
        load_run(run)
    assert main(["duplicates", str(run)]) == 2
    assert not (run / "duplicates.csv").exists()
    assert not [p for p in os.listdir(run) if p.endswith(".tmp")]


@pytest.mark.slow
def test_dask_local_cluster_same_result(planted_run):
    pytest.importorskip("distributed")
    run, _ = planted_run
    assert main(["duplicates", str(run)]) == 0
    local = (run / "duplicates.csv").read_bytes()
    (run / "duplicates.csv").unlink()
    assert main(["duplicates", str(run), "--dask", "--workers", "2"]) == 0
    assert (run / "duplicates.csv").read_bytes() == local


def test_dask_executor_pieces_with_fake_client():
    """DaskSearch with a client that runs submitted functions in-process: same pairs as the threads."""
    from monai_lessmore.duplicates.run import DaskSearch
    from monai_lessmore.duplicates.search import near_pairs, plan_search

    class Client:
        def scheduler_info(self):
            return {"workers": {"w1": {}, "w2": {}, "w3": {}}}

        def scatter(self, data, broadcast):
            return data

        def submit(self, fn, *args, retries, pure):
            return fn(*args)

        def gather(self, futures):
            return futures

        def cancel(self, futures):
            pass

    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**20, size=3000).astype(np.uint64)  # many near pairs
    vol = rng.integers(0, 30, size=3000)
    plan = plan_search(h, 6, m=4)
    ex = DaskSearch(Client())
    assert ex.n_workers == 3
    a = near_pairs(h, 6, volumes=vol, plan=plan, executor=ex)
    b = near_pairs(h, 6, volumes=vol, plan=plan)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a[0]) > 0


def test_incomplete_run_is_said(planted_run, capsys):
    run, _ = planted_run
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "complete": False, "pending": ["/data/x.nii.gz"]}))
    assert main(["duplicates", str(run)]) == 0
    assert "warning: the reduce run is incomplete (1 volumes pending)" in capsys.readouterr().out
    assert json.loads((run / "duplicates.json").read_text())["warnings"]


def test_volume_pairs_of_millions_of_volumes_do_not_overflow():
    """3 million one-slice volumes (e.g. a 2-D set): ``volume pair * slices`` would pass 2**63; every pair is kept.

    The set is built without its per-volume arrays (only what :func:`volume_pairs` reads), so the test stays fast.
    """
    class Names:
        def __len__(self):
            return n

        def __getitem__(self, k):
            return f"v{k:07d}"

    n = 3_000_000
    vs = object.__new__(VolumeSet)
    vs.names, vs.sources = Names(), [""] * n
    vs.flat = np.ones(n, np.uint64)  # equal hashes with content (0 would be a blank slice)
    vs.hashes = vs.flat.reshape(-1, 1)
    vs.n_slices, vs.volume, vs.slice_index = np.ones(n, np.int64), np.arange(n, dtype=np.int32), np.zeros(n, np.int32)
    i, j = np.array([n - 4, n - 4, n - 3], np.int32), np.array([n - 3, n - 1, n - 1], np.int32)
    rows = volume_pairs(vs, i, j, np.zeros(3, np.uint8))
    assert [(r["volume_a"], r["volume_b"], r["fraction_a"], r["fraction_b"]) for r in rows] == [
        ("v2999996", "v2999997", 1.0, 1.0), ("v2999996", "v2999999", 1.0, 1.0), ("v2999997", "v2999999", 1.0, 1.0)]


def test_blank_slices_do_not_make_volumes_duplicates():
    """Volumes padded with uniform slices (hash 0): two patients do not pair on their padding; a real duplicate
    still pairs, its fractions counted over the slices with content."""
    rng = np.random.default_rng(8)
    a, b = rng.integers(1, 2**63, size=(2, 20), dtype=np.uint64)
    pad = np.zeros(30, dtype=np.uint64)
    vs = VolumeSet(["a", "a_copy", "b"], [np.concatenate([pad, a]), np.concatenate([a, pad[:10]]),
                                          np.concatenate([b, pad])])
    found = find_duplicates(vs, threshold=6)
    assert [(r["volume_a"], r["volume_b"], r["fraction_a"], r["fraction_b"]) for r in found["rows"]] == [
        ("a", "a_copy", 1.0, 1.0)]
    assert found["n_blank_slices"] == 70 and found["n_slice_pairs"] == 20
    i, j, d = brute_force_pairs(vs.flat, 6, volumes=vs.volume)  # every pair, blank ones too
    assert volume_pairs(vs, i, j, d) == found["rows"]
