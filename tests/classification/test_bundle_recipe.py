"""The fine-tuning bundle as a recipe: engines, handlers and metrics come from the config, one run shows progress and
the time left, a handler added by a config override alone fires, and inference warns about another input size.

One tiny training (a synthetic MedMNIST-layout ``.npz``: 1 run, 1 epoch, 32 px) is shared by the tests of this file.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from monai.bundle import ConfigParser

from monai_lessmore.classification.protocol import warn_if_size_differs
from tests.conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "bundles" / "lessmore_classification" / "configs"
TRAIN, EVALUATE, INFERENCE = (str(CONFIGS / f) for f in ("train.json", "evaluate.json", "inference.json"))


def _npz(path):
    rng = np.random.default_rng(0)
    arrays = {}
    for part, n in (("train", 8), ("val", 4), ("test", 4)):
        labels = np.arange(n) % 2
        images = (rng.integers(0, 60, (n, 28, 28)) + 120 * labels[:, None, None]).astype(np.uint8)
        arrays[f"{part}_images"], arrays[f"{part}_labels"] = images, labels[:, None]
    np.savez(path, **arrays)
    return path


def _parser(tmp_path, **overrides):
    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({"dataset": "medmnist", "npz_file": str(_npz(tmp_path / "tiny.npz")), "num_runs": 1,
                   "max_epochs": 1, "freeze_epochs": 0, "batch_size": 4, "image_size": 32, "device": "cpu",
                   "output_dir": str(tmp_path / "out"), **overrides})
    return parser


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train once with one extra handler given only as a config override: MONAI's StatsHandler logging iterations."""
    tmp_path = tmp_path_factory.mktemp("recipe")
    parser = ConfigParser()
    parser.read_config(TRAIN)
    extra = {"_target_": "monai.handlers.StatsHandler", "name": "override_check", "iteration_log": True,
             "epoch_log": False, "tag_name": "train_loss", "output_transform": "$lambda out: out['loss'].item()"}
    parser = _parser(tmp_path, train_handlers=[*parser["train_handlers"], extra])
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    keep = Keep(level=logging.INFO)
    root, stats = logging.getLogger(), logging.getLogger("override_check")  # MONAI's StatsHandler does not propagate
    old_level = root.level
    root.addHandler(keep)
    stats.addHandler(keep)
    root.setLevel(logging.INFO)
    try:
        # what `monai.bundle run training` does: initialize, then the run expression
        parser.get_parsed_content("initialize")
        results = parser.get_parsed_content("training")[0]
    finally:
        root.removeHandler(keep)
        stats.removeHandler(keep)
        root.setLevel(old_level)
    return {"results": results, "records": records, "out": tmp_path / "out", "tmp": tmp_path}


def test_engines_handlers_and_metrics_are_declared_in_the_config():
    cfg = json.loads(open(TRAIN).read())
    targets = [h["_target_"] for h in cfg["train_handlers"]]
    assert "monai.handlers.ValidationHandler" in targets and "ignite.handlers.tqdm_logger.ProgressBar" in targets
    assert cfg["trainer_def"]["_target_"] == "monai.engines.SupervisedTrainer"
    assert cfg["evaluator_def"]["_target_"] == "monai.engines.SupervisedEvaluator"
    assert set(cfg["key_metric"]) | set(cfg["additional_metrics"]) == {"auc", "f1", "accuracy"}
    for name in ("evaluate.json", "inference.json"):  # merged on train.json: no second copy of metrics/preprocessing
        other = json.loads((CONFIGS / name).read_text())
        assert not {"key_metric", "additional_metrics", "preprocessing", "trainer_def", "evaluator_def"} & set(other)
        assert "@evaluator_def(" in other["evaluator"]


@pytest.mark.slow
def test_a_handler_added_by_a_config_override_fires(trained):
    fired = [r for r in trained["records"] if r.name == "override_check"]
    assert len(fired) == 2  # 8 training items, batch 4: one log line per iteration
    assert "train_loss" in fired[0].getMessage()


@pytest.mark.slow
def test_progress_within_the_epoch_and_eta_per_run(trained):
    lines = [r.getMessage() for r in trained["records"] if r.name == "monai_lessmore.classification.protocol"]
    epoch = [m for m in lines if " epoch 1/1 " in m]
    assert len(epoch) == 1 and epoch[0].startswith("run_0 (1/1) epoch 1/1 train_loss ")
    assert "elapsed, run ETA 0:00:00" in epoch[0]
    assert any(m.startswith("run_0 (1/1) test auc ") and "run took" in m for m in lines)
    assert trained["results"]["protocol_description"] == "1 run, fixed split"  # not "1 runs"


def test_progress_bar_is_drawn(tmp_path, capfd):
    from ignite.engine import Engine

    parser = _parser(tmp_path)
    bar = [h for h in parser.get_parsed_content("train_handlers") if type(h).__name__ == "ProgressBar"]
    assert len(bar) == 1
    engine = Engine(lambda e, b: None)
    bar[0].attach(engine)
    engine.run(range(3), max_epochs=1)
    err = capfd.readouterr().err
    assert "Iteration: [1/3]" in err and "33%" in err


@pytest.mark.slow
def test_ignite_bookkeeping_is_not_logged(trained):
    assert not [r for r in trained["records"] if r.getMessage().startswith("Engine run resuming from iteration 0")]


@pytest.mark.slow
def test_run_records_the_image_size_and_inference_warns_about_another(trained, caplog):
    model_file = trained["out"] / "run_0" / "model.pt"
    assert json.loads((model_file.parent / "run.json").read_text())["image_size"] == 32
    with caplog.at_level(logging.WARNING, logger="monai_lessmore.classification.protocol"):
        assert warn_if_size_differs(model_file, 32) == 32
        assert not caplog.records
        assert warn_if_size_differs(model_file, 224) == 32
    assert "fine-tuned on 32 px images" in caplog.text and "--image_size 32" in caplog.text
    assert warn_if_size_differs(trained["tmp"] / "elsewhere" / "model.pt", 224) is None  # no record: no warning


@pytest.mark.slow
def test_inference_initialize_warns(trained, caplog):
    parser = ConfigParser()
    parser.read_config([TRAIN, INFERENCE])
    parser.update({"model_file": str(trained["out"] / "run_0" / "model.pt"), "image_size": 224})
    with caplog.at_level(logging.WARNING):
        parser.get_parsed_content("initialize")
    assert "fine-tuned on 32 px images" in caplog.text


@pytest.mark.slow
def test_evaluate_reproduces_the_test_metrics(trained):
    parser = ConfigParser()
    parser.read_config([TRAIN, EVALUATE])
    parser.update({"dataset": "medmnist", "npz_file": str(trained["tmp"] / "tiny.npz"), "image_size": 32,
                   "batch_size": 4, "device": "cpu", "output_dir": str(trained["out"])})
    evaluator = parser.get_parsed_content("evaluator")
    evaluator.run()
    test = trained["results"]["runs"][0]["test"]
    for name in ("auc", "f1", "accuracy"):
        assert evaluator.state.metrics[name] == pytest.approx(test[name], abs=1e-6)
