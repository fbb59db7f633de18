"""pairwise_ssim against scikit-image's structural_similarity, the oracle.

Every expected number comes from ``skimage.metrics.structural_similarity(x, y, data_range=L, gaussian_weights=True,
sigma=1.5, use_sample_covariance=False)`` on float64 copies of the same slices, for every pair.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from monai_lessmore.reduction.ssim import pairwise_ssim
from tests.conftest import shared_data_path

#: (device, backend): the compiled CPU kernel, and the torch code path of CUDA run on CPU (and on CUDA when present)
PATHS = [("cpu", "auto"), ("cpu", "torch")] + ([("cuda", "auto")] if torch.cuda.is_available() else [])


def skimage_matrix(vol: np.ndarray, data_range: float, **kwargs) -> np.ndarray:
    """All pairs with scikit-image, computed in float64 (the reference)."""
    n = len(vol)
    ref = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            ref[i, j] = ref[j, i] = structural_similarity(
                vol[i].astype(np.float64),
                vol[j].astype(np.float64),
                data_range=data_range,
                gaussian_weights=True,
                sigma=kwargs.get("sigma", 1.5),
                use_sample_covariance=False,
                win_size=kwargs.get("win_size"),
                K1=kwargs.get("K1", 0.01),
                K2=kwargs.get("K2", 0.03),
            )
    return ref


def pancreas_hu(n: int = 6) -> np.ndarray:
    """Six consecutive slices of the pancreas DICOM series in HU, downsampled 512 -> 128 to keep the test fast."""
    pydicom = pytest.importorskip("pydicom")
    folder = shared_data_path("ct", "dicom", "pancreas_ct")
    files = sorted(folder.glob("*.dcm"), key=lambda p: int(p.stem.split("-")[-1]))[60 : 60 + n]
    slices = []
    for f in files:
        ds = pydicom.dcmread(f)
        slices.append(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    return np.stack(slices).astype(np.float32)[:, ::4, ::4]


def covid_jpg(n: int = 6) -> np.ndarray:
    """Six consecutive 8-bit slices of one COVID-19-CT-Seg volume, cropped to a common 128x128."""
    from PIL import Image

    folder = shared_data_path("ct", "slices", "covid19_ct_seg")
    files = [folder / f"Data-1_coronacases_org_001_{k}.jpg" for k in range(40, 40 + n)]
    return np.stack([np.asarray(Image.open(f).convert("L"))[:128, :128] for f in files])


@pytest.mark.parametrize("device, backend", PATHS)
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-9), ("float32", 1e-5)])
def test_real_ct_hu_matches_skimage(device, backend, dtype, tol):
    vol = pancreas_hu()
    data_range = float(vol.max() - vol.min())
    ref = skimage_matrix(vol, data_range)
    got = pairwise_ssim(vol, data_range=data_range, dtype=dtype, device=device, backend=backend)
    assert got.dtype == np.float64 and got.shape == (6, 6)
    np.testing.assert_allclose(got, ref, rtol=0, atol=tol)


@pytest.mark.parametrize("device, backend", PATHS)
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-9), ("float32", 1e-5)])
def test_real_8bit_slices_match_skimage(device, backend, dtype, tol):
    vol = covid_jpg()
    ref = skimage_matrix(vol, 255)
    got = pairwise_ssim(vol, data_range=255, dtype=dtype, device=device, backend=backend)
    np.testing.assert_allclose(got, ref, rtol=0, atol=tol)


@pytest.mark.parametrize(
    "shape, kwargs",
    [
        ((5, 40, 33), {}),  # non-square, default 11x11
        ((4, 30, 30), {"win_size": 7}),  # crop smaller than the filter radius: reflect padding is used
        ((4, 30, 30), {"win_size": 15}),  # crop larger than the radius
        ((3, 25, 28), {"sigma": 0.8, "win_size": None}),  # window derived from sigma, as scikit-image
        ((3, 24, 24), {"sigma": 3.0, "win_size": 3}),  # radius 11 > crop 1: padding on every side
        ((3, 11, 11), {}),  # slices exactly the window size
        ((4, 32, 32), {"K1": 0.05, "K2": 0.1}),
    ],
)
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_synthetic_options_match_skimage(shape, kwargs, backend):
    rng = np.random.default_rng(sum(shape))
    base = rng.normal(size=shape[1:])
    vol = base + rng.normal(scale=0.5, size=shape)  # related slices, SSIM well away from 0
    ref = skimage_matrix(vol, 6.0, **kwargs)
    got = pairwise_ssim(
        vol,
        data_range=6.0,
        win_size=kwargs.get("win_size", 11),
        sigma=kwargs.get("sigma", 1.5),
        k1=kwargs.get("K1", 0.01),
        k2=kwargs.get("K2", 0.03),
        backend=backend,
    )
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, None, 100])
def test_chunking_does_not_change_the_result(chunk_size):
    vol = np.random.default_rng(1).integers(0, 4096, size=(7, 24, 20)).astype(np.int16)
    ref = skimage_matrix(vol, 4095)
    got = pairwise_ssim(vol, data_range=4095, chunk_size=chunk_size, backend="torch")
    np.testing.assert_allclose(got, ref, atol=1e-10)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_threads_do_not_change_the_result(dtype):
    vol = np.random.default_rng(7).integers(0, 256, size=(9, 40, 36)).astype(np.uint8)
    one = pairwise_ssim(vol, data_range=255, dtype=dtype, num_threads=1)
    for threads in (2, 3):
        np.testing.assert_array_equal(pairwise_ssim(vol, data_range=255, dtype=dtype, num_threads=threads), one)
    np.testing.assert_allclose(one, skimage_matrix(vol, 255), atol=1e-5 if dtype == "float32" else 1e-10)


def test_inputs_list_tensor_and_single_slice():
    rng = np.random.default_rng(2)
    vol = rng.random((3, 20, 20))
    expected = pairwise_ssim(vol, data_range=1.0)
    np.testing.assert_array_equal(pairwise_ssim(list(vol), data_range=1.0), expected)
    np.testing.assert_array_equal(pairwise_ssim(torch.from_numpy(vol), data_range=1.0), expected)
    np.testing.assert_array_equal(pairwise_ssim(vol[:1], data_range=1.0), np.ones((1, 1)))
    assert np.array_equal(expected, expected.T) and np.all(np.diag(expected) == 1.0)
    # scikit-image itself gives exactly 1 for x == x
    x = vol[0]
    assert structural_similarity(x, x, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False) == 1.0
    dup = pairwise_ssim(np.stack([x, x]), data_range=1.0)
    assert abs(dup[0, 1] - 1.0) < 1e-12


def test_bad_input_messages():
    vol = np.zeros((3, 16, 16))
    with pytest.raises(ValueError, match=r"same shape.*\(16, 16\).*\(16, 17\)"):
        pairwise_ssim([np.zeros((16, 16)), np.zeros((16, 17))], data_range=1.0)
    for bad in (0, 0.0, -1.0, float("nan"), float("inf"), None):
        with pytest.raises(ValueError, match="constant volume has zero data range"):
            pairwise_ssim(vol, data_range=bad)
    with pytest.raises(ValueError, match=r"shape \(N, H, W\), got shape \(16, 16\)"):
        pairwise_ssim(np.zeros((16, 16)), data_range=1.0)
    with pytest.raises(ValueError, match="at least one slice"):
        pairwise_ssim(np.zeros((0, 16, 16)), data_range=1.0)
    with pytest.raises(ValueError, match="at least one slice"):
        pairwise_ssim([], data_range=1.0)
    with pytest.raises(ValueError, match="win_size exceeds image extent: slices are 10x16"):
        pairwise_ssim(np.zeros((2, 10, 16)), data_range=1.0)
    with pytest.raises(ValueError, match="win_size must be a positive odd integer"):
        pairwise_ssim(vol, data_range=1.0, win_size=8)
    with pytest.raises(ValueError, match="dtype must be one of"):
        pairwise_ssim(vol, data_range=1.0, dtype="float16")
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        pairwise_ssim(vol, data_range=1.0, chunk_size=0)
    with pytest.raises(ValueError, match="backend must be 'auto'.*or 'torch', got 'numba'"):
        pairwise_ssim(vol, data_range=1.0, backend="numba")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_threads must be a positive integer or None"):
            pairwise_ssim(vol, data_range=1.0, num_threads=bad)
    with pytest.raises(ValueError, match="sigma must be"):
        pairwise_ssim(vol, data_range=1.0, sigma=0)
    nan_vol = vol.copy()
    nan_vol[1, 3, 3] = np.nan
    for backend in ("auto", "torch"):
        with pytest.raises(ValueError, match="NaN or infinite"):
            pairwise_ssim(nan_vol, data_range=1.0, backend=backend)


def test_other_input_types_give_the_same_result():
    rng = np.random.default_rng(9)
    vol = (rng.random((4, 24, 20)) * 100).astype(np.float32)
    ref = pairwise_ssim(vol, data_range=100.0, dtype="float64")
    for backend in ("auto", "torch"):
        big_endian = vol.astype(">f4")
        np.testing.assert_allclose(pairwise_ssim(big_endian, data_range=100.0, dtype="float64", backend=backend), ref,
                                   atol=1e-12)
        flipped = np.ascontiguousarray(vol[:, ::-1, ::-1])[:, ::-1, ::-1]  # negative strides, same values
        np.testing.assert_allclose(pairwise_ssim(flipped, data_range=100.0, dtype="float64", backend=backend), ref,
                                   atol=1e-12)
        bf16 = torch.from_numpy(vol).to(torch.bfloat16)
        np.testing.assert_allclose(
            pairwise_ssim(bf16, data_range=100.0, dtype="float64", backend=backend),
            pairwise_ssim(bf16.float().numpy(), data_range=100.0, dtype="float64"), atol=1e-12,
        )
