"""Reduction presets (configs/reduction): each keeps exactly what the equivalent explicit options keep."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from monai_lessmore.cli.main import main
from monai_lessmore.data import SliceReductionFilter
from monai_lessmore.phantom import write_phantom_dataset
from monai_lessmore.reduction.presets import load_reduction_config, preset_names, preset_path
from monai_lessmore.transforms import ReduceSlicesd

#: the paper's settings (Wolf et al. 2024, section 2.1) as one would type them
EXPLICIT = {
    "hash3": {"method": "hash", "threshold": 3, "algorithm": "leader"},
    "hash6": {"method": "hash", "threshold": 6, "algorithm": "leader"},
    "hash12": {"method": "hash", "threshold": 12, "algorithm": "leader"},
    "everyn10": {"method": "everyn", "every_n": 10},
    "ssim10": {"method": "ssim", "fraction": 0.1, "algorithm": "greedy"},
    "mi10": {"method": "mi", "fraction": 0.1, "algorithm": "greedy", "bins": 100},
    "deepnet10": {"method": "deepnet", "fraction": 0.1, "algorithm": "greedy", "deepnet_weights": "imagenet"},
}


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    root = tmp_path_factory.mktemp("presets")
    return write_phantom_dataset(root / "ph", n_volumes=2, slices=(30, 40), size=32)


@pytest.fixture(scope="module")
def tiny_volume(tmp_path_factory):
    import nibabel as nib

    data = np.random.default_rng(0).normal(0, 300, (24, 24, 10)).astype(np.float32)
    path = tmp_path_factory.mktemp("tiny") / "tiny.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return str(path)


def test_shipped_presets_are_the_paper_settings():
    assert preset_names() == sorted(EXPLICIT)
    for name, options in EXPLICIT.items():
        assert load_reduction_config(name) == options, name
    assert preset_path("HASH-6") == preset_path("hash6") and preset_path("SSIM-10 %").stem == "ssim10"


@pytest.mark.parametrize(
    "name", ["hash3", "hash6", "hash12", "everyn10", "ssim10", "mi10", pytest.param("deepnet10", marks=pytest.mark.slow)]
)
def test_filter_preset_keeps_what_explicit_options_keep(volumes, tiny_volume, name):
    datalist = [{"image": str(p)} for p in volumes]
    weights = {}
    if name == "deepnet10":  # ImageNet weights are never downloaded; a forward pass per slice: keep it tiny
        datalist, weights = [{"image": tiny_volume}], {"deepnet_weights": "random"}
        torch.manual_seed(0)
    by_preset = SliceReductionFilter(config=name, **weights)(datalist)
    if name == "deepnet10":
        torch.manual_seed(0)
    by_options = SliceReductionFilter(**{**EXPLICIT[name], **weights})(datalist)
    assert by_preset == by_options and 0 < len(by_preset) < len(datalist) * 40


def test_transform_preset_and_override(volumes):
    from monai.transforms import LoadImaged

    item = LoadImaged("image", ensure_channel_first=True)({"image": str(volumes[1])})
    for config, explicit in [("ssim10", EXPLICIT["ssim10"]), ("hash6", EXPLICIT["hash6"])]:
        a = ReduceSlicesd("image", config=config)(dict(item))["image"]
        b = ReduceSlicesd("image", **explicit)(dict(item))["image"]
        assert a.meta["lessmore_kept_indices"] == b.meta["lessmore_kept_indices"]
    # a keyword overrides the file; an amount keyword replaces the file's amount
    a = ReduceSlicesd("image", config="hash6", threshold=12)(dict(item))["image"]
    b = ReduceSlicesd("image", method="hash", threshold=12, algorithm="leader")(dict(item))["image"]
    assert a.meta["lessmore_kept_indices"] == b.meta["lessmore_kept_indices"]
    a = ReduceSlicesd("image", config="hash6", fraction=0.5, algorithm="greedy")(dict(item))["image"]
    assert len(a.meta["lessmore_kept_indices"]) == 20  # half of 40 slices: threshold 6 was dropped


def _kept(out):
    return {k: v["n_kept"] for k, v in json.loads((out / "summary.json").read_text())["volumes"].items()}, [
        line for line in (out / "manifest.csv").read_text().splitlines()
    ]


def test_cli_config_matches_explicit_options_and_is_overridden(volumes, tmp_path):
    src = str(volumes[0].parent)
    assert main(["reduce", src, "-o", str(tmp_path / "p"), "--config", "hash12", "--no-progress"]) == 0
    assert main(["reduce", src, "-o", str(tmp_path / "e"), "--method", "hash", "--threshold", "12", "--algorithm",
                 "leader", "--no-progress"]) == 0
    assert _kept(tmp_path / "p") == _kept(tmp_path / "e")
    own = tmp_path / "mine.json"
    own.write_text(json.dumps({"method": "everyn", "every_n": 10}))
    assert main(["reduce", src, "-o", str(tmp_path / "f"), "--config", str(own), "--every-n", "5", "--no-progress"]) == 0
    assert main(["reduce", src, "-o", str(tmp_path / "g"), "--method", "everyn", "--every-n", "5", "--no-progress"]) == 0
    assert _kept(tmp_path / "f") == _kept(tmp_path / "g")
    assert sorted(_kept(tmp_path / "f")[0].values()) == [6, 8]


def test_bad_configs_exit_2_naming_the_problem(volumes, tmp_path, capsys):
    src = str(volumes[0].parent)
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: hash\nthreshhold: 6\n")
    for config, message in [(str(bad), "unknown keys ['threshhold']"), ("hash7", "no reduction preset 'hash7'"),
                            (str(tmp_path / "none.yaml"), "does not exist")]:
        assert main(["reduce", src, "-o", str(tmp_path / "o"), "--config", config, "--no-progress"]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="unknown keys"):
        SliceReductionFilter(config=str(bad))
