"""Checkpoint -> plain torchvision-key state dict, for the authors' SwAV layout and the other known layouts."""

from __future__ import annotations

import json

import pytest
import torch

from monai_lessmore.bundletools.checkpoint import UntrustedCheckpointError
from monai_lessmore.bundletools.convert import (
    BundleExistsError,
    ConversionError,
    extract_encoder,
    import_checkpoint,
)
from monai_lessmore.bundletools.package import file_hash
from monai_lessmore.utils.torchvision_compat import import_torchvision
from tests.bundletools.conftest import BUNDLE, copy_bundle, swav_head


def _assert_equal_encoder(state, encoder):
    assert list(state) == list(encoder)  # torchvision order, no fc
    for k, v in encoder.items():
        assert torch.equal(state[k], v), k


def test_authors_swav_checkpoint_loads_into_torchvision_resnet50(authors_ckpt, encoder_state, tmp_path):
    """Done-when: the authors' layout (state_dict, ``model.`` prefix, projection head and prototypes present) gives a
    state dict that loads into torchvision's resnet50 missing only fc.*, with tensors equal to the originals."""
    bundle = tmp_path / "b"
    report = import_checkpoint(authors_ckpt, bundle, template=None)
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    resnet = import_torchvision("models").resnet50(weights=None)
    result = resnet.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    _assert_equal_encoder(state, encoder_state)
    for k, v in encoder_state.items():
        assert torch.equal(resnet.state_dict()[k], v)
    assert report.method == "SwAV (PyTorch Lightning)" and report.prefix == "model." and report.container == "state_dict"
    assert report.dropped == {"model.projection_head": 9, "model.prototypes": 1}
    assert report.missing_keys == ["fc.bias", "fc.weight"] and report.unexpected_keys == []
    assert "missing keys ['fc.bias', 'fc.weight'], unexpected keys []" in report.summary()


def _momentum(encoder):
    """A momentum copy that differs from the query encoder (cheap: only conv1 is a new tensor)."""
    return {**encoder, "conv1.weight": encoder["conv1.weight"] + 1}


def _layout(name, encoder):
    mlp = {"fc.0.weight": torch.zeros(8, 2048), "fc.0.bias": torch.zeros(8), "fc.2.weight": torch.zeros(4, 8),
           "fc.2.bias": torch.zeros(4)}
    if name.startswith("moco"):
        moco = {**{f"encoder_q.{k}": v for k, v in {**encoder, **mlp}.items()},
                **{f"encoder_k.{k}": v for k, v in {**_momentum(encoder), **mlp}.items()},
                "queue": torch.zeros(128, 64), "queue_ptr": torch.zeros(1, dtype=torch.long)}
        if name == "moco_lightning":
            return {"state_dict": moco, "hyper_parameters": {}}, "MoCo (PyTorch Lightning)", "encoder_q."
        return ({"epoch": 200, "arch": "resnet50", "state_dict": {f"module.{k}": v for k, v in moco.items()},
                 "optimizer": {}}, "MoCo", "module.encoder_q.")
    if name == "spark_style":
        spark = {**{f"sparse_encoder.sp_cnn.{k}": v for k, v in encoder.items()},
                 "dense_decoder.proj.weight": torch.zeros(3, 64, 1, 1), "densify_norms.0.weight": torch.zeros(2048),
                 "mask_tokens.0": torch.zeros(1, 2048, 1, 1), "imn_m": torch.zeros(1, 3, 1, 1),
                 "config": {"mask_ratio": 0.6, "sbn": False}}
        return ({"args": "...", "arch": "resnet50", "epoch": 1599, "module": spark, "optimizer": {}, "is_pretrain": True},
                "SparK", "sparse_encoder.sp_cnn.")
    if name == "authors_spark_finetune":
        return {"arch": "resnet50", "module": dict(encoder), "is_pretrain": False}, "SparK", ""
    if name in ("spark_timm_style", "lessmore_export"):
        return dict(encoder), "plain ResNet50 state dict", ""
    if name == "lessmore_training_checkpoint":
        ours = {**{f"backbone.{k}": v for k, v in encoder.items()},
                **{f"backbone_momentum.{k}": v for k, v in _momentum(encoder).items()},
                "projection_head.layers.0.weight": torch.zeros(8, 2048)}
        return {"model": ours, "optimizer": {}, "epoch": 3}, "ResNet50 under 'backbone.'", "backbone."
    assert name == "swav_no_lightning"
    return {"state_dict": {f"model.{k}": v for k, v in {**encoder, **swav_head()}.items()}}, "SwAV", "model."


@pytest.mark.parametrize("layout", ["moco_lightning", "moco_facebook", "spark_style", "spark_timm_style",
                                    "authors_spark_finetune", "lessmore_export", "lessmore_training_checkpoint",
                                    "swav_no_lightning"])
def test_known_layouts(layout, encoder_state):
    obj, method, prefix = _layout(layout, encoder_state)
    state, report = extract_encoder(obj, source=layout)
    assert (report.method, report.prefix) == (method, prefix)
    _assert_equal_encoder(state, encoder_state)  # the query/online encoder, never the momentum copy (+1)
    assert report.missing_keys == ["fc.bias", "fc.weight"] and report.unexpected_keys == []
    if layout == "spark_style":
        assert report.ignored_non_tensors == ["config"] and "dense_decoder" in report.dropped


def test_result_owns_its_storage(encoder_state):
    big = torch.zeros(10 ** 6)
    obj = {f"model.{k}": v for k, v in encoder_state.items()}
    obj["model.conv1.weight"] = big[: encoder_state["conv1.weight"].numel()].view_as(encoder_state["conv1.weight"])
    state, _ = extract_encoder({"state_dict": obj})
    assert state["conv1.weight"].untyped_storage().nbytes() == state["conv1.weight"].numel() * 4


def test_not_a_resnet50(encoder_state):
    vit = {"state_dict": {f"blocks.{i}.attn.qkv.weight": torch.zeros(3, 3) for i in range(12)}, "epoch": 3}
    with pytest.raises(ConversionError, match=r"vit.ckpt is not a ResNet50 checkpoint.*top-level keys \['state_dict', 'epoch'\]"
                                              r".*12 tensors in 'state_dict', e\.g\. \['blocks\.0\.attn\.qkv\.weight'.*found \(of 318\)"):
        extract_encoder(vit, source="vit.ckpt")
    wide = {k: (torch.zeros(*v.shape[:-1], v.shape[-1] + 1) if k == "layer1.0.conv1.weight" else v)
            for k, v in encoder_state.items()}
    with pytest.raises(ConversionError, match=r"1 tensors have other shapes.*layer1\.0\.conv1\.weight"):
        extract_encoder(wide, source="wide.pt")
    partial = {f"model.{k}": v for k, v in list(encoder_state.items())[:100]}
    with pytest.raises(ConversionError, match=r"no complete ResNet50 encoder.*prefix 'model\.': 100"):
        extract_encoder({"state_dict": partial}, source="partial.ckpt")
    with pytest.raises(ConversionError, match="holds a list"):
        extract_encoder([1, 2], source="list.pt")
    with pytest.raises(ConversionError, match=r"holds no state dict.*\['epoch'\]"):
        extract_encoder({"epoch": 1}, source="meta.pt")


def test_ambiguous_and_explicit_prefix(encoder_state):
    two = {**{f"student.{k}": v for k, v in encoder_state.items()},
           **{f"other.{k}": v for k, v in _momentum(encoder_state).items()}}
    with pytest.raises(ConversionError, match=r"several complete ResNet50 encoders.*\['other\.', 'student\.'\].*--prefix"):
        extract_encoder(two)
    state, report = extract_encoder(two, prefix="student.")
    _assert_equal_encoder(state, encoder_state)
    with pytest.raises(ConversionError, match="prefix 'nope.' was given but covers 0 of 318"):
        extract_encoder(two, prefix="nope.")


def test_import_refuses_to_overwrite(authors_ckpt, tmp_path):
    bundle = copy_bundle(tmp_path)
    import_checkpoint(authors_ckpt, bundle)
    before = (bundle / "models" / "model.pt").stat().st_mtime_ns
    with pytest.raises(BundleExistsError, match=r"model\.pt already exists; refusing to overwrite.*--force"):
        import_checkpoint(authors_ckpt, bundle)
    assert (bundle / "models" / "model.pt").stat().st_mtime_ns == before
    import_checkpoint(authors_ckpt, bundle, force=True)
    assert sorted(p.name for p in (bundle / "models").iterdir()) == [".gitkeep", "conversion.json", "model.pt"]
    record = json.loads((bundle / "models" / "conversion.json").read_text())
    assert record["source"] == authors_ckpt.name and record["source_sha256"] == file_hash(authors_ckpt)
    assert record["template_files_copied"] == [] and record["prefix"] == "model."


def test_import_into_a_new_folder_copies_the_template(authors_ckpt, tmp_path):
    """A user's own pre-training becomes a bundle of the same shape."""
    target = tmp_path / "my_hash6"
    import_checkpoint(authors_ckpt, target)
    for f in ("configs/metadata.json", "configs/inference.json", "docs/README.md", "LICENSE", "large_files.yml",
              "models/model.pt"):
        assert (target / f).is_file(), f
    assert json.loads((target / "configs" / "metadata.json").read_text()) == json.loads(
        (BUNDLE / "configs" / "metadata.json").read_text())


def test_untrusted_checkpoint_is_refused_and_nothing_written(untrusted_ckpt, encoder_state, tmp_path):
    with pytest.raises(UntrustedCheckpointError, match="--trust-pickle"):
        import_checkpoint(untrusted_ckpt, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    import_checkpoint(untrusted_ckpt, tmp_path / "b", trust_pickle=True, template=None)
    _assert_equal_encoder(torch.load(tmp_path / "b" / "models" / "model.pt", weights_only=True), encoder_state)


def test_own_pretraining_export_and_checkpoint_become_the_same_bundle(tmp_path):
    """The lessmore_ssl_pretrain bundle's export (plain) and its training checkpoint ({"model": ...}) convert alike."""
    ssl_export = pytest.importorskip("monai_lessmore.ssl.export", reason="pre-training package not available")
    swav = pytest.importorskip("monai_lessmore.ssl.swav")
    torch.manual_seed(3)
    model = swav.SwAVModel()
    ssl_export.export_encoder(model, tmp_path / "export.pt")
    torch.save({"model": model.state_dict(), "epoch": 1}, tmp_path / "checkpoint.pt")
    expected = ssl_export.encoder_state_dict(model)
    for src, method in (("export.pt", "plain ResNet50 state dict"), ("checkpoint.pt", "SwAV")):
        report = import_checkpoint(tmp_path / src, tmp_path / src.replace(".pt", "_bundle"), template=None)
        assert report.method == method and report.missing_keys == ["fc.bias", "fc.weight"]
        _assert_equal_encoder(torch.load(tmp_path / src.replace(".pt", "_bundle") / "models" / "model.pt",
                                         weights_only=True), expected)
