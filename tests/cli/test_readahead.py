"""``lessmore reduce`` reads its first .nii.gz ahead while it imports: the header read with the standard library
against nibabel's, when a read-ahead is made, taken over, refused, or stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import nibabel as nib
import numpy as np
import pytest

from monai_lessmore.cli.main import main
from monai_lessmore.cli.readahead import nifti_gz_voxels, start_reduce_readahead
from monai_lessmore.io import VolumeReadError
from monai_lessmore.io.nifti import load_nifti
from monai_lessmore.utils import gzstream


def _reader_threads() -> list:
    return [t for t in threading.enumerate() if t.name.startswith(("lessmore-read", "lessmore-sha256"))]


@pytest.fixture(autouse=True)
def _no_readahead_left():
    yield
    left = dict(gzstream._READAHEADS)
    gzstream.cancel_readaheads()
    assert not left, "a test left a read-ahead running"


@pytest.fixture
def streamed(monkeypatch):
    """Stream whatever this machine's CPUs and environment (the read-ahead is made only where the reader streams)."""
    import monai_lessmore.io.nifti as nifti

    monkeypatch.setattr(nifti, "STREAM_GZIP", True)
    monkeypatch.setenv("LESSMORE_STREAM_GZIP", "1")


def _volume(path, shape=(48, 40, 12), *, klass=nib.Nifti1Image, dtype=np.int16, endian="<", extension=False, shift=0):
    data = ((np.arange(np.prod(shape)) + shift) % 251).reshape(shape).astype(dtype)
    header = klass.header_class(endianness=endian)
    img = klass(data, np.diag([0.8, 0.8, 2.5, 1.0]), header)
    img.set_data_dtype(dtype)
    if extension:
        img.header.extensions.append(nib.nifti1.Nifti1Extension(4, b"a comment, padded" * 20))
    nib.save(img, str(path))
    return path


@pytest.mark.parametrize(
    "klass, dtype, endian, shape, extension",
    [
        (nib.Nifti1Image, np.int16, "<", (48, 40, 12), False),
        (nib.Nifti1Image, np.float32, ">", (48, 40, 12), False),
        (nib.Nifti1Image, np.uint8, "<", (16, 20, 7, 1), True),
        (nib.Nifti2Image, np.float64, "<", (10, 12, 9), False),
        (nib.Nifti2Image, np.int32, ">", (10, 12, 9), True),
    ],
)
def test_the_voxels_offset_and_size_are_nibabel_s(tmp_path, klass, dtype, endian, shape, extension):
    path = _volume(tmp_path / "v.nii.gz", shape, klass=klass, dtype=dtype, endian=endian, extension=extension)
    proxy = nib.load(str(path)).dataobj
    want = (int(proxy.offset), int(np.prod(proxy.shape)) * np.dtype(proxy.dtype).itemsize)
    assert nifti_gz_voxels(str(path)) == want
    assert want[0] > 352 or not extension


def test_what_is_not_plainly_a_nifti_gz_gives_none(tmp_path):
    import gzip

    nii = _volume(tmp_path / "v.nii", (8, 8, 4))
    assert nifti_gz_voxels(str(nii)) is None  # not gzip
    (tmp_path / "text.nii.gz").write_bytes(gzip.compress(b"not a header" * 100))
    assert nifti_gz_voxels(str(tmp_path / "text.nii.gz")) is None
    (tmp_path / "short.nii.gz").write_bytes(gzip.compress(nii.read_bytes()[:200]))
    assert nifti_gz_voxels(str(tmp_path / "short.nii.gz")) is None
    assert nifti_gz_voxels(str(tmp_path / "missing.nii.gz")) is None
    # valid NIfTI, but not one 3D volume: the reader refuses them before it reads a voxel, so nothing is read ahead
    for shape in ((8, 8), (8, 8, 4, 3)):
        assert nifti_gz_voxels(str(_volume(tmp_path / f"d{len(shape)}.nii.gz", shape))) is None


def test_a_read_ahead_is_made_only_where_the_run_would_stream_its_first_input_here(tmp_path, streamed, monkeypatch):
    path = str(_volume(tmp_path / "v.nii.gz"))
    assert not start_reduce_readahead([path], workers=2, distributed=False)
    assert not start_reduce_readahead([path], workers=None, distributed=True)
    assert not start_reduce_readahead([str(tmp_path)], workers=None, distributed=False)  # a folder
    assert not start_reduce_readahead([str(_volume(tmp_path / "p.nii"))], workers=1, distributed=False)
    assert not gzstream._READAHEADS
    monkeypatch.setenv("LESSMORE_STREAM_GZIP", "0")
    assert not start_reduce_readahead([path], workers=1, distributed=False)
    monkeypatch.setenv("LESSMORE_STREAM_GZIP", "1")
    assert start_reduce_readahead([path], workers=1, distributed=False)
    assert len(gzstream._READAHEADS) == 1
    gzstream.cancel_readaheads()
    assert not gzstream._READAHEADS


def test_no_read_ahead_of_a_volume_the_output_folder_has_a_record_of(tmp_path, streamed, monkeypatch):
    from monai_lessmore.cli.names import possible_volume_names, unique_volume_names

    path = str(_volume(tmp_path / "v.nii.gz"))
    started = []
    real = gzstream.start_readahead
    monkeypatch.setattr(gzstream, "start_readahead", lambda *a: started.append(a[0]) or real(*a))
    assert _run(tmp_path, "out", path) == 0
    assert len(started) == 1  # the first run reads it ahead
    assert _run(tmp_path, "out", path) == 0  # the re-run resumes it: nothing to read
    assert len(started) == 1
    assert not gzstream._READAHEADS
    # a record under the name the volume gets beside another of the same name counts too
    other = tmp_path / "elsewhere"
    other.mkdir()
    twin = str(_volume(other / "v.nii.gz"))
    names = unique_volume_names([path, twin])
    assert names[0] != "v" and names[0] in possible_volume_names(path)
    (tmp_path / "out2" / "records").mkdir(parents=True)
    assert start_reduce_readahead([path], workers=1, distributed=False, output=str(tmp_path / "out2"))
    gzstream.cancel_readaheads()
    (tmp_path / "out2" / "records" / f"{names[0]}.json").write_text("{}")
    assert not start_reduce_readahead([path], workers=1, distributed=False, output=str(tmp_path / "out2"))
    assert not gzstream._READAHEADS


def test_no_memory_for_a_read_ahead_leaves_the_run_to_the_reader(tmp_path, streamed, monkeypatch):
    # e.g. under `ulimit -v`: the read-ahead gives up quietly; the reader words the error, naming the file, and the
    # other volumes are reduced
    import monai_lessmore.io.nifti as nifti

    big, good = _volume(tmp_path / "big.nii.gz", (32, 32, 8)), _volume(tmp_path / "good.nii.gz", (16, 16, 4))
    nbytes = nifti_gz_voxels(str(big))[1]

    real = gzstream.anonymous_buffer

    def anonymous_buffer(n):
        if n == nbytes:
            raise OSError(12, "Cannot allocate memory")
        return real(n)

    monkeypatch.setattr(gzstream, "anonymous_buffer", anonymous_buffer)
    monkeypatch.setattr(nifti, "anonymous_buffer", anonymous_buffer)
    assert not start_reduce_readahead([str(big)], workers=1, distributed=False)
    assert not gzstream._READAHEADS
    assert _run(tmp_path, "out", big, good) == 1  # one volume failed
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert _record(tmp_path, "out", "good")["n_slices"] == 4
    failed = json.dumps(summary)
    assert "big.nii.gz" in failed and "no memory for its" in failed and "ulimit -v" in failed


def test_a_taken_read_ahead_counts_as_the_read_s_start_for_trusting_the_file_s_stat(tmp_path, streamed, monkeypatch):
    # a resumed run trusts a record's stat only if the read began long enough after the file's last change; a
    # read-ahead began the read before the reduce did
    import time

    from monai_lessmore.cli.reduce import process_volume
    from monai_lessmore.data import cache
    from monai_lessmore.utils.files import change_time_reliable

    if os.name != "posix" or not change_time_reliable(str(tmp_path)):
        pytest.skip("no reliable change times here: no record stat is ever trusted")
    monkeypatch.setattr(cache, "SETTLED_SECONDS", 1.0)
    path = str(_volume(tmp_path / "fresh.nii.gz", (32, 32, 8)))
    assert gzstream.start_readahead(path, *nifti_gz_voxels(path))  # begins at once after the write
    time.sleep(1.3)  # the imports, discovery, other volumes: the file has settled by the time the reduce begins
    taken = []
    real = gzstream.take_readahead
    import monai_lessmore.io.nifti as nifti

    monkeypatch.setattr(nifti, "take_readahead", lambda *a: taken.append(real(*a)) or taken[-1])
    record = process_volume(path, "fresh", {"method": "hash"}, str(tmp_path / "o"), "none", "index", write_record=False)
    assert taken and taken[0] is not None
    assert record["source_stat"] is None  # the read began 0 s, not 1.3 s, after the last change
    # the same file read ahead after it has settled is trusted
    time.sleep(0.1)
    assert gzstream.start_readahead(path, *nifti_gz_voxels(path))
    record = process_volume(path, "fresh", {"method": "hash"}, str(tmp_path / "o"), "none", "index", write_record=False)
    assert record["source_stat"] is not None


def _run(tmp_path, out, *inputs):
    return main(["reduce", *map(str, inputs), "--output", str(tmp_path / out), "--no-progress"])


def _record(tmp_path, out, name):
    return json.loads((tmp_path / out / "records" / f"{name}.json").read_text())


def test_the_reduce_takes_the_read_ahead_over_and_gives_the_same_record(tmp_path, streamed, monkeypatch):
    from monai_lessmore.io import nifti

    path = _volume(tmp_path / "v.nii.gz", (96, 80, 40))
    taken = []
    real = nifti.take_readahead
    monkeypatch.setattr(nifti, "take_readahead", lambda *a: taken.append(real(*a)) or taken[-1])
    assert _run(tmp_path, "ahead", path) == 0
    assert len(taken) == 1 and taken[0] is not None
    assert _reader_threads() == [] and not gzstream._READAHEADS

    monkeypatch.setenv("LESSMORE_STREAM_GZIP", "0")  # read whole, in this thread: no read-ahead either
    monkeypatch.setattr(nifti, "STREAM_GZIP", False)
    taken.clear()
    assert _run(tmp_path, "plain", path) == 0
    assert taken == []
    ahead, plain = _record(tmp_path, "ahead", "v"), _record(tmp_path, "plain", "v")
    for key in ("digest", "kept", "hashes", "n_slices"):
        assert ahead[key] == plain[key]


def test_a_file_changed_after_its_read_ahead_started_is_read_again(tmp_path, streamed):
    path = _volume(tmp_path / "v.nii.gz", (32, 32, 8))
    assert gzstream.start_readahead(str(path), *nifti_gz_voxels(str(path)))
    gzstream._READAHEADS[next(iter(gzstream._READAHEADS))][1].join()  # the old voxels are all read ahead
    _volume(path, (32, 32, 8), shift=7)  # rewritten: other voxels, as many
    before = os.stat(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))  # a stat unlike the first, on any clock
    lazy = load_nifti(path, lazy=True).array
    assert not gzstream._READAHEADS  # the stale one was stopped, not taken
    np.testing.assert_array_equal(lazy, load_nifti(path).array)


def test_a_read_ahead_that_ended_before_the_reduce_began_gives_its_digest_without_a_second_read(
    tmp_path, streamed, monkeypatch
):
    # a read-ahead may end while the command line is still importing (a slow machine, a small volume); the
    # reduce then makes the process forget older digests of the file before it reads: the read-ahead's own,
    # taken from the bytes it inflated, must survive that, or the whole file is read and hashed a second time
    import hashlib

    from monai_lessmore.cli.reduce import process_volume
    from monai_lessmore.utils import files

    path = _volume(tmp_path / "v.nii.gz", (40, 32, 10))
    assert gzstream.start_readahead(str(path), *nifti_gz_voxels(str(path)))
    gzstream._READAHEADS[next(iter(gzstream._READAHEADS))][1].join()  # ended, its digest remembered
    second = []
    monkeypatch.setattr(files, "file_hash", lambda *a, **k: second.append(a) or "0" * 64)
    record = process_volume(str(path), "v", {"method": "hash", "threshold": 6}, str(tmp_path / "out"), "none",
                            "index", write_record=False)
    assert second == []
    assert record["digest"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not gzstream._READAHEADS and _reader_threads() == []


def test_a_read_ahead_of_a_volume_not_reduced_first_is_stopped_before_the_next_one_is_read(tmp_path, streamed, monkeypatch):
    # e.g. the output holds a record of it under a name the read-ahead's check does not know; here the read-ahead is
    # started by hand, of a volume the run does not reduce at all
    import monai_lessmore.io as mio

    first, second = _volume(tmp_path / "a.nii.gz", (32, 32, 8)), _volume(tmp_path / "b.nii.gz", (32, 32, 6))
    assert gzstream.start_readahead(str(first), *nifti_gz_voxels(str(first)))
    left = []
    real = mio.load_volume
    monkeypatch.setattr(mio, "load_volume", lambda *a, **k: left.append(dict(gzstream._READAHEADS)) or real(*a, **k))
    assert _run(tmp_path, "out", second) == 0
    b = os.stat(second)
    assert [[k[:2] for k in ahead] for ahead in left] == [[(b.st_dev, b.st_ino)]]  # loading b: only b's read-ahead
    assert _record(tmp_path, "out", "b")["n_slices"] == 6
    assert _reader_threads() == []


def test_a_header_that_promises_more_than_the_file_holds_is_refused_before_memory_is_mapped(tmp_path, streamed):
    import gzip
    import io

    path = _volume(tmp_path / "liar.nii.gz", (16, 16, 4))
    body = gzip.decompress(path.read_bytes())
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(body))
    header.set_data_shape((4096, 4096, 4096))  # 128 GiB of int16 promised by a file of a few KiB
    path.write_bytes(gzip.compress(header.binaryblock + body[348:]))
    offset, nbytes = nifti_gz_voxels(str(path))
    assert nbytes == 2 * 4096**3  # int16
    assert not gzstream.start_readahead(str(path), offset, nbytes)
    with pytest.raises(VolumeReadError, match=r"liar\.nii\.gz: the header promises .*re-download"):
        load_nifti(path, lazy=True)
    assert _reader_threads() == []


def test_the_command_line_parser_imports_neither_numpy_nor_nibabel():
    code = (
        "import sys\n"
        "from monai_lessmore.cli.main import build_parser\n"
        "build_parser().parse_args(['reduce', 'v.nii.gz', '--method', 'hash', '--order', 'index', '-o', 'out'])\n"
        "print(sorted(m for m in ('numpy', 'nibabel', 'torch') if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


def test_the_parser_s_choices_are_the_methods_and_orders_of_the_readers():
    from monai_lessmore.cli.args import METHOD_NAMES, SLICE_ORDERS
    from monai_lessmore.io.slice_folder import SLICE_ORDERS as READER_ORDERS
    from monai_lessmore.reduction.methods import METHODS

    assert sorted(METHOD_NAMES) == sorted(METHODS)
    assert tuple(SLICE_ORDERS) == tuple(READER_ORDERS)


def test_the_command_line_reads_nifti_without_importing_pydicom_and_dicom_still_after(tmp_path):
    # nibabel would import pydicom (and requests) only to parse DICOM-in-NIfTI extensions, which the command line
    # never reads: it imports nibabel with pydicom held back. A DICOM series in the same run still reads, and the
    # records are those of a process with pydicom loaded (this one)
    from tests.io.conftest import write_series

    nifti = _volume(tmp_path / "v.nii.gz", (40, 32, 10))
    img = nib.load(str(nifti))
    img.header.extensions.append(nib.nifti1.Nifti1Extension(2, b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100" * 4))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header), str(nifti))
    series = tmp_path / "series"
    write_series(series, ((np.arange(6 * 24 * 20) * 7) % 400 - 200).reshape(6, 24, 20).astype(np.int16))
    code = (
        "import sys\n"
        "from monai_lessmore.cli.main import main\n"
        f"rc = main(['reduce', {str(nifti)!r}, {str(series)!r}, '--method', 'hash', '--no-progress', '-o', "
        f"{str(tmp_path / 'cli')!r}])\n"
        "import nibabel.nifti1\n"
        "print(rc, nibabel.nifti1.have_dicom, sys.modules.get('pydicom') is not None)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[-3:] == ["0", "False", "True"]  # nibabel without pydicom; pydicom for the series

    assert main(["reduce", str(nifti), str(series), "--method", "hash", "--no-progress", "-o",
                 str(tmp_path / "here")]) == 0
    assert nib.nifti1.have_dicom  # this process imported nibabel itself: untouched
    for name in ("v", "series"):
        cli, here = _record(tmp_path, "cli", name), _record(tmp_path, "here", name)
        for key in ("digest", "kept", "hashes", "n_slices"):
            assert cli[key] == here[key]


def test_nibabel_is_imported_with_pydicom_only_where_neither_was_imported_before():
    code = (
        "import sys\n"
        "{pre}\n"
        "from monai_lessmore.cli.main import _import_nibabel_without_pydicom\n"
        "_import_nibabel_without_pydicom()\n"
        "import nibabel.nifti1, pydicom\n"
        "print(nibabel.nifti1.have_dicom, type(sys.modules['pydicom']).__name__)\n"
    )
    for pre, want in [("", "False module"), ("import pydicom", "True module"), ("import nibabel", "True module")]:
        res = subprocess.run([sys.executable, "-c", code.format(pre=pre)], capture_output=True, text=True, check=True)
        assert res.stdout.strip() == want, pre


def test_a_nibabel_that_needs_pydicom_is_imported_afresh_with_it(tmp_path):
    # a nibabel whose package fails without pydicom, after a submodule that merely noted its absence was imported
    fake = tmp_path / "nibabel"
    fake.mkdir()
    (fake / "sub.py").write_text("try:\n    import pydicom\n    HAVE = True\nexcept ImportError:\n    HAVE = False\n")
    (fake / "__init__.py").write_text("from nibabel import sub\nimport pydicom\n")
    code = (
        "import sys\n"
        "from monai_lessmore.cli.main import _import_nibabel_without_pydicom\n"
        "_import_nibabel_without_pydicom()\n"
        "import nibabel\n"
        "print(nibabel.__file__.startswith(sys.argv[1]), nibabel.sub.HAVE, sys.modules['pydicom'] is not None)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["True", "True", "True"]
