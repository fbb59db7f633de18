"""The experiment's tables: the paper's layout (baseline first), the speed-up against ALL, failed stages shown, the
stages with their iterations and loss plateau, the paired per-seed comparisons and the loss curves."""

from __future__ import annotations

import csv
import io

import numpy as np

import pytest

from monai_lessmore.experiment.tables import (
    loss_plateau,
    paired_rows,
    plot_auc_vs_kept,
    plot_loss_curves,
    results_markdown_table,
    results_rows,
    write_results,
)


def _summary(auc, f1, acc, seeds=None):
    out = {"summary": {m: {"mean": float(np.mean(v)), "std": float(np.std(v)), "values": v}
                       for m, v in (("auc", auc), ("f1", f1), ("accuracy", acc))}}
    return out if seeds is None else {**out, "seeds": seeds}


RECIPE = {"name": "t", "source": "t.yaml", "pretrain": {"method": "swav", "data": "/ct"},
          "reductions": [{"name": "ALL"}, {"name": "HASH-6"}, {"name": "SSIM-10"}, {"name": "MI-10"}],
          "downstream": {"tasks": [{"name": "COVID"}]}}
ROWS = [
    {"name": "scratch", "baseline": True, "reduction": None, "pretrain": None, "tasks": {"COVID": _summary([0.70, 0.74], [0.6, 0.7], [0.65, 0.7])}},
    {"name": "ALL", "reduction": {"n_kept": 1000, "n_slices": 1000, "kept_fraction": 1.0},
     "pretrain": {"pretrain_seconds": 900.0, "epochs": 3, "iterations": 30},
     "tasks": {"COVID": _summary([0.80, 0.82], [0.7, 0.72], [0.7, 0.75])}},
    {"name": "HASH-6", "reduction": {"n_kept": 100, "n_slices": 1000, "kept_fraction": 0.1},
     "pretrain": {"pretrain_seconds": 100.0, "epochs": 3, "iterations": 3},
     "tasks": {"COVID": _summary([0.83, 0.83], [0.74, 0.76], [0.8, 0.8])}},
    {"name": "SSIM-10", "reduction": {"n_kept": 100, "n_slices": 1000, "kept_fraction": 0.1}, "pretrain": None,
     "tasks": {"COVID": None}},
    {"name": "MI-10", "reduction": None, "pretrain": None, "tasks": {"COVID": None}},  # its reduction failed
]


def test_markdown_table_in_the_papers_layout():
    text = results_markdown_table(RECIPE, ROWS, [{"stage": "pretrain/SSIM-10", "error": "RuntimeError: boom"}])
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0] == ("| Pre-training | Kept slices | Epochs / iterations | Pre-training time | COVID AUC | COVID F1 | "
                       "COVID Accuracy |")
    assert rows[1] == "| none (random init) | — | — | — | 0.720 ± 0.020 | 0.650 ± 0.050 | 0.675 ± 0.025 |"
    assert rows[2] == ("| ALL | 1000 of 1000 (100.0 %) | 3 / 30 | 15.0 min | 0.810 ± 0.010 | 0.710 ± 0.010 | "
                       "0.725 ± 0.025 |")
    assert rows[3].startswith("| HASH-6 | 100 of 1000 (10.0 %) | 3 / 3 | 100 s, 9.0x | 0.830 ± 0.000 |")
    assert rows[4] == "| SSIM-10 | 100 of 1000 (10.0 %) | — | failed | — | — | — |"
    assert rows[5] == "| MI-10 | failed | — | — | — | — | — |"
    assert "- `pretrain/SSIM-10`: RuntimeError: boom" in text


def test_csv_has_one_row_per_pretraining_task_and_metric():
    records = results_rows(RECIPE, ROWS)
    assert len(records) == 5 * 3
    hash6 = [r for r in records if r["pretraining"] == "HASH-6"]
    assert [r["metric"] for r in hash6] == ["auc", "f1", "accuracy"]
    assert hash6[0]["speed_up_vs_first"] == 9.0 and hash6[0]["kept_fraction"] == 0.1 and hash6[0]["n"] == 2
    assert hash6[1]["values"] == "0.740000 0.760000"
    assert records[0]["pretraining"] == "none (random init)" and records[0]["pretrain_seconds"] is None
    assert all(r["mean"] is None for r in records if r["pretraining"] == "SSIM-10")


def test_write_results_writes_three_files_atomically(tmp_path):
    written = write_results(tmp_path, RECIPE, ROWS)
    assert sorted(p.name for p in written) == ["auc_vs_kept_fraction.png", "results.csv", "results.md"]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text())))
    assert rows[3]["pretraining"] == "ALL" and float(rows[3]["mean"]) == 0.81
    assert plot_auc_vs_kept(RECIPE, ROWS)[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)  # no temporaries left


def test_the_speed_up_is_against_the_recipes_first_reduction_even_when_it_failed():
    recipe = {**RECIPE, "reductions": [{"name": "ALL"}, {"name": "HASH-6"}]}
    rows = [ROWS[0], {**ROWS[1], "pretrain": None, "tasks": {"COVID": None}}, ROWS[2]]
    text = results_markdown_table(recipe, rows)
    assert "| ALL | 1000 of 1000 (100.0 %) | — | failed |" in text
    assert "| HASH-6 | 100 of 1000 (10.0 %) | 3 / 3 | 100 s |" in text  # no ratio: ALL has no time
    assert all(r["speed_up_vs_first"] is None for r in results_rows(recipe, rows))
    ok = results_rows(recipe, ROWS[:3])
    assert {r["speed_up_vs_first"] for r in ok if r["pretraining"] == "HASH-6"} == {9.0}


def test_skipped_volumes_are_listed_under_the_table():
    rows = [{**ROWS[2], "reduction": {**ROWS[2]["reduction"], "failures": [{"source": "/ct/bad.nii.gz",
                                                                               "error": "OSError: truncated"}]}}]
    text = results_markdown_table(RECIPE, rows)
    assert "- HASH-6: `/ct/bad.nii.gz`: OSError: truncated" in text


@pytest.mark.parametrize("losses, share, plateau", [
    ([6.0, 5.0, 4.0, 3.9, 3.9, 3.9, 3.9, 3.9, 3.9, 3.9], 0.0, True),      # flat for the last 2 of 10 epochs
    ([6.0, 5.8, 5.6, 5.4, 5.2, 5.0, 4.8, 4.6, 4.4, 4.2], 0.4 / 1.8, False),  # a straight line: 2 of 9 steps
    ([6.0, 5.0, 4.0, 3.9, 3.9, 3.9, 3.9, 3.96, 3.95, 3.9], 0.06 / 2.1, True),  # noise at the end
    ([6.0, 6.1, 6.2], None, True),                                          # no decrease at all
])
def test_loss_plateau_is_the_tails_share_of_the_decrease(losses, share, plateau):
    level = loss_plateau(losses)
    assert level["tail_epochs"] == (2 if len(losses) == 10 else 1) and level["plateau"] is plateau
    assert level["tail_share"] == (None if share is None else pytest.approx(share))
    assert level["first"] == losses[0] and level["last"] == losses[-1]
    assert loss_plateau([6.0]) is None


def _paired_recipe_and_rows():
    recipe = {**RECIPE, "compare": [["HASH-6", "ALL"], ["SSIM-10", "ALL"]]}
    rows = [ROWS[0],
            {**ROWS[1], "tasks": {"COVID": _summary([0.80, 0.82, 0.78], [0.7, 0.7, 0.7], [0.7, 0.7, 0.7], [0, 1, 2])}},
            {**ROWS[2], "tasks": {"COVID": _summary([0.85, 0.81, 0.80], [0.7, 0.8, 0.7], [0.7, 0.7, 0.7], [0, 1, 2])}},
            ROWS[3]]
    return recipe, rows


def test_paired_comparisons_pair_the_runs_by_seed():
    recipe, rows = _paired_recipe_and_rows()
    paired = paired_rows(recipe, rows)
    assert [(p["a"], p["b"], p["metric"]) for p in paired] == [("HASH-6", "ALL", m) for m in ("auc", "f1", "accuracy")]
    auc = paired[0]
    assert auc["seeds"] == [0, 1, 2] and auc["differences"] == pytest.approx([0.05, -0.01, 0.02])
    assert auc["mean_difference"] == pytest.approx(0.02) and auc["a_better"] == 2 and auc["n"] == 3
    assert paired[2]["a_better"] == 0  # equal is not better
    # a seed only one side has run is left out, not paired with another seed
    rows[2] = {**rows[2], "tasks": {"COVID": _summary([0.85, 0.80], [0.7, 0.7], [0.7, 0.7], [0, 2])}}
    auc = paired_rows(recipe, rows)[0]
    assert auc["seeds"] == [0, 2] and auc["differences"] == pytest.approx([0.05, 0.02])
    text = results_markdown_table(recipe, rows)
    assert "| HASH-6 − ALL | COVID | AUC | 0: +0.050, 2: +0.020 | +0.035 | 2 of 2 |" in text


def test_stages_table_and_loss_curves(tmp_path):
    losses = [6.5, 6.0, 5.5, 5.2, 5.1, 5.05, 5.04, 5.03, 5.03, 5.02]
    rows = [{**ROWS[0], "tasks": {"COVID": {**ROWS[0]["tasks"]["COVID"], "stage_seconds": 30.0}}},
            {**ROWS[2], "reduction": {**ROWS[2]["reduction"], "stage_seconds": 4.0},
             "pretrain": {**ROWS[2]["pretrain"], "epochs": 10, "iterations": 30, "iterations_per_epoch": 3,
                          "stage_seconds": 200.0, "epoch_loss": losses}}]
    text = results_markdown_table(RECIPE, rows)
    assert "| none (random init) | — | — | — | — | — | — | 30 s |" in text
    assert "| HASH-6 | 4 s | 3.3 min | 10 x 3 = 30 | 6.500 → 5.020 | 0.7 % | yes | — |" in text
    png = plot_loss_curves(RECIPE, rows)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_loss_curves(RECIPE, ROWS) is None  # no loss history recorded: no plot
    written = write_results(tmp_path, {**RECIPE, "compare": [["HASH-6", "ALL"]]}, rows)
    assert "loss_curves.png" in [p.name for p in written] and "paired.csv" not in [p.name for p in written]


def test_paired_csv_is_written_with_the_differences(tmp_path):
    recipe, rows = _paired_recipe_and_rows()
    written = write_results(tmp_path, recipe, rows)
    assert sorted(p.name for p in written) == ["auc_vs_kept_fraction.png", "paired.csv", "results.csv", "results.md"]
    records = list(csv.DictReader(io.StringIO((tmp_path / "paired.csv").read_text())))
    assert records[0]["a"] == "HASH-6" and records[0]["seeds"] == "0 1 2" and records[0]["a_better"] == "2"
    assert [round(float(x), 6) for x in records[0]["differences"].split()] == [0.05, -0.01, 0.02]
