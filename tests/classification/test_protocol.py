"""The protocol driver: runs/k-fold plans, model selection on validation AUC, results.json + Markdown table."""

from __future__ import annotations

import csv
import functools
import json

import numpy as np
import pytest
import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.transforms import Compose, EnsureTyped, RepeatChanneld, Resized, ScaleIntensityd
from PIL import Image

from monai_lessmore.classification.data import CSVData, FolderData
from monai_lessmore.classification.handlers import FreezeThenUnfreeze
from monai_lessmore.classification.network import ResNet50Classifier
from monai_lessmore.classification.protocol import FineTuneProtocol, format_mean_std, results_markdown, summarize
from monai_lessmore.classification.transforms import ReadClassificationImaged
from tests.classification.test_metrics import bundle_metrics, reference


def _transforms(size=32):
    return Compose([ReadClassificationImaged("image"), ScaleIntensityd("image"), Resized("image", (size, size)),
                    RepeatChanneld("image", 3), EnsureTyped("image", track_meta=False)])


def _protocol(data, tmp_path, max_epochs=1, freeze_epochs=0, **kwargs):
    t = _transforms()
    key_metric, additional_metrics = bundle_metrics(data)
    cpu = torch.device("cpu")
    args = dict(network_def=functools.partial(ResNet50Classifier, num_classes=data.num_classes),
                optimizer_def=functools.partial(torch.optim.Adam, lr=1e-4, weight_decay=5e-4),
                trainer_def=functools.partial(SupervisedTrainer, device=cpu, max_epochs=max_epochs, decollate=False,
                                              loss_function=torch.nn.CrossEntropyLoss()),
                evaluator_def=functools.partial(SupervisedEvaluator, device=cpu, decollate=False),
                key_metric=key_metric, additional_metrics=additional_metrics,
                train_handlers=[FreezeThenUnfreeze(freeze_epochs)], batch_size=8, output_dir=str(tmp_path / "out"),
                device="cpu")
    args.update(kwargs)
    return FineTuneProtocol(data, t, t, **args)


@pytest.fixture
def patients_csv(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["path,label,group"]
    for p in range(15):
        label = "sick" if p % 3 == 0 else "healthy"
        for s in range(3):
            img = rng.integers(0, 255, (16, 16), dtype=np.uint8)
            (tmp_path / f"p{p}_{s}.png").parent.mkdir(exist_ok=True)
            Image.fromarray(img).save(tmp_path / f"p{p}_{s}.png")
            rows.append(f"p{p}_{s}.png,{label},patient{p}")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    return CSVData(tmp_path / "data.csv")


def test_kfold_plan_grouped_by_patient(patients_csv, tmp_path):
    proto = _protocol(patients_csv, tmp_path, num_folds=5)
    assert proto.protocol == "kfold"  # "auto" on data without a fixed split
    plan = proto.plan()
    assert [r["name"] for r in plan] == [f"fold_{i}" for i in range(5)]
    tested = [d["id"] for r in plan for d in r["test"]]
    assert sorted(tested) == sorted(d["id"] for d in patients_csv.items())  # every sample tested exactly once
    for r in plan:
        groups = {part: {d["group"] for d in r[part]} for part in ("train", "val", "test")}
        assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]
        assert not groups["val"] & groups["test"]
        assert {d["label"] for d in r["val"]} == {0, 1}


def test_runs_need_a_fixed_split_and_arguments_are_checked(patients_csv, tmp_path):
    with pytest.raises(ValueError, match="protocol 'runs' needs a fixed train/val/test split.*use --protocol kfold"):
        _protocol(patients_csv, tmp_path, protocol="runs")
    with pytest.raises(ValueError, match="protocol must be one of"):
        _protocol(patients_csv, tmp_path, protocol="loo")
    with pytest.raises(ValueError, match="num_runs must be an int >= 1, got 0"):
        _protocol(patients_csv, tmp_path, num_runs=0)
    with pytest.raises(ValueError, match=r"subset must be an int or \[train, val, test\]"):
        _protocol(patients_csv, tmp_path, subset=[1, 2])
    with pytest.raises(ValueError, match=r"key_metric must be one \{name: metric\} pair"):
        _protocol(patients_csv, tmp_path, key_metric={})


def test_summary_and_markdown_format():
    runs = [{"name": f"run_{i}", "seed": i, "n_train": 4, "n_val": 2, "n_test": 3, "best_epoch": 1,
             "best_val_auc": 0.5, "test": {"auc": a, "f1": 0.5, "accuracy": 0.5}} for i, a in enumerate((0.8, 0.9))]
    summary = summarize(runs)
    assert summary["auc"]["mean"] == pytest.approx(0.85) and summary["auc"]["std"] == pytest.approx(0.05)  # ddof=0
    assert format_mean_std(0.8123, 0.0061) == "0.812 ± 0.006"
    md = results_markdown({"task": "t", "initialisation": "random", "protocol_description": "2 runs",
                           "summary": summary, "runs": runs})
    assert "| t | random | 2 runs | 0.850 ± 0.050 | 0.500 ± 0.000 | 0.500 ± 0.000 |" in md
    assert "| run_1 | 1 | 4/2/3 | 1 | 0.500 | 0.900 | 0.500 | 0.500 |" in md


@pytest.mark.slow
def test_kfold_end_to_end_writes_results(tmp_path):
    for cls, value in (("a", 40), ("b", 200)):
        (tmp_path / "d" / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((16, 16), value + i, np.uint8)).save(tmp_path / "d" / cls / f"{i}.png")
    data = FolderData(tmp_path / "d")
    results = _protocol(data, tmp_path, num_folds=2, max_epochs=2, freeze_epochs=1).run()
    out = tmp_path / "out"
    assert json.loads((out / "results.json").read_text())["summary"] == results["summary"]
    assert "± " in (out / "results.md").read_text()
    assert [r["name"] for r in results["runs"]] == ["fold_0", "fold_1"]
    for r in results["runs"]:
        state = torch.load(out / r["name"] / "model.pt", weights_only=True)  # a plain state dict
        assert "fc.weight" in state and 1 <= r["best_epoch"] <= 2 and r["freeze_epochs"] == 1
        assert r["best_val_auc"] == max(h["val_auc"] for h in r["history"])
        rows = list(csv.DictReader(open(out / r["name"] / "test_predictions.csv")))
        y = np.asarray([data.class_names.index(row["label"]) for row in rows])
        probs = np.asarray([[float(row["prob_a"]), float(row["prob_b"])] for row in rows])
        expected = reference(y, probs)
        for m in ("auc", "f1", "accuracy"):  # the reported test metrics are those of the selected checkpoint
            assert r["test"][m] == pytest.approx(expected[m], abs=1e-4)


@pytest.mark.slow
def test_cache_rate_preprocesses_each_image_once_for_all_epochs_and_runs(tmp_path):
    """Fixed split, 2 runs x 2 epochs: with cache_rate 1.0 each item is read once per split; the results are those
    of the uncached protocol."""
    from monai_lessmore.classification.data import MedMNISTData
    from monai_lessmore.phantom import write_phantom_classification

    data = MedMNISTData(write_phantom_classification(tmp_path / "p.npz", per_split=(4, 2, 3), size=16))
    reads: list[str] = []

    class CountingRead(ReadClassificationImaged):
        def __call__(self, d):
            reads.append(d["id"])
            return super().__call__(d)

    def counting(size=32):
        return Compose([CountingRead("image"), ScaleIntensityd("image"), Resized("image", (size, size)),
                        RepeatChanneld("image", 3), EnsureTyped("image", track_meta=False)])

    results = {}
    for rate in (0.0, 1.0):
        reads.clear()
        p = _protocol(data, tmp_path / str(rate), max_epochs=2, protocol="runs", num_runs=2, cache_rate=rate)
        p.train_transforms = p.eval_transforms = counting()
        results[rate] = p.run()
        if rate == 1.0:
            assert sorted(reads) == sorted(set(reads)) and len(reads) == 8 + 4 + 6  # every item once
        else:
            assert len(reads) == 2 * (8 * 2 + 4 * 2 + 6)  # read again every epoch and run
    assert results[1.0]["summary"] == results[0.0]["summary"]
    with pytest.raises(ValueError, match=r"cache_rate must be in \[0, 1\]"):
        _protocol(data, tmp_path, cache_rate=2)
