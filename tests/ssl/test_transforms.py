"""View transforms: shapes, reproducibility, the operations' semantics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_lessmore.ssl.transforms import (
    MakeViewsd, MoCoTransform, SparKTransform, SwAVTransform, color_jitter, gaussian_blur, random_resized_crop,
)


def _gray(size: int = 96) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, size, size, generator=g).expand(3, -1, -1).clone()


def test_swav_multicrop_shapes_and_no_flip_option():
    t = SwAVTransform(crop_sizes=(64, 32), num_crops=(2, 6))
    views = t(_gray())
    assert [tuple(v.shape) for v in views] == [(3, 64, 64)] * 2 + [(3, 32, 32)] * 6
    assert all(p.flip_p == 0 for _, p in t.groups)  # SwAV: no flips (spec)


def test_views_reproducible_with_random_state():
    t = SwAVTransform(crop_sizes=(48, 16), num_crops=(2, 2))
    t.set_random_state(3)
    a = t(_gray())
    t.set_random_state(3)
    b = t(_gray())
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1])


def test_moco_and_spark_views():
    assert [tuple(v.shape) for v in MoCoTransform(crop_size=48)(_gray())] == [(3, 48, 48)] * 2
    assert tuple(SparKTransform(input_size=64)(_gray())[0].shape) == (3, 64, 64)
    with pytest.raises(ValueError, match="multiple of 32"):
        SparKTransform(input_size=100)


def test_random_resized_crop_full_scale_is_resize():
    img = _gray(32)
    out = random_resized_crop(img, 32, (1.0, 1.0), np.random.RandomState(0), ratio=(1.0, 1.0))
    torch.testing.assert_close(out, img)


def test_color_jitter_keeps_gray_and_range():
    out = color_jitter(_gray(), (0.4, 0.4, 0.2, 0.2), np.random.RandomState(1))
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    assert out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match="hue"):
        SwAVTransform(jitter=(0.4, 0.4, 0.2, 0.6))


def test_hue_jitter_changes_colour_images_only():
    img = torch.rand(3, 8, 8)
    out = color_jitter(img, (0, 0, 0, 0.2), np.random.RandomState(0))
    assert not torch.allclose(out, img)
    gray = _gray(8)
    assert torch.equal(color_jitter(gray, (0, 0, 0, 0.5), np.random.RandomState(0)), gray)


def test_gaussian_blur_keeps_constant_and_smooths():
    const = torch.full((3, 20, 20), 0.3)
    torch.testing.assert_close(gaussian_blur(const, 1.5), const)
    noisy = _gray(40)
    assert gaussian_blur(noisy, 2.0).std() < noisy.std()


def test_make_views_dict():
    d = MakeViewsd("image", MoCoTransform(crop_size=32))({"image": torch.rand(1, 64, 64), "slice_index": 2})
    assert "image" not in d and len(d["views"]) == 2 and d["slice_index"] == 2
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        MakeViewsd("image", MoCoTransform(crop_size=32))({"image": torch.rand(64, 64)})
    with pytest.raises(TypeError, match="callable"):
        MakeViewsd("image", 3)


def test_transform_arg_errors():
    with pytest.raises(ValueError, match="one entry per crop group"):
        SwAVTransform(crop_sizes=(224,), num_crops=(2, 6))
    with pytest.raises(ValueError, match="scale"):
        MoCoTransform(scale=(0.0, 1.0))


@pytest.fixture(scope="module")
def tvf():
    from monai_lessmore.utils.torchvision_compat import import_torchvision

    try:
        return import_torchvision("transforms.v2.functional")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"torchvision unavailable: {exc}")


def test_crop_matches_torchvision_resized_crop(tvf):
    """Same box, same output as torchvision's ``resized_crop`` (bilinear, antialias)."""
    img = torch.rand(3, 80, 60)
    rng = np.random.RandomState(5)
    state = rng.get_state()
    out = random_resized_crop(img, 32, (0.3, 0.6), rng)
    rng.set_state(state)  # replay the draws to recover the box
    h, w = 80, 60
    for _ in range(10):
        target = h * w * rng.uniform(0.3, 0.6)
        ar = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(target * ar))), int(round(np.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            i, j = int(rng.randint(0, h - ch + 1)), int(rng.randint(0, w - cw + 1))
            break
    ref = tvf.resized_crop(img, i, j, ch, cw, [32, 32], antialias=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("op, name", [(0, "adjust_brightness"), (1, "adjust_contrast"), (2, "adjust_saturation")])
def test_jitter_ops_match_torchvision(tvf, op, name):
    img = torch.rand(3, 16, 16)

    class OneOp(np.random.RandomState):  # permutation -> only `op` first; uniform -> a fixed factor
        def permutation(self, n):
            return np.array([op])

        def uniform(self, lo, hi):
            return 1.3

    jitter = [0.0, 0.0, 0.0, 0.0]
    jitter[op] = 0.4
    out = color_jitter(img, jitter, OneOp())
    torch.testing.assert_close(out, getattr(tvf, name)(img, 1.3), atol=1e-6, rtol=0)


@pytest.mark.parametrize("factor", [-0.5, -0.2, 0.0, 0.13, 0.37, 0.5])
def test_adjust_hue_matches_torchvision(tvf, factor):
    from monai_lessmore.ssl.transforms import adjust_hue

    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 16, 16, generator=g)
    img[:, 0, :4] = torch.rand(1, 4, generator=g)  # some gray pixels (saturation 0)
    img[:, 1, :4] = torch.tensor([[1.0], [0.0], [0.0]])  # pure colours at the sector edges
    torch.testing.assert_close(adjust_hue(img, factor), tvf.adjust_hue(img, factor), atol=1e-5, rtol=0)


def test_grayscale_weights_match_torchvision(tvf):
    from monai_lessmore.ssl.transforms import _luma

    img = torch.rand(3, 8, 8)
    torch.testing.assert_close(_luma(img), tvf.rgb_to_grayscale(img), atol=1e-6, rtol=0)


def test_blur_matches_torchvision(tvf):
    img = torch.rand(3, 24, 24)
    out = gaussian_blur(img, 1.2)
    ref = tvf.gaussian_blur(img, [2 * 4 + 1, 2 * 4 + 1], [1.2, 1.2])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("make", [
    lambda: SwAVTransform(crop_sizes=(48, 24), num_crops=(2, 3)),
    lambda: MoCoTransform(crop_size=48),
    lambda: SparKTransform(input_size=64),
])
def test_gray_images_take_the_one_channel_path_with_identical_views(make):
    """A gray slice replicated by expand (stride 0), or given as one channel, is processed on one channel: the
    views are bit-identical to those of the same image as a contiguous 3-channel copy, at a third of the work."""
    gray = torch.rand(1, 80, 72)
    outs = []
    for img in (gray.expand(3, -1, -1).contiguous(), gray.expand(3, -1, -1), gray):
        t = make()
        t.set_random_state(seed=7)
        outs.append(t(img))
    for views in outs[1:]:
        assert len(views) == len(outs[0])
        for a, b in zip(outs[0], views):
            assert b.shape == a.shape and b.shape[0] == 3 and b.is_contiguous()
            assert torch.equal(a, b)
