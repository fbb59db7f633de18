"""The reduction methods of the paper (section 2.1) as pairwise score matrices for :mod:`.selection`.

Each similarity method turns the 8-bit rendering of a volume's slices into an ``(N, N)`` matrix of *scores* in
which lower means more similar, and maps the user's threshold onto that scale:

============  ==========================================  =======================  ==========================
method        similarity of two slices                    threshold (similar if)   score
============  ==========================================  =======================  ==========================
``hash``      Hamming distance of 64-bit dHashes          distance <= t, 0..64     distance
``ssim``      Gaussian SSIM, data range 255               SSIM >= t, -1..1         -SSIM
``mi``        Studholme's normalised MI                   NMI >= t, 1..2           -NMI
``deepnet``   cosine of ResNet50 feature vectors          cosine >= t, -1..1       -cosine
============  ==========================================  =======================  ==========================

``everyn`` and ``all`` need no similarity. The measures themselves live in :mod:`.dhash`, :mod:`.ssim`,
:mod:`.mi` and :mod:`.deepnet`; this module only dispatches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

__all__ = ["MethodSpec", "METHODS", "SIMILARITY_METHODS", "get_method", "validate_threshold", "pairwise_scores"]


@dataclass(frozen=True)
class MethodSpec:
    """How one reduction method scores pairs and reads its threshold."""

    name: str
    description: str
    #: ``True`` when the underlying measure grows with similarity (SSIM, NMI, cosine): scores are its negation.
    higher_is_similar: bool = False
    threshold_range: tuple[float, float] | None = None
    integer_threshold: bool = False
    default_threshold: float | None = None

    @property
    def needs_scores(self) -> bool:
        return self.threshold_range is not None

    def threshold_to_score(self, threshold: float) -> float:
        """The threshold on the score scale (lower = more similar)."""
        return -float(threshold) if self.higher_is_similar else float(threshold)

    def score_to_threshold(self, score: float | None) -> float | None:
        """Inverse of :meth:`threshold_to_score`."""
        if score is None:
            return None
        return -float(score) if self.higher_is_similar else float(score)


METHODS: dict[str, MethodSpec] = {
    "all": MethodSpec("all", "keep every slice (baseline ALL)"),
    "everyn": MethodSpec("everyn", "keep every n-th slice (baseline EveryN)"),
    "hash": MethodSpec(
        "hash",
        "Hamming distance of 64-bit difference hashes (dHash)",
        threshold_range=(0, 64),
        integer_threshold=True,
        default_threshold=6,
    ),
    "ssim": MethodSpec("ssim", "Gaussian-weighted SSIM", higher_is_similar=True, threshold_range=(-1.0, 1.0)),
    "mi": MethodSpec("mi", "Studholme's normalised mutual information", higher_is_similar=True, threshold_range=(1.0, 2.0)),
    "deepnet": MethodSpec(
        "deepnet", "cosine similarity of ResNet50 feature vectors", higher_is_similar=True, threshold_range=(-1.0, 1.0)
    ),
}
SIMILARITY_METHODS = tuple(name for name, spec in METHODS.items() if spec.needs_scores)


def get_method(name: str) -> MethodSpec:
    """Look a method up by name (case-insensitive); ``"none"`` is an alias of ``"all"`` (no reduction).

    Raises:
        ValueError: naming the accepted methods.
    """
    key = str(name).lower()
    if key == "none":
        key = "all"
    if key not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {name!r}")
    return METHODS[key]


def validate_threshold(spec: MethodSpec, threshold: Any) -> float:
    """Check a threshold against the method's scale and return it as a number.

    Raises:
        ValueError: e.g. ``threshold must be an integer in 0..64 for HASH, got 70``.
    """
    if spec.threshold_range is None:
        raise ValueError(f"method {spec.name!r} takes no threshold; use fraction (or every_n for everyn)")
    lo, hi = spec.threshold_range
    label = spec.name.upper()
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)):
        raise ValueError(f"threshold must be a number in {lo:g}..{hi:g} for {label}, got {threshold!r}")
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number in {lo:g}..{hi:g} for {label}, got {threshold!r}")
    if spec.integer_threshold:
        if float(threshold) != int(threshold) or not lo <= threshold <= hi:
            raise ValueError(f"threshold must be an integer in {lo:g}..{hi:g} for {label}, got {threshold!r}")
        return int(threshold)
    if not (np.isfinite(threshold) and lo <= threshold <= hi):
        raise ValueError(f"threshold must be in {lo:g}..{hi:g} for {label}, got {threshold!r}")
    return float(threshold)


def pairwise_scores(
    spec: MethodSpec,
    rendered: np.ndarray,
    *,
    hashes: np.ndarray | None = None,
    device: str = "cpu",
    bins: int = 100,
    embedder_factory: Callable[[], Any] | None = None,
) -> np.ndarray:
    """``(N, N)`` scores (lower = more similar) of the 8-bit slices ``rendered`` for one similarity method.

    Args:
        spec: a method with ``needs_scores``.
        rendered: ``(N, H, W)`` uint8 slices of one volume.
        hashes: the slices' dHashes, reused for ``hash`` when already computed.
        device: ``"cpu"`` or ``"cuda"`` for the torch-based measures.
        bins: histogram bins for ``mi``.
        embedder_factory: returns the :class:`~monai_lessmore.reduction.deepnet.ResNet50Embedder` for ``deepnet``.
    """
    if spec.name == "hash":
        from monai_lessmore.reduction.dhash import dhash, hamming_matrix

        return hamming_matrix(dhash(rendered) if hashes is None else hashes)
    if spec.name == "ssim":
        from monai_lessmore.reduction.ssim import pairwise_ssim

        # float32: 2-2.6x faster, within 2e-6 of scikit-image's float64 result on real slices (tolerance 1e-4)
        return -pairwise_ssim(rendered, data_range=255.0, device=device, dtype="float32")
    if spec.name == "mi":
        from monai_lessmore.reduction.mi import pairwise_nmi

        return -pairwise_nmi(rendered, bins=bins, device=device)
    if spec.name == "deepnet":
        from monai_lessmore.reduction.deepnet import pairwise_deepnet

        if embedder_factory is None:
            raise ValueError("method 'deepnet' needs a ResNet50 embedder (weights); see SliceReducer(deepnet_weights=...)")
        return -pairwise_deepnet(rendered, embedder=embedder_factory())
    raise ValueError(f"method {spec.name!r} has no pairwise scores")
