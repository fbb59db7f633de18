"""The thread fan-out and thread-count rules shared by the compiled SSIM/MI kernels."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from monai_lessmore.reduction._jit import map_rows, resolve_threads


def test_map_rows_runs_every_row_once_on_several_threads():
    seen, names = [], set()
    lock = threading.Lock()

    def fn(r: int) -> None:
        time.sleep(0.01)
        with lock:
            seen.append(r)
            names.add(threading.current_thread().name)

    map_rows(fn, range(12), 3)
    assert sorted(seen) == list(range(12)) and len(names) > 1


def test_map_rows_stops_handing_out_rows_after_an_error():
    started = []

    def fn(r: int) -> None:
        started.append(r)
        if r == 0:
            raise RuntimeError("row 0 failed")
        time.sleep(0.05)

    with pytest.raises(RuntimeError, match="row 0 failed"):
        map_rows(fn, range(40), 2)
    time.sleep(0.2)  # rows already running may finish; none may start after the error
    assert len(started) < 10, started


def test_resolve_threads():
    assert resolve_threads(None) == torch.get_num_threads()
    assert resolve_threads(np.int64(3)) == 3
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError, match="num_threads must be a positive integer or None"):
            resolve_threads(bad)


def test_light_kernels_wait_until_the_work_pays_for_starting_numba(monkeypatch):
    from monai_lessmore.reduction import _jit

    monkeypatch.setattr(_jit, "numba_started", lambda: False)
    monkeypatch.setattr(_jit, "numba_installed", lambda: True)
    monkeypatch.setattr(_jit, "COMPILE_AFTER_PIXELS", 100)
    monkeypatch.setattr(_jit, "_light_pixels", 0)
    assert not _jit.use_compiled(60)
    assert _jit.use_compiled(60)  # 120 pixels in all: more than the start-up is worth
    monkeypatch.setattr(_jit, "_light_pixels", 0)
    assert _jit.use_compiled(101)  # one job large enough on its own
    monkeypatch.setattr(_jit, "numba_started", lambda: True)
    monkeypatch.setattr(_jit, "_light_pixels", 0)
    assert _jit.use_compiled(1)  # numba already runs: no reason to wait
    monkeypatch.setattr(_jit, "numba_installed", lambda: False)
    assert not _jit.use_compiled(10**12)


def test_compile_after_pixels_comes_from_the_environment(monkeypatch):
    from monai_lessmore.reduction import _jit

    monkeypatch.setenv(_jit.COMPILE_AFTER_PIXELS_ENV, "0")
    assert _jit._compile_after_pixels() == 0
    monkeypatch.delenv(_jit.COMPILE_AFTER_PIXELS_ENV)
    assert _jit._compile_after_pixels() == 1 << 29
    monkeypatch.setenv(_jit.COMPILE_AFTER_PIXELS_ENV, "many")
    with pytest.raises(ValueError, match="LESSMORE_COMPILE_AFTER_PIXELS must be a non-negative integer"):
        _jit._compile_after_pixels()


def test_a_small_hash_reduction_starts_neither_numba_nor_torch_nor_scipy_linalg(tmp_path):
    """``lessmore reduce`` of one small NIfTI volume: the start-up stays light (numba ~1 s, torch ~1 s and
    scipy.linalg ~0.25 s of CPU time are not paid), in a fresh process."""
    import json
    import os
    import subprocess
    import sys

    from monai_lessmore.phantom import write_phantom_dataset

    (path,) = write_phantom_dataset(tmp_path / "in", n_volumes=1, slices=(6, 6), size=32)
    code = (
        "import json, sys\n"
        "from monai_lessmore.cli.main import main\n"
        "rc = main(['reduce', sys.argv[1], '--workers', '1', '--output', sys.argv[2], '--no-progress'])\n"
        "print(json.dumps({'rc': rc, 'modules': [m for m in ('numba', 'torch', 'scipy.linalg', 'monai', 'itk')"
        " if m in sys.modules]}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "LESSMORE_COMPILE_AFTER_PIXELS"}
    res = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "out")], capture_output=True,
                         text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report == {"rc": 0, "modules": []}
    assert (tmp_path / "out" / "manifest.csv").is_file()
