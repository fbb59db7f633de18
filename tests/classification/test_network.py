"""ResNet50 + one linear layer: torchvision-compatible keys, and encoder loading that never silently re-randomises."""

from __future__ import annotations

import pytest
import torch

from monai_lessmore.classification.network import EncoderLoadError, ResNet50Classifier, load_encoder_state_dict
from monai_lessmore.networks.resnet import ResNet, ResNet50


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    """An encoder state dict in torchvision key names, without the head (as the pre-training bundle exports)."""
    torch.manual_seed(123)
    state = {k: v for k, v in ResNet50(num_classes=1000).state_dict().items() if not k.startswith("fc.")}
    path = tmp_path_factory.mktemp("enc") / "encoder.pt"
    torch.save(state, path)
    return path, state


def test_architecture_is_torchvision_resnet50():
    from monai_lessmore.utils.torchvision_compat import import_torchvision

    net = ResNet50(num_classes=1000)
    # torchvision.models.resnet50(): 25,557,032 parameters, 320 state-dict entries
    assert sum(p.numel() for p in net.parameters()) == 25_557_032
    ref = import_torchvision("models").resnet50()
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    ref.load_state_dict(net.state_dict())
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(net.eval()(x), ref.eval()(x))


def test_classifier_head_and_features():
    net = ResNet50Classifier(num_classes=3).eval()
    assert isinstance(net.fc, torch.nn.Linear) and net.fc.in_features == 2048 and net.fc.out_features == 3
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert net(x).shape == (2, 3) and net.features(x).shape == (2, 2048)
    assert net.load_report is None
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        ResNet50Classifier(num_classes=1)


def test_pretrained_encoder_changes_weights_and_reports_only_head_missing(encoder_file, caplog):
    path, state = encoder_file
    torch.manual_seed(0)
    random = ResNet50Classifier(num_classes=2)
    torch.manual_seed(0)
    loaded = ResNet50Classifier(num_classes=2, pretrained_encoder=str(path))
    assert loaded.load_report == {"missing": ["fc.bias", "fc.weight"], "unexpected": []}
    assert not torch.equal(random.conv1.weight, loaded.conv1.weight)
    for k, v in state.items():
        torch.testing.assert_close(loaded.state_dict()[k], v)
    torch.testing.assert_close(loaded.fc.weight, random.fc.weight)  # the head keeps its fresh init


def test_lightning_checkpoint_with_prefix_and_extra_keys(tmp_path, encoder_file):
    _, state = encoder_file
    ckpt = {"state_dict": {**{f"model.{k}": v for k, v in state.items()},
                           "projection_head.0.weight": torch.zeros(3, 3), "prototypes.weight": torch.zeros(2, 3)},
            "epoch": 5}
    torch.save(ckpt, tmp_path / "swav.ckpt")
    net = ResNet50Classifier(num_classes=2, pretrained_encoder=str(tmp_path / "swav.ckpt"))
    assert net.load_report["missing"] == ["fc.bias", "fc.weight"]
    assert net.load_report["unexpected"] == ["projection_head.0.weight", "prototypes.weight"]
    torch.testing.assert_close(net.layer4[2].conv3.weight, state["layer4.2.conv3.weight"])


def test_bundle_directory(tmp_path, encoder_file):
    _, state = encoder_file
    (tmp_path / "b" / "models").mkdir(parents=True)
    torch.save({**state, "fc.weight": torch.zeros(7, 2048), "fc.bias": torch.zeros(7)}, tmp_path / "b/models/model.pt")
    net = ResNet50Classifier(num_classes=2, pretrained_bundle=str(tmp_path / "b"))  # a 7-class head is dropped
    torch.testing.assert_close(net.conv1.weight, state["conv1.weight"])
    with pytest.raises(EncoderLoadError, match="not a bundle with models/model.pt"):
        ResNet50Classifier(pretrained_bundle=str(tmp_path))


def test_wrong_keys_are_refused(tmp_path, encoder_file):
    _, state = encoder_file
    partial = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(EncoderLoadError, match=r"encoder keys are missing, e\.g\. \['layer4\.0\.bn1\.bias'"):
        ResNet50Classifier(pretrained_encoder=str(tmp_path / "partial.pt"))
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "densenet.pt")
    with pytest.raises(EncoderLoadError, match="Refusing to train from a partly random encoder"):
        ResNet50Classifier(pretrained_encoder=str(tmp_path / "densenet.pt"))
    shapes = dict(state, **{"conv1.weight": torch.zeros(64, 1, 7, 7)})
    with pytest.raises(EncoderLoadError, match=r"conv1\.weight: file \(64, 1, 7, 7\) vs model \(64, 3, 7, 7\)"):
        load_encoder_state_dict(ResNet50Classifier(), shapes)


def test_unsafe_or_missing_files(tmp_path):
    torch.save({"weights": object()}, tmp_path / "pickle.pt")
    with pytest.raises(EncoderLoadError, match=r"weights_only=True"):
        ResNet50Classifier(pretrained_encoder=str(tmp_path / "pickle.pt"))
    with pytest.raises(EncoderLoadError, match="does not exist"):
        ResNet50Classifier(pretrained_encoder=str(tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match="either pretrained_encoder or pretrained_bundle"):
        ResNet50Classifier(pretrained_encoder="a", pretrained_bundle="b")


def test_one_resnet50_for_pretraining_finetuning_bundle_and_deepnet():
    """Every network of the package is networks.ResNet50; the encoder's state dict is torchvision's minus fc."""
    from monai.bundle import ConfigParser

    from monai_lessmore.networks import ENCODER_DIM, resnet50_encoder
    from monai_lessmore.reduction.deepnet import ResNet50Embedder
    from monai_lessmore.ssl.backbone import resnet50_encoder as ssl_encoder
    from tests.conftest import REPO_ROOT

    torch.manual_seed(0)
    encoder = ssl_encoder()
    torch.manual_seed(0)
    reference = ResNet50(num_classes=1000)
    assert ssl_encoder is resnet50_encoder and isinstance(encoder.fc, torch.nn.Identity)
    assert list(encoder.state_dict()) == [k for k in reference.state_dict() if not k.startswith("fc.")]
    torch.testing.assert_close(encoder.layer4[2].conv3.weight, reference.layer4[2].conv3.weight)  # same init draws
    assert encoder.eval()(torch.rand(1, 3, 32, 32)).shape == (1, ENCODER_DIM)
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "bundles" / "lessmore_hash6_resnet50" / "configs" / "inference.json"))
    bundle_net = parser.get_parsed_content("network_def")
    for net in (ResNet50Classifier(), ResNet50Embedder(weights="random").model, bundle_net):
        assert isinstance(net, ResNet) and net.arch == "resnet50"


@pytest.mark.parametrize("arch, dim", [("resnet18", 512), ("resnet34", 512), ("resnet101", 2048)])
def test_other_backbones_are_torchvision_resnets_with_the_same_init(arch, dim):
    """``backbone`` builds torchvision's model of that name: same keys and shapes, the same random draws for a seed,
    the same outputs once loaded (torchvision is the oracle)."""
    from monai_lessmore.networks import encoder_dim, resnet_encoder
    from monai_lessmore.utils.torchvision_compat import import_torchvision

    torch.manual_seed(7)
    net = ResNet(arch, num_classes=1000)
    torch.manual_seed(7)
    ref = getattr(import_torchvision("models"), arch)()
    assert list(net.state_dict()) == list(ref.state_dict())
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(net.state_dict()[k], v)
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(net.eval()(x), ref.eval()(x))
    assert encoder_dim(arch) == dim and resnet_encoder(arch).eval()(x).shape == (1, dim)
    clf = ResNet50Classifier(num_classes=3, backbone=arch)
    assert clf.fc.in_features == dim and clf.arch == arch


def test_an_encoder_of_another_depth_is_refused_naming_the_backbone(tmp_path):
    from monai_lessmore.networks import resnet_encoder

    path = tmp_path / "r18.pt"
    torch.save(resnet_encoder("resnet18").state_dict(), path)
    loaded = ResNet50Classifier(num_classes=2, backbone="resnet18", pretrained_encoder=str(path))
    assert loaded.load_report["missing"] == ["fc.bias", "fc.weight"]
    with pytest.raises(EncoderLoadError, match=r"does not fit torchvision's ResNet50: .* encoder keys are missing"):
        ResNet50Classifier(num_classes=2, pretrained_encoder=str(path))
    torch.save(resnet_encoder("resnet50").state_dict(), path)  # the ResNet18 keys are all there, with other shapes
    with pytest.raises(EncoderLoadError, match=r"r18.pt: tensor shapes do not match ResNet18: .*same backbone"):
        ResNet50Classifier(num_classes=2, backbone="resnet18", pretrained_encoder=str(path))
    with pytest.raises(ValueError, match=r"backbone must be one of torchvision's ResNets .*got 'vgg16'"):
        ResNet50Classifier(backbone="vgg16")


def test_load_report_strips_prefix_and_lists_keys(encoder_file):
    from monai_lessmore.networks import load_encoder_weights, resnet50_encoder

    _, state = encoder_file
    noisy = {**{f"module.{k}": v for k, v in state.items()}, "module.queue": torch.zeros(3)}
    net = resnet50_encoder()
    report = load_encoder_weights(net, noisy, source="moco.pt")
    assert report == {"missing": [], "unexpected": ["queue"]}
    torch.testing.assert_close(net.conv1.weight, state["conv1.weight"])
    with pytest.raises(EncoderLoadError, match=r"moco.pt does not fit .*0 of the 318 .*1 unexpected keys, e.g. \['queue'\]"):
        load_encoder_weights(net, noisy, source="moco.pt", strict=True)
