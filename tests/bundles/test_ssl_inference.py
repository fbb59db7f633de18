"""The pre-training bundle's inference workflow (configs/inference.json): MONAI's own checks, offline, and
embeddings of volumes, slice folders and datalists equal to the encoder's output."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from monai.bundle import ckpt_export, create_workflow, verify_metadata, verify_net_in_out
from tests.conftest import REPO_ROOT

BUNDLE = REPO_ROOT / "bundles" / "lessmore_ssl_pretrain"
CONFIG = BUNDLE / "configs" / "inference.json"
META = BUNDLE / "configs" / "metadata.json"
SCHEMA = REPO_ROOT / "bundles" / "schemas" / "meta_schema_20220324.json"


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory) -> Path:
    """Weights built from the config's network_def (random, with non-trivial BN statistics), saved as a plain
    state dict like the training configs' export."""
    from monai_lessmore.networks import ResNet50

    torch.manual_seed(0)
    net = ResNet50(num_classes=0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("enc") / "model.pt"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    from monai_lessmore.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantom")
    write_phantom_dataset(root, n_volumes=2, slices=(3, 4), size=32)
    return root


def test_infer_workflow_properties(phantom_dir, encoder_file):
    wf = create_workflow(config_file=str(CONFIG), workflow_type="infer", bundle_root=str(BUNDLE),
                         dataset_dir=str(phantom_dir), ckpt_path=str(encoder_file))
    assert not wf.check_properties()  # None or [] : every required infer property is declared
    assert wf.evaluator is not None and wf.inferer is not None and wf.network_def is not None


def test_metadata_is_valid_offline(no_network):
    verify_metadata(meta_file=str(META), filepath=str(SCHEMA))


@pytest.mark.slow
def test_network_in_out():
    verify_net_in_out(net_id="network_def", meta_file=str(META), config_file=str(CONFIG), device="cpu",
                      bundle_root=str(BUNDLE))


@pytest.mark.slow
def test_torchscript_export_of_weights_built_from_network_def(encoder_file, tmp_path):
    ts = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(encoder_file), meta_file=str(META),
                config_file=str(CONFIG), bundle_root=str(BUNDLE))
    scripted = torch.jit.load(str(ts))
    from monai_lessmore.networks import ResNet50

    net = ResNet50(num_classes=0).eval()
    net.load_state_dict(torch.load(encoder_file, weights_only=True))
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(scripted(x), net(x))


def _run(tmp_path, encoder_file, **override):
    out = tmp_path / "out"
    wf = create_workflow(config_file=str(CONFIG), workflow_type="infer", bundle_root=str(BUNDLE),
                         ckpt_path=str(encoder_file), output_dir=str(out), device="cpu", image_size=32,
                         batch_size=3, **override)
    wf.run()
    wf.finalize()
    feats = np.load(out / "features.npy")
    with open(out / "index.csv", newline="") as f:
        index = list(csv.DictReader(f))
    return wf, feats, index


@pytest.mark.slow
def test_embeds_volumes_one_row_per_slice(phantom_dir, encoder_file, tmp_path):
    wf, feats, index = _run(tmp_path, encoder_file, dataset_dir=str(phantom_dir))
    assert feats.shape == (7, 2048) and feats.dtype == np.float32  # 3 + 4 slices, reduction 'none' keeps all
    assert [r["row"] for r in index] == [str(i) for i in range(7)]
    volumes = sorted({r["volume"] for r in index})
    assert len(volumes) == 2 and all(Path(v).exists() for v in volumes)
    assert sorted(int(r["slice"]) for r in index if r["volume"] == volumes[1]) == [0, 1, 2, 3]
    # the rows are the encoder's output on the preprocessed slices (not a stub): recompute row 4
    item = wf.parser.get_parsed_content("dataset")[4]
    net = wf.parser.get_parsed_content("network").eval()
    with torch.no_grad():
        expected = net(item["image"][None]).numpy()[0]
    np.testing.assert_allclose(feats[4], expected, rtol=1e-3, atol=1e-4)  # batch of 3 vs 1: summation order
    assert index[4]["id"] == f"{index[4]['volume']}:{index[4]['slice']}"
    assert not list((tmp_path / "out").glob("*.tmp*"))


@pytest.mark.slow
def test_embeds_a_slice_folder_and_a_datalist(phantom_dir, encoder_file, tmp_path):
    from PIL import Image

    sdir = tmp_path / "slices"
    sdir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(sdir / f"s{i}.png")
    _, feats, index = _run(tmp_path / "a", encoder_file, slice_dir=str(sdir))
    assert feats.shape == (2, 2048) and [r["slice"] for r in index] == ["-1", "-1"]
    assert [Path(r["volume"]).name for r in index] == ["s0.png", "s1.png"]

    from monai_lessmore.io import discover_volumes

    vol = discover_volumes(str(phantom_dir))[0]
    lst = tmp_path / "list.json"
    lst.write_text(json.dumps([{"image": "slices/s1.png"}, {"image": vol, "slice_index": 2}]))
    _, feats2, index2 = _run(tmp_path / "b", encoder_file, datalist_file=str(lst))
    assert feats2.shape == (2, 2048) and index2[1]["slice"] == "2" and index2[1]["volume"] == vol
    np.testing.assert_allclose(feats2[0], feats[1], rtol=1e-3, atol=1e-4)  # the same slice file, the same vector


def test_input_errors(tmp_path):
    from monai_lessmore.ssl.embed import embedding_datalist

    with pytest.raises(ValueError, match="exactly one of dataset_dir"):
        embedding_datalist(slice_dir=str(tmp_path), datalist_file=str(tmp_path / "x.json"))
    with pytest.raises(ValueError, match="holds no slice images"):
        embedding_datalist(slice_dir=str(tmp_path))
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        embedding_datalist(datalist_file=str(bad))


def test_missing_weights_are_reported(tmp_path):
    from monai_lessmore.classification.network import EncoderLoadError

    wf = create_workflow(config_file=str(CONFIG), workflow_type="infer", bundle_root=str(BUNDLE),
                         ckpt_path=str(tmp_path / "absent.pt"), device="cpu")
    with pytest.raises(RuntimeError) as info:
        wf.parser.get_parsed_content("network")
    cause = info.value.__cause__  # the config parser wraps the loader's error
    assert isinstance(cause, EncoderLoadError) and "absent.pt" in str(cause)
