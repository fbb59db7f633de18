"""t-SNE of penultimate features and Grad-CAM PNGs (paper section 3, Figures 10-12)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from monai_lessmore.classification.analysis import gradcam_pngs, run_analysis, tsne
from monai_lessmore.classification.network import ResNet50Classifier


def test_tsne_separates_two_clusters():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (30, 20)), rng.normal(8, 1, (30, 20))])
    y = np.repeat([0, 1], 30)
    emb = tsne(x, perplexity=10, seed=0)
    assert emb.shape == (60, 2) and np.isfinite(emb).all()
    d = ((emb[:, None] - emb[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert np.mean(y[d.argmin(1)] == y) == 1.0  # 1-nearest-neighbour in the embedding keeps the cluster


def test_run_analysis_writes_pngs(tmp_path):
    torch.manual_seed(0)
    net = ResNet50Classifier(num_classes=2)
    dataset = [{"image": torch.rand(3, 32, 32), "label": i % 2} for i in range(8)]
    out = run_analysis(net, dataset, ["neg", "pos"], str(tmp_path / "a"), num_gradcam=2, batch_size=4)
    img = np.asarray(Image.open(out["tsne_png"]).convert("RGB"))
    assert img.shape[1] > 100
    colours = {tuple(p) for p in img.reshape(-1, 3)}
    assert (31, 119, 180) in colours and (255, 127, 14) in colours  # matplotlib's tab10: one colour per class
    assert len(open(out["tsne_csv"]).read().splitlines()) == 9
    assert len(out["gradcam_pngs"]) == 2
    cam = Image.open(out["gradcam_pngs"][0])
    assert cam.size == (64, 32)  # input | overlay, side by side
    assert "_label-neg" in out["gradcam_pngs"][0]


def test_heat_map_is_matplotlibs_jet():
    from matplotlib import colormaps

    from monai_lessmore.classification.analysis import _heat_rgb

    cam = np.linspace(0, 1, 11)[None]
    np.testing.assert_array_equal(_heat_rgb(cam), (colormaps["jet"](cam)[..., :3] * 255).astype(np.uint8))
    assert tuple(_heat_rgb(np.array([[0.0]]))[0, 0]) == (0, 0, 127)  # dark blue at 0


def test_gradcam_without_labels(tmp_path):
    net = ResNet50Classifier(num_classes=3)
    paths = gradcam_pngs(net, [{"image": torch.rand(3, 32, 32)}], ["a", "b", "c"], tmp_path, num_images=4)
    assert len(paths) == 1 and "label" not in paths[0].name
