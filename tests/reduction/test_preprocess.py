from __future__ import annotations

import numpy as np
import pytest

from monai_lessmore.reduction.preprocess import to_uint8, validate_window


def test_per_slice_min_max_matches_the_authors_png_export():
    rng = np.random.default_rng(0)
    vol = rng.normal(0, 300, size=(4, 16, 16)).astype(np.float32)
    vol[1] += 2000  # another range on another slice: each slice is scaled on its own
    out = to_uint8(vol)
    assert out.dtype == np.uint8 and out.shape == vol.shape
    for sl, o in zip(vol.astype(np.float64), out):
        ref = np.rint((sl - sl.min()) / (sl.max() - sl.min()) * 255).astype(np.uint8)
        np.testing.assert_array_equal(o, ref)
        assert o.min() == 0 and o.max() == 255


def test_constant_slice_becomes_zeros_and_2d_input_stays_2d():
    vol = np.full((2, 5, 5), -1000.0)
    vol[1, 0, 0] = 500
    out = to_uint8(vol)
    assert not out[0].any()
    assert out[1, 0, 0] == 255 and out[1].sum() == 255
    assert to_uint8(vol[1]).shape == (5, 5)


def test_window_clips_and_scales_every_slice_the_same():
    vol = np.array([[[-2000.0, -1000.0, 0.0, 1000.0, 3000.0]]])
    out = to_uint8(vol, window=(-1000, 1000))
    assert out.tolist() == [[[0, 0, 128, 255, 255]]]


def test_input_is_not_modified():
    vol = np.linspace(-1000, 1000, 50, dtype=np.float32).reshape(2, 5, 5)
    before = vol.copy()
    to_uint8(vol)
    to_uint8(vol, window=(-100, 100))
    np.testing.assert_array_equal(vol, before)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_values_are_rejected_with_count(bad):
    vol = np.zeros((2, 4, 4))
    vol[0, 1, 1] = bad
    with pytest.raises(ValueError, match="1 NaN/Inf values"):
        to_uint8(vol)


@pytest.mark.parametrize("shape", [(5,), (1, 2, 3, 4)])
def test_shape_errors(shape):
    with pytest.raises(ValueError, match=r"2D slice \(H, W\) or a stack \(S, H, W\)"):
        to_uint8(np.zeros(shape))


@pytest.mark.parametrize("window", [(100, -100), (0, 0), (0, np.inf), (1,), "lung"])
def test_bad_windows(window):
    with pytest.raises(ValueError, match="window must"):
        validate_window(window)


def _direct(vol):
    out = np.empty(vol.shape, np.uint8)
    for i, sl in enumerate(np.asarray(vol, dtype=np.float64)):
        lo, hi = sl.min(), sl.max()
        out[i] = 0 if hi == lo else np.rint((sl - lo) / (hi - lo) * 255.0)
    return out


@pytest.mark.parametrize(
    "make",
    [
        lambda r: r.integers(-1024, 3071, (6, 33, 31)).astype(np.float32),  # HU as float32: lookup-table path
        lambda r: r.integers(-1024, 3071, (6, 33, 31)).astype(np.int16),
        lambda r: r.integers(0, 256, (6, 9, 9)).astype(np.uint8),
        lambda r: np.round(r.normal(0, 1e6, (3, 10, 10))),  # span > 65536 levels: direct path
        lambda r: r.normal(0, 300, (4, 20, 20)).astype(np.float32),  # non-integer: direct path
    ],
)
def test_every_path_equals_the_direct_float64_formula(make):
    vol = make(np.random.default_rng(7))
    np.testing.assert_array_equal(to_uint8(vol), _direct(vol))


@pytest.mark.parametrize("dtype", ["int16", "uint16", "uint8"])
@pytest.mark.parametrize("layout", ["c", "xyz", "flipped"])
def test_stored_rendering_is_the_same_in_numpy_and_compiled(dtype, layout, monkeypatch):
    """Min-max rendering straight from the stored integers: the numpy path (what a process runs before it starts
    numba) and the compiled kernel give the float32 path's pixels, for any memory order and flip."""
    import monai_lessmore.reduction._jit as _jit
    from monai_lessmore.reduction.preprocess import StoredStack

    info = np.iinfo(dtype)
    rng = np.random.default_rng(1)
    raw = rng.integers(max(info.min, -3000), min(info.max, 3000) + 1, size=(5, 12, 9)).astype(dtype)
    raw[1] = raw[1, 0, 0]  # a constant slice renders to zeros
    raw[2, 3, 4], raw[2, 5, 6] = info.min, info.max  # the widest span the dtype has
    if layout == "xyz":  # a file stored (x, y, z): slices are the last memory axis
        raw = np.ascontiguousarray(raw.transpose(2, 1, 0)).transpose(2, 1, 0)
    elif layout == "flipped":
        raw = raw[::-1, :, ::-1]
    expected = to_uint8(raw.astype(np.float32))
    monkeypatch.setattr(_jit, "numba_started", lambda: False)
    for threshold in (1 << 62, 0):  # numpy, then compiled (when numba is installed)
        monkeypatch.setattr(_jit, "COMPILE_AFTER_PIXELS", threshold)
        got = to_uint8(StoredStack(raw, offset=-1024))
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("layout", ["c", "xyz", "flipped", "transposed"])
@pytest.mark.parametrize("offset", [-1024, None])
def test_render_stack_hands_on_every_slice_once_as_it_is_rendered(layout, offset, keep, monkeypatch):
    """``render_stack(..., each=)``: the blocks cover every output slice exactly once, each block's pixels are the
    final ones when it is handed on (the HASH reduction hashes them there), in the order the voxels are stored;
    with ``keep=False`` the same blocks, rendered into one reused buffer, and nothing returned."""
    import monai_lessmore.reduction.preprocess as pp
    from monai_lessmore.reduction.dhash import dhash
    from monai_lessmore.reduction.preprocess import StoredStack, render_stack

    monkeypatch.setattr(pp, "_PIPELINE_BYTES", 2 * 12 * 9 * 2)  # two slices of int16 per block
    raw = np.random.default_rng(2).integers(-1000, 2000, size=(7, 12, 9)).astype(np.int16)
    if layout == "xyz":
        raw = np.ascontiguousarray(raw.transpose(2, 1, 0)).transpose(2, 1, 0)
    elif layout == "flipped":
        raw = raw[::-1, :, ::-1]
    elif layout == "transposed":  # rows are the fastest axis in memory, and stored from the last slice down
        raw = np.ascontiguousarray(raw.transpose(0, 2, 1)).transpose(0, 2, 1)[::-1]
    stack = StoredStack(raw, offset=offset, scale=None if offset is not None else (lambda b: b.astype(np.float32)))
    seen, hashes, blocks = [], np.zeros(7, dtype=np.uint64), {}

    def each(lo, hi, block):
        seen.extend(range(lo, hi))
        hashes[lo:hi] = dhash(block.copy())
        blocks[lo] = block.copy()

    got = render_stack(stack, each=each, keep=keep)
    expected = to_uint8(raw.astype(np.float32))
    if keep:
        np.testing.assert_array_equal(got, expected)
    else:
        assert got is None
    np.testing.assert_array_equal(np.concatenate([blocks[lo] for lo in sorted(blocks)]), expected)
    assert sorted(seen) == list(range(7))
    if offset is not None:  # the stored path goes in blocks in storage order
        assert seen[:2] == ([5, 6] if layout in ("flipped", "transposed") else [0, 1])  # the first block stored
    np.testing.assert_array_equal(hashes, dhash(expected))


def test_render_stack_without_keeping_needs_each():
    from monai_lessmore.reduction.preprocess import StoredStack, render_stack

    with pytest.raises(ValueError, match="pass each"):
        render_stack(StoredStack(np.zeros((2, 4, 4), np.int16), offset=0), keep=False)
