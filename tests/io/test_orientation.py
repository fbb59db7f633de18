"""Tests for monai_lessmore.io.orientation: the axial LPS stack shared by the NIfTI and ITK readers."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest

from monai_lessmore.io.orientation import (
    apply_axial_orientation,
    axial_orientation,
    source_slice_index,
)

# Voxel-to-RAS affines: every axis permutation with a mix of flips, plus an oblique one.
PERMUTED = []
for perm, signs in zip(itertools.permutations(range(3)), itertools.cycle([(1, 1, 1), (-1, 1, -1), (1, -1, -1)])):
    aff = np.zeros((4, 4))
    for voxel_axis, world_axis in enumerate(perm):
        aff[world_axis, voxel_axis] = signs[voxel_axis] * (1.0 + voxel_axis)
    aff[:, 3] = [3.0, -4.0, 5.0, 1.0]
    PERMUTED.append(aff)


def _world_ras(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """RAS coordinate of every voxel, shape (*shape, 3)."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    return grid @ affine[:3, :3].T + affine[:3, 3]


@pytest.mark.parametrize("affine", PERMUTED)
def test_output_runs_superior_posterior_left(affine):
    shape = (3, 4, 5)
    info = axial_orientation(affine, shape)
    world = apply_axial_orientation(_world_ras(affine, shape), info)  # (S, H, W, 3) of RAS coordinates
    assert np.all(np.diff(world[..., 2], axis=0) > 0)  # superior along S
    assert np.all(np.diff(world[..., 1], axis=1) < 0)  # towards posterior (A decreases) along rows
    assert np.all(np.diff(world[..., 0], axis=2) < 0)  # towards patient left (R decreases) along columns
    assert info["orientation"] == nib.aff2axcodes(affine)
    assert info["orientation"][info["slice_axis"]] in ("S", "I")
    assert info["slice_axis_flipped"] == (info["orientation"][info["slice_axis"]] == "I")
    # the new affine maps output indices to the same world points
    out_shape = world.shape[:3]
    np.testing.assert_allclose(_world_ras(info["affine"], out_shape), world, atol=1e-9)
    assert info["spacing"][0] == pytest.approx(1.0 + info["slice_axis"])


def test_oblique_uses_closest_axis():
    angle = np.deg2rad(20)
    rot = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    affine = np.eye(4)
    affine[:3, :3] = rot[:, [2, 0, 1]]  # voxel axis 0 is ~superior
    info = axial_orientation(affine, (6, 7, 8))
    assert info["slice_axis"] == 0 and not info["slice_axis_flipped"]


def test_source_slice_index_follows_flip():
    affine = np.diag([1.0, 1.0, -2.0, 1.0])  # stored inferior <- superior
    info = axial_orientation(affine, (2, 3, 5))
    assert info["slice_axis"] == 2 and info["slice_axis_flipped"]
    assert [source_slice_index(i, info) for i in range(5)] == [4, 3, 2, 1, 0]


@pytest.mark.parametrize("bad", [np.zeros((4, 4)), np.full((4, 4), np.nan), np.eye(3)])
def test_degenerate_affine_is_rejected(bad):
    with pytest.raises(ValueError, match="vol.nii"):
        axial_orientation(bad, (2, 2, 2), source="vol.nii")
