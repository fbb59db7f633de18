"""``lessmore report DIR``: look at a reduction before training on it.

Two PNG figures from the output folder of a ``lessmore reduce`` run:

* ``DIR/report_slices.png`` (or ``--output``): like Figure 6 of Wolf et al. (2024), the first kept slices of one
  example volume for each method, one row per method. The run's own method shows what the run kept (its record);
  ``hash`` defaults to HASH-6 (leader) and ``everyn`` to every 10th slice, the paper's settings; ``ssim``, ``mi`` and
  ``deepnet`` are computed only when asked, keeping as many slices as HASH kept of that volume, so the rows compare
  methods at equal count as the paper's Table 5 does. DeepNet without weights available offline is skipped with a
  note in its row.
* ``DIR/report_fractions.png``: the histogram of the kept fraction per volume from ``summary.json``.

Figures are drawn with matplotlib's Agg canvas (no display, no global ``pyplot`` state) and written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from monai_lessmore.reduction.methods import METHODS, get_method
from monai_lessmore.reduction.reducer import SliceReducer
from monai_lessmore.utils.files import atomic_write_bytes

__all__ = [
    "ReportError",
    "MethodRow",
    "make_report",
    "default_methods",
    "parse_methods",
    "example_rows",
    "plot_kept_slices",
    "plot_kept_fractions",
    "SLICES_PNG",
    "FRACTIONS_PNG",
    "PAPER_ORDER",
]

SLICES_PNG = "report_slices.png"
FRACTIONS_PNG = "report_fractions.png"
#: Row order of the figure when the methods come from the defaults (the paper's order, the baseline first).
PAPER_ORDER = ("all", "everyn", "ssim", "mi", "deepnet", "hash")
#: Settings for a method that is not the run's own (paper, section 2.1 and Table 5).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "hash": {"threshold": 6, "algorithm": "leader"},
    "everyn": {"every_n": 10},
    "all": {},
}
_NAMES = {"all": "ALL", "everyn": "EveryN", "hash": "HASH", "ssim": "SSIM", "mi": "MI", "deepnet": "DeepNet"}
_REDUCER_KEYS = (
    "method", "threshold", "fraction", "count", "algorithm", "every_n", "window", "bins", "deepnet_weights",
    "mixed_size",
)


class ReportError(ValueError):
    """The run folder cannot be reported on (missing or unreadable files, unknown volume or method)."""


@dataclass
class MethodRow:
    """One row of the slice figure: a method's kept slices of the example volume, or why it was skipped."""

    method: str
    label: str
    kept: list[int] = field(default_factory=list)
    n_slices: int = 0
    note: str | None = None


def _read_summary(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise ReportError(f"DIR {directory} is not a folder; give the --output folder of a `lessmore reduce` run")
    path = directory / "summary.json"
    if not path.is_file():
        raise ReportError(
            f"{path} not found: DIR must be the --output folder of a finished `lessmore reduce` run "
            "(it writes summary.json and manifest.csv at the end); run `lessmore reduce INPUT... --output DIR` first"
        )
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read {path}: {exc}; re-run `lessmore reduce` to rewrite it") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("volumes"), dict) or "params" not in summary:
        raise ReportError(
            f"{path} is not a `lessmore reduce` summary (no 'params'/'volumes'); re-run `lessmore reduce`"
        )
    return summary


def _label(params: dict[str, Any]) -> str:
    """A short name of a reduction setting, as in the paper: HASH-6, EveryN-10, SSIM 10 % ..."""
    name = _NAMES.get(params["method"], params["method"].upper())
    if params["method"] == "all":
        return name
    if params.get("every_n") is not None:
        return f"{name}-{params['every_n']}"
    if params.get("count") is not None:
        return f"{name} (count {params['count']})"
    if params.get("fraction") is not None:
        return f"{name} {100 * params['fraction']:g} %"
    thr = params.get("threshold")
    return name if thr is None else f"{name}-{thr:g}" if params["method"] == "hash" else f"{name} >= {thr:g}"


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """``"hash,everyn"`` -> ``["hash", "everyn"]``, validated, duplicates dropped, order kept.

    Raises:
        ReportError: naming an unknown method and the accepted ones.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        try:
            name = get_method(item).name
        except ValueError:
            raise ReportError(f"--methods: unknown method {item!r}; choose from {', '.join(METHODS)}") from None
        if name not in out:
            out.append(name)
    if not out:
        raise ReportError(f"--methods is empty; give e.g. hash,everyn (choose from {', '.join(METHODS)})")
    return out


def default_methods(run_method: str) -> list[str]:
    """ALL, EveryN and HASH (cheap), plus the run's own method, in the paper's order."""
    wanted = {"all", "everyn", "hash", run_method}
    return [m for m in PAPER_ORDER if m in wanted]


def _first_manifest_volume(directory: Path) -> str | None:
    try:
        with open(directory / "manifest.csv", newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                return row.get("volume")
    except OSError:
        return None
    return None


def _pick_volume(directory: Path, summary: dict[str, Any], volume: str | None) -> str:
    names = list(summary["volumes"])
    if not names:
        raise ReportError(f"{directory / 'summary.json'} lists no finished volume; nothing to show")
    if volume is not None:
        if volume not in summary["volumes"]:
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            raise ReportError(f"--volume {volume!r} is not in {directory / 'summary.json'}; its volumes are {shown}")
        return volume
    first = _first_manifest_volume(directory)
    return first if first in summary["volumes"] else names[0]


def _own_kept(directory: Path, name: str, n_slices: int) -> list[int] | None:
    """The kept slices the run recorded for ``name`` (its record), if present and consistent."""
    try:
        record = json.loads((directory / "records" / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if record.get("n_slices") != n_slices or not isinstance(record.get("kept"), list):
        return None
    return [int(k) for k in record["kept"]]


def example_rows(
    directory: str | Path,
    summary: dict[str, Any],
    name: str,
    methods: Sequence[str],
    *,
    device: str = "cpu",
    deepnet_weights: str = "imagenet",
    log: Any = None,
) -> tuple[list[MethodRow], np.ndarray | list[np.ndarray]]:
    """Reduce the example volume with each method; returns the rows and the volume's 8-bit renderings.

    Settings: the run's own method uses ``summary["params"]`` (and the run's record when present); ``hash`` HASH-6
    (leader), ``everyn`` every 10th slice, ``all`` every slice; ``ssim``/``mi``/``deepnet`` keep as many slices as
    HASH kept of this volume (greedy, the paper's equal-count comparison of Table 5).
    """
    from monai_lessmore.io import load_volume

    directory = Path(directory)
    params = dict(summary["params"])
    own = params["method"]
    info = summary["volumes"][name]
    try:
        vol = load_volume(info["source"], order=params.get("order", "index"), lazy=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the volume and the fix named
        raise ReportError(
            f"cannot load the example volume {name!r} from {info['source']} ({exc}); "
            "is the input still there? pick another with --volume"
        ) from None
    slices = vol.slices()
    rendered = vol.is_uint8_rendered
    own_args = {k: params[k] for k in _REDUCER_KEYS if params.get(k) is not None}
    display = SliceReducer(window=own_args.get("window")).render(slices, rendered=rendered)
    n = len(display)

    hash_count: int | None = info["n_kept"] if own == "hash" else None
    rows: list[MethodRow] = []
    for method in methods:
        if method == own:
            args = own_args
        elif method in _DEFAULTS:
            args = {"method": method, **_DEFAULTS[method]}
        else:
            if hash_count is None:
                hash_count = SliceReducer(**_DEFAULTS["hash"]).reduce(slices, rendered=rendered).n_kept
            args = {"method": method, "count": hash_count, "device": device}
            if method == "deepnet":
                args["deepnet_weights"] = deepnet_weights
        if method != own and params.get("mixed_size") is not None and method in ("ssim", "mi", "deepnet"):
            args = {**args, "mixed_size": params["mixed_size"]}  # the run's resampling of mixed-size volumes
        if method == own or method in _DEFAULTS:
            label = _label({"every_n": None, "count": None, "fraction": None, "threshold": None, **args})
        else:
            label = f"{_NAMES[method]}\n(as many as HASH)"
        kept = _own_kept(directory, name, n) if method == own else None
        if kept is None:
            try:
                reducer = SliceReducer(**{"device": device, **args})
                kept = reducer.reduce(slices, rendered=rendered).kept.tolist()
            except (ValueError, OSError, RuntimeError, ImportError) as exc:
                note = f"skipped: {exc}"
                print(f"lessmore report: {label.splitlines()[0]}: {note}", file=sys.stderr if log is None else log)
                rows.append(MethodRow(method, label, [], n, note))
                continue
        if method == "hash" and hash_count is None:
            hash_count = len(kept)
        rows.append(MethodRow(method, label, kept, n))
    return rows, display


def _png_bytes(fig: Any, dpi: int) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # Agg explicitly: works headless, touches no global backend state
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def plot_kept_slices(
    rows: Sequence[MethodRow],
    display: np.ndarray | Sequence[np.ndarray],
    *,
    volume: str,
    n_show: int = 5,
    dpi: int = 100,
) -> bytes:
    """PNG of the first ``n_show`` kept slices per method (rows) of one volume, like the paper's Figure 6."""
    from matplotlib.figure import Figure

    n_rows = max(len(rows), 1)
    fig = Figure(figsize=(1.9 * n_show + 1.6, 2.0 * n_rows + 0.6), layout="constrained")
    fig.suptitle(f"First {n_show} kept slices of {volume} per method", fontsize=12)
    axes = np.atleast_2d(fig.subplots(n_rows, n_show, squeeze=False))
    for r, row in enumerate(rows):
        for c in range(n_show):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            ax.patch.set_visible(False)  # empty cells must not hide a note drawn across the row
            if c < len(row.kept):
                k = row.kept[c]
                ax.imshow(display[k], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
                ax.set_title(f"slice {k}", fontsize=8)
            elif c == 0 and row.note:
                # across the (empty) row; kept out of the layout so a long message does not widen column 0
                note = textwrap.fill(row.note, width=24 * n_show, max_lines=4, placeholder=" ...")
                text = ax.text(0.02, 0.5, note, fontsize=8, va="center", transform=ax.transAxes, clip_on=False)
                text.set_in_layout(False)
        axes[r, 0].set_ylabel(
            row.label if row.note else f"{row.label}\n{len(row.kept)} of {row.n_slices} kept", fontsize=9
        )
    return _png_bytes(fig, dpi)


def plot_kept_fractions(summary: dict[str, Any], *, dpi: int = 100) -> bytes:
    """PNG histogram of the kept fraction per volume of a run (``summary.json``)."""
    from matplotlib.figure import Figure

    fractions = np.array([100.0 * v["kept_fraction"] for v in summary["volumes"].values()], dtype=float)
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.subplots()
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    label = _label(summary["params"])
    failures = len(summary.get("failures") or [])
    if fractions.size:
        top = min(100.0, max(10.0, 10.0 * math.ceil(fractions.max() * 1.1 / 10.0)))
        ax.hist(fractions, bins=np.linspace(0.0, top, 21), color="#4c72b0", edgecolor="white")
        ax.set_xlim(0.0, top)
        overall = summary.get("kept_fraction")
        if overall is not None:
            ax.axvline(
                100.0 * overall, color="#c44e52", linestyle="--", label=f"all slices: {100 * overall:.1f} % kept"
            )
            ax.legend(loc="best", fontsize=9)
    else:
        ax.text(0.5, 0.5, "no finished volume", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("kept slices per volume (%)")
    ax.set_ylabel("volumes")
    ax.set_title(
        f"{label}: kept fraction of {len(fractions)} volumes "
        f"({summary.get('n_kept', 0)} of {summary.get('n_slices', 0)} slices)"
        + (f", {failures} failed" if failures else ""),
        fontsize=10,
    )
    return _png_bytes(fig, dpi)


def make_report(
    directory: str | Path,
    *,
    methods: str | Sequence[str] | None = None,
    volume: str | None = None,
    output: str | Path | None = None,
    n_show: int = 5,
    device: str = "cpu",
    deepnet_weights: str = "imagenet",
    log: Any = None,
) -> dict[str, Path]:
    """Write both report figures of a ``lessmore reduce`` output folder.

    Args:
        directory: the run's ``--output`` folder (holds ``summary.json``).
        methods: methods of the slice figure (names or ``"hash,everyn"``); default ALL, EveryN, HASH and the run's
            own method.
        volume: the example volume's name; default the first of the manifest.
        output: the slice figure's path; default ``DIR/report_slices.png``.
        n_show: kept slices shown per method (the paper's Figure 6 shows the first few).
        device: ``"cpu"`` or ``"cuda"`` for SSIM/MI/DeepNet rows.
        deepnet_weights: DeepNet weights for a ``deepnet`` row that is not the run's own method.

    Returns:
        ``{"slices": path, "fractions": path}`` of the written PNG files.

    Raises:
        ReportError: no ``summary.json`` in ``directory`` (named), an unknown method or volume, or an example
            volume that cannot be loaded (the histogram is written before that).
    """
    directory = Path(directory)
    summary = _read_summary(directory)
    if isinstance(n_show, bool) or not isinstance(n_show, int) or n_show < 1:
        raise ReportError(f"--slices must be a positive integer, got {n_show!r}")
    chosen = default_methods(summary["params"]["method"]) if methods is None else parse_methods(methods)
    out = Path(output) if output is not None else directory / SLICES_PNG
    if out.suffix.lower() != ".png":
        raise ReportError(f"--output must be a .png file, got {str(out)!r}")
    written = {"fractions": atomic_write_bytes(directory / FRACTIONS_PNG, plot_kept_fractions(summary))}
    name = _pick_volume(directory, summary, volume)
    rows, display = example_rows(
        directory, summary, name, chosen, device=device, deepnet_weights=deepnet_weights, log=log
    )
    written["slices"] = atomic_write_bytes(out, plot_kept_slices(rows, display, volume=name, n_show=n_show))
    return written
