from __future__ import annotations

import json

import imagehash
import numpy as np
import pytest
from PIL import Image

from monai_lessmore.phantom import make_phantom
from monai_lessmore.reduction import SliceReducer, to_uint8
from monai_lessmore.reduction.selection import select_greedy, select_leader


@pytest.fixture(scope="module")
def volume():
    return make_phantom(120, 48, seed=5)


def hamming(volume):
    hashes = [imagehash.dhash(Image.fromarray(s)) for s in to_uint8(volume)]
    return np.array([[a - b for b in hashes] for a in hashes]), [str(h) for h in hashes]


def test_default_is_hash6_leader_and_matches_imagehash_pipeline(volume):
    reducer = SliceReducer()
    assert reducer.params()["method"] == "hash" and reducer.threshold == 6 and reducer.algorithm == "leader"
    result = reducer.reduce(volume)
    d, hexes = hamming(volume)
    assert result.hashes == hexes
    assert result.kept.tolist() == select_leader(d, 6).tolist()
    assert result.n_slices == 120 and 0 < result.fraction < 0.5
    assert result.mask.sum() == result.n_kept


def test_greedy_threshold(volume):
    d, _ = hamming(volume)
    result = SliceReducer(threshold=3, algorithm="greedy").reduce(volume)
    assert result.kept.tolist() == select_greedy(d, threshold=3).tolist()


@pytest.mark.parametrize("method", ["hash", "everyn"])
@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.5, 1.0])
def test_fraction_keeps_the_requested_count(volume, method, fraction):
    result = SliceReducer(method=method, fraction=fraction).reduce(volume)
    assert result.n_kept == max(1, int(np.floor(fraction * 120 + 0.5)))


def test_fraction_defaults_to_greedy_and_leader_count_reports_threshold(volume):
    assert SliceReducer(fraction=0.1).algorithm == "greedy"
    result = SliceReducer(fraction=0.1, algorithm="leader").reduce(volume)
    assert result.n_kept == 12 and result.threshold is not None and 0 <= result.threshold <= 64


def test_count_everyn_all(volume):
    assert SliceReducer(count=7).reduce(volume).n_kept == 7
    assert SliceReducer(method="everyn").reduce(volume).kept.tolist() == list(range(0, 120, 10))
    assert SliceReducer(method="everyn", every_n=4).reduce(volume).n_kept == 30
    assert SliceReducer(method="all").reduce(volume).n_kept == 120
    assert SliceReducer(method="none").method == "all"


def test_single_slice_and_constant_volumes(volume):
    assert SliceReducer().reduce(volume[:1]).kept.tolist() == [0]
    const = np.full((10, 16, 16), -1000.0, dtype=np.float32)
    result = SliceReducer().reduce(const)
    assert result.kept.tolist() == [0] and result.hashes == ["0000000000000000"] * 10


def test_rendered_input_is_hashed_as_is(volume):
    u8 = to_uint8(volume)
    shifted = (u8 // 2).astype(np.float32)  # not spanning 0..255: min-max would change it
    result = SliceReducer().reduce(shifted, rendered=True)
    assert result.hashes[0] == str(imagehash.dhash(Image.fromarray((u8 // 2)[0])))
    with pytest.raises(ValueError, match="integer values 0..255"):
        SliceReducer().reduce(shifted + 0.5, rendered=True)


def test_window_changes_rendering(volume):
    a = SliceReducer().reduce(volume)
    b = SliceReducer(window=(-200, 200)).reduce(volume)
    assert a.hashes != b.hashes
    assert b.hashes[0] == str(imagehash.dhash(Image.fromarray(to_uint8(volume[0], window=(-200, 200)))))


def test_params_are_json_serialisable():
    params = SliceReducer(method="mi", threshold=1.3, window=[-1000, 400], bins=64).params()
    assert json.loads(json.dumps(params))["bins"] == 64


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 65}, "threshold must be an integer in 0..64 for HASH, got 65"),
        ({"threshold": -1}, "threshold must be an integer in 0..64 for HASH, got -1"),
        ({"threshold": 2.5}, "threshold must be an integer in 0..64 for HASH"),
        ({"threshold": "6"}, "threshold must be a number"),
        ({"method": "ssim", "threshold": 1.5}, "threshold must be in -1..1 for SSIM"),
        ({"method": "mi", "threshold": 0.5}, "threshold must be in 1..2 for MI"),
        ({"method": "ssim"}, "needs a threshold"),
        ({"method": "phash"}, "method must be one of"),
        ({"fraction": 0}, r"fraction must be in \(0, 1\]"),
        ({"fraction": 1.1}, r"fraction must be in \(0, 1\]"),
        ({"fraction": 0.1, "count": 3}, "fraction or count, not both"),
        ({"threshold": 6, "fraction": 0.1, "algorithm": "leader"}, "leader algorithm takes a threshold or a target"),
        ({"algorithm": "random"}, "algorithm must be one of leader, greedy"),
        ({"method": "all", "threshold": 6}, "method 'all' keeps every slice"),
        ({"method": "everyn", "threshold": 6}, "takes every_n or fraction"),
        ({"method": "everyn", "every_n": 0}, "n must be a positive integer"),
        ({"every_n": 5}, "every_n applies to method 'everyn' only"),
        ({"device": "tpu"}, "device must be 'cpu' or 'cuda'"),
        ({"method": "mi", "threshold": 1.2, "bins": 1}, "bins must be an integer >= 2"),
        ({"window": (400, -1000)}, "window must satisfy low < high"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SliceReducer(**kwargs)


def test_volume_shape_errors():
    with pytest.raises(ValueError, match=r"\(S, H, W\)"):
        SliceReducer().reduce(np.zeros((16, 16)))
    with pytest.raises(ValueError, match="NaN/Inf"):
        SliceReducer().reduce(np.full((3, 16, 16), np.nan))


@pytest.fixture(scope="module")
def small_volume():
    return make_phantom(16, 32, seed=9)


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    import torch

    from monai_lessmore.utils.torchvision_compat import import_torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "resnet50_random.pt"
    torch.save(import_torchvision("models").resnet50().state_dict(), path)
    return str(path)


def _oracle_scores(method, u8, weights=None):
    from skimage.metrics import normalized_mutual_information, structural_similarity

    n = len(u8)
    s = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if method == "ssim":
                s[i, j] = structural_similarity(
                    u8[i].astype(float), u8[j].astype(float), data_range=255, gaussian_weights=True, sigma=1.5,
                    use_sample_covariance=False,
                )
            else:
                s[i, j] = normalized_mutual_information(u8[i], u8[j], bins=100)
    return s


@pytest.mark.parametrize("method", ["ssim", "mi"])
def test_ssim_and_mi_thresholds_leave_no_similar_pair_by_the_scikit_image_oracle(small_volume, method):
    u8 = to_uint8(small_volume)
    sim = _oracle_scores(method, u8)
    off = sim[np.triu_indices(16, 1)]
    threshold = float(np.quantile(off, 0.7))
    for algorithm in ("leader", "greedy"):
        result = SliceReducer(method=method, threshold=threshold, algorithm=algorithm).reduce(small_volume)
        kept = result.kept
        sub = sim[np.ix_(kept, kept)][np.triu_indices(len(kept), 1)]
        assert (sub < threshold + 1e-4).all()
        assert 1 <= len(kept) < 16


@pytest.mark.parametrize("method", ["hash", "ssim", "mi", "deepnet", "everyn"])
@pytest.mark.parametrize("algorithm", ["leader", "greedy"])
def test_target_fraction_keeps_requested_count_for_every_method(small_volume, random_weights, method, algorithm):
    kwargs = {"deepnet_weights": random_weights} if method == "deepnet" else {}
    if method == "everyn":
        kwargs = {}
        algorithm = None
    result = SliceReducer(method=method, fraction=0.25, algorithm=algorithm, **kwargs).reduce(small_volume)
    assert result.n_kept == 4


def test_deepnet_threshold_with_weights_file(small_volume, random_weights):
    result = SliceReducer(method="deepnet", threshold=0.999, deepnet_weights=random_weights).reduce(small_volume[:6])
    assert 1 <= result.n_kept <= 6


@pytest.mark.parametrize("method", ["ssim", "mi", "deepnet"])
def test_pixelwise_methods_refuse_slices_of_different_sizes(method, random_weights):
    rng = np.random.default_rng(0)
    slices = [rng.integers(0, 256, (64, 64)), rng.integers(0, 256, (64, 64)), np.zeros((200, 200))]
    kwargs = {"deepnet_weights": random_weights} if method == "deepnet" else {}
    with pytest.raises(ValueError, match=r"differ in size.*mixed_size=\(H, W\).*--mixed-size HxW"):
        SliceReducer(method=method, fraction=0.5, **kwargs).reduce(slices, rendered=True)
    # HASH hashes each image at its own size
    assert SliceReducer(fraction=0.5).reduce(slices, rendered=True).n_kept == 2


@pytest.mark.parametrize("method", ["ssim", "mi"])
def test_mixed_size_resamples_only_for_the_comparison(method):
    from PIL import Image

    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (48, 48)).astype(np.uint8)
    big = np.asarray(Image.fromarray(base).resize((96, 96), Image.BILINEAR))
    other = rng.integers(0, 256, (48, 48)).astype(np.uint8)
    slices = [base, big, other, base.copy()]
    result = SliceReducer(method=method, count=2, mixed_size=48).reduce(slices, rendered=True)
    # same decision as comparing the explicitly resampled stack; hashes still of each image at its own size
    resampled = np.stack([base, np.asarray(Image.fromarray(big).resize((48, 48), Image.BILINEAR)), other, base])
    expected = SliceReducer(method=method, count=2).reduce(resampled, rendered=True)
    np.testing.assert_array_equal(result.kept, expected.kept)
    assert result.hashes[1] == str(imagehash.dhash(Image.fromarray(big)))
    assert SliceReducer(method=method, count=2, mixed_size=(48, 40)).params()["mixed_size"] == [48, 40]
    assert "mixed_size" not in SliceReducer(method="hash", mixed_size=48).params()  # hashing ignores it
    # a volume of one slice size is compared as it is
    same = SliceReducer(method=method, count=2, mixed_size=16).reduce(resampled, rendered=True)
    np.testing.assert_array_equal(same.kept, expected.kept)


@pytest.mark.parametrize("bad", [0, -3, (4, 0), (1, 2, 3), "64", 2.5, True])
def test_mixed_size_is_validated(bad):
    with pytest.raises(ValueError, match="mixed_size must be a positive integer N"):
        SliceReducer(method="ssim", threshold=0.9, mixed_size=bad)
    with pytest.raises(ValueError, match=r"smaller than SSIM's 11x11 window; pass --mixed-size of at least 11x11"):
        SliceReducer(method="ssim", threshold=0.9, mixed_size=(64, 8))
    assert SliceReducer(method="mi", threshold=1.5, mixed_size=8).mixed_size == (8, 8)  # MI has no window


def test_deepnet_weights_are_checked_before_any_work(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ValueError, match=r"--deepnet-weights PATH"):
        SliceReducer(method="deepnet", threshold=0.9)
    with pytest.raises(ValueError, match="existing ResNet50 state-dict file"):
        SliceReducer(method="deepnet", threshold=0.9, deepnet_weights=str(tmp_path / "missing.pt"))


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_thresholds_are_rejected(bad):
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        SliceReducer(threshold=bad)


def test_hash_reduction_of_a_stored_stack_keeps_no_rendered_copy(monkeypatch):
    """HASH needs only the slices' hashes: a stored stack is rendered block by block into one block-sized buffer,
    so the reduction allocates far less than the ``uint8`` copy of the volume it used to keep, and selects the
    same slices as the reduction of the rendered stack."""
    import tracemalloc

    import monai_lessmore.reduction.preprocess as pp
    from monai_lessmore.reduction import _jit
    from monai_lessmore.reduction.preprocess import StoredStack

    monkeypatch.setattr(_jit, "numba_started", lambda: False)
    monkeypatch.setattr(_jit, "COMPILE_AFTER_PIXELS", 1 << 62)  # the numpy kernels (no compiler allocations)
    monkeypatch.setattr(pp, "_PIPELINE_BYTES", 2 * 256 * 256 * 2)  # two int16 slices per block
    raw = np.repeat(make_phantom(n_slices=16, size=256, seed=3).astype(np.int16), 4, axis=0)  # (64, 256, 256)
    expected = SliceReducer(method="hash", threshold=6).reduce(to_uint8(raw.astype(np.float32)), rendered=True)
    tracemalloc.start()
    try:
        got = SliceReducer(method="hash", threshold=6).reduce(StoredStack(raw, offset=0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < raw.size // 2, f"{peak} bytes allocated; the uint8 copy alone is {raw.size}"
    np.testing.assert_array_equal(got.kept, expected.kept)
    assert got.hashes == expected.hashes
