"""``lessmore experiment``: the tiny preset end to end, skipping done stages, refusing changed settings, resuming a
pre-training that died, and going on past a failed stage."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest
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


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "exp"
    code = main(["experiment", "tiny", "--output", str(out)])
    return code, out


def _table(out: Path) -> list[str]:
    return [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")]


@pytest.mark.slow
def test_tiny_preset_runs_every_stage_and_writes_the_tables(tiny_run):
    code, out = tiny_run
    assert code == 0
    rows = _table(out)
    assert rows[0].startswith("| Pre-training | Kept slices | Pre-training time | phantom-regions AUC |")
    assert rows[1].startswith("| none (from scratch) | — | — | ")  # the baseline first, as the paper's Table 3
    assert rows[2].startswith("| ALL | 40 of 40 (100.0 %) | ")
    assert rows[3].startswith("| HASH-6 | ") and rows[3].split(" | ")[2].endswith("x")  # speed-up against ALL
    reduce_all = json.loads((out / "reduce" / "ALL" / "stage.json").read_text())
    reduce_h6 = json.loads((out / "reduce" / "HASH-6" / "stage.json").read_text())
    assert reduce_all["n_kept"] == reduce_all["n_slices"] == 40
    assert 0 < reduce_h6["n_kept"] < 40 and reduce_h6["settings"]["reducer"]["threshold"] == 6
    pre = json.loads((out / "pretrain" / "HASH-6" / "stage.json").read_text())
    assert pre["status"] == "done" and pre["n_train_slices"] == reduce_h6["n_kept"] and pre["epochs"] == 1
    assert pre["pretrain_seconds"] > 0 and Path(pre["encoder"]).is_file()
    with open(out / "results.csv", newline="") as fh:
        records = list(csv.DictReader(fh))
    assert [r["pretraining"] for r in records[::3]] == ["none (from scratch)", "ALL", "HASH-6"]
    assert {r["metric"] for r in records} == {"auc", "f1", "accuracy"}
    auc = [float(r["mean"]) for r in records if r["metric"] == "auc"]
    assert all(0.0 <= a <= 1.0 for a in auc)
    assert float(records[3]["kept_fraction"]) == 1.0 and float(records[3]["speed_up_vs_first"]) == 1.0
    assert (out / "auc_vs_kept_fraction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    recorded = json.loads((out / "experiment.json").read_text())
    assert recorded["recipe"]["name"] == "tiny" and recorded["environment"]["torch"]
    for stage in ("downstream/phantom-regions/scratch", "downstream/phantom-regions/HASH-6"):
        results = json.loads((out / stage / "protocol" / "results.json").read_text())
        assert results["initialisation"] == ("random" if stage.endswith("scratch") else pre["encoder"])
    assert not list(out.rglob("*.tmp"))  # no temporary outlives the run


@pytest.mark.slow
def test_a_second_run_skips_done_stages_and_changed_settings_are_refused(tiny_run, capsys):
    code, out = tiny_run
    assert code == 0
    encoder = out / "pretrain" / "ALL" / "encoder.pt"
    before = encoder.stat().st_mtime_ns
    table = _table(out)
    capsys.readouterr()
    assert main(["experiment", "tiny", "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("done before, skipped") == 9 and "running" not in err  # 2 data, 1 baseline, 3 x 2
    assert encoder.stat().st_mtime_ns == before and _table(out) == table

    recipe = load_experiment("tiny")
    recipe["pretrain"]["overrides"]["max_epochs"] = 2
    with pytest.raises(ExperimentError, match=r"pretrain/ALL was computed with other settings \(changed: "
                                              r"overrides.max_epochs\); delete .*pretrain/ALL to recompute it"):
        ExperimentRunner(recipe, out, log=lambda m: None).run()
    assert encoder.stat().st_mtime_ns == before


def _small_recipe(tmp_path: Path) -> dict:
    recipe = load_experiment("tiny")
    recipe["reductions"] = [r for r in recipe["reductions"] if r["name"] == "HASH-6"]
    recipe["pretrain"]["overrides"].update(
        max_epochs=2, extra_handlers=[{"_target_": f"{__name__}.DieAtEpoch", "epoch": 2,
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
    assert json.loads((out / "pretrain/HASH-6/stage.json").read_text())["status"] == "running"
    assert not (out / "downstream/phantom-regions/HASH-6").exists()
    assert "Failed stages" in (out / "results.md").read_text() and "pretrain/HASH-6" in (out / "results.md").read_text()
    assert (out / "pretrain/HASH-6/run/checkpoint.pt").is_file()  # epoch 1 was saved before the crash

    second = ExperimentRunner(_small_recipe(tmp_path), out, log=logs.append).run()
    assert second["failures"] == []
    pre = json.loads((out / "pretrain/HASH-6/stage.json").read_text())
    assert pre["status"] == "done" and pre["resumed_from_epoch"] == 1 and pre["epochs"] == 2
    history = json.loads((out / "pretrain/HASH-6/run/loss_history.json").read_text())
    assert history["epoch"] == 2 and np.isfinite(history["epoch_loss"]).all()
    assert json.loads((out / "downstream/phantom-regions/HASH-6/stage.json").read_text())["status"] == "done"


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
    with pytest.raises(ExperimentError, match=r"unknown reductions \['HASH-7'\]"):
        ExperimentRunner(recipe, tmp_path / "a", reductions=["HASH-7"])
    code = main(["experiment", "cpu-small", "--data-root", str(tmp_path / "none"), "--output", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2 and f"not found: pretrain.data {tmp_path / 'none' / 'ct'}" in err and "--data-root" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_dry_run_lists_stages_and_runs_nothing(tmp_path, capsys):
    assert main(["experiment", "tiny", "--output", str(tmp_path / "exp"), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "reduction HASH-6: {'method': 'hash', 'threshold': 6, 'algorithm': 'leader'}" in err
    assert "  pretrain/HASH-6: to run" in err and "  downstream/phantom-regions/scratch: to run" in err
    assert not (tmp_path / "exp").exists()
