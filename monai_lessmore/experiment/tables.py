"""The experiment's outputs: ``results.csv``, ``results.md`` in the paper's table layout, and the AUC plot.

The paper's Tables 4-7 have one row per pre-training (dataset, reduction method) and, per downstream task, AUC and
F1 as mean ± std over five runs (accuracy in its appendix tables 13-16); Table 3 is the from-scratch baseline.
``results.md`` puts the baseline first and adds what the paper gives in its text: the kept fraction of the
pre-training slices and the pre-training time (the paper's "up to nine times faster" for HASH-6 against ALL).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_lessmore.classification.protocol import METRIC_NAMES, format_mean_std
from monai_lessmore.utils.files import atomic_write_bytes, atomic_write_text

__all__ = ["write_results", "results_rows", "results_markdown_table", "plot_auc_vs_kept"]

_METRIC_TITLES = {"auc": "AUC", "f1": "F1", "accuracy": "Accuracy"}
CSV_FIELDS = ("pretraining", "ssl_method", "kept_slices", "total_slices", "kept_fraction", "pretrain_epochs",
              "pretrain_seconds", "speed_up_vs_first", "task", "metric", "mean", "std", "n", "values")


def _is_baseline(row: dict[str, Any]) -> bool:
    return bool(row.get("baseline"))


def _kept(row: dict[str, Any]) -> tuple[int | None, int | None, float | None]:
    red = row.get("reduction") or {}
    return red.get("n_kept"), red.get("n_slices"), red.get("kept_fraction")


def _pretrain_seconds(row: dict[str, Any]) -> float | None:
    return (row.get("pretrain") or {}).get("pretrain_seconds")


def _reference(recipe: dict[str, Any], rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The row of the recipe's first reduction (ALL in the shipped recipes): the reference of the speed-up."""
    first = recipe["reductions"][0]["name"] if recipe.get("reductions") else None
    return next((r for r in rows if not _is_baseline(r) and r["name"] == first), None)


def _reference_seconds(recipe: dict[str, Any], rows: Sequence[dict[str, Any]]) -> float | None:
    row = _reference(recipe, rows)
    return None if row is None else _pretrain_seconds(row)


def results_rows(recipe: dict[str, Any], rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One CSV row per (pre-training, task, metric); the speed-up is against the first reduction (ALL)."""
    reference = _reference_seconds(recipe, rows)
    out = []
    for row in rows:
        kept, total, fraction = _kept(row)
        seconds = _pretrain_seconds(row)
        base = {
            "pretraining": "none (random init)" if _is_baseline(row) else row["name"],
            "ssl_method": recipe["pretrain"]["method"] if row.get("pretrain") else "",
            "kept_slices": kept, "total_slices": total, "kept_fraction": fraction,
            "pretrain_epochs": (row.get("pretrain") or {}).get("epochs"), "pretrain_seconds": seconds,
            "speed_up_vs_first": reference / seconds if reference and seconds else None,
        }
        for task, result in row["tasks"].items():
            summary = (result or {}).get("summary") or {}
            for metric in METRIC_NAMES:
                m = summary.get(metric)
                out.append({**base, "task": task, "metric": metric,
                            "mean": None if m is None else m["mean"], "std": None if m is None else m["std"],
                            "n": None if m is None else len(m["values"]),
                            "values": "" if m is None else " ".join(f"{v:.6f}" for v in m["values"])})
        if not row["tasks"]:
            out.append({**base, "task": "", "metric": "", "mean": None, "std": None, "n": None, "values": ""})
    return out


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def results_markdown_table(recipe: dict[str, Any], rows: Sequence[dict[str, Any]],
                           failures: Sequence[dict[str, str]] = ()) -> str:
    """The paper's layout: a row per pre-training, the baseline first; per task AUC, F1, accuracy (mean ± std)."""
    tasks = [t["name"] for t in recipe["downstream"]["tasks"]]
    reference = _reference_seconds(recipe, rows)
    first = _reference(recipe, rows)
    head = ["Pre-training", "Kept slices", "Pre-training time"]
    head += [f"{t} {_METRIC_TITLES[m]}" for t in tasks for m in METRIC_NAMES]
    lines = [f"# Experiment {recipe['name']}", ""]
    if recipe.get("description"):
        lines += [str(recipe["description"]).strip(), ""]
    pre = recipe["pretrain"]
    lines += [f"Pre-training: {pre['method']} on {pre['data']}; recipe {recipe['source']}.",
              "Downstream: mean ± std over the runs (or folds) of each task's protocol; the from-scratch baseline "
              "first (the paper's Table 3), then one row per reduction (Tables 4-7). Pre-training time: wall "
              "seconds of the training loop, with the speed-up against the first reduction.", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        scratch = _is_baseline(row)
        kept, total, fraction = _kept(row)
        seconds = _pretrain_seconds(row)
        if scratch:
            cells = ["none (random init)", "—", "—"]
        else:
            if kept is None:
                kept_text = "failed"
            else:
                kept_text = f"{kept} of {total}" + ("" if fraction is None else f" ({100 * fraction:.1f} %)")
            if row.get("pretrain") is None:
                time_text = "not run" if row.get("not_run") else ("failed" if row.get("reduction") else "—")
            elif seconds is None:
                time_text = "—"
            else:
                speed = f", {reference / seconds:.1f}x" if reference and row is not first else ""
                time_text = _duration(seconds) + speed
            cells = [row["name"], kept_text, time_text]
        for task in tasks:
            summary = ((row["tasks"].get(task) or {}).get("summary")) or {}
            for metric in METRIC_NAMES:
                m = summary.get(metric)
                cells.append("—" if m is None else format_mean_std(m["mean"], m["std"]))
        lines.append("| " + " | ".join(cells) + " |")
    skipped = [(row["name"], f) for row in rows for f in ((row.get("reduction") or {}).get("failures") or [])]
    if skipped:
        lines += ["", "Volumes the reduction could not read (left out of that pre-training):", ""]
        lines += [f"- {name}: `{f['source']}`: {f['error']}" for name, f in skipped]
    if failures:
        lines += ["", "Failed stages (re-run the same command to retry them):", ""]
        lines += [f"- `{f['stage']}`: {f['error']}" for f in failures]
    return "\n".join(lines) + "\n"


def plot_auc_vs_kept(recipe: dict[str, Any], rows: Sequence[dict[str, Any]], *, dpi: int = 100) -> bytes | None:
    """PNG: downstream AUC (mean ± std) against the kept fraction, one panel per task; the baseline dashed."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    from monai_lessmore.cli.report import _png_bytes

    tasks = [t["name"] for t in recipe["downstream"]["tasks"]]
    if not tasks:
        return None
    fig = Figure(figsize=(4.6 * len(tasks) + 0.4, 4.0), layout="constrained")
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks):
        for row in rows:
            auc = (((row["tasks"].get(task) or {}).get("summary")) or {}).get("auc")
            if auc is None:
                continue
            _, _, fraction = _kept(row)
            if _is_baseline(row):
                ax.axhline(auc["mean"], color="gray", linestyle="--", label="random init")
                continue
            if fraction is None:
                continue
            ax.errorbar([100 * fraction], [auc["mean"]], yerr=[auc["std"]], fmt="o", capsize=3, label=row["name"])
            ax.annotate(row["name"], (100 * fraction, auc["mean"]), textcoords="offset points", xytext=(5, 4),
                        fontsize=8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())  # 10, 100 rather than 10^1, 10^2
        ax.set_xlabel("kept fraction of the pre-training slices (%)")
        ax.set_ylabel("downstream AUC (mean ± std)")
        ax.set_title(task)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{recipe['name']}: downstream AUC against the kept fraction", fontsize=11)
    return _png_bytes(fig, dpi)


def write_results(out: Path, recipe: dict[str, Any], rows: Sequence[dict[str, Any]],
                  failures: Sequence[dict[str, str]] = ()) -> list[Path]:
    """Write ``results.csv``, ``results.md`` and ``auc_vs_kept_fraction.png`` (atomically) into ``out``."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in results_rows(recipe, rows):
        writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    written = [atomic_write_text(out / "results.csv", buf.getvalue()),
               atomic_write_text(out / "results.md", results_markdown_table(recipe, rows, failures))]
    png = plot_auc_vs_kept(recipe, rows)
    if png is not None:
        written.append(atomic_write_bytes(out / "auc_vs_kept_fraction.png", png))
    return written
