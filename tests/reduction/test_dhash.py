"""Tests for :mod:`monai_lessmore.reduction.dhash`.

Oracle: ``imagehash.dhash`` on ``PIL.Image.fromarray(img)`` and Pillow's own LANCZOS resize (the installed Pillow,
13.x at the time of writing). Every expected value below comes from those two libraries, computed in the test.
"""

from __future__ import annotations

import imagehash
import numpy as np
import pytest
import torch
from PIL import Image

import monai_lessmore.reduction._jit as _jit
import monai_lessmore.reduction.dhash as dhash_module
from monai_lessmore.reduction.dhash import (
    dhash,
    dhash_bits,
    hamming_distance,
    hamming_matrix,
    hash_to_hex,
    hex_to_hash,
    pillow_lanczos_resize_u8,
)
from tests.conftest import shared_data_path

# (rows, cols) of numpy arrays; PIL sizes are (width, height) = (cols, rows)
SHAPES = [(1, 1), (3, 5), (5, 3), (9, 8), (8, 9), (17, 1000), (1000, 17), (513, 511), (511, 513), (64, 64)]
KINDS = ["uniform", "gradient", "flat"]


def _image(shape: tuple[int, int], kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    if kind == "gradient":
        return ((xx * 7 + yy * 3 + rng.integers(0, 4)) % 256).astype(np.uint8)
    # large flat areas with a few levels: many equal neighbours, i.e. ties in the hash comparisons (bit 0)
    img = np.full(shape, 40, dtype=np.uint8)
    img[: shape[0] // 2] = 200
    img[:, : shape[1] // 3] = 0
    return img


def _pil_resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS))


def _imagehash_hex(img: np.ndarray, hash_size: int = 8) -> str:
    return str(imagehash.dhash(Image.fromarray(img), hash_size=hash_size))


@pytest.fixture(params=["compiled", "int8", "float32"])
def backend(request, monkeypatch):
    """Run a test with the compiled (numba) kernel, then with the torch int8 product and the numpy float32
    fallback that run without numba (float32 is also what runs before a process starts numba)."""
    monkeypatch.setattr(_jit, "COMPILE_AFTER_PIXELS", 0)  # never wait for the work to pay for numba
    if request.param == "compiled":
        if dhash_module._compiled_resample() is None:
            pytest.skip("numba is not importable here")
        return request.param
    monkeypatch.setattr(dhash_module, "_compiled_resample", lambda: None)
    if request.param == "float32":
        monkeypatch.setattr(dhash_module, "_torch_int8_matmul", lambda: None)
    elif dhash_module._torch_int8_matmul() is None:
        pytest.skip("torch._int_mm is not available here")
    return request.param


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [(9, 8), (17, 16), (3, 5), (1, 1), (40, 7), (600, 20)])
def test_resize_equals_pillow(shape, size, backend):
    images = np.stack([_image(shape, kind, seed) for seed, kind in enumerate(KINDS)])
    got = pillow_lanczos_resize_u8(images, size)
    assert got.dtype == np.uint8 and got.shape == (len(KINDS), size[1], size[0])
    for img, out in zip(images, got):
        np.testing.assert_array_equal(out, _pil_resize(img, size))


@pytest.mark.parametrize(
    "shape, size",
    [
        ((9, 8), (9, 8)),  # height 9 -> 8 shrinks by 1 > 2 * (8 - 9): Pillow 13 goes vertical-first
        ((300, 20), (9, 8)),  # tall image: vertical-first
        ((100, 2), (17, 16)),
        ((512, 512), (9, 8)),  # 504 > 2 * 503 is false: horizontal-first
        ((512, 512), (600, 20)),  # upscaled width, strongly reduced height: vertical-first
    ],
)
def test_pass_order_matches_pillow(shape, size, backend):
    """Each pass rounds to 8 bit, so the order matters; these cases differ between the two orders."""
    img = _image(shape, "uniform", 7)
    np.testing.assert_array_equal(pillow_lanczos_resize_u8(img, size)[0], _pil_resize(img, size))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_dhash_equals_imagehash(shape, kind, backend):
    images = np.stack([_image(shape, kind, seed) for seed in range(3)])
    expected = [_imagehash_hex(img) for img in images]
    assert hash_to_hex(dhash(images)) == expected
    assert hash_to_hex(dhash(torch.from_numpy(images))) == expected  # torch input
    assert hash_to_hex(dhash(images[1])) == expected[1:2]  # a single (H, W) image


@pytest.mark.parametrize("size", [512, 511, 257, 64, 7])
def test_compiled_kernel_near_rounding_boundaries(size, backend):
    """Random images put many float32 sums next to a rounding boundary: the exact float64 re-sum must take over.
    Also images of 0/255 only (the largest partial sums) and 16-bit / float data rendered to 8 bit first."""
    rng = np.random.default_rng(size)
    images = [rng.integers(0, 256, (size, size), dtype=np.uint8) for _ in range(6)]
    images.append((rng.random((size, size)) < 0.5).astype(np.uint8) * 255)
    images.append(np.full((size, size), 255, dtype=np.uint8))
    from monai_lessmore.reduction.preprocess import to_uint8

    images.append(to_uint8(rng.integers(0, 65536, (size, size)).astype(np.uint16)))
    images.append(to_uint8(rng.normal(0, 500, (size, size)).astype(np.float32)))
    stack = np.stack(images)
    assert hash_to_hex(dhash(stack)) == [_imagehash_hex(img) for img in images]
    for img, out in zip(images, pillow_lanczos_resize_u8(stack, (33, 31))):
        np.testing.assert_array_equal(out, _pil_resize(img, (33, 31)))


def test_float32_error_bound_covers_every_window():
    """The bound that decides when a float32 window sum is trusted must exceed the actual error of that sum for
    the worst input (all 255: every product at its largest), summed in the least favourable simple order."""
    for in_size, out_size in ((512, 9), (512, 8), (4096, 9), (7, 600)):
        start, length, w32, w64, bound = dhash_module._window_weights(in_size, out_size)
        for j in range(out_size):
            terms = 255.0 * w64[j, : length[j]]
            exact = terms.sum()
            acc = np.float32(0)
            for t in np.sort(terms)[::-1]:  # largest first: the error grows fastest
                acc = np.float32(acc + np.float32(t))
            assert abs(float(acc) - exact) <= bound[j]


def test_dhash_non_contiguous_input():
    base = np.stack([_image((64, 80), "uniform", s) for s in range(4)])
    for view in (base[:, ::2, ::3], base.transpose(0, 2, 1), base[::-1]):
        assert not view.flags.c_contiguous or view.strides[0] < 0
        assert hash_to_hex(dhash(view)) == [_imagehash_hex(np.ascontiguousarray(v)) for v in view]
    readonly = base.copy()
    readonly.flags.writeable = False
    assert hash_to_hex(dhash(readonly)) == [_imagehash_hex(v) for v in base]


@pytest.mark.parametrize("hash_size", [2, 5, 16])
def test_dhash_bits_other_sizes(hash_size):
    images = np.stack([_image((120, 97), kind, 3) for kind in KINDS])
    bits = dhash_bits(images, hash_size)
    assert bits.dtype == bool and bits.shape == (len(KINDS), hash_size * hash_size)
    for img, row in zip(images, bits):
        expected = imagehash.dhash(Image.fromarray(img), hash_size=hash_size).hash.flatten()
        np.testing.assert_array_equal(row, expected)


def test_flat_image_hashes_to_zero():
    """Equal neighbours give bit 0, as imagehash's strict '>'."""
    flat = np.full((2, 50, 50), 77, dtype=np.uint8)
    assert dhash(flat).tolist() == [0, 0]
    assert _imagehash_hex(flat[0]) == "0000000000000000"


def test_empty_batch():
    empty = np.zeros((0, 16, 16), dtype=np.uint8)
    assert dhash(empty).shape == (0,) and dhash(empty).dtype == np.uint64
    assert pillow_lanczos_resize_u8(empty).shape == (0, 8, 9)
    assert dhash_bits(empty, 4).shape == (0, 16)
    assert hamming_matrix(dhash(empty)).shape == (0, 0)
    assert hash_to_hex(dhash(empty)) == []


def test_covid19_ct_seg_slices_equal_imagehash():
    """All 1,600 8-bit slices of the COVID-19-CT-Seg export, hashed as the authors' pipeline did (JPG -> "L")."""
    folder = shared_data_path("ct", "slices", "covid19_ct_seg")
    files = sorted(folder.glob("*.jpg"))
    assert len(files) == 1600
    expected, got = [], []
    for start in range(0, len(files), 200):
        images = [Image.open(f).convert("L") for f in files[start : start + 200]]
        expected += [str(imagehash.dhash(im)) for im in images]
        shapes = {im.size for im in images}
        for shape in shapes:  # stack slices of one size (all 512x512 here, but do not assume it)
            idx = [i for i, im in enumerate(images) if im.size == shape]
            hexes = hash_to_hex(dhash(np.stack([np.asarray(images[i]) for i in idx])))
            got += list(zip([start + i for i in idx], hexes))
    assert [h for _, h in sorted(got)] == expected


def test_pancreas_dicom_slices_equal_imagehash():
    """Every slice of the pancreas DICOM series, rendered per slice min-max to 8 bit (the paper's PNG export)."""
    pydicom = pytest.importorskip("pydicom")
    folder = shared_data_path("ct", "dicom", "pancreas_ct")
    files = sorted(folder.glob("*.dcm"))
    assert len(files) == 134
    slices = []
    for f in files:
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1)) + float(
            getattr(ds, "RescaleIntercept", 0)
        )
        lo, hi = hu.min(), hu.max()
        rendered = np.zeros(hu.shape) if hi == lo else np.round((hu - lo) / (hi - lo) * 255)
        slices.append(rendered.astype(np.uint8))
    stack = np.stack(slices)
    assert hash_to_hex(dhash(stack)) == [_imagehash_hex(s) for s in stack]


def test_hamming_matrix_matches_python_and_imagehash():
    images = np.stack([_image((40, 60), kind, seed) for kind in KINDS for seed in range(4)])
    hashes = dhash(images)
    matrix = hamming_matrix(hashes)
    assert matrix.dtype == np.int32 and matrix.shape == (len(images), len(images))
    ints = [int(h) for h in hashes]
    expected = np.array([[bin(a ^ b).count("1") for b in ints] for a in ints])
    np.testing.assert_array_equal(matrix, expected)
    ih = [imagehash.dhash(Image.fromarray(img)) for img in images]
    np.testing.assert_array_equal(matrix, [[a - b for b in ih] for a in ih])
    assert hamming_distance(ints[0], ints[5]) == expected[0, 5]
    assert hamming_distance(str(ih[0]), str(ih[5])) == expected[0, 5]


def test_hamming_matrix_extremes():
    hashes = np.array([0, 2**64 - 1, 1, 2**63], dtype=np.uint64)
    matrix = hamming_matrix(hashes)
    assert matrix[0, 1] == 64 and matrix[0, 2] == 1 and matrix[2, 3] == 2 and matrix[1, 3] == 63
    np.testing.assert_array_equal(matrix, matrix.T)
    assert (np.diag(matrix) == 0).all()


def test_hex_round_trip():
    hexes = ["0000000000000000", "ffffffffffffffff", "8000000000000001", "0123456789abcdef"]
    hashes = hex_to_hash(hexes)
    assert hashes.dtype == np.uint64 and int(hashes[1]) == 2**64 - 1 and int(hashes[2]) == 2**63 + 1
    assert hash_to_hex(hashes) == hexes
    assert hash_to_hex([5]) == ["0000000000000005"]
    assert hex_to_hash(["0123456789ABCDEF"]).tolist() == [0x0123456789ABCDEF]


def test_first_bit_is_most_significant():
    """imagehash prints the top-left comparison as the highest bit."""
    img = np.zeros((8, 9), dtype=np.uint8)
    img[0, 1] = 255  # only pixel 1 > pixel 0 in row 0 after an identity "resize" (9x8 needs no pass)
    assert _imagehash_hex(img) == "8000000000000000"
    assert hash_to_hex(dhash(img)) == ["8000000000000000"]


@pytest.mark.parametrize(
    "images, match",
    [
        (np.zeros((4, 4), dtype=np.float32), "to_uint8"),
        (np.zeros((4, 4), dtype=np.uint16), "dtype uint8"),
        (np.zeros((1, 1, 4, 4), dtype=np.uint8), r"got shape \(1, 1, 4, 4\)"),
        (np.zeros((4,), dtype=np.uint8), "got shape"),
        (np.zeros((2, 0, 4), dtype=np.uint8), "at least 1x1"),
        (torch.zeros((4, 4), dtype=torch.float32), "to_uint8"),
    ],
)
def test_bad_images_raise(images, match):
    with pytest.raises(ValueError, match=match):
        dhash(images)


@pytest.mark.parametrize("size", [(0, 8), (9,), (9.0, 8), "98", (True, 8)])
def test_bad_size_raises(size):
    with pytest.raises(ValueError, match="size must be"):
        pillow_lanczos_resize_u8(np.zeros((4, 4), dtype=np.uint8), size)


def test_bad_hash_size_raises():
    img = np.zeros((16, 16), dtype=np.uint8)
    with pytest.raises(ValueError, match="use dhash_bits"):
        dhash(img, hash_size=16)
    with pytest.raises(ValueError, match=">= 2"):
        dhash_bits(img, hash_size=1)
    with pytest.raises(ValueError, match=">= 2"):
        dhash_bits(img, hash_size=2.5)


def test_bad_hex_and_hashes_raise():
    with pytest.raises(ValueError, match=r"hex_strings\[1\] must be 16 hex digits"):
        hex_to_hash(["0000000000000000", "xyz"])
    with pytest.raises(ValueError, match="16 hex digits"):
        hex_to_hash(["00000000000000000"])
    with pytest.raises(TypeError, match="single string"):
        hex_to_hash("0000000000000000")
    with pytest.raises(ValueError, match="1D array"):
        hamming_matrix(np.zeros((2, 2), dtype=np.uint64))
    with pytest.raises(ValueError, match="unsigned 64-bit integers"):
        hash_to_hex(np.array([0.5]))
    with pytest.raises(ValueError, match="unsigned 64-bit integers"):
        hash_to_hex([-3])
    with pytest.raises(ValueError, match="64-bit hash"):
        hamming_distance(-1, 0)
