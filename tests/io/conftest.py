"""Writers for small synthetic volumes used by the reader tests (NIfTI, DICOM series, slice folders)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

__all__ = [
    "lps_to_ras",
    "write_dicom",
    "write_series",
    "write_compressed_copy",
    "write_nifti",
    "write_slices",
    "random_volume",
]


def lps_to_ras(affine_lps: np.ndarray) -> np.ndarray:
    """Turn a voxel-to-LPS affine into the voxel-to-RAS affine NIfTI stores."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    position: Sequence[float] | None = (0.0, 0.0, 0.0),
    orientation: Sequence[float] | None = (1, 0, 0, 0, 1, 0),
    instance: int | None = 1,
    series_uid: str | None = "1.2.826.0.1.3680043.8.498.1",
    slope: float | None = 1.0,
    intercept: float | None = 0.0,
    pixel_spacing: Sequence[float] = (0.5, 0.7),
    transfer_syntax: str = ExplicitVRLittleEndian,
    pixel_bytes: bytes | None = None,
) -> Path:
    """Write one single-frame CT DICOM file with the given 16-bit pixels and geometry tags.

    ``None`` leaves a tag out (RescaleSlope/RescaleIntercept are written as 1 and 0 unless given, as CT requires).
    """
    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    if series_uid is not None:
        ds.SeriesInstanceUID = series_uid
    if instance is not None:
        ds.InstanceNumber = instance
    if position is not None:
        ds.ImagePositionPatient = [float(v) for v in position]
    if orientation is not None:
        ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    ds.SliceThickness = 2.0
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.PixelData = pixel_bytes if pixel_bytes is not None else pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return Path(path)


def write_series(
    folder: Path, volume: np.ndarray, *, spacing_z: float = 2.0, names: Callable[[int], str] | None = None, **kwargs
) -> list[Path]:
    """Write ``volume`` (S, H, W) int16 as a series, slice k at z = 10 + k * spacing_z (instance k + 1)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, image in enumerate(volume):
        name = names(k) if names else f"slice{k:03d}.dcm"
        paths.append(
            write_dicom(folder / name, image, position=(-5.0, -7.0, 10.0 + k * spacing_z), instance=k + 1, **kwargs)
        )
    return paths


def write_compressed_copy(source: Path, dest: Path, compression: str) -> Path:
    """Copy one DICOM file with its stored pixels re-encoded losslessly: ``"jpeg"`` (JPEG lossless, process 14
    selection value 1) or ``"jpeg2000"`` (JPEG 2000 lossless).

    pydicom has no encoder for either without optional plugins, so the GDCM library inside ITK (a dependency of the
    package) encodes the stored values; every other tag of ``source`` is kept. Raises when GDCM picked another
    transfer syntax than the one asked for.
    """
    import itk
    import pydicom
    from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1

    syntax = {"jpeg": JPEGLosslessSV1, "jpeg2000": JPEG2000Lossless}[compression]
    kind = {"jpeg": "Compression_JPEG", "jpeg2000": "Compression_JPEG2000"}[compression]
    ds = pydicom.dcmread(str(source))
    stored = ds.pixel_array
    scratch = Path(dest).with_name(f".{Path(dest).name}.gdcm.dcm")
    image_io = itk.GDCMImageIO.New()
    image_io.SetCompressionType(getattr(itk.GDCMImageIOEnums, kind))
    itk.imwrite(itk.image_from_array(np.ascontiguousarray(stored)), str(scratch), compression=True, imageio=image_io)
    encoded = pydicom.dcmread(str(scratch))
    scratch.unlink()
    if encoded.file_meta.TransferSyntaxUID != syntax:
        raise RuntimeError(f"GDCM wrote {encoded.file_meta.TransferSyntaxUID.name}, not {syntax.name}")
    ds.file_meta.TransferSyntaxUID = syntax
    ds.BitsStored, ds.HighBit = encoded.BitsStored, encoded.HighBit  # the precision of the encoded stream
    ds.PixelData = encoded.PixelData  # encapsulated fragments
    ds["PixelData"].VR = "OB"
    ds.save_as(str(dest), enforce_file_format=True)
    return Path(dest)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None, **header) -> Path:
    """Save ``data`` as NIfTI (``affine`` defaults to identity); extra keywords set header fields."""
    img = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, str(path))
    return Path(path)


def write_slices(folder: Path, volume_id: str, images: dict[int, np.ndarray], ext: str = "png") -> list[Path]:
    """Write 8-bit images as ``<volume_id>_<index>.<ext>``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in images.items():
        path = folder / f"{volume_id}_{index}.{ext}"
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def random_volume(rng: np.random.Generator, shape: tuple[int, ...], low: int = -1024, high: int = 2000) -> np.ndarray:
    return rng.integers(low, high, size=shape).astype(np.int16)

