"""Finding the volumes under a folder: :func:`discover_volumes`.

A dataset root may mix formats. Every path returned can be passed to
:func:`~monai_lessmore.io.load.load_volume`: NIfTI/NRRD/MetaImage files, folders that directly hold DICOM files
(one series each; checked cheaply by the 128-byte preamble + ``DICM`` magic, or a ``.dcm`` extension), and every
volume of a slice folder as ``"<folder>/<volume id>"``. The reduction works per volume (Wolf et al., 2024), so this is
the list a dataset-level job iterates over, in parallel if it likes.

The output folders of ``lessmore reduce`` are never discovered, so a dataset root that also holds runs (or a run
written inside the data by an older version) does not pick up its exported slices as new volumes. Such a folder is
known by the marker file :data:`OUTPUT_MARKER` in it (also the run's lock), or by the layout an output has
(``manifest.csv``, ``summary.json`` and a ``records/`` folder). Its ``slices/`` or ``volumes/`` folder given as the
root is discovered as usual.
"""

from __future__ import annotations

import os

from monai_lessmore.io.itk_reader import is_itk_path
from monai_lessmore.io.load import detect_volume_kind
from monai_lessmore.io.nifti import is_nifti_path
from monai_lessmore.io.slice_folder import SLICE_NAME_PATTERN, resolve_slice_volume
from monai_lessmore.io.volume import VolumeReadError

__all__ = ["discover_volumes", "is_output_folder", "OUTPUT_MARKER"]

#: File in the root of every ``lessmore reduce`` output folder: the run's lock, and the sign that the folder holds
#: outputs, not data.
OUTPUT_MARKER = ".lessmore-reduce.lock"


def is_output_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is the output folder of a ``lessmore reduce`` run (marker file, or the outputs' layout)."""
    folder = os.fspath(folder)
    if os.path.isfile(os.path.join(folder, OUTPUT_MARKER)):
        return True
    return (
        os.path.isfile(os.path.join(folder, "manifest.csv"))
        and os.path.isfile(os.path.join(folder, "summary.json"))
        and os.path.isdir(os.path.join(folder, "records"))
    )


def _is_dicom_file(path: str) -> bool:
    from monai_lessmore.io.dicom import is_dicom_file  # pydicom: imported only when a file may be DICOM

    return is_dicom_file(path)


def discover_volumes(root: str | os.PathLike) -> list[str]:
    """List the volume paths under ``root``, sorted.

    Hidden files and folders (starting with ``.``), ``DICOMDIR`` index files and the output folders of
    ``lessmore reduce`` (:func:`is_output_folder`, ``root`` included) are skipped. A path that is itself one volume (a
    file, a DICOM series folder, a ``"<folder>/<volume id>"`` address) gives ``[path]``.

    Args:
        root: a folder to walk, or one volume.

    Returns:
        Sorted list of paths (strings) accepted by ``load_volume``.

    Raises:
        VolumeReadError: ``root`` does not exist, or is a file of an unsupported type.
    """
    root = os.fspath(root)
    if not os.path.exists(root):
        if resolve_slice_volume(root) is not None:
            return [root]
        raise VolumeReadError(f"{root}: no such file or folder; pass the folder that holds the volumes")
    if os.path.isfile(root):
        detect_volume_kind(root)  # raises for unsupported files with the list of formats
        return [root]
    found: list[str] = []
    if is_output_folder(root):
        return found
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(
            d for d in subfolders if not d.startswith(".") and not is_output_folder(os.path.join(folder, d))
        )
        has_dicom = False
        slice_volumes: set[str] = set()
        for name in sorted(files):
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            path = os.path.join(folder, name)
            if is_nifti_path(name) or is_itk_path(name):
                found.append(path)
            elif match := SLICE_NAME_PATTERN.match(name):
                slice_volumes.add(match["volume"])
            elif not has_dicom and (name.lower().endswith(".dcm") or _is_dicom_file(path)):
                has_dicom = True
        if has_dicom:
            found.append(folder)
        found.extend(os.path.join(folder, vid) for vid in slice_volumes)
    return sorted(found)
