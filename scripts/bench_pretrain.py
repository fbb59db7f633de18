"""Pre-training throughput: images (slices) per second, the fraction of step time spent waiting for data, and the overhead of the
ignite/MONAI loop against a bare PyTorch loop doing the same steps (the same step objects, losses and gradient handlers) -- for SwAV, MoCo v2 and SparK.

Both loops are built from the bundle's own configs (``bundles/lessmore_ssl_pretrain/configs``), so they run the
exact steps of a real run (data loading from disk, reduction, the method's views, model, optimiser).

    python scripts/bench_pretrain.py --methods swav moco spark --input-size 64 --batch-size 4 --steps 6
    python scripts/bench_pretrain.py --paper-settings --device cuda --num-workers 8   # GPU: 512 px input, batch 128, AMP

Writes a JSON record (``--output``) and prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from monai_lessmore.ssl.throughput import METHOD_CONFIGS, bundle_parser, measure_training


def _images_per_batch(method: str, views) -> int:
    """Slices per batch (each slice yields len(views) crops: 8 for SwAV, 2 for MoCo, 1 for SparK)."""
    return int(views[0].shape[0])


def bench_ignite(method: str, overrides: dict, steps: int, warmup: int) -> dict:
    """The bundle's own trainer, timed by :class:`~monai_lessmore.ssl.throughput.StepTimer`."""
    r = measure_training(method, overrides, steps=steps, warmup=warmup)
    return {k: r[k] for k in ("seconds", "images_per_s", "data_wait_fraction")}


def bench_bare(method: str, overrides: dict, steps: int, warmup: int) -> dict:
    import torch
    from monai.utils import set_determinism

    set_determinism(0)
    p = bundle_parser(method, overrides)
    loader, network, optimizer, step, loss = (
        p.get_parsed_content(k) for k in ("train_loader", "network", "optimizer", "step", "loss"))
    schedule = p.get_parsed_content("lr_schedule")
    device = p.get_parsed_content("device")
    amp = bool(p.get_parsed_content("amp")) and torch.device(device).type == "cuda"
    from monai.engines.utils import IterationEvents

    # the method's gradient handlers (SwAV: prototype freezing, SparK: clipping, weight-decay schedule) run as in
    # the trainer, called directly
    method_handlers = p.get_parsed_content("method_handlers")
    on_backward = [h for h in method_handlers if type(h).__name__ in ("FreezePrototypes", "ClipGradNorm")]
    on_start = [h for h in method_handlers if h not in on_backward]

    def fire_event(event):
        if event == IterationEvents.BACKWARD_COMPLETED:
            for h in on_backward:
                h(engine)

    engine = SimpleNamespace(network=network, optimizer=optimizer, loss_function=loss, amp=amp, fire_event=fire_event,
                             scaler=torch.amp.GradScaler("cuda") if amp else None,
                             state=SimpleNamespace(device=torch.device(device), epoch=1, iteration=0, metrics={}))
    it = iter(loader)
    wait, n_img, t0 = 0.0, 0, None
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        tb = time.perf_counter()
        batch = next(it)
        if t0 is not None:
            wait += time.perf_counter() - tb
            n_img += _images_per_batch(method, batch["views"])
        engine.state.iteration = i + 1
        for g in optimizer.param_groups:  # the same per-iteration schedule as the handler
            g["lr"] = float(schedule[min(i, len(schedule) - 1)])
        for h in on_start:
            h(engine)
        step(engine, batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    total = time.perf_counter() - t0
    return {"seconds": total, "images_per_s": n_img / total, "data_wait_fraction": wait / total}


#: the paper's batch sizes (Tables 8-10): SwAV 128, MoCo v2 64, SparK 32
PAPER_BATCH = {"swav": 128, "moco": 64, "spark": 32}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["swav", "moco", "spark"], choices=list(METHOD_CONFIGS))
    ap.add_argument("--dataset-dir", default=None, help="CT folder (default: a phantom written to a temp folder)")
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per loop")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--repeats", type=int, default=3, help="alternating repeats of both loops (fastest kept)")
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--paper-settings", action="store_true", help="input 512, batch 128 (SwAV) / 64 (MoCo) / 32 (SparK), full crops, AMP")
    ap.add_argument("--output", default=None, help="write the JSON record here")
    ns = ap.parse_args(argv)

    import torch

    if ns.threads:
        torch.set_num_threads(ns.threads)
    tmp = tempfile.mkdtemp(prefix="bench_pretrain_")
    batch = {m: PAPER_BATCH[m] if ns.paper_settings else ns.batch_size for m in ns.methods}
    data = ns.dataset_dir
    if data is None:
        from monai_lessmore.phantom import write_phantom_dataset

        # enough slices for every timed step of the largest batch, at the paper's 512 px when its settings are used
        need = (ns.steps + ns.warmup + 1) * max(batch.values())
        data = os.path.join(tmp, "phantom")
        write_phantom_dataset(data, n_volumes=max(2, math.ceil(need / 70)), slices=(60, 80),
                              size=512 if ns.paper_settings else 128)
    results = []
    for method in ns.methods:
        n = (ns.steps + ns.warmup + 1) * batch[method]
        base = {"dataset_dir": data, "output_dir": os.path.join(tmp, method), "export_path": os.path.join(tmp, method, "m.pt"),
                "reduction_method": "none", "reduction_cache_dir": os.path.join(tmp, "cache"), "max_slices": n,
                "num_workers": ns.num_workers, "progress_bar": False, "tensorboard": False, "resume": None,
                "device": f"$torch.device('{ns.device}')", "max_epochs": 1, "log_every": 10**6, "save_interval": 10**6}
        if not ns.paper_settings:
            small = max(32, ns.input_size // 2) // 32 * 32
            base.update({"input_size": ns.input_size, "batch_size": ns.batch_size})
            base.update({"swav": {"crop_sizes": [small, max(16, small // 2)]}, "moco": {"crop_size": small},
                         "spark": {"decoder_width": 64}}[method])
        else:
            base.update({"batch_size": batch[method], "amp": True})
        row = {"method": method}
        # alternate the two loops and keep each one's fastest repeat: robust to other processes on a shared machine
        runs = {"ignite": [], "bare": []}
        for _ in range(ns.repeats):
            runs["ignite"].append(bench_ignite(method, base, ns.steps, ns.warmup))
            runs["bare"].append(bench_bare(method, base, ns.steps, ns.warmup))
        for loop, rs in runs.items():
            row[loop] = min(rs, key=lambda r: r["seconds"])
            row[loop]["all_seconds"] = [round(r["seconds"], 3) for r in rs]
        row["ignite_overhead"] = row["ignite"]["seconds"] / row["bare"]["seconds"] - 1
        results.append(row)
        print(json.dumps(row), flush=True)
    record = {
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
                    "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "device": ns.device,
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "settings": vars(ns), "results": results,
    }
    if ns.output:
        Path(ns.output).write_text(json.dumps(record, indent=2))
    print("\n| method | loop | images/s | data wait | ignite overhead |\n|---|---|---|---|---|")
    for r in results:
        for loop in ("ignite", "bare"):
            ov = f"{100 * r['ignite_overhead']:+.1f} %" if loop == "ignite" else ""
            print(f"| {r['method']} | {loop} | {r[loop]['images_per_s']:.1f} | {100 * r[loop]['data_wait_fraction']:.1f} % | {ov} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
