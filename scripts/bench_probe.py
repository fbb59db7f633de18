"""Cost of the downstream probe (``monai_lessmore.ssl.probe.DownstreamProbe``) against pre-training epochs.

Measured side by side in one process, each repeated (median of ``--repeats``):

- one probe at the handler's defaults: ``--probe-items`` (500) images at 224 px embedded with a ResNet50 and scored
  by 5-fold cosine k-NN (the one-time reading/preprocessing of the probe set is reported separately);
- pre-training seconds per slice with the bundle's SwAV defaults (``configs/train.json``: input 512, 2 x 224 +
  6 x 96 crops, LARS), through the real trainer (``scripts/bench_pretrain.py``'s ``bench_ignite``) at a small
  batch (``--batch-size``; per-slice cost on a CPU hardly depends on it).

The overhead of probing every ``--interval`` (10) epochs is ``probe / (interval * epoch)`` with
``epoch = epoch_slices * seconds_per_slice``; it is printed for ``--epoch-slices`` and as the smallest epoch for
which it stays within 5 %.

    python scripts/bench_probe.py --repeats 3 --epoch-slices 1600
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _probe_set(root: Path, n: int, size: int = 256) -> Path:
    """``n`` gray PNG slices in two class folders (content is irrelevant to the cost)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(root / "ab"[i % 2] / f"{i}.png")
    return root


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probe-items", type=int, default=500)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--interval", type=int, default=10)
    ap.add_argument("--epoch-slices", type=int, default=1600,
                    help="slices per pre-training epoch for the printed ratio (1600: the COVID-19-CT-Seg slice folder)")
    ap.add_argument("--batch-size", type=int, default=4, help="pre-training batch for the per-slice time")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--output", default=None, help="write the JSON record here")
    args = ap.parse_args(argv)
    if min(args.probe_items, args.image_size, args.interval, args.epoch_slices, args.batch_size, args.steps, args.repeats) < 1:
        ap.error("all sizes and counts must be >= 1")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from bench_pretrain import bench_ignite

    from monai_lessmore.phantom import write_phantom_dataset
    from monai_lessmore.ssl.backbone import resnet50_encoder
    from monai_lessmore.ssl.probe import DownstreamProbe

    class _Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = resnet50_encoder()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = _probe_set(tmp / "probe", args.probe_items)
        probe = DownstreamProbe("folder", data_root=str(data), enabled=True, n_items=args.probe_items,
                                image_size=args.image_size, output_dir=str(tmp / "run"), tensorboard=False)
        t = time.perf_counter()
        probe.load()
        load_s = time.perf_counter() - t
        net = _Net()
        phantom = tmp / "phantom"
        write_phantom_dataset(phantom, n_volumes=2, slices=(20, 24), size=512)
        overrides = {"dataset_dir": str(phantom), "reduction_method": "none", "batch_size": args.batch_size,
                     "num_workers": 0, "amp": False, "progress_bar": False, "tensorboard": False,
                     "output_dir": str(tmp / "pretrain"), "resume": None, "device": "$torch.device('cpu')",
                     "max_epochs": 1, "log_every": 10**6, "save_interval": 10**6}
        probe_s, per_slice = [], []
        for _ in range(args.repeats):  # alternate the two measurements
            t = time.perf_counter()
            probe.evaluate(net)
            probe_s.append(time.perf_counter() - t)
            r = bench_ignite("swav", overrides, steps=args.steps, warmup=1)
            per_slice.append(1.0 / r["images_per_s"])
            print(f"probe {probe_s[-1]:.2f} s, pre-training {per_slice[-1]:.3f} s/slice", file=sys.stderr, flush=True)
    p, s = statistics.median(probe_s), statistics.median(per_slice)
    epoch = args.epoch_slices * s
    ratio = p / (args.interval * epoch)
    break_even = p / (0.05 * args.interval * s)
    record = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"), "probe_items": args.probe_items, "image_size": args.image_size,
        "probe_load_s": round(load_s, 2), "probe_s": [round(x, 2) for x in probe_s],
        "pretrain_s_per_slice": [round(x, 4) for x in per_slice], "interval": args.interval,
        "epoch_slices": args.epoch_slices, "epoch_s": round(epoch, 1), "overhead": round(ratio, 4),
        "break_even_epoch_slices_for_5pct": int(break_even) + 1,
    }
    print(json.dumps(record, indent=1))
    print(f"\n| probe ({args.probe_items} img, {args.image_size} px, k-NN) | SwAV pre-training per slice | epoch of "
          f"{args.epoch_slices} slices | probe every {args.interval} epochs | within 5 % from |")
    print("|---|---|---|---|---|")
    print(f"| {p:.1f} s (+ {load_s:.1f} s once) | {s:.3f} s | {epoch:.0f} s | **{100 * ratio:.2f} %** of epoch time | "
          f"{int(break_even) + 1} slices/epoch |")
    if args.output:
        Path(args.output).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
