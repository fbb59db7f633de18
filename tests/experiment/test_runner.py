"""``lessmore experiment``: the tiny preset end to end, skipping done stages, refusing changed settings, resuming a
pre-training that died, going on past a failed stage, and a compute-matched row with another backbone."""

from __future__ import annotations

import copy
import csv
import fcntl
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ignite.engine import Events

from monai_lessmore.cli.main import main
from monai_lessmore.experiment import ExperimentError, ExperimentRunner, load_experiment


class DieAtEpoch:
    """Raises at the start of ``epoch`` unless ``flag_file`` exists (then creates it): a run that dies once."""

    def __init__(self, epoch: int, flag_file: str) -> None:
        self.epoch, self.flag_file = epoch, Path(flag_file)

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine) -> None:
        if engine.state.epoch == self.epoch and not self.flag_file.exists():
            self.flag_file.write_text("died once")
            raise RuntimeError("simulated crash")


class DieInMatchedRun(DieAtEpoch):
    """:class:`DieAtEpoch` only in a run whose epochs are shorter than its data (a compute-matched control)."""

    def __call__(self, engine) -> None:
        if engine.state.epoch_length != len(engine.data_loader):
            super().__call__(engine)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny preset run from its parent folder with a relative --output (as a user types it)."""
    root = tmp_path_factory.mktemp("tiny")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        code = main(["experiment", "tiny", "--output", "exp"])
    return code, root / "exp"


def _table(out: Path) -> list[str]:
    return [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")]


@pytest.mark.slow
def test_tiny_preset_runs_every_stage_and_writes_the_tables(tiny_run):
    code, out = tiny_run
    assert code == 0
    rows = _table(out)
    assert rows[0].startswith("| Pre-training | Kept slices | Epochs / iterations | Pre-training time | "
                              "phantom-regions AUC |")
    assert rows[1].startswith("| none (random init) | — | — | — | ")  # the baseline first, as the paper's Table 3
    assert rows[2].startswith("| ALL | 40 of 40 (100.0 %) | 1 / 10 | ")
    assert rows[3].startswith("| HASH-6 | ") and rows[3].split(" | ")[3].endswith("x")  # speed-up against ALL
    reduce_all = json.loads((out / "reduce" / "ALL" / "stage.json").read_text())
    reduce_h6 = json.loads((out / "reduce" / "HASH-6" / "stage.json").read_text())
    assert reduce_all["n_kept"] == reduce_all["n_slices"] == 40
    assert 0 < reduce_h6["n_kept"] < 40 and reduce_h6["settings"]["reducer"]["threshold"] == 6
    pre = json.loads((out / "pretrain" / "HASH-6" / "stage.json").read_text())
    assert pre["status"] == "done" and pre["n_train_slices"] == reduce_h6["n_kept"] and pre["epochs"] == 1
    assert pre["pretrain_seconds"] > 0 and pre["resumed_from_epoch"] == 0 and pre["epochs_this_run"] == 1
    encoder = out / "pretrain" / "HASH-6" / "encoder.pt"
    assert encoder.is_file() and "encoder" not in pre  # paths inside OUTPUT are never recorded
    assert not [p for p in out.rglob("stage.json") if '"exp/' in p.read_text()]  # no cwd-relative path either
    with open(out / "results.csv", newline="") as fh:
        records = list(csv.DictReader(fh))
    assert [r["pretraining"] for r in records[::3]] == ["none (random init)", "ALL", "HASH-6"]
    assert {r["metric"] for r in records} == {"auc", "f1", "accuracy"}
    auc = [float(r["mean"]) for r in records if r["metric"] == "auc"]
    assert all(0.0 <= a <= 1.0 for a in auc)
    assert float(records[3]["kept_fraction"]) == 1.0 and float(records[3]["speed_up_vs_first"]) == 1.0
    assert (out / "auc_vs_kept_fraction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(pre["epoch_loss"]) == 1 and pre["iterations_per_epoch"] == pre["iterations"] == reduce_h6["n_kept"] // 4
    paired = list(csv.DictReader(open(out / "paired.csv", newline="")))  # default: HASH-6 against ALL, by seed
    assert [(p["a"], p["b"], p["seeds"]) for p in paired] == [("HASH-6", "ALL", "0")] * 3
    recorded = json.loads((out / "experiment.json").read_text())
    assert recorded["recipe"]["name"] == "tiny" and recorded["environment"]["torch"]
    for stage in ("downstream/phantom-regions/scratch", "downstream/phantom-regions/HASH-6"):
        results = json.loads((out / stage / "protocol" / "results.json").read_text())
        assert results["initialisation"] == ("random" if stage.endswith("scratch") else str(encoder))
    assert not list(out.rglob("*.tmp"))  # no temporary outlives the run


@pytest.mark.slow
def test_a_second_run_skips_done_stages_and_changed_settings_are_refused(tiny_run, capsys):
    code, out = tiny_run
    assert code == 0
    encoder = out / "pretrain" / "ALL" / "encoder.pt"
    before = encoder.stat().st_mtime_ns
    table = _table(out)
    capsys.readouterr()
    # from another folder, by its absolute path, with an option that does not change results
    recipe = load_experiment("tiny")
    recipe["pretrain"]["overrides"]["log_every"] = 1
    runner = ExperimentRunner(recipe, out, log=lambda m: print(m, file=sys.stderr))
    runner.run()
    err = capsys.readouterr().err
    assert err.count("done before, skipped") == 9 and "running" not in err  # 2 data, 1 baseline, 3 x 2
    assert encoder.stat().st_mtime_ns == before and _table(out) == table
    # a run of one reduction keeps the other rows (and the speed-up against the first reduction)
    assert main(["experiment", "tiny", "--output", str(out), "--reductions", "HASH-6"]) == 0
    assert _table(out) == table

    recipe = load_experiment("tiny")
    recipe["pretrain"]["overrides"]["max_epochs"] = 2
    with pytest.raises(ExperimentError, match=r"pretrain/ALL was computed with other settings \(changed: "
                                              r"overrides.max_epochs\); delete .*pretrain/ALL to recompute it"):
        ExperimentRunner(recipe, out, log=lambda m: None).run()
    assert encoder.stat().st_mtime_ns == before


def _small_recipe(tmp_path: Path) -> dict:
    """HASH-6 only, 4 epochs, a checkpoint every 2: the first run dies at the start of epoch 4."""
    recipe = load_experiment("tiny")
    recipe["reductions"] = [r for r in recipe["reductions"] if r["name"] == "HASH-6"]
    recipe["pretrain"]["overrides"].update(
        max_epochs=4, save_interval=2, extra_handlers=[{"_target_": f"{__name__}.DieAtEpoch", "epoch": 4,
                                                        "flag_file": str(tmp_path / "died")}])
    recipe["downstream"]["tasks"][0]["data"]["per_split"] = [4, 2, 4]
    return recipe


@pytest.mark.slow
def test_a_pretraining_that_died_is_reported_then_resumed_from_its_checkpoint(tmp_path):
    out, logs = tmp_path / "exp", []
    first = ExperimentRunner(_small_recipe(tmp_path), out, log=logs.append).run()
    assert [f["stage"] for f in first["failures"]] == ["pretrain/HASH-6"]
    assert "simulated crash" in first["failures"][0]["error"]
    # what does not depend on the failed stage ran; what does was left for the next run
    assert json.loads((out / "downstream/phantom-regions/scratch/stage.json").read_text())["status"] == "done"
    failed = json.loads((out / "pretrain/HASH-6/stage.json").read_text())
    assert failed["status"] == "failed" and "simulated crash" in failed["error"] and "Traceback" in failed["traceback"]
    assert not (out / "downstream/phantom-regions/HASH-6").exists()
    assert "Failed stages" in (out / "results.md").read_text() and "pretrain/HASH-6" in (out / "results.md").read_text()
    assert (out / "pretrain/HASH-6/run/checkpoint.pt").is_file()  # epoch 2 was saved before the crash

    second = ExperimentRunner(_small_recipe(tmp_path), out, log=logs.append).run()
    assert second["failures"] == []
    pre = json.loads((out / "pretrain/HASH-6/stage.json").read_text())
    # resumed from the checkpoint of epoch 2 (not from the loss history, which had reached epoch 3)
    assert pre["status"] == "done" and pre["resumed_from_epoch"] == 2 and pre["epochs_this_run"] == 2
    assert pre["epochs"] == 4 and pre["pretrain_seconds"] == pytest.approx(2 * pre["train_seconds_this_run"])
    history = json.loads((out / "pretrain/HASH-6/run/loss_history.json").read_text())
    assert history["epoch"] == 4 and np.isfinite(history["epoch_loss"]).all()
    assert json.loads((out / "downstream/phantom-regions/HASH-6/stage.json").read_text())["status"] == "done"


@pytest.mark.slow
def test_a_compute_matched_row_runs_the_iterations_of_its_reduction_and_resumes(tmp_path):
    """ALL with HASH-6's epoch length: HASH-6's iterations and schedule on all slices; killed, it resumes from its
    checkpoint with the same epoch length. With a ResNet18 backbone through pre-training and fine-tuning."""
    from monai_lessmore.utils.torchvision_compat import import_torchvision

    recipe = load_experiment("tiny")
    recipe["backbone"] = "resnet18"
    recipe["reductions"] = [recipe["reductions"][1], {**recipe["reductions"][0], "name": "ALL-iters",
                                                      "match_iterations": "HASH-6"}]
    recipe["compare"] = [["HASH-6", "ALL-iters"]]
    recipe["pretrain"]["overrides"].update(
        max_epochs=3, save_interval=1, extra_handlers=[{"_target_": f"{__name__}.DieInMatchedRun", "epoch": 3,
                                                        "flag_file": str(tmp_path / "died")}])
    recipe["downstream"]["tasks"][0]["data"]["per_split"] = [4, 2, 4]
    out = tmp_path / "exp"
    first = ExperimentRunner(recipe, out, log=lambda m: None).run()
    assert [f["stage"] for f in first["failures"]] == ["pretrain/ALL-iters"]
    second = ExperimentRunner(recipe, out, log=lambda m: None).run()
    assert second["failures"] == []
    hash6 = json.loads((out / "pretrain/HASH-6/stage.json").read_text())
    matched = json.loads((out / "pretrain/ALL-iters/stage.json").read_text())
    assert matched["n_train_slices"] == 40 > hash6["n_train_slices"]
    assert matched["iterations"] == hash6["iterations"] == 3 * hash6["iterations_per_epoch"]
    assert matched["iterations_per_epoch"] == hash6["iterations_per_epoch"] == hash6["n_train_slices"] // 4
    assert matched["resumed_from_epoch"] == 2 and matched["epochs"] == 3 and len(matched["epoch_loss"]) == 3
    assert matched["settings"]["epoch_length"] == hash6["iterations_per_epoch"]
    assert matched["settings"]["match_iterations"] == "HASH-6" and matched["settings"]["backbone"] == "resnet18"
    state = torch.load(out / "pretrain/ALL-iters/encoder.pt", weights_only=True)
    res = import_torchvision("models").resnet18().load_state_dict(state, strict=False)
    assert sorted(res.missing_keys) == ["fc.bias", "fc.weight"] and not res.unexpected_keys
    down = json.loads((out / "downstream/phantom-regions/ALL-iters/stage.json").read_text())
    assert down["status"] == "done" and down["settings"]["backbone"] == "resnet18" and down["seeds"] == [0]
    text = (out / "results.md").read_text()
    assert f"| ALL-iters | 40 of 40 (100.0 %) | 3 / {matched['iterations']} |" in text
    assert "| HASH-6 − ALL-iters | phantom-regions | AUC | 0: " in text


def test_bad_overrides_and_missing_data_fail_before_anything_runs(tmp_path, capsys):
    recipe = load_experiment("tiny")
    bad = copy.deepcopy(recipe)
    bad["pretrain"]["overrides"]["max_epoch"] = 3
    with pytest.raises(ExperimentError, match=r"pretrain.overrides has keys that the bundle config \(train.json\) "
                                              r"does not define: \['max_epoch'\]"):
        ExperimentRunner(bad, tmp_path / "a")
    bad = copy.deepcopy(recipe)
    bad["downstream"]["tasks"][0]["overrides"]["num_run"] = 3
    with pytest.raises(ExperimentError, match=r"task phantom-regions overrides has keys .* \['num_run'\]"):
        ExperimentRunner(bad, tmp_path / "a")
    with pytest.raises(ExperimentError, match=r"--reductions: unknown reductions \['HASH-7'\]"):
        ExperimentRunner(recipe, tmp_path / "a", reductions=["HASH-7"])
    code = main(["experiment", "cpu-small", "--data-root", str(tmp_path / "none"), "--output", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2 and f"not found: pretrain.data {tmp_path / 'none' / 'ct'}" in err and "--data-root" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_reduction_that_reads_nothing_fails_and_the_cli_exits_1(tmp_path, capsys):
    data = tmp_path / "ct"
    data.mkdir()
    (data / "broken.nii.gz").write_bytes(b"\x1f\x8b not a volume")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "broken", "pretrain": {"data": str(data), "overrides": {"max_epochs": 1}},
        "reductions": [{"name": "ALL", "config": {"method": "none"}}], "downstream": {"tasks": []}}))
    out = tmp_path / "exp"
    assert main(["experiment", str(recipe), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert "[reduce/ALL] FAILED: ValueError: no slice of" in err and "1 unreadable" in err
    record = json.loads((out / "reduce/ALL/stage.json").read_text())
    assert record["status"] == "failed" and not (out / "pretrain").exists()
    assert "- `reduce/ALL`: ValueError: no slice of" in (out / "results.md").read_text()


def test_reserved_keys_and_a_second_command_on_the_same_folder_are_refused(tmp_path):
    recipe = load_experiment("tiny")
    bad = copy.deepcopy(recipe)
    bad["pretrain"]["overrides"]["output_dir"] = "/elsewhere"
    with pytest.raises(ExperimentError, match=r"pretrain.overrides sets \['output_dir'\], which the experiment sets"):
        ExperimentRunner(bad, tmp_path / "a")
    bad = copy.deepcopy(recipe)
    bad["downstream"]["tasks"][0]["overrides"]["pretrained_encoder"] = "/some/encoder.pt"
    with pytest.raises(ExperimentError, match=r"sets \['pretrained_encoder'\]"):
        ExperimentRunner(bad, tmp_path / "a")
    out = tmp_path / "busy"
    out.mkdir()
    with open(out / ".lessmore-experiment.lock", "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ExperimentError, match=r"another lessmore experiment runs into .*busy"):
            ExperimentRunner(recipe, out, log=lambda m: None).run()
    assert sorted(p.name for p in out.iterdir()) == [".lessmore-experiment.lock"]  # nothing else written


def test_dry_run_lists_stages_and_runs_nothing(tmp_path, capsys):
    assert main(["experiment", "tiny", "--output", str(tmp_path / "exp"), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "reduction HASH-6: {'method': 'hash', 'threshold': 6, 'algorithm': 'leader'}" in err
    assert "  pretrain/HASH-6: to run" in err and "  downstream/phantom-regions/scratch: to run" in err
    assert "  data/pretrain: to run" in err
    assert not (tmp_path / "exp").exists()
    # without the data a dry run still shows the plan, with a warning naming --data-root
    assert main(["experiment", "cpu-small", "--data-root", str(tmp_path / "none"), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "--data-root" in err and "  pretrain/EveryN-10: to run" in err
    # the long CPU recipe: its plan, the compute-matched row and the paired comparisons, nothing run
    assert main(["experiment", "cpu-long", "--data-root", str(tmp_path / "none"), "--output", str(tmp_path / "long"),
                 "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "pre-training: swav (resnet18) on " in err
    assert "reduction ALL-iters-HASH-6: {'method': 'none'}, the iterations per epoch of HASH-6" in err
    assert "paired comparison: HASH-6 - ALL per seed" in err and "paired comparison: HASH-6 - ALL-iters-HASH-6" in err
    assert "  pretrain/ALL-iters-HASH-6: to run" in err and "  downstream/OrganAMNIST/scratch: to run" in err
    assert not (tmp_path / "long").exists()
