"""pairwise_nmi against scikit-image's normalized_mutual_information, the oracle.

Every expected number is ``skimage.metrics.normalized_mutual_information(x, y, bins=bins)`` on the same slices, for
every pair; the joint histograms are bit-identical, so the tolerance is 1e-12 (the spec asks 1e-6).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from skimage.metrics import normalized_mutual_information

from monai_lessmore.reduction.mi import histogram_bin_indices, pairwise_nmi
from tests.reduction.test_ssim import covid_jpg, pancreas_hu

#: (device, backend): the compiled CPU kernel, and the torch code path of CUDA run on CPU (and on CUDA when present)
PATHS = [("cpu", "auto"), ("cpu", "torch")] + ([("cuda", "auto")] if torch.cuda.is_available() else [])


def skimage_matrix(vol: np.ndarray, bins: int) -> np.ndarray:
    n = len(vol)
    ref = np.full((n, n), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 for two constant slices
        for i in range(n):
            for j in range(n):
                ref[i, j] = normalized_mutual_information(vol[i], vol[j], bins=bins)
    return ref


@pytest.mark.parametrize("device, backend", PATHS)
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.float64])
def test_real_ct_hu_matches_skimage(device, backend, dtype):
    vol = pancreas_hu().astype(dtype)  # whole-number HU: the lookup-table path
    got = pairwise_nmi(vol, bins=100, device=device, backend=backend)
    np.testing.assert_allclose(got, skimage_matrix(vol, 100), atol=1e-12)


@pytest.mark.parametrize("device, backend", PATHS)
@pytest.mark.parametrize("bins", [100, 32, 256])
def test_real_8bit_slices_match_skimage(device, backend, bins):
    vol = covid_jpg()
    got = pairwise_nmi(vol, bins=bins, device=device, backend=backend)
    np.testing.assert_allclose(got, skimage_matrix(vol, bins), atol=1e-12)


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("bins", [2, 7, 100])
def test_non_integral_floats_match_skimage(bins, backend):
    rng = np.random.default_rng(bins)
    base = rng.normal(size=(40, 30))
    vol = (base + rng.normal(scale=0.3, size=(5, 40, 30))).astype(np.float32) * 700 + 1000
    np.testing.assert_allclose(pairwise_nmi(vol, bins=bins, backend=backend), skimage_matrix(vol, bins), atol=1e-12)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int32, np.uint8, np.float16])
def test_integer_dtypes_full_range(dtype):
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else np.finfo(dtype)
    rng = np.random.default_rng(6)
    lo, hi = max(float(info.min), -40000.0), min(float(info.max), 40000.0 if dtype != np.float16 else 2000.0)
    vol = rng.uniform(lo, hi, size=(4, 12, 12)).astype(dtype)
    vol[0, 0, 0], vol[1, 0, 0] = dtype(lo), dtype(hi)  # differences that overflow the dtype itself
    np.testing.assert_allclose(pairwise_nmi(vol, bins=50), skimage_matrix(vol, 50), atol=1e-12)


def test_float16_overflow_is_reported():
    vol = np.array([[[-40000.0, 40000.0]], [[0.0, 1.0]]], dtype=np.float16)
    with pytest.raises(ValueError, match="slice 0: bin edges overflow float16.*float32"):
        pairwise_nmi(vol)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_constant_slices(backend):
    rng = np.random.default_rng(3)
    vol = np.stack([np.zeros((20, 20)), np.full((20, 20), 7.0), rng.random((20, 20))])
    ref = skimage_matrix(vol, 100)
    got = pairwise_nmi(vol, backend=backend)
    # scikit-image: 0/0 = NaN for two constant slices; here they count as identical (2)
    assert np.isnan(ref[0, 1]) and got[0, 1] == got[1, 0] == 2.0
    finite = ~np.isnan(ref)
    np.testing.assert_allclose(got[finite], ref[finite], atol=1e-12)


def test_bin_indices_are_numpys():
    rng = np.random.default_rng(4)
    for vol in (rng.normal(size=(3, 17, 19)).astype(np.float32), rng.integers(-1024, 3000, (3, 17, 19))):
        idx, widths = histogram_bin_indices(vol, 10)
        for i in range(3):
            counts, edges = np.histogramdd([vol[i].ravel()], bins=10)
            np.testing.assert_array_equal(np.bincount(idx[i], minlength=10), counts)
            np.testing.assert_array_equal(widths[i], np.diff(edges[0]))


def test_threads_do_not_change_the_result():
    vol = np.random.default_rng(8).integers(0, 256, size=(9, 30, 30)).astype(np.uint8)
    one = pairwise_nmi(vol, num_threads=1)
    np.testing.assert_array_equal(pairwise_nmi(vol, num_threads=3), one)
    np.testing.assert_allclose(one, skimage_matrix(vol, 100), atol=1e-12)


def test_inputs_and_diagonal():
    vol = np.random.default_rng(5).integers(0, 255, (4, 16, 16)).astype(np.uint8)
    got = pairwise_nmi(vol)
    np.testing.assert_array_equal(pairwise_nmi(list(vol)), got)
    np.testing.assert_array_equal(pairwise_nmi(torch.from_numpy(vol)), got)
    assert np.array_equal(got, got.T) and np.all(np.diag(got) == 2.0)
    assert np.all((got >= 1.0 - 1e-12) & (got <= 2.0 + 1e-12))
    assert pairwise_nmi(vol[:1]).tolist() == [[2.0]]


def test_bad_input_messages():
    vol = np.zeros((2, 8, 8))
    for bad in (1, 0, -3):
        with pytest.raises(ValueError, match=f"bins must be >= 2.*got {bad}"):
            pairwise_nmi(vol, bins=bad)
    for bad in (2.5, [10, 10], True, None):
        with pytest.raises(ValueError, match="bins must be an integer >= 2"):
            pairwise_nmi(vol, bins=bad)
    with pytest.raises(ValueError, match=r"same shape.*\(8, 8\).*\(9, 8\)"):
        pairwise_nmi([np.zeros((8, 8)), np.zeros((9, 8))])
    with pytest.raises(ValueError, match="backend must be 'auto'.*or 'torch', got 'cuda'"):
        pairwise_nmi(vol, backend="cuda")
    with pytest.raises(ValueError, match="num_threads must be a positive integer or None"):
        pairwise_nmi(vol, num_threads=0)
    bad_vol = np.zeros((2, 8, 8))
    bad_vol[1, 0, 0] = np.inf
    with pytest.raises(ValueError, match="slice 1.*NaN or infinite"):
        pairwise_nmi(bad_vol)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_undefined_nmi_is_nan_as_in_skimage_except_two_constant_slices(backend):
    # float32 values near 1e6 spread over less than one unit: numpy's bin edges collapse, scikit-image gives NaN
    rng = np.random.default_rng(10)
    vol = (1e6 + rng.random((3, 8, 8)) * 0.2).astype(np.float32)
    vol[2] = 1e6  # constant
    ref = skimage_matrix(vol, 100)
    got = pairwise_nmi(vol, bins=100, backend=backend)
    off = ~np.eye(3, dtype=bool)
    np.testing.assert_array_equal(np.isnan(got[off]), np.isnan(ref[off]))
    finite = off & ~np.isnan(ref)
    np.testing.assert_allclose(got[finite], ref[finite], atol=1e-12)


def test_bool_and_big_endian_inputs():
    rng = np.random.default_rng(11)
    vol = rng.random((3, 10, 10)) > 0.5
    np.testing.assert_allclose(pairwise_nmi(vol), skimage_matrix(vol.astype(np.uint8), 100), atol=1e-12)
    ints = rng.integers(-1000, 2000, (3, 10, 10)).astype(np.int16)
    np.testing.assert_array_equal(pairwise_nmi(ints.astype(">i2")), pairwise_nmi(ints))
