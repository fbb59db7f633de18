"""ResNet50Embedder / pairwise_cosine against a plain torch loop over the same torchvision ResNet50.

The oracle runs the network slice by slice with its own preprocessing written out by hand; the weights are a
randomly initialised ResNet50 state dict written by the test (never any download or network access).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_lessmore.reduction.deepnet import (
    IMAGENET_WEIGHTS_URL,
    ResNet50Embedder,
    pairwise_cosine,
    pairwise_deepnet,
)
from monai_lessmore.utils.torchvision_compat import import_torchvision
from tests.reduction.test_ssim import pancreas_hu

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
pytestmark = pytest.mark.filterwarnings("ignore:torchvision's compiled operators:RuntimeWarning")
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def net_and_weights(tmp_path_factory):
    torch.manual_seed(0)
    model = import_torchvision("models").resnet50(weights=None).eval()  # torchvision itself is the oracle
    path = tmp_path_factory.mktemp("weights") / "resnet50_random.pt"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def ct64():
    return pancreas_hu()[:, ::2, ::2]  # six real HU slices, 64x64


def assert_features_close(got, expected):
    """Equal to 1e-5 relative to the feature scale: batched and one-by-one convolutions round differently."""
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))


def oracle(model, slices, *, size=None, layer="avgpool"):
    """One slice at a time: min-max to 0..1, optional resize, 3 channels, ImageNet normalisation, forward."""
    head = model.fc
    if layer == "avgpool":
        model.fc = torch.nn.Identity()
    out = []
    try:
        with torch.no_grad():
            for s in slices:
                x = torch.as_tensor(np.asarray(s, dtype=np.float32))
                x = (x - x.min()) / (x.max() - x.min()) if s.dtype != np.uint8 else x / 255.0
                x = x[None, None]
                if size is not None:
                    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                                        antialias=True)
                x = (x.repeat(1, 3, 1, 1) - MEAN) / STD
                out.append(model(x)[0])
    finally:
        model.fc = head
    return torch.stack(out).numpy()


@pytest.mark.parametrize("device", DEVICES)
def test_features_equal_plain_loop_on_real_ct(net_and_weights, ct64, device):
    model, path = net_and_weights
    emb = ResNet50Embedder(weights=path, device=device, batch_size=4, size=None)
    feats = emb.embed(ct64)
    assert feats.shape == (6, 2048) and emb.dim == 2048
    assert_features_close(feats, oracle(model, ct64))
    expected = pairwise_cosine(oracle(model, ct64))
    np.testing.assert_allclose(pairwise_deepnet(ct64, embedder=emb), expected, atol=1e-6)


def test_fc_logits_resize_and_uint8(net_and_weights, ct64):
    model, path = net_and_weights
    emb = ResNet50Embedder(weights=path, layer="fc", size=32, batch_size=8)
    assert_features_close(emb.embed(ct64[:3]), oracle(model, ct64[:3], size=32, layer="fc"))
    u8 = np.random.default_rng(0).integers(0, 256, (2, 40, 40)).astype(np.uint8)
    emb = ResNet50Embedder(weights=path, size=48)
    assert_features_close(emb(u8), oracle(model, u8, size=48))


def test_one_forward_pass_per_slice(net_and_weights, ct64):
    _, path = net_and_weights
    emb = ResNet50Embedder(weights=path, batch_size=4, size=32)
    seen = []
    emb.model.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    sim = pairwise_deepnet(ct64, embedder=emb)
    assert sim.shape == (6, 6)
    assert seen == [4, 2]  # 6 slices in batches of 4, never a pass per pair


def test_backbone_only_weights(net_and_weights, ct64, tmp_path):
    model, _ = net_and_weights
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    path = tmp_path / "backbone.pt"
    torch.save(state, path)
    feats = ResNet50Embedder(weights=path, size=None).embed(ct64[:2])
    assert_features_close(feats, oracle(model, ct64[:2]))
    with pytest.raises(ValueError, match=r"1000-class head but .*backbone.pt has no fc.weight/fc.bias"):
        ResNet50Embedder(weights=path, layer="fc")


def test_pairwise_cosine():
    f = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [-2.0, 0.0]])
    sim = pairwise_cosine(f)
    expected = np.array(
        [[1, 1 / np.sqrt(2), 0, -1], [1 / np.sqrt(2), 1, 0, -1 / np.sqrt(2)], [0, 0, 1, 0], [-1, -1 / np.sqrt(2), 0, 1]]
    )
    np.testing.assert_allclose(sim, expected, atol=1e-12)
    assert sim.dtype == np.float64
    np.testing.assert_array_equal(pairwise_cosine(torch.from_numpy(f)), sim)
    with pytest.raises(ValueError, match=r"\(N, D\) matrix"):
        pairwise_cosine(np.zeros(3))


def test_missing_imagenet_cache_names_path_url_and_alternative(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    expected = tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    with pytest.raises(FileNotFoundError) as err:
        ResNet50Embedder(weights="imagenet")
    message = str(err.value)
    assert str(expected) in message and IMAGENET_WEIGHTS_URL in message and "weights=PATH" in message


def test_imagenet_weights_are_read_from_the_cache(monkeypatch, tmp_path, net_and_weights, ct64):
    model, path = net_and_weights
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "resnet50-0676ba61.pth").write_bytes(path.read_bytes())
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    feats = ResNet50Embedder(weights="imagenet", size=None).embed(ct64[:2])
    assert_features_close(feats, oracle(model, ct64[:2]))


def test_bad_weights_and_options(tmp_path, net_and_weights):
    model, _ = net_and_weights
    with pytest.raises(ValueError, match="weights=None is ambiguous"):
        ResNet50Embedder(weights=None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ResNet50Embedder(weights=tmp_path / "nope.pt")
    state = dict(model.state_dict())
    state["extra.weight"] = torch.zeros(1)
    del state["layer1.0.conv1.weight"]
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(ValueError, match=r"1 of the 318 encoder keys are missing, e.g. \['layer1.0.conv1.weight'\]; 1 unexpected keys, e.g. \['extra"):
        ResNet50Embedder(weights=bad)
    ckpt = tmp_path / "lightning.ckpt"  # a training checkpoint is unwrapped, its prefix stripped, and checked
    torch.save({"state_dict": {"model.conv1.weight": torch.zeros(1)}}, ckpt)
    with pytest.raises(ValueError, match=r"317 of the 318 encoder keys are missing"):
        ResNet50Embedder(weights=ckpt)
    with pytest.raises(ValueError, match="layer must be one of"):
        ResNet50Embedder(weights="random", layer="layer4")
    with pytest.raises(ValueError, match="scaling must be one of"):
        ResNet50Embedder(weights="random", scaling="zscore")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        ResNet50Embedder(weights="random", batch_size=0)
    with pytest.raises(ValueError, match=r"same shape"):
        ResNet50Embedder(weights="random", size=32).embed([np.zeros((8, 8)), np.zeros((9, 9))])
