"""`lessmore reduce` end to end: manifest, summary, resume, bad input in a batch, real data with imagehash as oracle."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from monai_lessmore.cli.main import main
from monai_lessmore.cli.reduce import MANIFEST_COLUMNS
from monai_lessmore.io import load_volume
from monai_lessmore.phantom import write_phantom_dataset
from monai_lessmore.reduction import SliceReducer
from tests.conftest import REPO_ROOT, shared_data_path


def read_manifest(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_phantom_dataset(root / "ph", n_volumes=3, slices=(40, 80), size=32)
    return root / "ph"


def test_reduce_writes_manifest_and_summary(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["reduce", str(dataset), "--output", str(out), "--threshold", "6", "--algorithm", "leader", "--no-progress"]) == 0
    rows = read_manifest(out / "manifest.csv")
    assert tuple(rows[0]) == MANIFEST_COLUMNS
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_volumes"] == 3 and summary["failures"] == []
    assert summary["params"]["method"] == "hash" and summary["params"]["threshold"] == 6
    assert summary["n_slices"] == len(rows) == 40 + 60 + 80
    assert summary["n_kept"] == sum(int(r["kept"]) for r in rows)
    for name, v in summary["volumes"].items():
        vol = load_volume(v["source"])
        ref = SliceReducer(threshold=6, algorithm="leader").reduce(vol.array)
        vrows = [r for r in rows if r["volume"] == name]
        assert [int(r["slice_index"]) for r in vrows] == list(range(ref.n_slices))
        assert [i for i, r in enumerate(vrows) if r["kept"] == "1"] == ref.kept.tolist()
        assert [r["hash"] for r in vrows] == ref.hashes
        assert all(len(r["hash"]) == 16 for r in vrows)
        assert v["kept_fraction"] == round(ref.n_kept / ref.n_slices, 6)
    printed = capsys.readouterr().out
    assert "phantom_00" in printed and "kept" in printed


def test_resume_skips_finished_volumes_and_export_is_added(dataset, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert main(["reduce", str(dataset), "-o", str(out), "--no-progress"]) == 0
    first = (out / "manifest.csv").read_text()
    import monai_lessmore.cli.reduce as job

    def boom(*args, **kwargs):
        raise AssertionError("volume processed again")

    monkeypatch.setattr(job, "process_volume", boom)
    assert main(["reduce", str(dataset), "-o", str(out), "--no-progress"]) == 0
    assert (out / "manifest.csv").read_text() == first
    summary = json.loads((out / "summary.json").read_text())
    assert all(v["resumed"] for v in summary["volumes"].values())
    monkeypatch.undo()
    # asking for an export the records do not have redoes the volumes, and writes the PNGs
    assert main(["reduce", str(dataset), "-o", str(out), "--no-progress", "--export", "png"]) == 0
    pngs = sorted((out / "slices").rglob("*.png"))
    assert len(pngs) == json.loads((out / "summary.json").read_text())["n_kept"]
    assert (out / "manifest.csv").read_text() == first


@pytest.mark.skipif(os.name != "posix", reason="records vouch for their digest by stat on POSIX systems only")
def test_resume_trusts_a_settled_unchanged_source_by_its_stat(tmp_path, monkeypatch):
    import shutil

    import monai_lessmore.cli.reduce as job
    import monai_lessmore.data.cache as cache_mod

    src = tmp_path / "in"
    src.mkdir()
    for p in write_phantom_dataset(tmp_path / "ph", n_volumes=2, slices=(12, 16), size=32):
        shutil.copy(p, src / p.name)
    out = tmp_path / "out"
    monkeypatch.setattr(cache_mod, "SETTLED_SECONDS", float("-inf"))  # the inputs count as long unchanged
    assert main(["reduce", str(src), "-o", str(out), "--no-progress"]) == 0
    records = {p.stem: json.loads(p.read_text()) for p in (out / "records").glob("*.json")}
    assert len(records) == 2 and all(r["source_stat"] for r in records.values())

    def no_reads(*args, **kwargs):
        raise AssertionError("a resumed volume was read again")

    with monkeypatch.context() as m:
        m.setattr(job, "content_digest", no_reads)
        m.setattr(job, "process_volume", no_reads)
        assert main(["reduce", str(src), "-o", str(out), "--no-progress"]) == 0
    # a file rewritten in place with the same size and modification time has another change time: read, redone
    victim = src / "phantom_00.nii.gz"
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0xFF  # the gzip trailer's CRC-32: the volume now fails to read
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    if victim.stat().st_ctime_ns == st.st_ctime_ns:
        pytest.skip("this file system does not keep change times apart from modification times")
    calls = []
    real = job.content_digest
    monkeypatch.setattr(job, "content_digest", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    assert main(["reduce", str(src), "-o", str(out), "--no-progress"]) in (0, 1)  # redone: it may fail to read
    assert str(victim) in calls
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["volumes"].get("phantom_00", {}).get("resumed", False)
    assert summary["volumes"]["phantom_01"]["resumed"]
    # --verify-digests: every finished volume is read and hashed again
    calls.clear()
    assert main(["reduce", str(src / "phantom_01.nii.gz"), "-o", str(out), "--no-progress", "--verify-digests"]) == 0
    assert calls == [str(src / "phantom_01.nii.gz")]


@pytest.mark.parametrize("stat", ["x", {}, [], [["a", 1]], None])
def test_a_malformed_record_stat_is_read_and_hashed(tmp_path, monkeypatch, stat):
    import monai_lessmore.cli.reduce as job
    import monai_lessmore.data.cache as cache_mod

    src = write_phantom_dataset(tmp_path / "in", n_volumes=1, slices=(12, 12), size=32)[0]
    out = tmp_path / "out"
    monkeypatch.setattr(cache_mod, "SETTLED_SECONDS", float("-inf"))
    assert main(["reduce", str(src), "-o", str(out), "--no-progress"]) == 0
    (path,) = (out / "records").glob("*.json")
    record = json.loads(path.read_text())
    record["source_stat"] = stat
    path.write_text(json.dumps(record))
    calls = []
    real = job.content_digest
    monkeypatch.setattr(job, "content_digest", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    monkeypatch.setattr(job, "process_volume", lambda *a, **k: pytest.fail("a finished volume was redone"))
    assert main(["reduce", str(src), "-o", str(out), "--no-progress"]) == 0
    assert calls == [str(src)]


def test_no_record_stat_where_change_times_are_not_kept(tmp_path, monkeypatch):
    """A FUSE mount (sshfs, s3fs ...) reports the modification time as the change time: the record cannot vouch."""
    import monai_lessmore.cli.reduce as job
    import monai_lessmore.data.cache as cache_mod

    src = write_phantom_dataset(tmp_path / "in", n_volumes=1, slices=(12, 12), size=32)[0]
    monkeypatch.setattr(cache_mod, "SETTLED_SECONDS", float("-inf"))
    monkeypatch.setattr(job, "change_time_reliable", lambda path: False)
    assert main(["reduce", str(src), "-o", str(tmp_path / "out"), "--no-progress"]) == 0
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "out" / "records").glob("*.json")]
    assert record["source_stat"] is None


def test_no_record_stat_for_a_volume_changed_while_it_was_read(tmp_path, monkeypatch):
    import monai_lessmore.cli.reduce as job
    import monai_lessmore.data.cache as cache_mod

    src = write_phantom_dataset(tmp_path / "in", n_volumes=1, slices=(12, 12), size=32)[0]
    monkeypatch.setattr(cache_mod, "SETTLED_SECONDS", float("-inf"))
    real = job.volume_stat
    seen = []

    def stat_then_touch(path):  # the file changes right after the first stat, before it is read
        result = real(path)
        if not seen:
            seen.append(path)
            os.utime(path, ns=(0, 10**9))
        return result

    monkeypatch.setattr(job, "volume_stat", stat_then_touch)
    assert main(["reduce", str(src), "-o", str(tmp_path / "out"), "--no-progress"]) == 0
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "out" / "records").glob("*.json")]
    assert seen and record["source_stat"] is None


def test_resume_reads_a_source_that_had_not_settled(tmp_path, monkeypatch):
    import monai_lessmore.cli.reduce as job
    import monai_lessmore.data.cache as cache_mod

    src = write_phantom_dataset(tmp_path / "in", n_volumes=1, slices=(12, 12), size=32)[0]
    out = tmp_path / "out"
    monkeypatch.setattr(cache_mod, "SETTLED_SECONDS", 1e9)  # written just now, whatever the machine's speed
    assert main(["reduce", str(src), "-o", str(out), "--no-progress"]) == 0
    (record,) = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert record["source_stat"] is None
    calls = []
    real = job.content_digest
    monkeypatch.setattr(job, "content_digest", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    monkeypatch.setattr(job, "process_volume", lambda *a, **k: pytest.fail("a finished volume was redone"))
    assert main(["reduce", str(src), "-o", str(out), "--no-progress"]) == 0
    assert calls == [str(src)]  # read and hashed to check the record


def test_bad_volume_is_reported_and_the_batch_goes_on(dataset, tmp_path, capsys):
    bad_dir = tmp_path / "mixed"
    bad_dir.mkdir()
    (bad_dir / "truncated.nii.gz").write_bytes(open(dataset / "phantom_00.nii.gz", "rb").read()[:200])
    nan_vol = load_volume(str(dataset / "phantom_01.nii.gz")).array.copy()
    import nibabel as nib

    nan_vol[3, 4, 4] = np.nan
    nib.save(nib.Nifti1Image(nan_vol.transpose(2, 1, 0), np.diag([-1.0, -1, 1, 1])), str(bad_dir / "nan.nii.gz"))
    before = {p: p.read_bytes() for p in bad_dir.iterdir()}
    out = tmp_path / "out"
    code = main(["reduce", str(bad_dir), str(dataset / "phantom_02.nii.gz"), "-o", str(out), "--no-progress"])
    assert code == 1
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["volumes"]) == ["phantom_02"]
    failed = {os.path.basename(f["source"]): f["error"] for f in summary["failures"]}
    assert set(failed) == {"truncated.nii.gz", "nan.nii.gz"}
    assert "NaN/Inf" in failed["nan.nii.gz"]
    assert "truncated.nii.gz" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in bad_dir.iterdir()} == before  # inputs untouched


def test_empty_folder_is_a_failure(tmp_path):
    (tmp_path / "empty").mkdir()
    assert main(["reduce", str(tmp_path / "empty"), "-o", str(tmp_path / "out"), "--no-progress"]) == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_volumes"] == 0 and summary["failures"][0]["source"].endswith("empty")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--threshold", "70"], "threshold must be an integer in 0..64 for HASH, got 70"),
        (["--threshold", "6.5"], "threshold must be an integer in 0..64 for HASH"),
        (["--method", "ssim"], "needs a threshold"),
    ],
)
def test_invalid_settings_exit_2_with_message(dataset, tmp_path, capsys, args, message):
    assert main(["reduce", str(dataset), "-o", str(tmp_path / "o"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("args", "message"), [(["--fraction", "1.5"], "must be in (0, 1]"), (["--fraction", "0"], "must be in (0, 1]"), (["--workers", "0"], "positive integer")])
def test_argparse_rejections(dataset, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        main(["reduce", str(dataset), "-o", str(tmp_path / "o"), *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_output_that_is_a_file_is_rejected(dataset, tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    assert main(["reduce", str(dataset), "-o", str(target)]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    assert target.read_text() == "keep me"


def test_fraction_mode_keeps_requested_count(dataset, tmp_path):
    out = tmp_path / "out"
    assert main(["reduce", str(dataset), "-o", str(out), "--fraction", "0.1", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["params"]["algorithm"] == "greedy"
    assert [v["n_kept"] for v in summary["volumes"].values()] == [4, 6, 8]


def test_parallel_workers_give_the_same_manifest(dataset, tmp_path):
    assert main(["reduce", str(dataset), "-o", str(tmp_path / "a"), "--no-progress"]) == 0
    assert main(["reduce", str(dataset), "-o", str(tmp_path / "b"), "--no-progress", "--workers", "2"]) == 0
    assert (tmp_path / "a" / "manifest.csv").read_text() == (tmp_path / "b" / "manifest.csv").read_text()


def test_console_script_and_demo(tmp_path):
    out = tmp_path / "demo"
    res = subprocess.run(
        [sys.executable, "-m", "monai_lessmore.cli.main", "demo", "--output", str(out), "--volumes", "2", "--no-progress", "--no-pretrain"],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "phantom_00" in res.stdout and "kept" in res.stdout
    summary = json.loads((out / "reduced" / "summary.json").read_text())
    assert summary["n_volumes"] == 2 and 0 < summary["kept_fraction"] < 0.3


def test_real_slice_folders_hash_like_imagehash(tmp_path):
    import imagehash
    from PIL import Image

    folder = shared_data_path("ct", "slices", "covid19_ct_seg")
    out = tmp_path / "out"
    code = main(["reduce", str(folder), "--output", str(out), "--method", "hash", "--threshold", "6", "--algorithm", "leader", "--no-progress"])
    assert code == 0
    rows = read_manifest(out / "manifest.csv")
    assert len(rows) == 1600
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_volumes"] == 20
    for r in rows[::37]:  # a spread of slices over every volume: the manifest hash is imagehash's string
        assert r["hash"] == str(imagehash.dhash(Image.open(r["source"]).convert("L")))
    # string order (the authors' iteration) is an option and changes which slices lead
    out2 = tmp_path / "out2"
    assert main(["reduce", str(folder / "Data-1_coronacases_org_001"), "-o", str(out2), "--order", "filename", "--no-progress"]) == 0
    rows2 = read_manifest(out2 / "manifest.csv")
    assert [r["source"].rsplit("_", 1)[1] for r in rows2[:3]] == ["1.jpg", "10.jpg", "100.jpg"]


def test_dicom_and_exported_png_folder_give_the_same_hashes(tmp_path):
    series = shared_data_path("ct", "dicom", "pancreas_ct")
    out = tmp_path / "dcm"
    assert main(["reduce", str(series), "-o", str(out), "--method", "all", "--export", "png", "--no-progress"]) == 0
    dcm_rows = read_manifest(out / "manifest.csv")
    assert len(dcm_rows) == 134
    out2 = tmp_path / "png"
    assert main(["reduce", str(out / "slices" / "pancreas_ct"), "-o", str(out2), "--method", "all", "--no-progress"]) == 0
    png_rows = read_manifest(out2 / "manifest.csv")
    assert [r["hash"] for r in png_rows] == [r["hash"] for r in dcm_rows]


def test_rerun_with_other_settings_replaces_exported_slices(dataset, tmp_path):
    out = tmp_path / "out"
    vol = str(dataset / "phantom_00.nii.gz")
    for threshold in ("2", "40"):
        assert main(["reduce", vol, "-o", str(out), "--threshold", threshold, "--export", "png", "--no-progress"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        pngs = sorted(p.name for p in (out / "slices" / "phantom_00").glob("*.png"))
        kept = [int(r["slice_index"]) for r in read_manifest(out / "manifest.csv") if r["kept"] == "1"]
        assert pngs == sorted(f"phantom_00_{k}.png" for k in kept)
        assert len(pngs) == summary["n_kept"]
    assert not [p for p in (out / "slices").iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_warnings_and_completeness_are_reported(tmp_path, capsys):
    import nibabel as nib

    folder = tmp_path / "odd"
    folder.mkdir()
    nib.save(nib.Nifti1Image(np.full((8, 8, 1), -1000, np.int16), np.diag([-1.0, -1, 1, 1])), str(folder / "one.nii.gz"))
    nib.save(nib.Nifti1Image(np.full((8, 8, 5), 40, np.int16), np.diag([-1.0, -1, 1, 1])), str(folder / "const.nii.gz"))
    assert main(["reduce", str(folder), "-o", str(tmp_path / "out"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["complete"] is True and summary["pending"] == []
    assert "single-slice" in summary["volumes"]["one"]["warnings"][0]
    assert "constant" in summary["volumes"]["const"]["warnings"][0]
    assert "warning: one: single-slice" in capsys.readouterr().out


def test_dicom_reader_warnings_go_to_the_record(tmp_path, recwarn):
    from tests.io.conftest import random_volume, write_series

    series = tmp_path / "series"
    write_series(series, random_volume(np.random.default_rng(0), (7, 16, 16)))
    (series / "slice003.dcm").unlink()  # a missing slice: a gap in positions
    assert main(["reduce", str(series), "-o", str(tmp_path / "out"), "--no-progress"]) == 0
    record = json.loads((tmp_path / "out" / "records" / "series.json").read_text())
    assert any("missing" in w for w in record["warnings"]), record["warnings"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["volumes"]["series"]["warnings"] == record["warnings"]


def test_nan_volume_is_named_by_the_dataset_filter_too(tmp_path):
    import nibabel as nib

    from monai_lessmore.data import SliceReductionFilter

    data = np.zeros((8, 8, 4), np.float32)
    data[1, 1, 1] = np.nan
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    with pytest.raises(ValueError, match=r"nan\.nii\.gz: 1 NaN/Inf voxels"):
        SliceReductionFilter()([{"image": str(path)}])


def test_mixed_size_slice_folder_with_pixelwise_method(tmp_path, capsys):
    # this radiopaedia volume's 13 JPG slices all differ in size (each is cropped to the body)
    volume = shared_data_path("ct", "slices", "covid19_ct_seg") / "Data-1_radiopaedia_org_covid-19-pneumonia-4_85506_1-dcm"
    refused = tmp_path / "refused"
    assert main(["reduce", str(volume), "-o", str(refused), "--method", "mi", "--count", "5", "--no-progress"]) == 1
    error = json.loads((refused / "summary.json").read_text())["failures"][0]["error"]
    assert "--mixed-size HxW" in error and "sizes HxW, e.g. " in error
    out = tmp_path / "out"
    args = ["reduce", str(volume), "-o", str(out), "--method", "mi", "--count", "5", "--mixed-size", "128x96", "--no-progress"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_kept"] == 5 and summary["params"]["mixed_size"] == [128, 96]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["reduce", str(volume), "-o", str(tmp_path / "x"), "--method", "mi", "--mixed-size", "12x0"])
    assert "must be HxW or N with positive integers" in capsys.readouterr().err


def test_adding_mixed_size_recomputes_only_the_refused_volume(dataset, tmp_path):
    # a uniform volume and one whose slices all differ in size: adding --mixed-size after the refusal must not
    # recompute the uniform one (its result cannot change), only the refused one
    volume = shared_data_path("ct", "slices", "covid19_ct_seg") / "Data-1_radiopaedia_org_covid-19-pneumonia-4_85506_1-dcm"
    uniform = dataset / "phantom_00.nii.gz"
    out = tmp_path / "out"
    base = ["reduce", str(uniform), str(volume), "-o", str(out), "--method", "mi", "--count", "5", "--no-progress"]
    assert main(base) == 1
    first = json.loads((out / "summary.json").read_text())
    assert list(first["volumes"]) == ["phantom_00"] and len(first["failures"]) == 1
    assert main([*base, "--mixed-size", "96"]) == 0
    second = json.loads((out / "summary.json").read_text())
    assert second["volumes"]["phantom_00"]["resumed"] is True
    mixed = next(v for k, v in second["volumes"].items() if k != "phantom_00")
    assert mixed["resumed"] is False and mixed["n_kept"] == 5
    record = json.loads(next(p for p in (out / "records").glob("*.json") if "phantom" not in p.name).read_text())
    assert record["resampled_to"] == [96, 96]
    # a changed setting that matters still recomputes everything
    assert main([*base[:-3], "--count", "4", "--mixed-size", "96", "--no-progress"]) == 0
    assert not any(v["resumed"] for v in json.loads((out / "summary.json").read_text())["volumes"].values())


def test_worker_processes_share_the_cores(monkeypatch):
    import torch

    import monai_lessmore.io.nifti as nifti
    from monai_lessmore.cli.reduce import _share_cores

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(nifti, "STREAM_GZIP", True)
    monkeypatch.setenv("LESSMORE_STREAM_GZIP", "")  # so that the change below is undone after the test
    monkeypatch.delenv("LESSMORE_STREAM_GZIP")
    _share_cores(2)
    assert nifti.STREAM_GZIP and "LESSMORE_STREAM_GZIP" not in os.environ  # two cores: inflate in a thread
    try:
        _share_cores(1)
        assert torch.get_num_threads() == 1
        assert nifti.STREAM_GZIP is False and os.environ["LESSMORE_STREAM_GZIP"] == "0"  # one: read first
        _share_cores(64)  # never more than the process would use anyway
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_fresh_worker_shares_the_cores_without_importing_torch():
    code = ("import os, sys\n"
            "from monai_lessmore.cli.reduce import _share_cores\n"
            "_share_cores(1)\n"
            "print('torch' in sys.modules, os.environ['OMP_NUM_THREADS'])\n"
            "import torch\n"
            "print(torch.get_num_threads())\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                         cwd=REPO_ROOT).stdout.split()
    assert out == ["False", "1", "1"]  # the hash path never pays torch's import; torch, once imported, obeys
