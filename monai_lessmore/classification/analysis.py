"""The paper's explanatory analysis: t-SNE of penultimate features and Grad-CAM heatmaps, as PNG files.

Wolf et al. (2024), section 3 (Figures 10-12): "We propagate the images of the test datasets ... through the model up
to the fully connected layer and plot the values with t-SNE", and Grad-CAM (Selvaraju et al., 2017) heatmaps for a
few test images.

* t-SNE is scikit-learn's ``TSNE`` (perplexity 30, PCA initialisation), as the authors used.
* Grad-CAM is ``monai.visualize.GradCAM`` on ``layer4`` (the authors used pytorch-grad-cam, not a dependency).
* Plots are matplotlib's (the non-interactive Agg canvas, so no display is needed): a scatter plot with the
  ``tab10`` colours and a legend, and the heat maps coloured with the ``jet`` colour map.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["penultimate_features", "tsne", "scatter_png", "gradcam_pngs", "run_analysis"]

logger = logging.getLogger(__name__)

@torch.no_grad()
def penultimate_features(
    network: torch.nn.Module, dataset: Sequence[dict[str, Any]], *, batch_size: int = 64, device: str = "cpu",
    max_items: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """2048-d features before the linear layer (``network.features``) and the labels, for up to ``max_items`` items."""
    network.eval()
    n = len(dataset) if max_items is None else min(len(dataset), max_items)
    feats, labels = [], []
    for start in range(0, n, batch_size):
        batch = [dataset[i] for i in range(start, min(n, start + batch_size))]
        x = torch.stack([torch.as_tensor(d["image"]) for d in batch]).to(device)
        feats.append(network.features(x).float().cpu().numpy())
        labels += [int(d.get("label", -1)) for d in batch]
    return np.concatenate(feats), np.asarray(labels)


def tsne(features: np.ndarray, *, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """2-D t-SNE embedding of ``features`` (N, D) with scikit-learn (PCA initialisation, fixed seed)."""
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float64)
    n = x.shape[0]
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 points, got {n}")
    perplexity = min(perplexity, (n - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(x)


def scatter_png(points: np.ndarray, labels: np.ndarray, class_names: Sequence[str], path: str | Path,
                *, size: int = 640, title: str = "") -> Path:
    """Scatter plot of 2-D points coloured by class (matplotlib's ``tab10``), with a legend, as a PNG.

    Args:
        points: ``(N, 2)`` coordinates.
        labels: class index per point; negative for unlabelled points (drawn black).
        class_names: legend entries, by class index.
        path: the PNG to write (parent folders are created).
        size: height of the figure in pixels (the width adds room for the legend).
        title: optional title.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dpi = 100
    fig = Figure(figsize=((size + 200) / dpi, size / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = np.asarray(labels)
    cmap = colormaps["tab10"]
    for c in np.unique(labels):
        sel = labels == c
        name = str(class_names[int(c)]) if 0 <= c < len(class_names) else "unlabelled"
        ax.scatter(points[sel, 0], points[sel, 1], s=12, color=cmap(int(c) % 10) if c >= 0 else "black", label=name)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _heat_rgb(cam: np.ndarray) -> np.ndarray:
    """matplotlib's ``jet`` colour map of values in [0, 1], (H, W) -> (H, W, 3) uint8."""
    from matplotlib import colormaps

    return (colormaps["jet"](np.clip(cam, 0, 1))[..., :3] * 255).astype(np.uint8)


def gradcam_pngs(network: torch.nn.Module, dataset: Sequence[dict[str, Any]], class_names: Sequence[str],
                 output_dir: str | Path, *, num_images: int = 6, target_layer: str = "layer4",
                 device: str = "cpu", alpha: float = 0.4) -> list[Path]:
    """Grad-CAM of the predicted class for the first ``num_images`` items: input | overlay PNGs."""
    from monai.visualize import GradCAM

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    network.eval()
    cam = GradCAM(nn_module=network, target_layers=target_layer)
    paths = []
    for i in range(min(num_images, len(dataset))):
        item = dataset[i]
        x = torch.as_tensor(item["image"])[None].to(device)
        with torch.no_grad():
            pred = int(network(x).argmax(1))
        heat = cam(x, class_idx=pred)[0, 0].detach().cpu().numpy()
        gray = x[0, 0].detach().cpu().numpy()
        gray = (gray - gray.min()) / max(float(gray.max() - gray.min()), 1e-12)
        gray_rgb = np.repeat((gray * 255).astype(np.uint8)[..., None], 3, -1)
        overlay = ((1 - alpha) * gray_rgb + alpha * _heat_rgb(heat)).astype(np.uint8)
        label = item.get("label")
        name = f"gradcam_{i:02d}_pred-{class_names[pred]}"
        if label is not None:
            name += f"_label-{class_names[int(label)]}"
        path = output_dir / f"{name}.png"
        Image.fromarray(np.concatenate([gray_rgb, overlay], axis=1)).save(path)
        paths.append(path)
    return paths


def run_analysis(network: torch.nn.Module, dataset: Sequence[dict[str, Any]], class_names: Sequence[str],
                 output_dir: str, *, num_gradcam: int = 6, max_tsne_points: int = 1000, batch_size: int = 64,
                 device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    """t-SNE PNG + CSV of the penultimate features, and Grad-CAM PNGs, in ``output_dir``.

    Args:
        network: a :class:`~monai_lessmore.classification.network.ResNet50Classifier` with loaded weights.
        dataset: transformed items (``{"image": (3, H, W), "label": int}``), e.g. the test split.
        class_names: names for legends and file names.
        output_dir: output folder.
        num_gradcam: Grad-CAM images to write.
        max_tsne_points: first N items used for t-SNE (exact t-SNE is O(N^2)).
        batch_size: feature batch size.
        device: torch device.
        seed: t-SNE seed.

    Returns:
        ``{"tsne_png", "tsne_csv", "gradcam_pngs"}`` paths.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    network = network.to(device)
    feats, labels = penultimate_features(network, dataset, batch_size=batch_size, device=device,
                                         max_items=max_tsne_points)
    emb = tsne(feats, seed=seed)
    tsne_png = scatter_png(emb, labels, class_names, out / "tsne.png", title="t-SNE of penultimate features")
    tsne_csv = out / "tsne.csv"
    with open(tsne_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["x", "y", "label"])
        writer.writerows([[f"{a:.5f}", f"{b:.5f}", int(c)] for (a, b), c in zip(emb, labels)])
    cams = gradcam_pngs(network, dataset, class_names, out, num_images=num_gradcam, device=device)
    logger.info(f"analysis written to {out}: {tsne_png.name} and {len(cams)} Grad-CAM images")
    return {"tsne_png": str(tsne_png), "tsne_csv": str(tsne_csv), "gradcam_pngs": [str(p) for p in cams]}
