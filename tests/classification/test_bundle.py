"""The lessmore_classification bundle: offline-valid metadata, configs, and train -> evaluate -> infer -> analyse on
tiny subsets of the real tasks (COVID-CT official split, OrganAMNIST) through monai.bundle."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from monai.bundle import ConfigParser, run, verify_metadata, verify_net_in_out

from monai_lessmore.networks.resnet import ResNet50
from tests.conftest import REPO_ROOT, shared_data_path

BUNDLE = REPO_ROOT / "bundles" / "lessmore_classification"
CONFIGS = BUNDLE / "configs"
SCHEMA = REPO_ROOT / "bundles" / "schemas" / "meta_schema_20220324.json"
TRAIN, EVALUATE, INFERENCE = (str(CONFIGS / f) for f in ("train.json", "evaluate.json", "inference.json"))


def test_layout():
    for f in ("configs/metadata.json", "configs/train.json", "configs/evaluate.json", "configs/inference.json",
              "configs/logging.conf", "docs/README.md", "LICENSE", "models/.gitkeep"):
        assert (BUNDLE / f).is_file(), f


def test_metadata_is_valid_offline(no_network, tmp_path):
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA))
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    del meta["task"]
    (tmp_path / "bad.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="task"):
        verify_metadata(meta_file=str(tmp_path / "bad.json"), filepath=str(SCHEMA))


def test_network_in_out():
    verify_net_in_out(net_id="network_def", meta_file=str(CONFIGS / "metadata.json"), config_file=[TRAIN, INFERENCE],
                      n=1, device="cpu")



def test_paper_defaults():
    cfg = json.loads((CONFIGS / "train.json").read_text())
    # section 2.3: Adam lr 1e-4, batch 64, 224x224, ten frozen epochs, five runs / five folds, 90/10;
    # the authors' notebooks: weight decay 5e-4, 70 epochs
    expected = {"learning_rate": 1e-4, "weight_decay": 5e-4, "batch_size": 64, "max_epochs": 70, "freeze_epochs": 10,
                "image_size": 224, "num_runs": 5, "num_folds": 5, "val_fraction": 0.1}
    assert {k: cfg[k] for k in expected} == expected
    assert cfg["optimizer_def"]["_target_"] == "torch.optim.Adam"


def test_num_classes_mismatch_is_reported():
    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({"data_root": str(shared_data_path("covid_ct")), "num_classes": 3})
    with pytest.raises(RuntimeError, match="build_data") as info:  # MONAI wraps the adapter's ValueError
        parser.get_parsed_content("data")
    assert "num_classes=3 was given but the data have 2 classes" in str(info.value.__cause__)


def _overrides(out, **extra):
    return {"subset": 16, "max_epochs": 2, "freeze_epochs": 1, "batch_size": 8, "image_size": 64,
            "device": "cpu", "output_dir": str(out), **extra}


@pytest.mark.slow
def test_covid_ct_train_evaluate_infer_analyse(tmp_path):
    data_root = str(shared_data_path("covid_ct"))
    out = tmp_path / "covid"
    args = [f"--{k}={v}" for k, v in _overrides(out, num_runs=2, data_root=data_root).items()]
    env = dict(os.environ, OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN, *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"] == "runs" and [r["name"] for r in results["runs"]] == ["run_0", "run_1"]
    assert [r["n_train"] for r in results["runs"]] == [16, 16]
    assert "| covid_ct | random | 2 runs, fixed split |" in (out / "results.md").read_text()

    run("evaluating", config_file=[TRAIN, EVALUATE], **_overrides(out, data_root=data_root))
    metrics = dict(csv.reader(open(out / "evaluate" / "metrics.csv")))
    for m in ("auc", "f1", "accuracy"):  # evaluating run_0's checkpoint on the same test items reproduces its row
        assert float(metrics[m]) == pytest.approx(results["runs"][0]["test"][m], abs=1e-6)

    files = [str(shared_data_path("covid_ct", "Images", "CT_COVID", "2020.03.22.20040782-p25-1542.png")),
             str(shared_data_path("covid_ct", "Images", "CT_NonCOVID", "0.jpg"))]
    run("inferring", config_file=[TRAIN, INFERENCE], input_files=files, model_file=str(out / "run_0" / "model.pt"),
        image_size=64, device="cpu", output_dir=str(out / "infer"))
    rows = list(csv.DictReader(open(out / "infer" / "predictions.csv")))
    assert [r["id"] for r in rows] == files
    assert all(abs(float(r["prob_NonCOVID"]) + float(r["prob_COVID"]) - 1) < 1e-4 for r in rows)

    run("analyzing", config_file=[TRAIN, EVALUATE], num_gradcam=2, **_overrides(out, data_root=data_root))
    names = sorted(p.name for p in (out / "analysis").iterdir())
    assert "tsne.png" in names and sum(n.startswith("gradcam_") for n in names) == 2


@pytest.mark.slow
def test_organamnist_from_pretrained_encoder(tmp_path):
    npz = str(shared_data_path("organamnist", "organamnist.npz"))
    torch.manual_seed(7)
    encoder = {k: v for k, v in ResNet50().state_dict().items() if not k.startswith("fc.")}
    torch.save(encoder, tmp_path / "encoder.pt")
    out = tmp_path / "organ"
    overrides = _overrides(out, dataset="medmnist", npz_file=npz, num_runs=1, max_epochs=1, subset=[64, 33, 33],
                           pretrained_encoder=str(tmp_path / "encoder.pt"))
    run("training", config_file=TRAIN, **overrides)
    results = json.loads((out / "results.json").read_text())
    assert results["initialisation"] == str(tmp_path / "encoder.pt")
    assert len(results["class_names"]) == 11
    r = results["runs"][0]
    assert (r["n_train"], r["n_val"], r["n_test"]) == (64, 33, 33)
    assert 0.0 <= r["test"]["auc"] <= 1.0 and r["best_epoch"] == 1
    state = torch.load(out / "run_0" / "model.pt", weights_only=True)
    assert state["fc.weight"].shape == (11, 2048)
    # one frozen epoch (freeze_epochs=1): the selected checkpoint still holds the loaded encoder
    torch.testing.assert_close(state["layer3.1.conv2.weight"], encoder["layer3.1.conv2.weight"])
