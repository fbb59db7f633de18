"""The downstream probe handler: k-NN / logistic scores against scikit-learn, the handler in an ignite run (off by
default, every N epochs, best_probe.pt atomically, metrics file, TensorBoard), and a real labelled set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from monai_lessmore.ssl.probe import DownstreamProbe, knn_probe_scores


def test_knn_scores_separable_and_random():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 5
    labels = np.repeat(np.arange(3), 20)
    feats = centres[labels] + rng.normal(size=(60, 16)) * 0.1
    s = knn_probe_scores(feats, labels, k=5, logistic=True)
    assert s == {"knn_acc": 1.0, "knn_auc": 1.0, "logreg_acc": 1.0, "logreg_auc": 1.0}
    noise = knn_probe_scores(rng.normal(size=(200, 16)), rng.integers(0, 2, 200), k=10)
    assert 0.3 < noise["knn_auc"] < 0.7


def test_knn_scores_equal_a_direct_cross_validation():
    """The same folds by hand: scikit-learn's KNeighborsClassifier (cosine, distance weights) fitted per fold."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 60)
    feats = rng.normal(size=(60, 8)) + labels[:, None] * 0.8
    proba = np.zeros((60, 2))
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=0).split(feats, labels):
        proba[te] = KNeighborsClassifier(7, metric="cosine", weights="distance").fit(feats[tr], labels[tr]).predict_proba(feats[te])
    s = knn_probe_scores(feats, labels, k=7)
    assert s["knn_acc"] == pytest.approx((proba.argmax(1) == labels).mean())
    assert s["knn_auc"] == pytest.approx(roc_auc_score(labels, proba[:, 1]))


def test_knn_scores_errors():
    with pytest.raises(ValueError, match="at least 2 images of every class"):
        knn_probe_scores(np.zeros((3, 2)), np.array([0, 0, 1]))


def _class_folders(root, n=6, size=40):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(["a", "b"]):
        (root / name).mkdir(parents=True)
        for i in range(n):
            img = np.zeros((size, size), np.uint8)
            if c == 0:
                img[:, : size // 2] = 200  # bright left half
            else:
                img[::4] = 200  # stripes
            img = np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


class _Net(torch.nn.Module):
    """A pre-training network as the probe sees it: an encoder under ``backbone``."""

    def __init__(self):
        super().__init__()
        from monai_lessmore.ssl.backbone import resnet50_encoder

        torch.manual_seed(0)
        self.backbone = resnet50_encoder()


@pytest.fixture(scope="module")
def net():
    return _Net()


def _engine(net, epochs):
    engine = Engine(lambda e, b: None)
    engine.network = net
    return engine, [0] * 1, epochs


def test_disabled_by_default_reads_nothing(tmp_path, net):
    probe = DownstreamProbe("folder", data_root=str(tmp_path / "absent"), output_dir=str(tmp_path))
    engine, data, _ = _engine(net, 2)
    probe.attach(engine)
    engine.run(data, max_epochs=2)
    assert not list(tmp_path.iterdir()) and probe.images is None


@pytest.mark.slow
def test_probe_every_n_epochs_keeps_the_best(tmp_path, net, monkeypatch):
    data = _class_folders(tmp_path / "data")
    out = tmp_path / "run"
    probe = DownstreamProbe("folder", data_root=str(data), enabled=True, interval=2, n_items=None, image_size=32,
                            k=3, folds=3, output_dir=str(out))
    engine, loader, _ = _engine(net, 3)
    probe.attach(engine)
    real = probe.evaluate
    values = iter([0.6])

    def scripted(network):  # the real embedding and scores, with the tracked metric scripted: 0.6, then real
        s = real(network)
        v = next(values, None)
        return {**s, "knn_auc": v} if v is not None else s

    monkeypatch.setattr(probe, "evaluate", scripted)
    engine.run(loader, max_epochs=3)
    record = json.loads((out / "probe_metrics.json").read_text())
    assert [p["epoch"] for p in record["probes"]] == [2, 3]  # every 2 epochs and after the last
    assert all(0 <= p["knn_acc"] <= 1 for p in record["probes"])
    best = json.loads((out / "best_probe.json").read_text())
    last = record["probes"][-1]["knn_auc"]
    assert best["epoch"] == (3 if last > 0.6 else 2) and best["value"] == max(0.6, last)
    assert engine.state.metrics["probe_knn_auc"] == last
    sd = torch.load(out / "best_probe.pt", weights_only=True)
    from monai_lessmore.networks import ResNet50

    ResNet50(num_classes=0).load_state_dict(sd, strict=True)
    torch.testing.assert_close(sd["conv1.weight"], net.backbone.conv1.weight)
    assert list(out.glob("events.out.tfevents.*"))  # TensorBoard
    assert not list(out.glob("*.tmp*"))
    assert net.backbone.training  # the training network's mode is untouched

    # a resumed run continues from the recorded best
    again = DownstreamProbe("folder", data_root=str(data), enabled=True, output_dir=str(out), tensorboard=False)
    again.attach(Engine(lambda e, b: None))
    assert again.best == best["value"] and len(again.history) == 2


@pytest.mark.slow
def test_features_are_the_encoders(tmp_path, net):
    data = _class_folders(tmp_path / "data", n=3)
    probe = DownstreamProbe("folder", data_root=str(data), enabled=True, image_size=32, output_dir=str(tmp_path))
    feats = probe.embed(net)
    from monai_lessmore.networks import ResNet50

    ref = ResNet50(num_classes=0).eval()
    ref.load_state_dict(net.backbone.state_dict(), strict=False)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(ref((probe.images.expand(-1, 3, -1, -1) - mean) / std), dim=1)
    np.testing.assert_allclose(feats, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="metric"):
        DownstreamProbe(metric="loss")
    with pytest.raises(ValueError, match="logistic=True"):
        DownstreamProbe(metric="logreg_auc")
    with pytest.raises(ValueError, match="interval"):
        DownstreamProbe(interval=0)
    probe = DownstreamProbe("folder", data_root=str(tmp_path / "absent"), enabled=True)
    with pytest.raises(ValueError, match="absent"):
        probe.load()


@pytest.mark.realdata
@pytest.mark.slow
def test_probe_on_covid_ct(shared_data, tmp_path, net):
    """40 real COVID-CT images (both classes), 64 px: finite k-NN and logistic scores."""
    root = shared_data / "covid_ct"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    probe = DownstreamProbe("covid_ct", data_root=str(root), enabled=True, n_items=40, image_size=64, k=5,
                            logistic=True, output_dir=str(tmp_path))
    s = probe.evaluate(net)
    assert probe.images.shape == (40, 1, 64, 64) and sorted(np.bincount(probe.labels)) == [20, 20]
    assert set(s) == {"knn_acc", "knn_auc", "logreg_acc", "logreg_auc"}
    assert all(0 <= v <= 1 for v in s.values())
