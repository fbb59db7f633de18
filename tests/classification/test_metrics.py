"""AUC, F1 and accuracy through MONAI/ignite handlers equal an independent reference on the same predictions.

The reference below is written from the definitions (Mann-Whitney form of the ROC AUC with ties counted 1/2;
one-vs-rest macro AUC; F1 = 2TP / (2TP + FP + FN)), independent of MONAI and ignite; scikit-learn, when installed,
is a second oracle.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser

from monai_lessmore.classification.metrics import AUCOutput
from tests.conftest import REPO_ROOT

TRAIN = REPO_ROOT / "bundles" / "lessmore_classification" / "configs" / "train.json"


def bundle_metrics(data):
    """The metrics as the bundle's train.json declares them (the one place they are defined), for ``data``."""
    parser = ConfigParser()
    parser.read_config(str(TRAIN))
    parser["data"] = data
    return parser.get_parsed_content("key_metric"), parser.get_parsed_content("additional_metrics")


def ref_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def ref_f1(y: np.ndarray, pred: np.ndarray, c: int) -> float:
    tp = np.sum((pred == c) & (y == c))
    fp = np.sum((pred == c) & (y != c))
    fn = np.sum((pred != c) & (y == c))
    return float(2 * tp / (2 * tp + fp + fn))


def reference(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    k = probs.shape[1]
    pred = probs.argmax(1)
    if k == 2:
        return {"auc": ref_auc(y, probs[:, 1]), "f1": ref_f1(y, pred, 1), "accuracy": float(np.mean(pred == y))}
    return {
        "auc": float(np.mean([ref_auc((y == c).astype(int), probs[:, c]) for c in range(k)])),
        "f1": float(np.mean([ref_f1(y, pred, c) for c in range(k)])),
        "accuracy": float(np.mean(pred == y)),
    }


def _run(logits: torch.Tensor, labels: torch.Tensor, batch: int = 7) -> dict[str, float]:
    n = len(labels)
    batches = [{"pred": logits[i:i + batch], "label": labels[i:i + batch]} for i in range(0, n, batch)]
    engine = Engine(lambda e, b: b)
    key_metric, additional = bundle_metrics(SimpleNamespace(num_classes=logits.shape[1]))
    for name, metric in {**key_metric, **additional}.items():
        metric.attach(engine, name)
    return {k: float(v) for k, v in engine.run(batches).metrics.items()}


def _data(k: int, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % k  # every class present
    logits = torch.randn(n, k, generator=g) + 1.5 * torch.nn.functional.one_hot(labels, k)
    logits[:5] = logits[5:10]  # ties
    labels[:5] = labels[5:10]
    logits[20] = logits[21]  # a tie between samples of different classes
    return logits, labels


@pytest.mark.parametrize("k", [2, 3, 11])
@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_equal_reference(k, seed):
    logits, labels = _data(k, 97, seed)
    got = _run(logits, labels)
    expected = reference(labels.numpy(), torch.softmax(logits, 1).numpy())
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name] == pytest.approx(expected[name], abs=1e-6), name


@pytest.mark.parametrize("k", [2, 5])
def test_metrics_equal_scikit_learn(k):
    from sklearn import metrics
    logits, labels = _data(k, 80, 3)
    probs = torch.softmax(logits, 1).numpy()
    y = labels.numpy()
    got = _run(logits, labels)
    auc = metrics.roc_auc_score(y, probs[:, 1]) if k == 2 else metrics.roc_auc_score(y, probs, multi_class="ovr")
    f1 = metrics.f1_score(y, probs.argmax(1), average="binary" if k == 2 else "macro")
    assert got["auc"] == pytest.approx(auc, abs=1e-6)
    assert got["f1"] == pytest.approx(f1, abs=1e-6)
    assert got["accuracy"] == pytest.approx(metrics.accuracy_score(y, probs.argmax(1)), abs=1e-6)


def test_reference_on_hand_computed_example():
    # 2 positives (0.9, 0.4), 2 negatives (0.4, 0.1): pairs 1, 1, 0.5 (tie), 1 -> AUC 3.5 / 4
    assert ref_auc(np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.4, 0.1])) == 0.875


def test_output_transform_validation():
    with pytest.raises(ValueError, match="num_classes must be >= 2, got 1"):
        AUCOutput(1)
