"""Reduce the slices of one volume: render -> score pairs -> select (Wolf et al. 2024, section 2.1).

:class:`SliceReducer` is the single entry point used by the transforms, the dataset filter and the command line;
it holds only JSON-serialisable settings so a bundle config can build it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from monai_lessmore.reduction.methods import get_method, pairwise_scores, validate_threshold
from monai_lessmore.reduction.preprocess import StoredStack, render_stack, resize_uint8, to_uint8, validate_size, validate_window
from monai_lessmore.reduction.selection import (
    select_all,
    select_every_n,
    select_greedy,
    select_leader,
    select_leader_count,
    target_count,
)

__all__ = ["SliceReducer", "ReductionResult", "ReductionSettings", "ALGORITHMS"]

ALGORITHMS = ("leader", "greedy")


_EMBEDDERS: dict[tuple[str, str], Any] = {}
#: methods that compare slices pixel by pixel (all slices of a volume must then have one size)
_PIXELWISE = ("ssim", "mi", "deepnet")


def _check_deepnet_weights(weights: Any) -> None:
    """Fail at construction, before any volume is read, when the DeepNet weights cannot be had offline."""
    from pathlib import Path

    if weights == "random":
        return
    if weights == "imagenet":
        from monai_lessmore.reduction.deepnet import IMAGENET_WEIGHTS_URL, imagenet_weights_path

        path = imagenet_weights_path()
        if not path.is_file():
            raise ValueError(
                f"deepnet_weights='imagenet' needs the torchvision ResNet50 ImageNet weights in the local torch cache, "
                f"but {path} does not exist (nothing is downloaded). Copy {IMAGENET_WEIGHTS_URL} there, or pass a "
                "state-dict file: deepnet_weights=PATH (command line: --deepnet-weights PATH)"
            )
        return
    if not isinstance(weights, (str, Path)) or not Path(weights).is_file():
        raise ValueError(
            f"deepnet_weights must be 'imagenet', 'random' or an existing ResNet50 state-dict file, got {weights!r} "
            "(command line: --deepnet-weights)"
        )


def _dhash_mixed(slices: list[np.ndarray]) -> np.ndarray:
    """dHashes of 2D uint8 slices of different sizes, batched per size, in the input order."""
    from monai_lessmore.reduction.dhash import dhash

    out = np.zeros(len(slices), dtype=np.uint64)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(slices):
        by_shape.setdefault(s.shape, []).append(i)
    for idx in by_shape.values():
        out[idx] = dhash(np.stack([slices[i] for i in idx]))
    return out




@dataclass
class ReductionResult:
    """What was kept of one volume.

    Attributes:
        kept: sorted indices (in the volume's slice order) of the kept slices.
        n_slices: number of slices of the volume.
        hashes: 16-hex-digit dHash of every slice (``str(imagehash.dhash(...))`` of its 8-bit rendering).
        threshold: the threshold applied, on the method's own scale (for target-count leader selection, the one
            the search settled on); ``None`` when no threshold applies.
        seconds: wall time of the reduction.
        resampled_to: ``(H, W)`` when the slices differed in size and were resampled for the comparison
            (``mixed_size``), else ``None``.
    """

    kept: np.ndarray
    n_slices: int
    hashes: list[str] = field(default_factory=list)
    threshold: float | None = None
    seconds: float = 0.0
    resampled_to: tuple[int, int] | None = None

    @property
    def n_kept(self) -> int:
        return int(self.kept.size)

    @property
    def fraction(self) -> float:
        return self.n_kept / self.n_slices if self.n_slices else 0.0

    @property
    def mask(self) -> np.ndarray:
        m = np.zeros(self.n_slices, dtype=bool)
        m[self.kept] = True
        return m


@dataclass(frozen=True)
class ReductionSettings:
    """The validated settings of a :class:`SliceReducer` (see it for each argument).

    :meth:`validate` checks what every method shares (target fraction/count, algorithm, window, device, bins,
    ``mixed_size``), then the method's own rules (:meth:`_check_all`, :meth:`_check_everyn`,
    :meth:`_check_similarity`), and fills in the defaults the paper used.
    """

    method: str
    threshold: float | None
    fraction: float | None
    count: int | None
    algorithm: str
    every_n: int | None
    window: tuple[float, float] | None
    device: str
    bins: int
    deepnet_weights: Any
    mixed_size: tuple[int, int] | None

    @classmethod
    def validate(
        cls,
        *,
        method: str,
        threshold: float | None,
        fraction: float | None,
        count: int | None,
        algorithm: str | None,
        every_n: int | None,
        window: Sequence[float] | None,
        device: str,
        bins: int,
        deepnet_weights: Any,
        mixed_size: int | Sequence[int] | None,
    ) -> "ReductionSettings":
        """Check the arguments and return the settings.

        Raises:
            ValueError: for settings that do not fit together, naming the argument and the fix.
        """
        spec = get_method(method)
        fraction, count = cls._check_target(fraction, count)
        targeted = fraction is not None or count is not None
        check = {"all": cls._check_all, "everyn": cls._check_everyn}.get(spec.name, cls._check_similarity)
        threshold, every_n = check(spec, threshold, every_n, targeted)
        algorithm = cls._check_algorithm(algorithm, threshold, targeted)
        window_ = validate_window(window)
        device_ = cls._check_device(device)
        bins_ = cls._check_bins(bins)
        if spec.name == "deepnet":
            _check_deepnet_weights(deepnet_weights)
        mixed = validate_size(mixed_size)
        if spec.name == "ssim" and mixed is not None and min(mixed) < 11:
            raise ValueError(
                f"mixed_size {mixed} is smaller than SSIM's 11x11 window; pass --mixed-size of at least "
                "11x11 (e.g. 256x256)"
            )
        return cls(
            method=spec.name,
            threshold=threshold,
            fraction=fraction,
            count=count,
            algorithm=algorithm,
            every_n=None if every_n is None else int(every_n),
            window=window_,
            device=device_,
            bins=bins_,
            deepnet_weights=deepnet_weights,
            mixed_size=mixed,
        )

    @staticmethod
    def _check_target(fraction: float | None, count: int | None) -> tuple[float | None, int | None]:
        if fraction is not None and count is not None:
            raise ValueError(f"give fraction or count, not both (got fraction={fraction!r}, count={count!r})")
        if fraction is not None:
            target_count(1, fraction=fraction)  # validates the range
        if count is not None:
            target_count(1, count=count)
        return (None if fraction is None else float(fraction)), (None if count is None else int(count))

    @staticmethod
    def _check_all(spec: Any, threshold: Any, every_n: Any, targeted: bool) -> tuple[None, None]:
        if threshold is not None or targeted or every_n is not None:
            raise ValueError("method 'all' keeps every slice and takes no threshold, fraction, count or every_n")
        return None, None

    @staticmethod
    def _check_everyn(spec: Any, threshold: Any, every_n: Any, targeted: bool) -> tuple[None, int | None]:
        if threshold is not None:
            raise ValueError("method 'everyn' takes every_n or fraction/count, not threshold")
        if every_n is not None and targeted:
            raise ValueError("give every_n or fraction/count for method 'everyn', not both")
        if every_n is None and not targeted:
            every_n = 10
        if every_n is not None:
            select_every_n(1, n=every_n)  # validates
        return None, every_n

    @staticmethod
    def _check_similarity(spec: Any, threshold: Any, every_n: Any, targeted: bool) -> tuple[float | None, None]:
        if every_n is not None:
            raise ValueError(f"every_n applies to method 'everyn' only, not {spec.name!r}")
        if threshold is None and not targeted:
            if spec.default_threshold is None:
                raise ValueError(
                    f"method {spec.name!r} needs a threshold (scale {spec.threshold_range}) or a fraction"
                )
            threshold = spec.default_threshold
        if threshold is not None:
            threshold = validate_threshold(spec, threshold)
        return threshold, None

    @staticmethod
    def _check_algorithm(algorithm: str | None, threshold: Any, targeted: bool) -> str:
        if algorithm is None:
            algorithm = "greedy" if targeted and threshold is None else "leader"
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
        if algorithm == "leader" and threshold is not None and targeted:
            raise ValueError(
                "the leader algorithm takes a threshold or a target fraction/count, not both; "
                "use algorithm='greedy' to stop at whichever comes first"
            )
        return algorithm

    @staticmethod
    def _check_device(device: Any) -> str:
        if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
            raise ValueError(f"device must be 'cpu' or 'cuda' (or 'cuda:N'), got {device!r}")
        return str(device)

    @staticmethod
    def _check_bins(bins: Any) -> int:
        if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
            raise ValueError(f"bins must be an integer >= 2 for MI histograms, got {bins!r}")
        return int(bins)


class SliceReducer:
    """Remove near-duplicate slices within one volume.

    Args:
        method: ``"hash"`` (default, the paper's best), ``"ssim"``, ``"mi"``, ``"deepnet"``, ``"everyn"`` or
            ``"all"``; see :mod:`monai_lessmore.reduction.methods` for each threshold's scale.
        threshold: similarity threshold (inclusive). HASH defaults to 6 (HASH-6) when no fraction/count is given.
        fraction: keep this fraction of each volume's slices, in (0, 1] (the paper's "reduce to 10 %").
        count: keep this many slices of each volume (alternative to ``fraction``).
        algorithm: ``"leader"`` (the authors' released code) or ``"greedy"`` (the paper's text). ``None`` picks
            ``leader`` for threshold selection and ``greedy`` for a target fraction/count, as the paper did.
        every_n: for ``everyn``: keep slices ``0, n, 2n, ...`` (default 10 when no fraction/count is given).
        window: optional HU window ``(low, high)`` for rendering; default per-slice min-max (the authors').
        device: ``"cpu"`` or ``"cuda"`` for SSIM/MI/DeepNet.
        bins: histogram bins for MI.
        deepnet_weights: ``"imagenet"`` (local torch cache only), a state-dict path, or ``"random"`` (tests).
        mixed_size: for SSIM/MI/DeepNet, the size ``(H, W)`` (or ``N`` for ``N x N``) to which the 8-bit slices of a
            volume whose slices *differ in size* (slice folders of mixed image sizes) are resampled before they are
            compared (Pillow bilinear). Volumes of one slice size are compared as they are; hashes are always taken
            at each slice's own size. ``None`` (default) refuses such volumes with an error.

    Raises:
        ValueError: for settings that do not fit together, naming the argument and the fix.
    """

    def __init__(
        self,
        method: str = "hash",
        threshold: float | None = None,
        fraction: float | None = None,
        count: int | None = None,
        algorithm: str | None = None,
        every_n: int | None = None,
        window: Sequence[float] | None = None,
        device: str = "cpu",
        bins: int = 100,
        deepnet_weights: str | None = "imagenet",
        mixed_size: int | Sequence[int] | None = None,
    ) -> None:
        settings = ReductionSettings.validate(
            method=method,
            threshold=threshold,
            fraction=fraction,
            count=count,
            algorithm=algorithm,
            every_n=every_n,
            window=window,
            device=device,
            bins=bins,
            deepnet_weights=deepnet_weights,
            mixed_size=mixed_size,
        )
        self.settings = settings
        self.spec = get_method(settings.method)
        self.method = settings.method
        self.threshold = settings.threshold
        self.fraction = settings.fraction
        self.count = settings.count
        self.algorithm = settings.algorithm
        self.every_n = settings.every_n
        self.window = settings.window
        self.device = settings.device
        self.bins = settings.bins
        self.deepnet_weights = settings.deepnet_weights
        self.mixed_size = settings.mixed_size

    # ------------------------------------------------------------------ settings
    def params(self) -> dict[str, Any]:
        """The settings that decide the result, as a JSON-serialisable dict (used in cache keys and summaries)."""
        out: dict[str, Any] = {
            "method": self.method,
            "threshold": self.threshold,
            "fraction": self.fraction,
            "count": self.count,
            "algorithm": self.algorithm if self.spec.needs_scores else None,
            "every_n": self.every_n,
            "window": list(self.window) if self.window else None,
        }
        if self.method == "mi":
            out["bins"] = self.bins
        if self.method == "deepnet":
            out["deepnet_weights"] = str(self.deepnet_weights)
        if self.mixed_size is not None and self.method in _PIXELWISE:
            out["mixed_size"] = list(self.mixed_size)
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if v is not None)
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ work
    def render(self, slices: np.ndarray | Sequence[np.ndarray], *, rendered: bool = False) -> np.ndarray | list[np.ndarray]:
        """8-bit slices for the similarity measures.

        Args:
            slices: ``(S, H, W)`` HU values (or already-rendered 8-bit values when ``rendered``), a
                :class:`~monai_lessmore.reduction.preprocess.StoredStack` (a lazy reader's stored voxels), or a
                list of 2D slices that may differ in size (slice folders with mixed image sizes).
            rendered: the slices are already the authors' 8-bit images (slice folders): used as they are.

        Returns:
            A ``(S, H, W)`` uint8 array, or a list of 2D uint8 slices for a list of mixed sizes.
        """
        if isinstance(slices, StoredStack):  # stored voxels (lazy readers): rendered chunk by chunk
            if rendered:
                raise ValueError("a stored stack holds real values (HU), not 8-bit renderings; pass rendered=False")
            return to_uint8(slices, window=self.window)
        if not isinstance(slices, np.ndarray) and not hasattr(slices, "shape"):
            items = [np.asarray(s) for s in slices]
            if any(s.ndim != 2 for s in items):
                raise ValueError(f"a list of slices must hold 2D arrays, got shapes {[s.shape for s in items][:5]}")
            if len({s.shape for s in items}) <= 1:
                return self.render(np.stack(items) if items else np.zeros((0, 1, 1)), rendered=rendered)
            return [self.render(s[None], rendered=rendered)[0] for s in items]
        arr = np.asarray(slices)
        if arr.ndim != 3:
            raise ValueError(f"a volume must be (S, H, W) with the slice axis first, got shape {arr.shape}")
        if rendered:
            if arr.dtype == np.uint8:
                return arr
            if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 255 or not np.array_equal(arr, np.rint(arr)):
                raise ValueError("rendered slices must hold integer values 0..255 (8-bit images)")
            return arr.astype(np.uint8)
        return to_uint8(arr, window=self.window)

    def _embedder_factory(self):
        # one network per process and setting: a batch job builds a reducer per volume
        key = (str(self.deepnet_weights), self.device)
        if key not in _EMBEDDERS:
            from monai_lessmore.reduction.deepnet import ResNet50Embedder

            _EMBEDDERS[key] = ResNet50Embedder(weights=self.deepnet_weights, device=self.device)
        return _EMBEDDERS[key]

    def reduce(self, slices: np.ndarray | Sequence[np.ndarray], *, rendered: bool = False) -> ReductionResult:
        """Select the slices to keep of one volume.

        Args:
            slices: ``(S, H, W)`` array, slice axis first, in the order selection should visit the slices; or a
                list of 2D slices of mixed sizes (:meth:`monai_lessmore.io.Volume.slices`): each is hashed at its
                own size (HASH, EveryN, ALL); the pixel-wise measures (SSIM, MI, DeepNet) need one size and raise.
            rendered: ``slices`` are already 8-bit renderings (slice folders); otherwise they are rendered with
                :func:`~monai_lessmore.reduction.preprocess.to_uint8`.

        Returns:
            The kept indices, every slice's dHash and the threshold used.
        """
        from monai_lessmore.reduction.dhash import dhash, hash_to_hex

        start = time.perf_counter()
        streamed = None
        if isinstance(slices, StoredStack) and not rendered:
            # hashed block by block as the blocks are rendered: for a file still being read, while it arrives
            streamed = np.zeros(len(slices), dtype=np.uint64)

            def each(lo: int, hi: int, block: np.ndarray) -> None:
                streamed[lo:hi] = dhash(block)

            # the pixel-wise measures compare the rendered slices; the others need only their hashes
            u8 = render_stack(slices, window=self.window, each=each, keep=self.method in _PIXELWISE)
        else:
            u8 = self.render(slices, rendered=rendered)
        compared = u8
        resampled_to = None
        if isinstance(u8, list):
            if self.method in _PIXELWISE:
                if self.mixed_size is None:
                    shapes = sorted({s.shape for s in u8})
                    shown = ", ".join(f"{h}x{w}" for h, w in shapes[:3]) + (", ..." if len(shapes) > 3 else "")
                    raise ValueError(
                        f"method {self.method!r} compares slices pixel by pixel, but this volume's slices differ in "
                        f"size ({len(shapes)} sizes HxW, e.g. {shown}); pass mixed_size=(H, W) (command line: "
                        "--mixed-size HxW) to resample them to one size for the comparison, or use method 'hash' "
                        "(each image is hashed at its own size)"
                    )
                compared = resize_uint8(u8, self.mixed_size)
                resampled_to = self.mixed_size
            hashes = _dhash_mixed(u8)
        elif streamed is not None:
            hashes = streamed
        else:
            hashes = dhash(u8) if u8.shape[0] else np.zeros(0, dtype=np.uint64)
        n = len(slices) if u8 is None else len(u8)
        if n == 0:
            raise ValueError("the volume has no slices")
        threshold_used: float | None = self.threshold
        targeted = self.fraction is not None or self.count is not None
        k = target_count(n, fraction=self.fraction, count=self.count) if targeted else None

        if self.method == "all":
            kept = select_all(n)
        elif self.method == "everyn":
            kept = select_every_n(n, n=self.every_n) if k is None else select_every_n(n, count=k)
        elif n == 1:
            kept = select_all(1)
        else:
            scores = pairwise_scores(
                self.spec,
                compared,
                hashes=hashes,
                device=self.device,
                bins=self.bins,
                embedder_factory=self._embedder_factory,
            )
            thr = None if self.threshold is None else self.spec.threshold_to_score(self.threshold)
            if self.algorithm == "leader":
                if k is None:
                    kept = select_leader(scores, thr)
                else:
                    kept, used = select_leader_count(scores, k)
                    threshold_used = self.spec.score_to_threshold(used)
            else:
                kept = select_greedy(scores, threshold=thr, count=k)
        return ReductionResult(
            kept=np.asarray(kept, dtype=np.int64),
            n_slices=n,
            hashes=hash_to_hex(hashes),
            threshold=threshold_used,
            seconds=time.perf_counter() - start,
            resampled_to=resampled_to,
        )
