"""``scripts/gpu_check.py``: its CPU dry run (``--device cpu --tiny``) runs every check's code path end to end, so the
script is known to work before a GPU is lent; its arguments and its command-line values are checked here too."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.mark.parametrize("argv, message", [
    (["--device", "cpu"], "--device cpu needs --tiny"),
    (["--device", "tpu"], "--device must be cuda, cuda:N or cpu"),
    (["--device", "cpu", "--tiny", "--num-workers", "-1"], "--num-workers must be >= 0"),
])
def test_bad_arguments_are_named(gpu_check, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        gpu_check.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_the_gpu_plan_fits_six_minutes_and_has_every_check(gpu_check):
    plan = gpu_check.Plan.make("cuda", tiny=False, num_workers=None)
    assert plan.time_limit == 360 and sum(plan.budgets.values()) <= 360
    assert (plan.input_size, plan.batch_size) == (None, None)  # the bundle's own: 512 px, the paper's batches
    names = [name for name, _ in gpu_check.build_checks(plan)]
    assert set(names) <= set(plan.budgets)  # every check on one GPU has a budget
    for stem in ("pretrain", "resume"):
        assert {f"{stem}_{m}" for m in ("swav", "moco", "spark")} <= set(names)
    assert {"ddp_swav_np1", "ddp_moco_np1", "classification", "reduce_ssim", "reduce_mi", "reduce_deepnet"} <= set(names)


def test_command_line_values_reach_the_bundle_as_python_values(gpu_check):
    """torchrun starts ``python -m monai.bundle``, whose python-fire parser reads Python literals, not JSON."""
    fire_parser = pytest.importorskip("fire.parser")
    for value in (None, False, True, [32, 16], {"a": 1}, 4, 0.5):
        assert fire_parser.DefaultParseValue(gpu_check._cli_value(value)) == value
    assert fire_parser.DefaultParseValue(gpu_check._cli_value("/tmp/x y/data")) == "/tmp/x y/data"


@pytest.mark.slow
def test_cpu_tiny_dry_run_passes_every_check_and_leaves_no_scratch(tmp_path):
    out, scratch_root = tmp_path / "out", tmp_path / "tmp"
    scratch_root.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch_root), "PYTHONPATH": os.pathsep.join(filter(None, (
        str(REPO), os.environ.get("PYTHONPATH"))))}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--output", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    record = json.loads((out / "gpu_check.json").read_text())
    checks = {r["name"]: r for r in record["checks"]}
    assert record["n_failed"] == 0 and all(r["passed"] for r in checks.values())
    expected = {"setup_data", "classification", "ddp_swav_np1", "ddp_moco_np1",
                *(f"{s}_{m}" for s in ("pretrain", "resume") for m in ("swav", "moco", "spark")),
                *(f"reduce_{m}" for m in ("ssim", "mi", "deepnet"))}
    assert set(checks) == expected
    for m in ("swav", "moco", "spark"):
        r = checks[f"pretrain_{m}"]
        assert r["timed_iterations"] == 2 and r["images_per_s"] > 0 and 0 <= r["data_wait_fraction"] <= 1
        assert all(math.isfinite(x) for x in r["losses"])
        assert checks[f"resume_{m}"]["checkpoint_max_rel_diff"] <= checks[f"resume_{m}"]["rtol"]
    for m in ("swav", "moco"):
        assert checks[f"ddp_{m}_np1"]["backend"] == "gloo" and checks[f"ddp_{m}_np1"]["iterations"] == 2
    for m in ("ssim", "mi", "deepnet"):
        assert checks[f"reduce_{m}"]["same_kept_slices"] and checks[f"reduce_{m}"]["kept_cpu"] >= 1
    assert math.isfinite(checks["classification"]["test"]["auc"])
    table = (out / "gpu_check.md").read_text()
    assert "| pretrain_swav | pass |" in table and "0 of 13 checks failed" in table
    # the synthetic data, the runs and torchrun's files are removed; torch's per-user compile cache
    # (torchinductor_<user>, created by torch itself) is meant to outlive a run
    assert [p.name for p in scratch_root.iterdir() if not p.name.startswith("torchinductor_")] == []
    assert {p.name for p in out.iterdir()} == {"gpu_check.json", "gpu_check.md", "ddp_swav_np1.log",
                                               "ddp_moco_np1.log"}  # no temporary file of the atomic writes left
