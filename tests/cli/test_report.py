"""`lessmore report DIR`: the Figure-6-like slice figure and the kept-fraction histogram of a reduce run."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from monai_lessmore.cli.main import main
from monai_lessmore.cli.report import ReportError, default_methods, example_rows, make_report, parse_methods
from monai_lessmore.phantom import write_phantom_dataset


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    write_phantom_dataset(root / "ph", n_volumes=3, slices=(40, 80), size=32)
    out = root / "out"
    assert main(["reduce", str(root / "ph"), "-o", str(out), "--no-progress"]) == 0
    return out


def png_size(path):
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def test_report_writes_both_figures(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    assert "report_slices.png" in capsys.readouterr().out
    width, height = png_size(run_dir / "report_slices.png")
    assert 800 < width < 2000 and 500 < height < 1500  # 5 slices x 3 rows (ALL, EveryN, HASH) at 100 dpi
    width, height = png_size(run_dir / "report_fractions.png")
    assert 500 < width < 1500 and 300 < height < 1000


def test_methods_volume_and_output(run_dir, tmp_path):
    target = tmp_path / "fig.png"
    assert main(["report", str(run_dir), "--methods", "hash,ssim", "--volume", "phantom_01", "-o", str(target), "--slices", "3"]) == 0
    width, height = png_size(target)
    assert 400 < width < 1200 and 300 < height < 1000  # 3 slices x 2 rows


def test_rows_compare_at_the_hash_count(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    rows, display = example_rows(run_dir, summary, "phantom_01", ["everyn", "mi", "ssim", "hash"])
    by = {r.method: r for r in rows}
    record = json.loads((run_dir / "records" / "phantom_01.json").read_text())
    assert by["hash"].kept == record["kept"]  # the run's own method shows what the run kept
    assert len(by["ssim"].kept) == len(by["mi"].kept) == len(record["kept"])  # equal count, as the paper's Table 5
    assert by["everyn"].kept == list(range(0, 60, 10))
    assert len(display) == 60 and all(r.note is None for r in rows)


def test_missing_deepnet_weights_skip_the_row(run_dir, tmp_path, capsys):
    target = tmp_path / "fig.png"
    assert main(["report", str(run_dir), "--methods", "hash,deepnet", "--deepnet-weights", str(tmp_path / "none.pt"), "-o", str(target)]) == 0
    assert "DeepNet" in capsys.readouterr().err
    summary = json.loads((run_dir / "summary.json").read_text())
    rows, _ = example_rows(run_dir, summary, "phantom_00", ["deepnet"], deepnet_weights=str(tmp_path / "none.pt"))
    assert rows[0].kept == [] and rows[0].note.startswith("skipped:") and "none.pt" in rows[0].note
    png_size(target)


def test_reduce_report_flag(tmp_path):
    write_phantom_dataset(tmp_path / "ph", n_volumes=1, slices=(30, 30), size=32)
    out = tmp_path / "out"
    assert main(["reduce", str(tmp_path / "ph"), "-o", str(out), "--method", "everyn", "--no-progress", "--report"]) == 0
    png_size(out / "report_slices.png")
    png_size(out / "report_fractions.png")


def test_folder_without_summary_exits_2_naming_the_file(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'summary.json'} not found" in err and "lessmore reduce" in err
    assert list(tmp_path.iterdir()) == []
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "hash,foo"], "--methods: unknown method 'foo'; choose from"),
        (["--methods", ","], "--methods is empty"),
        (["--volume", "nope"], "--volume 'nope' is not in"),
        (["--output", "fig.jpg"], "--output must be a .png file"),
    ],
)
def test_bad_arguments_exit_2(run_dir, capsys, args, message):
    assert main(["report", str(run_dir), *args]) == 2
    assert message in capsys.readouterr().err


def test_helpers(tmp_path):
    assert parse_methods("HASH, everyn,hash,none") == ["hash", "everyn", "all"]
    assert default_methods("hash") == ["all", "everyn", "hash"]
    assert default_methods("ssim") == ["all", "everyn", "ssim", "hash"]
    with pytest.raises(ReportError, match="summary.json not found"):
        make_report(tmp_path, methods="hash")


def test_example_volume_is_read_in_its_stored_dtype(run_dir, monkeypatch):
    """The report renders the example volume from its stored voxels: never a whole-volume float32 copy, the same
    rows and renderings as from the float32 array."""
    import numpy as np

    from monai_lessmore.io import load_volume
    from monai_lessmore.reduction import SliceReducer
    from monai_lessmore.reduction.preprocess import StoredStack

    summary = json.loads((run_dir / "summary.json").read_text())
    eager = load_volume(summary["volumes"]["phantom_01"]["source"]).array

    def whole_volume(self):
        raise AssertionError("the whole volume was converted to float32")

    monkeypatch.setattr(StoredStack, "to_array", whole_volume)
    rows, display = example_rows(run_dir, summary, "phantom_01", ["everyn", "ssim", "hash"])
    np.testing.assert_array_equal(display, SliceReducer().render(eager))
    ssim = SliceReducer(method="ssim", count=len(rows[2].kept)).reduce(eager).kept.tolist()
    assert rows[1].kept == ssim and rows[1].note is None
