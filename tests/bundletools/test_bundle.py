"""The lessmore_hash6_resnet50 bundle: offline-valid metadata, network in/out, configs, large_files.yml, head inference."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import monai.apps.utils
import monai.bundle.scripts
from monai.bundle import run, verify_metadata, verify_net_in_out
from tests.conftest import REPO_ROOT
from tests.bundletools.conftest import BUNDLE

CONFIGS = BUNDLE / "configs"
SCHEMA = REPO_ROOT / "bundles" / "schemas" / "meta_schema_20220324.json"
DRIVE_IDS = {
    "petct_hash6": "11OWRzifq_BXrcFMZ13H0HwS4UGcaiAn_", "lidc_hash6": "1kYFS67jH9s8kAmhNyf5wlRj_Gh9vTK_H",
    "petct_all": "1eBZYl1rXkKJxz42Wu75uzb1kLg8FTv1H", "lidc_all": "1hUr_6XdYxjB66ZYEGTqE7b8I88IN9a1l",
}


def test_layout():
    for f in ("configs/metadata.json", "configs/inference.json", "configs/logging.conf", "large_files.yml",
              "docs/README.md", "LICENSE", "models/.gitkeep"):
        assert (BUNDLE / f).is_file(), f


def test_metadata_is_valid_offline(no_network, tmp_path):
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA))
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    assert (image["num_channels"], image["spatial_shape"], image["modality"]) == (3, [224, 224], "CT")
    assert (pred["num_channels"], pred["dtype"]) == (2048, "float32")
    assert "PET-CT" in meta["data_source"] and "LIDC" in meta["data_source"]
    assert any("10.1016/j.compbiomed.2024.109242" in r for r in meta["references"])
    assert "Wolfda95/Less_is_More" in meta["copyright"] and meta["intended_use"]
    del meta["network_data_format"]
    (tmp_path / "bad.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="network_data_format"):
        verify_metadata(meta_file=str(tmp_path / "bad.json"), filepath=str(SCHEMA))


def test_network_in_out_without_weights():
    verify_net_in_out(net_id="network_def", meta_file=str(CONFIGS / "metadata.json"),
                      config_file=str(CONFIGS / "inference.json"), device="cpu")


def test_network_in_out_with_converted_weights(converted_bundle):
    """verify_net_in_out on the loaded network (weights from the converted models/model.pt): one 2048-d tensor."""
    verify_net_in_out(net_id="network", meta_file=str(converted_bundle / "configs" / "metadata.json"),
                      config_file=str(converted_bundle / "configs" / "inference.json"), device="cpu",
                      bundle_root=str(converted_bundle))


def test_large_files_point_to_the_authors_petct_hash6_checkpoint(monkeypatch, tmp_path):
    """monai's download_large_files reads our large_files.yml: the authors' .ckpt goes to models/ (no download here)."""
    calls = []
    monkeypatch.setattr(monai.bundle.scripts, "download_url", lambda **kw: calls.append(kw))
    monai.bundle.scripts.download_large_files(bundle_path=str(BUNDLE))
    assert len(calls) == 1
    assert calls[0]["filepath"] == str(BUNDLE / "models" / "swav_petct_hash6.ckpt")
    assert calls[0]["url"] == f"https://drive.google.com/uc?export=download&id={DRIVE_IDS['petct_hash6']}"
    assert "hash_val" not in calls[0]  # not pinned: empty values are dropped by monai
    readme = (BUNDLE / "docs" / "README.md").read_text()
    large = (BUNDLE / "large_files.yml").read_text()
    for drive_id in DRIVE_IDS.values():  # the default and the three documented alternatives
        assert drive_id in readme and drive_id in large
    assert "lessmore import-checkpoint" in readme and "--pretrained_bundle bundles/lessmore_hash6_resnet50" in readme


def test_class_probabilities_with_a_head(converted_bundle, slice_files, tmp_path):
    torch.manual_seed(0)
    torch.save({"fc.weight": torch.randn(2, 2048) * 0.01, "fc.bias": torch.zeros(2)}, tmp_path / "head.pt")
    out = tmp_path / "out"
    run("inferring", config_file=str(converted_bundle / "configs" / "inference.json"),
        bundle_root=str(converted_bundle), input_files=slice_files[:2], image_size=32, output_dir=str(out),
        head_file=str(tmp_path / "head.pt"), class_names=["NonCOVID", "COVID"], logging_file=False)
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [r["id"] for r in rows] == slice_files[:2]
    assert all(abs(float(r["prob_NonCOVID"]) + float(r["prob_COVID"]) - 1) < 1e-4 for r in rows)
    assert not (out / "features.npy").exists()


def test_missing_weights_and_bad_head_are_reported(converted_bundle, tmp_path):
    from monai_lessmore.networks import EncoderLoadError, ResNet50, head_classes, load_pretrained

    with pytest.raises(EncoderLoadError, match=r"is a folder but not a bundle with models/model\.pt"):
        load_pretrained(ResNet50(num_classes=0), BUNDLE.parent)
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "partial.pt")
    with pytest.raises(EncoderLoadError, match=r"317 of the 318 encoder keys are missing.*import-checkpoint"):
        load_pretrained(ResNet50(num_classes=0), tmp_path / "partial.pt")
    with pytest.raises(EncoderLoadError, match="has no fc.weight/fc.bias"):
        head_classes(converted_bundle / "models" / "model.pt")
    with pytest.raises(EncoderLoadError, match="2-class head but .* has no fc.weight/fc.bias: pass head_file"):
        load_pretrained(ResNet50(num_classes=2), converted_bundle / "models" / "model.pt")
    with pytest.raises(ValueError, match="num_classes must be an int >= 0"):
        ResNet50(num_classes=-1)



def test_load_bundle_names_missing_weights_instead_of_downloading(no_network, converted_bundle, tmp_path):
    """monai.bundle.load looks a bundle without models/model.pt up on the model zoo; load_bundle says what to run."""
    from tests.bundletools.conftest import BUNDLE_NAME, copy_bundle

    from monai_lessmore.bundletools.load import MissingWeightsError, load_bundle

    empty = copy_bundle(tmp_path / "empty")
    with pytest.raises(MissingWeightsError, match=r"no weights .*models/model\.pt does not exist.*lessmore import-checkpoint"):
        load_bundle(BUNDLE_NAME, empty.parent, workflow_type="inference", device="cpu")
    with pytest.raises(FileNotFoundError, match="not a bundle folder"):
        load_bundle("no_such_bundle", tmp_path, device="cpu")
    net = load_bundle(BUNDLE_NAME, converted_bundle.parent, workflow_type="inference", device="cpu")
    reference = torch.load(converted_bundle / "models" / "model.pt", weights_only=True)
    key = "layer4.2.conv3.weight"
    assert torch.equal(net.state_dict()[key], reference[key])
