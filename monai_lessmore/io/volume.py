"""The in-memory CT volume every reader returns, and the one error type they raise.

A :class:`Volume` is a stack of axial slices with the slice axis first, ordered inferior -> superior: the unit the
paper's reduction works on ("reduce near-duplicate slices within each volume", Wolf et al. 2024, section 2.1).
Each reader documents how it maps its format onto this layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = ["Volume", "LazyVolume", "VolumeReadError", "VolumeKind"]

VolumeKind = Literal["nifti", "dicom", "itk", "slices"]


class VolumeReadError(ValueError):
    """A volume could not be read; the message names the file, the problem and how to fix it."""


@dataclass(eq=False)  # arrays do not compare to one bool
class Volume:
    """One CT volume as a stack of axial slices.

    Attributes:
        name: short identifier: the file name without extension, the DICOM series folder name, or the volume id
            of a slice folder (``<volume>`` in ``<volume>_<index>.png``).
        source: the path that was read (``"<folder>/<volume id>"`` for a slice-folder volume).
        array: ``(S, H, W)`` ``float32``, slice axis first, slices inferior -> superior. Hounsfield units for CT
            (NIfTI/DICOM/ITK); the gray values of the images as ``float32`` for slice folders.
        kind: ``"nifti"``, ``"dicom"``, ``"itk"`` or ``"slices"``.
        is_uint8_rendered: ``True`` for slice folders of 8-bit images, whose slices the authors' pipeline already
            min-max rendered to 8 bit: hash them as they are instead of rendering them again. ``False`` for a
            slice folder holding 16-bit images: they are rendered like HU slices.
        slice_sources: one file per slice, in the order of ``array`` (DICOM series, slice folders); ``None`` for
            single-file volumes.
        meta: format details. Keys every reader sets: ``"spacing"`` (mm along ``(S, H, W)``, ``None`` for slice
            folders), ``"affine"`` (4x4 RAS affine of *this* array's indices ``(s, h, w)``, ``None`` for slice
            folders) and ``"nonfinite_voxels"`` (count of NaN/Inf voxels; the reader never rejects them, the
            reducer decides). Readers add their own keys (see each reader's module docstring).
    """

    name: str
    source: str
    array: np.ndarray
    kind: VolumeKind
    is_uint8_rendered: bool = False
    slice_sources: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_slices(self) -> int:
        """Number of slices ``S``."""
        return int(self.array.shape[0])

    def original_slice(self, index: int) -> np.ndarray:
        """Slice ``index`` without the zero padding a slice folder with mixed image sizes gets.

        Slice-folder volumes whose images differ in size are padded at the bottom/right to a common ``(H, W)`` and
        record each image's own size in ``meta["slice_shapes"]``; for every other volume this is ``array[index]``.
        """
        shapes = self.meta.get("slice_shapes")
        if shapes is None:
            return self.array[index]
        height, width = shapes[index]
        return self.array[index, :height, :width]

    def require_finite(self) -> "Volume":
        """Return the volume, or raise :class:`VolumeReadError` naming the file when it holds NaN/Inf voxels."""
        bad = self.meta.get("nonfinite_voxels")
        if bad is None:
            bad = int(self.array.size - np.count_nonzero(np.isfinite(self.array)))
        if bad:
            raise VolumeReadError(
                f"{self.source}: {bad} NaN/Inf voxels; fix the file (e.g. replace them with -1024 HU) and run again"
            )
        return self

    def slices(self) -> np.ndarray | list[np.ndarray]:
        """What to reduce: ``array``, or for a slice folder with mixed image sizes the list of unpadded slices.

        :class:`~monai_lessmore.reduction.SliceReducer` hashes each image at its own size (as ``imagehash`` does on
        the authors' PNG files) and zero-pads only for pixel-wise measures.
        """
        if self.meta.get("slice_shapes") is None:
            return self.array
        return [self.original_slice(i) for i in range(self.num_slices)]

    def take(self, indices: Any) -> np.ndarray:
        """``float32`` ``(K, H, W)`` stack of the slices ``indices``, equal to ``array[indices]`` (e.g. the kept
        slices of a reduction). Volumes with mixed slice sizes have none (use :meth:`original_slice`)."""
        return np.ascontiguousarray(self.array[np.asarray(indices, dtype=np.intp)], dtype=np.float32)

    def __repr__(self) -> str:
        return (
            f"Volume(name={self.name!r}, kind={self.kind!r}, shape={tuple(self.array.shape)}, "
            f"source={self.source!r})"
        )


class LazyVolume(Volume):
    """A :class:`Volume` that holds its voxels in the stored dtype and order (``lazy=True`` of the NIfTI,
    NRRD/MetaImage and DICOM readers).

    :meth:`slices` returns the :class:`~monai_lessmore.reduction.preprocess.StoredStack` (what
    :class:`~monai_lessmore.reduction.SliceReducer` renders slice by slice) and :meth:`take` scales only the slices
    asked for; ``array`` is the float32 stack of the eager reader, equal to it, made on first access and then kept.
    """

    def __init__(self, *, stack: Any, **kwargs: Any) -> None:
        self.stack = stack
        super().__init__(array=None, **kwargs)  # type: ignore[arg-type]

    @property  # type: ignore[override]
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = self.stack.to_array()
        return self._array

    @array.setter
    def array(self, value: np.ndarray | None) -> None:
        self._array = value

    @property
    def num_slices(self) -> int:
        return len(self.stack)

    def slices(self) -> Any:
        return self.stack

    def original_slice(self, index: int) -> np.ndarray:
        if self._array is not None:
            return self._array[index]
        return self.take([index])[0]

    def take(self, indices: Any) -> np.ndarray:
        if self._array is not None:
            return super().take(indices)
        idx = np.asarray(indices, dtype=np.intp).reshape(-1)
        out = np.empty((len(idx), *self.stack.shape[1:]), dtype=np.float32)
        for k, i in enumerate(idx):
            i = int(i) + (len(self.stack) if i < 0 else 0)
            if not 0 <= i < len(self.stack):
                raise IndexError(f"slice index {int(idx[k])} is out of range for {self.source}, which has "
                                 f"{len(self.stack)} slices")
            out[k] = self.stack.chunk(i, i + 1)[0]
        return out

    def __repr__(self) -> str:
        return f"Volume(name={self.name!r}, kind={self.kind!r}, shape={self.stack.shape}, source={self.source!r})"
