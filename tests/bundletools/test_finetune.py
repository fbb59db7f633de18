"""The classification bundle starts fine-tuning from this bundle with one override (``--pretrained_bundle DIR``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from monai.bundle import run
from monai_lessmore.classification.network import ResNet50Classifier
from tests.conftest import REPO_ROOT

TRAIN = str(REPO_ROOT / "bundles" / "lessmore_classification" / "configs" / "train.json")


def test_classifier_starts_from_the_bundle(converted_bundle, encoder_state):
    torch.manual_seed(1)
    net = ResNet50Classifier(num_classes=2, pretrained_bundle=str(converted_bundle))
    state = net.state_dict()
    for k, v in encoder_state.items():
        assert torch.equal(state[k], v), k
    assert net.load_report == {"missing": ["fc.bias", "fc.weight"], "unexpected": []}
    assert state["fc.weight"].shape == (2, 2048)


@pytest.fixture
def class_folders(tmp_path):
    rng = np.random.default_rng(0)
    for label, mean in (("negative", 60), ("positive", 190)):
        (tmp_path / "task" / label).mkdir(parents=True)
        for i in range(6):
            img = np.clip(rng.normal(mean, 30, (40, 40)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / "task" / label / f"{i}.png")
    return tmp_path / "task"


def test_bundle_run_training_with_pretrained_bundle(converted_bundle, encoder_state, class_folders, tmp_path):
    """One tiny `monai.bundle run training` of the classification bundle with --pretrained_bundle: with the encoder
    frozen for the only epoch (freeze_epochs=1), the selected checkpoint still holds the converted encoder."""
    out = tmp_path / "finetune"
    run("training", config_file=TRAIN, logging_file=False, dataset="folder", data_root=str(class_folders),
        pretrained_bundle=str(converted_bundle), num_folds=2, val_fraction=0.34, max_epochs=1, freeze_epochs=1,
        batch_size=4, image_size=32, device="cpu", output_dir=str(out))
    results = json.loads((out / "results.json").read_text())
    assert results["initialisation"] == str(converted_bundle)
    state = torch.load(out / "fold_0" / "model.pt", weights_only=True)
    weights = [k for k in encoder_state if k.endswith("weight") and "bn" not in k and "downsample.1" not in k]
    assert len(weights) == 53  # every convolution of ResNet50
    for k in weights:
        assert torch.equal(state[k], encoder_state[k]), k
