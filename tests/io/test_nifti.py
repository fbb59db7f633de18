"""Tests for monai_lessmore.io.nifti: the slice axis from the affine, the LPS view, lazy slices, bad files."""

from __future__ import annotations

import gzip
import os
import threading

import nibabel as nib
import numpy as np
import pytest

from monai_lessmore.io import VolumeReadError, load_volume, read_slice
from monai_lessmore.io.nifti import load_nifti, nifti_volume_name, read_nifti_slice
from tests.conftest import shared_data_path
from tests.io.conftest import lps_to_ras, random_volume, write_nifti

REAL_NIFTI = [
    # (file, expected (S, H, W)); the stored shapes and axis codes are listed in ../shared/data/README.md
    ("invesalius_cranium_head_ct.nii.gz", (108, 256, 256)),  # stored (x, y, z) 256x256x108, RAS
    ("totalseg_aorta_ct_cropped.nii.gz", (164, 126, 120)),  # stored 120x126x164, LPS
    ("totalseg_example_ct.nii.gz", (112, 101, 122)),
    ("totalseg_example_ct_sm.nii.gz", (30, 101, 122)),
    ("totalseg_pulmonary_ct_cropped.nii.gz", (112, 102, 122)),
]


def _ras_xyz(stack_shw: np.ndarray) -> np.ndarray:
    """The (S, H, W) LPS-view stack as the (x, y, z) array of a RAS NIfTI (x runs L->R, y P->A, z I->S)."""
    return stack_shw.transpose(2, 1, 0)[::-1, ::-1, :]


def test_ras_file_gives_lps_view(tmp_path, rng):
    stack = random_volume(rng, (4, 5, 6))  # the expected (S, H, W)
    path = write_nifti(tmp_path / "ras.nii.gz", np.ascontiguousarray(_ras_xyz(stack)))  # identity affine = RAS
    vol = load_volume(path)
    np.testing.assert_array_equal(vol.array, stack)
    assert vol.array.dtype == np.float32 and vol.array.flags.c_contiguous
    assert vol.kind == "nifti" and vol.name == "ras" and vol.slice_sources is None
    assert vol.meta["orientation"] == ("R", "A", "S") and vol.meta["slice_axis"] == 2
    assert not vol.meta["slice_axis_flipped"] and vol.meta["nonfinite_voxels"] == 0


@pytest.mark.parametrize("perm", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
@pytest.mark.parametrize("flip_slices", [False, True])
def test_slice_axis_taken_from_affine_not_position(tmp_path, rng, perm, flip_slices):
    stack = random_volume(rng, (4, 5, 6))
    lps_xyz = stack.transpose(2, 1, 0)  # x: R->L (L+), y: A->P (P+), z: I->S
    affine_lps = np.eye(4)
    if flip_slices:  # store slices superior -> inferior
        lps_xyz = lps_xyz[:, :, ::-1]
        affine_lps[2, 2] = -1.0
    data = np.ascontiguousarray(lps_xyz.transpose(perm))
    affine_lps[:, :3] = affine_lps[:, list(perm)]
    vol = load_volume(write_nifti(tmp_path / "v.nii", data, lps_to_ras(affine_lps)))
    np.testing.assert_array_equal(vol.array, stack)
    assert vol.meta["slice_axis"] == perm.index(2)
    assert vol.meta["slice_axis_flipped"] == flip_slices
    for index in (0, 2, -1):
        np.testing.assert_array_equal(read_slice(vol.source, index), vol.array[index])


def test_spacing_and_affine_follow_the_output(tmp_path, rng):
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    vol = load_volume(write_nifti(tmp_path / "s.nii.gz", random_volume(rng, (3, 4, 5)), affine))
    assert vol.meta["spacing"] == pytest.approx((2.5, 0.9, 0.8))
    np.testing.assert_allclose(vol.meta["original_affine"], affine, rtol=1e-6)  # stored as float32
    assert nib.aff2axcodes(vol.meta["affine"]) == ("S", "P", "L")


def test_scl_slope_and_inter_applied(tmp_path, rng):
    raw = random_volume(rng, (3, 4, 5), 0, 100)
    path = write_nifti(tmp_path / "scaled.nii", raw)
    # nibabel recomputes the scaling when saving an array, so patch scl_slope/scl_inter (bytes 112..119) directly
    data = bytearray(path.read_bytes())
    data[112:120] = np.array([2.0, -1024.0], dtype="<f4").tobytes()
    path.write_bytes(bytes(data))
    vol = load_nifti(path)
    np.testing.assert_array_equal(vol.array, (raw.transpose(2, 1, 0)[:, ::-1, ::-1] * 2.0 - 1024.0))
    np.testing.assert_array_equal(read_nifti_slice(path, 1), vol.array[1])


def test_single_slice_volume_is_allowed(tmp_path, rng):
    vol = load_volume(write_nifti(tmp_path / "one.nii.gz", random_volume(rng, (6, 7, 1))))
    assert vol.array.shape == (1, 7, 6)


def test_trailing_size_one_dims_are_squeezed(tmp_path, rng):
    data = random_volume(rng, (3, 4, 5, 1))
    path = write_nifti(tmp_path / "t1.nii.gz", data)
    vol = load_volume(path)
    assert vol.array.shape == (5, 4, 3)
    np.testing.assert_array_equal(read_slice(path, 3), vol.array[3])


def test_nonfinite_voxels_are_counted_not_rejected(tmp_path):
    data = np.zeros((3, 4, 5), np.float32)
    data[0, 0, 0], data[1, 1, 1], data[2, 2, 2] = np.nan, np.inf, -np.inf
    vol = load_volume(write_nifti(tmp_path / "nan.nii.gz", data))
    assert vol.meta["nonfinite_voxels"] == 3


def test_2d_nifti_is_an_error(tmp_path):
    path = write_nifti(tmp_path / "flat.nii.gz", np.zeros((8, 9), np.int16))
    with pytest.raises(VolumeReadError, match=r"flat\.nii\.gz.*2D image.*\(X, Y, 1\)"):
        load_volume(path)


def test_4d_with_time_points_is_an_error(tmp_path):
    path = write_nifti(tmp_path / "fmri.nii.gz", np.zeros((4, 4, 3, 2), np.int16))
    with pytest.raises(VolumeReadError, match=r"fmri\.nii\.gz.*2 time points.*one 3D volume"):
        load_volume(path)
    with pytest.raises(VolumeReadError, match="time points"):
        read_slice(path, 0)


def test_truncated_gzip_is_an_error(tmp_path, rng):
    path = write_nifti(tmp_path / "cut.nii.gz", random_volume(rng, (16, 16, 16)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VolumeReadError, match=r"cut\.nii\.gz.*truncated or corrupt.*re-download"):
        load_volume(path)
    with pytest.raises(VolumeReadError, match=r"cut\.nii\.gz"):
        read_slice(path, 15)


def test_truncated_plain_nifti_is_an_error(tmp_path, rng):
    path = write_nifti(tmp_path / "cut.nii", random_volume(rng, (16, 16, 16)))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(VolumeReadError, match=r"cut\.nii"):
        load_volume(path)


def test_not_a_nifti_is_an_error(tmp_path):
    path = tmp_path / "fake.nii.gz"
    path.write_bytes(gzip.compress(b"definitely not a nifti header" * 20))
    with pytest.raises(VolumeReadError, match=r"fake\.nii\.gz.*not a readable NIfTI"):
        load_volume(path)


def test_read_slice_index_out_of_range(tmp_path, rng):
    path = write_nifti(tmp_path / "v.nii.gz", random_volume(rng, (3, 4, 5)))
    with pytest.raises(IndexError, match=r"index 5 .*v\.nii\.gz.*5 slices"):
        read_slice(path, 5)


def test_volume_name_strips_extensions():
    assert nifti_volume_name("/a/b/case.01.nii.gz") == "case.01"
    assert nifti_volume_name("x.NII") == "x"


@pytest.mark.realdata
@pytest.mark.parametrize(("name", "shape"), REAL_NIFTI)
def test_real_nifti(name, shape):
    path = shared_data_path("ct", "nifti", name)
    vol = load_volume(path)
    assert vol.array.shape == shape
    assert vol.meta["orientation"][vol.meta["slice_axis"]] in ("S", "I")
    assert -2048 <= float(vol.array.min()) <= -900  # air in HU
    assert float(vol.array.max()) > 1000  # bone / contrast in HU
    for index in (0, shape[0] // 2, shape[0] - 1):
        np.testing.assert_array_equal(read_slice(path, index), vol.array[index])


# ---------------------------------------------------------------- stored-dtype reading (lazy volumes, fast gzip)
def _eager_reference(path) -> np.ndarray:
    """What the reader returned before it read the voxels itself: nibabel's scaled array, reoriented, float32."""
    from monai_lessmore.io.orientation import apply_axial_orientation, axial_orientation

    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    data = data.reshape(data.shape[:3])
    return np.ascontiguousarray(apply_axial_orientation(data, axial_orientation(img.affine, data.shape)), np.float32)


_AFFINES = {
    "ras": np.diag([1.0, 1.0, 2.0, 1.0]),
    "lps": np.diag([-1.0, -1.0, 2.0, 1.0]),
    "zyx": np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1]]),
    "coronal": np.array([[1.0, 0, 0, 0], [0, 0, -1.0, 0], [0, 2.0, 0, 0], [0, 0, 0, 1]]),
}


@pytest.mark.parametrize("orient", sorted(_AFFINES))
@pytest.mark.parametrize(
    "dtype, slope, inter",
    [("int16", 1.0, 0.0), ("int16", 1.0, -1024.0), ("int16", 0.5, -1000.25), ("uint8", 1.0, 0.0),
     ("uint16", 2.0, -1024.0), ("float32", 1.0, 0.0), (">i2", 1.0, 0.0), ("int32", 1.0, 0.0)],
)
def test_lazy_volume_equals_nibabel_and_renders_the_same(tmp_path, rng, orient, dtype, slope, inter):
    from monai_lessmore.io.nifti import LazyNiftiVolume
    from monai_lessmore.reduction import SliceReducer
    from monai_lessmore.reduction.preprocess import StoredStack, to_uint8

    data = rng.integers(-1000, 2000, (9, 7, 5)) if dtype not in ("uint8", "uint16") else rng.integers(0, 250, (9, 7, 5))
    data[..., 1] = 3  # a constant slice (for the axial files)
    img = nib.Nifti1Image(data.astype(dtype), _AFFINES[orient])
    img.header.set_slope_inter(slope, inter)
    path = tmp_path / f"v_{orient}.nii.gz"
    nib.save(img, str(path))
    expected = _eager_reference(path)
    eager, lazy = load_nifti(path), load_nifti(path, lazy=True)
    np.testing.assert_array_equal(eager.array, expected)
    assert isinstance(lazy, LazyNiftiVolume) and isinstance(lazy.slices(), StoredStack)
    assert lazy.num_slices == eager.num_slices and lazy.meta["nonfinite_voxels"] == 0
    np.testing.assert_array_equal(to_uint8(lazy.slices()), to_uint8(expected))
    np.testing.assert_array_equal(to_uint8(lazy.slices(), window=(-500, 800)), to_uint8(expected, window=(-500, 800)))
    a, b = SliceReducer().reduce(lazy.slices()), SliceReducer().reduce(expected)
    assert a.kept.tolist() == b.kept.tolist() and a.hashes == b.hashes
    np.testing.assert_array_equal(lazy.array, expected)  # made on first access, equal to the eager array
    assert lazy.array.dtype == np.float32 and lazy.array.flags.c_contiguous


def test_intercept_too_large_for_float32_renders_like_the_eager_array(tmp_path, rng):
    """With an intercept near 2**24, ``raw + intercept`` rounds in float32: the stored integers must not be rendered
    as if it did not (the eager float32 array is what the reduction sees)."""
    from monai_lessmore.reduction.preprocess import to_uint8

    img = nib.Nifti1Image(rng.integers(-1000, 1000, (16, 16, 3)).astype(np.int16), np.eye(4))
    img.header.set_slope_inter(1.0, float(2**24))
    path = tmp_path / "far.nii"
    nib.save(img, str(path))
    lazy = load_nifti(path, lazy=True)
    assert lazy.slices().offset is None  # rendered from its float32 values instead
    np.testing.assert_array_equal(to_uint8(lazy.slices()), to_uint8(load_nifti(path).array))


def test_stored_reading_without_isal_gives_the_same_bytes(tmp_path, rng, monkeypatch):
    """ISA-L's gzip and the standard library's give the same voxels; without isal the standard library is used."""
    import builtins

    import monai_lessmore.io.nifti as nifti

    path = write_nifti(tmp_path / "v.nii.gz", random_volume(rng, (6, 8, 10)).astype(np.int16))
    with_default = load_nifti(path).array
    real_import = builtins.__import__

    def no_isal(name, *args, **kwargs):
        if name == "isal" or name.startswith("isal."):
            raise ImportError("isal hidden for this test")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_isal)
    with nifti.open_gzip(str(path)) as fh:
        assert isinstance(fh, gzip.GzipFile)
    np.testing.assert_array_equal(load_nifti(path).array, with_default)
    np.testing.assert_array_equal(with_default, _eager_reference(path))
    # inflated in a thread by the standard library's gzip, hashed from the bytes read
    import hashlib

    from monai_lessmore.utils import files

    monkeypatch.setattr(nifti, "STREAM_GZIP", True)
    streamed = load_nifti(path, lazy=True)
    assert streamed.streamed
    np.testing.assert_array_equal(streamed.array, with_default)
    streamed.finish_reading()
    monkeypatch.setattr(files, "file_hash", lambda p: pytest.fail("the file was read a second time"))
    assert files.content_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_nonfinite_counted_on_stored_floats(tmp_path):
    data = np.zeros((4, 4, 3), dtype=np.float32)
    data[0, 0, 0], data[1, 1, 1] = np.nan, np.inf
    path = write_nifti(tmp_path / "nan.nii.gz", data)
    assert load_nifti(path, lazy=True).meta["nonfinite_voxels"] == 2
    with pytest.raises(VolumeReadError, match="2 NaN/Inf"):
        load_nifti(path, lazy=True).require_finite()


def test_slice_reads_reopen_a_rewritten_file(tmp_path, rng):
    """Slice reads keep the file open (indexed_gzip's seek index persists); a file rewritten in place is read anew."""
    path = tmp_path / "v.nii.gz"
    first = random_volume(rng, (5, 6, 7))
    write_nifti(path, np.ascontiguousarray(_ras_xyz(first)))
    np.testing.assert_array_equal(read_nifti_slice(path, 3), first[3])
    second = first + 100
    write_nifti(path, np.ascontiguousarray(_ras_xyz(second)))
    import os

    os.utime(path, ns=(1, 1))  # a different modification time even on coarse-clock file systems
    np.testing.assert_array_equal(read_nifti_slice(path, 3), second[3])
    for i in (4, 0, 2, -1):
        np.testing.assert_array_equal(read_nifti_slice(path, i), second[i])


# ---------------------------------------------------------------- .nii.gz inflated in a thread while slices render
def _reader_threads() -> list:
    import threading

    # the inflating thread, the thread that hashes what it reads and the one that maps the buffer's pages
    prefixes = ("lessmore-read", "lessmore-sha256", "lessmore-populate")
    return [t for t in threading.enumerate() if t.name.startswith(prefixes)]


def _wait_for_no_reader_threads(limit_s: float = 30.0) -> list:
    """The reader threads still alive once they have had ``limit_s`` to end (they end at their next block)."""
    import time

    deadline = time.monotonic() + limit_s
    while _reader_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    return _reader_threads()


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few hundred bytes, so that the volumes below arrive in many pieces while they are rendered."""
    import monai_lessmore.io.nifti as nifti
    import monai_lessmore.reduction.preprocess as preprocess
    from monai_lessmore.utils import gzstream

    monkeypatch.setattr(gzstream, "PIPELINE_BLOCK", 333)
    monkeypatch.setattr(preprocess, "_PIPELINE_BYTES", 700)
    monkeypatch.setattr(nifti, "STREAM_GZIP", True)  # whatever this machine's CPUs and environment


@pytest.mark.parametrize("orient", sorted(_AFFINES))
@pytest.mark.parametrize("dtype, slope, inter", [("int16", 1.0, -1024.0), ("uint8", 1.0, 0.0), ("float32", 1.0, 0.0),
                                                 (">i2", 1.0, 0.0), ("int16", 0.5, -1000.25)])
def test_streamed_reading_is_bit_identical_to_reading_first(tmp_path, rng, monkeypatch, small_blocks, orient, dtype,
                                                           slope, inter):
    import monai_lessmore.io.nifti as nifti
    from monai_lessmore.reduction import SliceReducer
    from monai_lessmore.reduction.preprocess import to_uint8

    data = rng.integers(0, 250, (19, 17, 23)) if dtype == "uint8" else rng.integers(-1000, 2000, (19, 17, 23))
    img = nib.Nifti1Image(data.astype(dtype), _AFFINES[orient])
    img.header.set_slope_inter(slope, inter)
    path = tmp_path / f"v_{orient}.nii.gz"
    nib.save(img, str(path))
    streamed = load_nifti(path, lazy=True)
    assert streamed.slices().ready is not None  # inflated in a thread
    u8, result = to_uint8(streamed.slices()), SliceReducer().reduce(streamed.slices())
    array = streamed.array
    monkeypatch.setattr(nifti, "STREAM_GZIP", False)
    first = load_nifti(path, lazy=True)
    assert first.slices().ready is None
    np.testing.assert_array_equal(u8, to_uint8(first.slices()))
    reference = SliceReducer().reduce(first.slices())
    assert result.kept.tolist() == reference.kept.tolist() and result.hashes == reference.hashes
    np.testing.assert_array_equal(array, _eager_reference(path))
    del streamed, first
    assert _wait_for_no_reader_threads() == []


def test_the_digest_of_a_streamed_file_comes_from_the_bytes_read(tmp_path, rng, monkeypatch, small_blocks):
    """The reading thread hashes the compressed bytes as it reads them (and the rest of the file after the voxels):
    :func:`content_digest` then equals hashlib's SHA-256 of the file without reading it again."""
    import hashlib

    from monai_lessmore.utils import files

    path = write_nifti(tmp_path / "v.nii.gz", random_volume(rng, (40, 30, 20)).astype(np.int16))
    vol = load_nifti(path, lazy=True)
    vol.array  # every voxel read
    assert _wait_for_no_reader_threads() == []
    assert files.known_file_digest(path, path.stat()) == hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setattr(files, "file_hash", lambda p: pytest.fail("the file was read a second time"))
    assert files.content_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_streamed_file_whose_digest_is_known_is_not_hashed_again(tmp_path, rng, monkeypatch, small_blocks):
    """After a cache lookup took the digest (the dataset filter), the reading thread only inflates."""
    from monai_lessmore.utils import files, gzstream

    data = random_volume(rng, (40, 30, 20)).astype(np.int16)
    path = write_nifti(tmp_path / "v.nii.gz", data)
    digest = files.content_digest(path)

    def no_hashing(raw):
        raise AssertionError("hashed a second time")

    monkeypatch.setattr(gzstream, "HashingReader", no_hashing)
    vol = load_nifti(path, lazy=True)
    assert vol.streamed
    np.testing.assert_array_equal(vol.array, load_nifti(path).array)
    assert _wait_for_no_reader_threads() == []
    monkeypatch.setattr(files, "file_hash", lambda p: pytest.fail("the digest was forgotten"))
    assert files.content_digest(path) == digest  # still the one taken before, not read again


@pytest.mark.parametrize("damage", ["truncate", "corrupt"])
def test_a_damaged_gzip_read_in_a_thread_names_the_file_and_leaves_no_thread(tmp_path, rng, small_blocks, damage):
    from monai_lessmore.reduction import SliceReducer

    # 2 MiB of voxels: the damage lies far past what nibabel reads for the header
    path = write_nifti(tmp_path / "bad.nii.gz", random_volume(rng, (128, 128, 64)).astype(np.int16))
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) * 2 // 3]
    else:
        data[len(data) * 3 // 4 : len(data) * 3 // 4 + 64] = bytes(64)
    path.write_bytes(bytes(data))
    # (nibabel may already refuse the corrupt file when it reads the header)
    with pytest.raises(VolumeReadError, match=r"bad\.nii\.gz: .*re-download"):
        vol = load_nifti(path, lazy=True)
        SliceReducer().reduce(vol.slices())
    assert _wait_for_no_reader_threads() == []
    from monai_lessmore.utils import files

    assert not [k for k in files._memo if k[0] == str(path.resolve())]  # no digest of a file not read to its end


def test_a_failure_that_is_not_the_file_s_does_not_blame_it(tmp_path, rng, small_blocks, monkeypatch):
    from monai_lessmore.utils import gzstream

    path = write_nifti(tmp_path / "good.nii.gz", random_volume(rng, (32, 32, 8)).astype(np.int16))

    def broken(fileobj):
        raise TypeError("a bug")

    monkeypatch.setattr(gzstream, "open_gzip_stream", broken)
    with pytest.raises(VolumeReadError, match=r"good\.nii\.gz: .*TypeError: a bug.*may be fine") as info:
        load_nifti(path, lazy=True).array
    assert "re-download" not in str(info.value)
    assert _wait_for_no_reader_threads() == []


def test_a_streamed_volume_given_up_half_way_stops_its_thread(tmp_path, rng, monkeypatch):
    """Nothing holds the voxels any more: the thread stops at its next block instead of inflating the rest."""
    import gc

    import monai_lessmore.io.nifti as nifti
    from monai_lessmore.utils import gzstream

    monkeypatch.setattr(nifti, "STREAM_GZIP", True)
    monkeypatch.setattr(gzstream, "PIPELINE_BLOCK", 64)
    path = write_nifti(tmp_path / "v.nii.gz", random_volume(rng, (64, 64, 64)).astype(np.int16))
    vol = load_nifti(path, lazy=True)
    vol.slices().chunk(0, 1)  # the first slice has arrived
    del vol
    gc.collect()
    assert _wait_for_no_reader_threads() == []


def test_voxel_buffer_is_writable_memory_of_the_size_asked():
    from monai_lessmore.io.nifti import _voxel_buffer

    buf = _voxel_buffer(3 * 4096 + 5)
    assert buf.dtype == np.uint8 and buf.shape == (3 * 4096 + 5,) and buf.flags.writeable
    buf[:] = 7
    assert int(buf.sum()) == 7 * buf.size
    assert _voxel_buffer(0).shape == (0,)


def test_a_gz_is_inflated_in_a_thread_by_default_only_with_two_cpus(monkeypatch):
    from monai_lessmore.io.nifti import stream_gzip_default

    monkeypatch.delenv("LESSMORE_STREAM_GZIP", raising=False)
    assert stream_gzip_default(cpus=2) and stream_gzip_default(cpus=16)
    assert not stream_gzip_default(cpus=1)
    monkeypatch.setenv("LESSMORE_STREAM_GZIP", "1")
    assert stream_gzip_default(cpus=1)
    monkeypatch.setenv("LESSMORE_STREAM_GZIP", "0")
    assert not stream_gzip_default(cpus=16)


def test_reducing_a_streamed_file_hashes_it_once_and_records_that_digest(tmp_path, rng, monkeypatch, small_blocks):
    """``process_volume`` right after the reduction: the digest of the bytes the thread inflated, never a second
    read of the file, whatever the threads' timing."""
    import hashlib

    from monai_lessmore.cli.reduce import process_volume
    from monai_lessmore.utils import files

    path = write_nifti(tmp_path / "v.nii.gz", random_volume(rng, (40, 30, 20)).astype(np.int16))
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setattr(files, "file_hash", lambda p: pytest.fail("the file was read a second time"))
    record = process_volume(str(path), "v", {"method": "hash", "threshold": 6}, str(tmp_path / "out"), "none",
                            "index", write_record=False)
    assert record["digest"] == expected
    assert _wait_for_no_reader_threads() == []


def test_stream_gzip_setting_reads_common_spellings(monkeypatch):
    from monai_lessmore.io.nifti import stream_gzip_default

    for off in ("0", "false", "No", " off "):
        monkeypatch.setenv("LESSMORE_STREAM_GZIP", off)
        assert not stream_gzip_default(cpus=8)
    for on in ("1", "true", "YES"):
        monkeypatch.setenv("LESSMORE_STREAM_GZIP", on)
        assert stream_gzip_default(cpus=1)


# ---------------------------------------------------------------- the .nii.gz header read through ISA-L
def _header_variant(tmp_path, rng, kind: str):
    data = random_volume(rng, (12, 10, 6)).astype(np.int16)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = [-40.0, 12.0, 100.0]
    if kind == "nifti2":
        img = nib.Nifti2Image(data, affine)
    else:
        header = nib.Nifti1Header(endianness=">") if kind == "big_endian" else None
        img = nib.Nifti1Image(data.astype(">i2") if kind == "big_endian" else data, affine, header)
    if kind == "extensions":  # two extensions: the voxels start well past 540 bytes
        img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"a comment" * 40))
        img.header.extensions.append(nib.nifti1.Nifti1Extension(4, b"\x01" * 100))
    if kind == "scaled":
        img.header.set_slope_inter(0.5, -1024.0)
    path = tmp_path / f"{kind}.nii.gz"
    nib.save(img, str(path))
    return path


@pytest.mark.parametrize("kind", ["nifti1", "nifti2", "big_endian", "extensions", "scaled"])
def test_the_header_read_through_isal_is_nibabel_s(tmp_path, rng, kind):
    from monai_lessmore.io.nifti import _gz_header_image

    path = _header_variant(tmp_path, rng, kind)
    ours, theirs = _gz_header_image(str(path)), nib.load(str(path))
    assert ours is not None and type(ours) is type(theirs)
    assert ours.header.binaryblock == theirs.header.binaryblock
    assert [(e.get_code(), e.get_content()) for e in ours.header.extensions] == [
        (e.get_code(), e.get_content()) for e in theirs.header.extensions]
    np.testing.assert_array_equal(ours.affine, theirs.affine)
    assert ours.shape == theirs.shape and ours.get_data_dtype() == theirs.get_data_dtype()
    assert (ours.dataobj.offset, ours.dataobj.slope, ours.dataobj.inter, ours.dataobj.order) == (
        theirs.dataobj.offset, theirs.dataobj.slope, theirs.dataobj.inter, theirs.dataobj.order)
    assert ours.get_filename() == theirs.get_filename()
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))
    if kind == "extensions":
        assert ours.dataobj.offset > 540
    np.testing.assert_array_equal(load_nifti(path).array, load_nifti(path, lazy=True).array)


@pytest.mark.parametrize("damage", ["ni1_magic", "vox_offset_348", "truncated_header", "not_gzip"])
def test_odd_headers_are_left_to_nibabel(tmp_path, rng, damage):
    from monai_lessmore.io.nifti import _gz_header_image

    path = _header_variant(tmp_path, rng, "nifti1")
    raw = bytearray(gzip.decompress(path.read_bytes()))
    if damage == "ni1_magic":
        raw[344:348] = b"ni1\0"
    elif damage == "vox_offset_348":
        raw[108:112] = np.float32(348).tobytes()
    elif damage == "truncated_header":
        raw = raw[:200]
    path.write_bytes(bytes(raw) if damage == "not_gzip" else gzip.compress(bytes(raw)))
    assert _gz_header_image(str(path)) is None  # nibabel reads it (or words the error), as before
