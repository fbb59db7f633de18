from __future__ import annotations

import numpy as np
import pytest

from monai_lessmore.io import load_volume
from monai_lessmore.phantom import write_phantom_dataset
from monai_lessmore.reduction import to_uint8
from monai_lessmore.transforms import LoadSlice, LoadSliced, LoadSliceD, LoadSliceDict


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    (path,) = write_phantom_dataset(tmp_path_factory.mktemp("ph"), n_volumes=1, slices=(30, 30), size=32)
    return str(path)


@pytest.mark.parametrize("index", [0, 7, 29])
def test_load_slice_equals_volume_slice(phantom, index):
    vol = load_volume(phantom).array
    out = LoadSlice()(phantom, index)
    assert tuple(out.shape) == (1, 32, 32)
    np.testing.assert_array_equal(out[0].numpy(), vol[index])
    assert out.meta["slice_index"] == index and out.meta["filename_or_obj"] == phantom
    np.testing.assert_array_equal(LoadSlice(render="minmax")(phantom, index)[0].numpy(), to_uint8(vol[index]))
    np.testing.assert_array_equal(
        LoadSlice(render=[-1000, 1000])(phantom, index)[0].numpy(), to_uint8(vol[index], window=(-1000, 1000))
    )


def test_dictionary_version_and_errors(phantom):
    assert LoadSliceD is LoadSliced is LoadSliceDict
    d = LoadSliced("image")({"image": phantom, "slice_index": 3, "label": 1})
    assert d["label"] == 1 and tuple(d["image"].shape) == (1, 32, 32)
    with pytest.raises(KeyError, match="no 'slice_index' key"):
        LoadSliced("image")({"image": phantom})
    with pytest.raises(ValueError, match="order must be"):
        LoadSlice(order="alpha")
    with pytest.raises(ValueError, match="window must"):
        LoadSlice(render=[5, 1])
