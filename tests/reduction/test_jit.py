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
