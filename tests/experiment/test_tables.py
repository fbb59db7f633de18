"""The experiment's tables: the paper's layout (baseline first), the speed-up against ALL, failed stages shown."""

from __future__ import annotations

import csv
import io

import numpy as np

from monai_lessmore.experiment.tables import plot_auc_vs_kept, results_markdown_table, results_rows, write_results


def _summary(auc, f1, acc):
    return {"summary": {m: {"mean": float(np.mean(v)), "std": float(np.std(v)), "values": v}
                        for m, v in (("auc", auc), ("f1", f1), ("accuracy", acc))}}


RECIPE = {"name": "t", "source": "t.yaml", "pretrain": {"method": "swav", "data": "/ct"},
          "reductions": [{"name": "ALL"}, {"name": "HASH-6"}, {"name": "SSIM-10"}, {"name": "MI-10"}],
          "downstream": {"tasks": [{"name": "COVID"}]}}
ROWS = [
    {"name": "scratch", "baseline": True, "reduction": None, "pretrain": None, "tasks": {"COVID": _summary([0.70, 0.74], [0.6, 0.7], [0.65, 0.7])}},
    {"name": "ALL", "reduction": {"n_kept": 1000, "n_slices": 1000, "kept_fraction": 1.0},
     "pretrain": {"pretrain_seconds": 900.0, "epochs": 3}, "tasks": {"COVID": _summary([0.80, 0.82], [0.7, 0.72], [0.7, 0.75])}},
    {"name": "HASH-6", "reduction": {"n_kept": 100, "n_slices": 1000, "kept_fraction": 0.1},
     "pretrain": {"pretrain_seconds": 100.0, "epochs": 3}, "tasks": {"COVID": _summary([0.83, 0.83], [0.74, 0.76], [0.8, 0.8])}},
    {"name": "SSIM-10", "reduction": {"n_kept": 100, "n_slices": 1000, "kept_fraction": 0.1}, "pretrain": None,
     "tasks": {"COVID": None}},
    {"name": "MI-10", "reduction": None, "pretrain": None, "tasks": {"COVID": None}},  # its reduction failed
]


def test_markdown_table_in_the_papers_layout():
    text = results_markdown_table(RECIPE, ROWS, [{"stage": "pretrain/SSIM-10", "error": "RuntimeError: boom"}])
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0] == "| Pre-training | Kept slices | Pre-training time | COVID AUC | COVID F1 | COVID Accuracy |"
    assert rows[1] == "| none (random init) | — | — | 0.720 ± 0.020 | 0.650 ± 0.050 | 0.675 ± 0.025 |"
    assert rows[2] == "| ALL | 1000 of 1000 (100.0 %) | 15.0 min | 0.810 ± 0.010 | 0.710 ± 0.010 | 0.725 ± 0.025 |"
    assert rows[3].startswith("| HASH-6 | 100 of 1000 (10.0 %) | 100 s, 9.0x | 0.830 ± 0.000 |")
    assert rows[4] == "| SSIM-10 | 100 of 1000 (10.0 %) | failed | — | — | — |"
    assert rows[5] == "| MI-10 | failed | — | — | — | — |"
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
    assert "| ALL | 1000 of 1000 (100.0 %) | failed |" in text
    assert "| HASH-6 | 100 of 1000 (10.0 %) | 100 s |" in text  # no ratio: ALL has no time
    assert all(r["speed_up_vs_first"] is None for r in results_rows(recipe, rows))
    ok = results_rows(recipe, ROWS[:3])
    assert {r["speed_up_vs_first"] for r in ok if r["pretraining"] == "HASH-6"} == {9.0}


def test_skipped_volumes_are_listed_under_the_table():
    rows = [{**ROWS[2], "reduction": {**ROWS[2]["reduction"], "failures": [{"source": "/ct/bad.nii.gz",
                                                                               "error": "OSError: truncated"}]}}]
    text = results_markdown_table(RECIPE, rows)
    assert "- HASH-6: `/ct/bad.nii.gz`: OSError: truncated" in text
