"""Reading the first ``.nii.gz`` of a ``lessmore reduce`` run ahead, while the command line imports numpy, nibabel
and the reducer.

A run of ``lessmore reduce`` spends its first 0.4-0.6 s importing, and inflating one 512x512x600 int16 ``.nii.gz``
takes 0.7-0.9 s (ISA-L, one core); run one after the other, the two take most of a bare nibabel load's time. So,
before those imports, :func:`start_reduce_readahead` reads the header of the run's first input with the standard
library alone and starts inflating its voxels in a thread
(:func:`~monai_lessmore.utils.gzstream.start_readahead`); the reader,
:func:`monai_lessmore.io.nifti.load_nifti`, takes that thread and its buffer over when it opens the file
(:func:`~monai_lessmore.utils.gzstream.take_readahead`).

It does so only when nibabel's offset and byte count of the voxels are the ones read here and the file's stat is
unchanged; otherwise the read-ahead is stopped and the reader reads the file itself. A header misread here costs
time, never a wrong voxel. The read-ahead is made only where the reader would stream the file anyway (two CPUs or
more, :func:`~monai_lessmore.utils.gzstream.stream_gzip_default`), for a run in this process (one worker, no Dask),
and only for an input given as a ``.nii.gz`` file (not a folder: which of its volumes comes first is the
discovery's business), and not when the output folder holds a record of that volume already (a re-run that
resumes would not read it; a record that turns out stale only costs the read-ahead). Whatever is not taken is
stopped when the volume reduced first is another one, and at the end of the command.
"""

from __future__ import annotations

import math
import os
import struct
from typing import Sequence

__all__ = ["nifti_gz_voxels", "start_reduce_readahead"]

#: bytes per voxel of each NIfTI ``datatype`` code (the NIfTI-1 standard's table)
_ITEMSIZE = {
    2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8, 1536: 16,
    1792: 16, 2048: 32, 2304: 4,
}


def nifti_gz_voxels(path: str) -> tuple[int, int] | None:
    """``(offset, nbytes)`` of the voxels of the single-file NIfTI-1 or NIfTI-2 ``.nii.gz`` ``path``: where they
    start in the inflated file and how many bytes they take, from its header (either byte order). ``None`` when
    the file is not plainly that, is not one 3D volume (2D, several time points), or cannot be read; nothing here
    raises."""
    from monai_lessmore.utils.gzstream import open_gzip

    try:
        with open_gzip(path) as fh:
            head = fh.read(540)
    except Exception:  # noqa: BLE001 - any failure here only means no read-ahead; the reader words the error
        return None
    for endian in "<>":
        if len(head) < 348:
            return None
        size = struct.unpack_from(endian + "i", head)[0]
        if size == 348 and head[344:348] == b"n+1\0":
            code = struct.unpack_from(endian + "h", head, 70)[0]
            dim = struct.unpack_from(endian + "8h", head, 40)
            offset: float = struct.unpack_from(endian + "f", head, 108)[0]
        elif size == 540 and len(head) == 540 and head[4:8] == b"n+2\0":
            code = struct.unpack_from(endian + "h", head, 12)[0]
            dim = struct.unpack_from(endian + "8q", head, 16)
            offset = struct.unpack_from(endian + "q", head, 168)[0]
        else:
            continue
        ndim = dim[0]
        if code not in _ITEMSIZE or not 1 <= ndim <= 7 or not math.isfinite(offset) or offset < size:
            return None
        shape = dim[1 : ndim + 1]
        if any(n < 1 for n in shape) or len(shape) < 3 or any(n != 1 for n in shape[3:]):
            return None  # not one 3D volume: the reader refuses it before it reads a voxel
        return int(offset), math.prod(shape) * _ITEMSIZE[code]
    return None


def start_reduce_readahead(
    inputs: Sequence[str], *, workers: int | None, distributed: bool, output: str | None = None
) -> bool:
    """Start reading the first of ``inputs`` ahead when a ``lessmore reduce`` run of them would stream it next (see
    the module's docstring); returns whether it did. ``workers``: ``--workers`` (``None``: the default, one);
    ``distributed``: ``--dask`` or ``--scheduler``; ``output``: ``--output``."""
    if distributed or workers not in (None, 1) or not inputs:
        return False
    first = os.fspath(inputs[0])
    if not first.lower().endswith(".nii.gz") or not os.path.isfile(first):
        return False
    if output is not None:
        from monai_lessmore.cli.names import possible_volume_names

        records = os.path.join(os.fspath(output), "records")
        if any(os.path.exists(os.path.join(records, f"{n}.json")) for n in possible_volume_names(first)):
            return False
    from monai_lessmore.utils.gzstream import start_readahead, stream_gzip_default

    if not stream_gzip_default():
        return False
    found = nifti_gz_voxels(first)
    return found is not None and start_readahead(os.path.abspath(first), *found)
