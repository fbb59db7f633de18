"""Real CT: a second "reconstruction" of real series pairs with its original and with nothing else."""

from __future__ import annotations

import numpy as np
import pytest

from monai_lessmore.cli.reduce import ReduceJob
from monai_lessmore.duplicates.run import run_duplicates
from tests.conftest import shared_data_path


def _write_nifti(path, arr, spacing=(1.5, 0.8, 0.8)):
    """(S, H, W) slices in the loader's view, stored as ``lessmore reduce --export nifti`` stores them."""
    import nibabel as nib

    s_k, s_h, s_w = spacing
    img = nib.Nifti1Image(np.ascontiguousarray(arr.transpose(2, 1, 0)).astype(np.float32), np.diag([-s_w, -s_h, s_k, 1.0]))
    nib.save(img, str(path))


@pytest.mark.slow
@pytest.mark.realdata
def test_reconstruction_pairs_with_its_original_only(tmp_path):
    from scipy import ndimage

    from monai_lessmore.io import load_volume

    nifti = shared_data_path("ct", "nifti")
    head, aorta = nifti / "invesalius_cranium_head_ct.nii.gz", nifti / "totalseg_aorta_ct_cropped.nii.gz"
    others = [nifti / "totalseg_pulmonary_ct_cropped.nii.gz", nifti / "totalseg_example_ct.nii.gz"]
    rng = np.random.default_rng(0)
    v = load_volume(str(aorta)).array
    # a smoother kernel, noise, a 4-pixel crop, a start 5 slices later and 4 slices fewer at the end
    recon = ndimage.gaussian_filter(v, (0, 1, 1)) + rng.normal(0, 5, v.shape)
    _write_nifti(tmp_path / "recon_aorta.nii.gz", recon[5:-4, 4:-4, 4:-4])
    v = load_volume(str(head)).array
    # a sharper kernel (unsharp mask), noise, a crop, a start 3 slices later
    recon = v + (v - ndimage.gaussian_filter(v, (0, 1, 1))) + rng.normal(0, 5, v.shape)
    _write_nifti(tmp_path / "recon_head.nii.gz", recon[3:, 4:-4, 4:-4])
    inputs = [str(tmp_path / "recon_aorta.nii.gz"), str(tmp_path / "recon_head.nii.gz"), str(head), str(aorta),
              *map(str, others)]
    ReduceJob(inputs, str(tmp_path / "run"), {"method": "hash", "threshold": 6}, progress=False).run()
    summary = run_duplicates(tmp_path / "run")
    got = {(r["volume_a"], r["volume_b"]): r for r in summary["rows"]}
    assert set(got) == {("invesalius_cranium_head_ct", "recon_head"), ("recon_aorta", "totalseg_aorta_ct_cropped")}
    assert abs(got[("invesalius_cranium_head_ct", "recon_head")]["offset"] - (-3)) <= 1
    assert abs(got[("recon_aorta", "totalseg_aorta_ct_cropped")]["offset"] - 5) <= 1
    # the originals have more slices: they are kept
    assert summary["groups"] == [{"keep": "invesalius_cranium_head_ct", "drop": ["recon_head"]},
                                 {"keep": "totalseg_aorta_ct_cropped", "drop": ["recon_aorta"]}]


@pytest.mark.slow
@pytest.mark.realdata
def test_different_patients_do_not_pair(tmp_path):
    """Ten chest CTs of ten patients from one collection (the most alike real volumes of the test data)."""
    folder = shared_data_path("ct", "slices", "covid19_ct_seg")
    inputs = [str(folder / f"Data-1_coronacases_org_00{k}") for k in (1, 6, 7, 8, 9)]
    ReduceJob(inputs, str(tmp_path / "run"), {"method": "hash", "threshold": 6}, progress=False).run()
    summary = run_duplicates(tmp_path / "run")
    assert summary["n_slice_pairs"] > 0  # similar anatomy does match slice by slice ...
    assert summary["rows"] == [] and summary["groups"] == []  # ... but no two patients are duplicates
