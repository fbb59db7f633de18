"""The experiment's outputs: ``results.csv``, ``paired.csv``, ``results.md`` in the paper's table layout, and plots.

The paper's Tables 4-7 have one row per pre-training (dataset, reduction method) and, per downstream task, AUC and
F1 as mean ± std over five runs (accuracy in its appendix tables 13-16); Table 3 is the from-scratch baseline.
``results.md`` puts the baseline first and adds what the paper gives in its text: the kept fraction of the
pre-training slices and the pre-training time (the paper's "up to nine times faster" for HASH-6 against ALL).
Beyond the paper it gives every stage's wall time, the pre-training iterations and whether the loss had levelled
off (:func:`loss_plateau`), and the paired comparisons of the recipe's ``compare`` pairs: downstream runs with the
same index share their seed (initialisation of the head, batch order), so the per-seed difference of two
pre-trainings removes the run-to-run noise that both share. Plots: ``auc_vs_kept_fraction.png`` and
``loss_curves.png`` (the pre-training loss of every run against epoch and against iteration).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_lessmore.classification.protocol import METRIC_NAMES, format_mean_std
from monai_lessmore.utils.files import atomic_write_bytes, atomic_write_text

__all__ = ["write_results", "results_rows", "results_markdown_table", "plot_auc_vs_kept", "plot_loss_curves",
           "loss_plateau", "paired_rows", "PLATEAU_TAIL", "PLATEAU_SHARE"]

_METRIC_TITLES = {"auc": "AUC", "f1": "F1", "accuracy": "Accuracy"}
CSV_FIELDS = ("pretraining", "ssl_method", "kept_slices", "total_slices", "kept_fraction", "pretrain_epochs",
              "pretrain_iterations", "pretrain_seconds", "speed_up_vs_first", "task", "metric", "mean", "std", "n",
              "values")
PAIRED_FIELDS = ("a", "b", "task", "metric", "seeds", "differences", "mean_difference", "a_better", "n")
#: the loss has levelled off when its last PLATEAU_TAIL of epochs brought at most PLATEAU_SHARE of its total decrease
PLATEAU_TAIL, PLATEAU_SHARE = 0.2, 0.05


def loss_plateau(epoch_loss: Sequence[float], tail: float = PLATEAU_TAIL,
                 share: float = PLATEAU_SHARE) -> dict[str, Any] | None:
    """Whether a pre-training loss had levelled off: the decrease over its last ``tail`` of epochs against its total.

    With ``L`` the epoch-mean losses and ``k = max(1, ceil(tail * len(L)))``, the total decrease is ``L[0] - L[-1]``
    and the tail's is ``L[-1 - k] - L[-1]``; the run counts as levelled off when the tail brought at most ``share``
    of the total (or the loss did not decrease at all). Under a cosine schedule the learning rate of the last 20 %
    of iterations is below a tenth of its peak, so the criterion says that training had stopped improving the loss
    under its schedule, not that a longer schedule could not lower it: compare the curves of ``loss_curves.png``.

    Args:
        epoch_loss: mean loss of each epoch, in order.
        tail: the fraction of the epochs that forms the tail.
        share: the largest share of the total decrease that the tail may bring.

    Returns:
        ``{"first", "last", "total_drop", "tail_epochs", "tail_drop", "tail_share", "plateau"}``, or ``None`` for
        fewer than two epochs.
    """
    losses = [float(x) for x in epoch_loss]
    if len(losses) < 2:
        return None
    k = min(len(losses) - 1, max(1, math.ceil(tail * len(losses))))
    total, tail_drop = losses[0] - losses[-1], losses[-1 - k] - losses[-1]
    tail_share = tail_drop / total if total > 0 else None
    return {"first": losses[0], "last": losses[-1], "total_drop": total, "tail_epochs": k, "tail_drop": tail_drop,
            "tail_share": tail_share, "plateau": tail_share is None or tail_share <= share}


def _is_baseline(row: dict[str, Any]) -> bool:
    return bool(row.get("baseline"))


def _kept(row: dict[str, Any]) -> tuple[int | None, int | None, float | None]:
    red = row.get("reduction") or {}
    return red.get("n_kept"), red.get("n_slices"), red.get("kept_fraction")


def _pretrain_seconds(row: dict[str, Any]) -> float | None:
    return (row.get("pretrain") or {}).get("pretrain_seconds")


def _display_name(row: dict[str, Any]) -> str:
    return "none (random init)" if _is_baseline(row) else row["name"]


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
            "pretraining": _display_name(row),
            "ssl_method": recipe["pretrain"]["method"] if row.get("pretrain") else "",
            "kept_slices": kept, "total_slices": total, "kept_fraction": fraction,
            "pretrain_epochs": (row.get("pretrain") or {}).get("epochs"),
            "pretrain_iterations": (row.get("pretrain") or {}).get("iterations"), "pretrain_seconds": seconds,
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
    head = ["Pre-training", "Kept slices", "Epochs / iterations", "Pre-training time"]
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
            cells = ["none (random init)", "—", "—", "—"]
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
            cells = [row["name"], kept_text, _epochs_iterations(row.get("pretrain")), time_text]
        for task in tasks:
            summary = ((row["tasks"].get(task) or {}).get("summary")) or {}
            for metric in METRIC_NAMES:
                m = summary.get(metric)
                cells.append("—" if m is None else format_mean_std(m["mean"], m["std"]))
        lines.append("| " + " | ".join(cells) + " |")
    lines += _stages_markdown(recipe, rows)
    lines += _paired_markdown(paired_rows(recipe, rows))
    skipped = [(row["name"], f) for row in rows for f in ((row.get("reduction") or {}).get("failures") or [])]
    if skipped:
        lines += ["", "Volumes the reduction could not read (left out of that pre-training):", ""]
        lines += [f"- {name}: `{f['source']}`: {f['error']}" for name, f in skipped]
    if failures:
        lines += ["", "Failed stages (re-run the same command to retry them):", ""]
        lines += [f"- `{f['stage']}`: {f['error']}" for f in failures]
    return "\n".join(lines) + "\n"


def _epochs_iterations(pretrain: dict[str, Any] | None) -> str:
    if not pretrain or pretrain.get("epochs") is None:
        return "—"
    return f"{pretrain['epochs']} / {pretrain.get('iterations', '—')}"


def _stages_markdown(recipe: dict[str, Any], rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every stage's wall time, the pre-training's iterations and loss, whether the loss had levelled off."""
    tasks = [t["name"] for t in recipe["downstream"]["tasks"]]
    head = ["Pre-training", "Reduce", "Pre-train stage", "Epochs x iterations per epoch", "Loss first → last epoch",
            f"Last {PLATEAU_TAIL:.0%} of epochs: share of the decrease", "Levelled off"]
    head += [f"{t} stage" for t in tasks]
    lines = ["", f"Stages: wall time of each stage (a resumed stage: its last attempt); the loss levelled off when the "
             f"last {PLATEAU_TAIL:.0%} of the epochs brought at most {PLATEAU_SHARE:.0%} of its decrease.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        red, pre = row.get("reduction") or {}, row.get("pretrain") or {}
        cells = [_display_name(row), _duration(red.get("stage_seconds")) if red else "—",
                 _duration(pre.get("stage_seconds")) if pre else "—"]
        if pre.get("epochs") is not None:
            per_epoch = pre.get("iterations_per_epoch")
            cells.append(f"{pre['epochs']} x {per_epoch} = {pre.get('iterations')}" if per_epoch
                         else f"{pre['epochs']} epochs, {pre.get('iterations')} iterations")
        else:
            cells.append("—")
        level = loss_plateau(pre.get("epoch_loss") or [])
        if level is None:
            cells += ["—", "—", "—"]
        else:
            share = "—" if level["tail_share"] is None else f"{100 * level['tail_share']:.1f} %"
            cells += [f"{level['first']:.3f} → {level['last']:.3f}", share, "yes" if level["plateau"] else "no"]
        for task in tasks:
            cells.append(_duration((row["tasks"].get(task) or {}).get("stage_seconds")))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _metric_by_seed(result: dict[str, Any] | None, metric: str) -> dict[Any, float]:
    values = ((((result or {}).get("summary")) or {}).get(metric) or {}).get("values") or []
    seeds = (result or {}).get("seeds") or list(range(len(values)))
    return dict(zip(seeds, values)) if len(seeds) == len(values) else {}


def paired_rows(recipe: dict[str, Any], rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The recipe's ``compare`` pairs ``[A, B]``: per task and metric, ``A - B`` for every seed both have run.

    Returns:
        One dict per (pair, task, metric) with both done: ``seeds``, ``differences``, ``mean_difference``,
        ``a_better`` (seeds where A is higher) and ``n``.
    """
    by_name = {r["name"]: r for r in rows if not _is_baseline(r)}
    out = []
    for a, b in recipe.get("compare") or []:
        if a not in by_name or b not in by_name:
            continue
        for task in [t["name"] for t in recipe["downstream"]["tasks"]]:
            for metric in METRIC_NAMES:
                va = _metric_by_seed(by_name[a]["tasks"].get(task), metric)
                vb = _metric_by_seed(by_name[b]["tasks"].get(task), metric)
                seeds = [k for k in va if k in vb]
                if not seeds:
                    continue
                diffs = [va[k] - vb[k] for k in seeds]
                out.append({"a": a, "b": b, "task": task, "metric": metric, "seeds": seeds, "differences": diffs,
                            "mean_difference": sum(diffs) / len(diffs), "a_better": sum(d > 0 for d in diffs),
                            "n": len(diffs)})
    return out


def _paired_markdown(paired: Sequence[dict[str, Any]]) -> list[str]:
    if not paired:
        return []
    lines = ["", "Paired comparisons: A − B on the test set for each seed of the downstream runs (runs with the same "
             "seed share the head's initialisation and the batch order).", "",
             "| A − B | Task | Metric | Per seed (seed: difference) | Mean difference | A higher |",
             "|---|---|---|---|---|---|"]
    for p in paired:
        per_seed = ", ".join(f"{seed}: {d:+.3f}" for seed, d in zip(p["seeds"], p["differences"]))
        lines.append(f"| {p['a']} − {p['b']} | {p['task']} | {_METRIC_TITLES.get(p['metric'], p['metric'])} | "
                     f"{per_seed} | {p['mean_difference']:+.3f} | {p['a_better']} of {p['n']} |")
    return lines


def plot_loss_curves(recipe: dict[str, Any], rows: Sequence[dict[str, Any]], *, dpi: int = 100) -> bytes | None:
    """PNG: the epoch-mean pre-training loss of every run, against epoch and against iteration (end of each epoch)."""
    runs = [(r["name"], r["pretrain"]) for r in rows if (r.get("pretrain") or {}).get("epoch_loss")]
    if not runs:
        return None
    from matplotlib.figure import Figure

    from monai_lessmore.cli.report import _png_bytes

    fig = Figure(figsize=(10.4, 4.0), layout="constrained")
    by_epoch, by_iteration = fig.subplots(1, 2)
    for name, pre in runs:
        losses = pre["epoch_loss"]
        per_epoch = pre.get("iterations_per_epoch") or (pre.get("iterations") or 0) / max(len(losses), 1)
        epochs = list(range(1, len(losses) + 1))
        (line,) = by_epoch.plot(epochs, losses, marker=".", markersize=3, label=name)
        by_iteration.plot([e * per_epoch for e in epochs], losses, marker=".", markersize=3, color=line.get_color(),
                          label=name)
    for ax, label in ((by_epoch, "epoch"), (by_iteration, "iteration (end of each epoch)")):
        ax.set_xlabel(label)
        ax.set_ylabel(f"{recipe['pretrain']['method']} loss (epoch mean)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    by_iteration.set_xscale("log")
    fig.suptitle(f"{recipe['name']}: pre-training loss", fontsize=11)
    return _png_bytes(fig, dpi)


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
    """Write ``results.csv``, ``paired.csv`` (when a pair is done), ``results.md``, ``auc_vs_kept_fraction.png`` and
    ``loss_curves.png`` (when a pre-training is done) atomically into ``out``."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in results_rows(recipe, rows):
        writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    written = [atomic_write_text(out / "results.csv", buf.getvalue())]
    paired = paired_rows(recipe, rows)
    if paired:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=PAIRED_FIELDS, lineterminator="\n")
        writer.writeheader()
        for p in paired:
            writer.writerow({**p, "seeds": " ".join(str(k) for k in p["seeds"]),
                             "differences": " ".join(f"{d:.6f}" for d in p["differences"])})
        written.append(atomic_write_text(out / "paired.csv", buf.getvalue()))
    written.append(atomic_write_text(out / "results.md", results_markdown_table(recipe, rows, failures)))
    for name, png in (("auc_vs_kept_fraction.png", plot_auc_vs_kept(recipe, rows)),
                      ("loss_curves.png", plot_loss_curves(recipe, rows))):
        if png is not None:
            written.append(atomic_write_bytes(out / name, png))
    return written
