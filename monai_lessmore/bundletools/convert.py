"""Turn a pre-training checkpoint into a bundle's ``models/model.pt``: torchvision ResNet50 key names, no head.

Spec section 6: the authors' four SwAV checkpoints are PyTorch Lightning files (a dict with ``state_dict``;
encoder keys prefixed ``model.``; projection head and prototypes extra); loading them means "strip ``model.``, drop
the head, load into ``torchvision.models.resnet50()`` (missing: fc only)". The same holds, with other prefixes, for
the other layouts seen in practice (facts from the public code of each method):

========================================  ======================  =========================================
layout                                    where the tensors are   encoder key prefix (dropped extras)
========================================  ======================  =========================================
SwAV, Lightning (Wolfda95/Less_is_More)   ``state_dict``          ``model.`` (``projection_head``, ``prototypes``)
MoCo v2, Lightning bolts                  ``state_dict``          ``encoder_q.`` (``encoder_k``, ``queue``, MLP ``fc``)
MoCo v1/v2, facebookresearch/moco         ``state_dict``          ``module.encoder_q.`` (the same)
SparK, keyu-tian/SparK ``*_spark_style``  ``module``              ``sparse_encoder.sp_cnn.`` (decoder, densify)
SparK ``*_timm_style`` / authors' SparK   top level / ``module``  none
this package's pre-training export        top level               none (already plain)
this package's training checkpoint        ``model``               ``backbone.`` / ``encoder.resnet.``
========================================  ======================  =========================================

Rather than a table of prefixes, :func:`extract_encoder` finds the prefix under which *every* ResNet50 encoder key
exists with torchvision's shapes; momentum/key encoders (``encoder_k``, ``*_momentum``) are never chosen when a
query encoder is there. Anything else is an error that lists what the file holds.
"""

from __future__ import annotations

import datetime
import io
import logging
import re
import shutil
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from monai_lessmore.bundletools.checkpoint import read_checkpoint
from monai_lessmore.utils.files import atomic_write_bytes, atomic_write_json, file_hash

__all__ = [
    "ConversionError",
    "BundleExistsError",
    "ConversionReport",
    "resnet50_encoder_shapes",
    "extract_encoder",
    "import_checkpoint",
    "DEFAULT_TEMPLATE",
]

logger = logging.getLogger(__name__)

#: the shipped bundle (:func:`monai_lessmore.resources.bundle_template`) copied around a converted model.pt when the
#: target folder is not a bundle yet
DEFAULT_TEMPLATE = "lessmore_hash6_resnet50"
_CONTAINERS = ("state_dict", "module", "model")  # Lightning/ignite, SparK, this package's training checkpoints
_MOMENTUM = re.compile(r"encoder_k|momentum|target|teacher|(^|\.)ema\.|key_encoder")
_SKIP_TEMPLATE = {"eval", "__pycache__", ".ipynb_checkpoints"}


class ConversionError(ValueError):
    """The checkpoint does not hold a ResNet50 encoder that can be converted; the message lists what it holds."""


class BundleExistsError(FileExistsError):
    """The target bundle already has ``models/model.pt`` and overwriting was not requested."""


@dataclass
class ConversionReport:
    """What :func:`extract_encoder` found and kept.

    Attributes:
        source: the checkpoint (file name or description).
        method: the layout recognised (e.g. ``"SwAV (PyTorch Lightning)"``).
        container: the entry holding the tensors (``state_dict``, ``module``, ``model``) or ``"(top level)"``.
        prefix: the key prefix stripped from the encoder keys.
        n_source_tensors: tensors in the container.
        n_kept: encoder tensors written (all of ResNet50's except ``fc.*``).
        dropped: tensors left out, counted per group (``model.projection_head``: 7, ...).
        ignored_non_tensors: container entries that are not tensors (e.g. SparK's ``config``).
        missing_keys: keys of ``torchvision.models.resnet50()`` the result lacks (always ``fc.weight``, ``fc.bias``).
        unexpected_keys: keys of the result unknown to ``torchvision.models.resnet50()`` (always empty).
    """

    source: str
    method: str
    container: str
    prefix: str
    n_source_tensors: int
    n_kept: int
    dropped: dict[str, int] = field(default_factory=dict)
    ignored_non_tensors: list[str] = field(default_factory=list)
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few human-readable lines for the command line."""
        dropped = ", ".join(f"{k} ({n})" for k, n in self.dropped.items()) or "none"
        lines = [
            f"source: {self.source}",
            f"layout: {self.method}; tensors in {self.container!r}, encoder prefix {self.prefix!r}",
            f"kept {self.n_kept} of {self.n_source_tensors} tensors (ResNet50 encoder, torchvision key names)",
            f"dropped: {dropped}",
            f"loading into torchvision.models.resnet50(): missing keys {self.missing_keys}, "
            f"unexpected keys {self.unexpected_keys}",
        ]
        if self.ignored_non_tensors:
            lines.append(f"ignored non-tensor entries: {self.ignored_non_tensors[:10]}")
        return "\n".join(lines)


_SHAPES: dict[str, dict[str, torch.Size]] = {}


def resnet50_encoder_shapes(include_fc: bool = False) -> dict[str, torch.Size]:
    """Key -> shape of ``torchvision.models.resnet50()``'s state dict (built on the meta device: no memory)."""
    if not _SHAPES:
        from monai_lessmore.networks.resnet import ResNet50

        with torch.device("meta"):
            _SHAPES["all"] = {k: v.shape for k, v in ResNet50().state_dict().items()}
        _SHAPES["encoder"] = {k: s for k, s in _SHAPES["all"].items() if not k.startswith("fc.")}
    return dict(_SHAPES["all" if include_fc else "encoder"])


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj.keys())
        return f"a dict with top-level keys {[str(k) for k in keys[:20]]}{' ...' if len(keys) > 20 else ''}"
    return f"a {type(obj).__name__}"


def _find_container(obj: Any, source: str) -> tuple[str, Mapping]:
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{source} holds {_describe(obj)}, not a dict of tensors or a checkpoint dict")
    for name in _CONTAINERS:
        inner = obj.get(name)
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            return name, inner
    if any(isinstance(v, torch.Tensor) for v in obj.values()):
        return "(top level)", obj
    raise ConversionError(
        f"{source} holds no state dict: {_describe(obj)}, none of {list(_CONTAINERS)} is a dict of tensors. "
        "Expected a PyTorch Lightning checkpoint (state_dict), a SparK checkpoint (module) or a plain state dict."
    )


def _prefix_coverage(keys: list[str], encoder: set[str]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for k in keys:
        cuts = [0] + [i + 1 for i, c in enumerate(k) if c == "."]
        for i in cuts:
            if k[i:] in encoder:
                found.setdefault(k[:i], set()).add(k[i:])
    return found


def _not_resnet50(source: str, obj: Any, container: str, tensors: dict[str, torch.Tensor],
                  coverage: dict[str, set[str]], n_enc: int, why: str) -> ConversionError:
    sample = list(tensors)[:12]
    best = sorted(coverage.items(), key=lambda kv: -len(kv[1]))[:3]
    best_txt = ", ".join(f"prefix {p!r}: {len(s)}" for p, s in best) or "none"
    return ConversionError(
        f"{source} is not a ResNet50 checkpoint of SwAV, MoCo, SparK or this package's pre-training ({why}). "
        f"Found {_describe(obj)}; {len(tensors)} tensors in {container!r}, e.g. {sample}; "
        f"ResNet50 encoder keys found (of {n_enc}) per prefix: {best_txt}. "
        "Only complete torchvision-layout ResNet50 encoders can be converted (name the encoder's key prefix with "
        "--prefix when the file holds several)."
    )


def _method(obj: Mapping, container: str, prefix: str, tensors: Mapping[str, torch.Tensor]) -> str:
    lightning = " (PyTorch Lightning)" if "pytorch-lightning_version" in obj or "hyper_parameters" in obj else ""
    if prefix.endswith("sp_cnn.") or (container == "module" and ("is_pretrain" in obj or "arch" in obj)):
        return "SparK" + lightning
    if "encoder_q" in prefix:
        return "MoCo" + lightning
    if "base_encoder" in prefix:
        return "MoCo v3" + lightning
    if any("prototypes" in k for k in tensors):  # SwAV's prototype vectors, beside the projection head
        return "SwAV" + lightning
    if prefix == "":
        return "plain ResNet50 state dict" + lightning
    return f"ResNet50 under {prefix!r}" + lightning


def _group(key: str, prefix: str) -> str:
    if prefix and key.startswith(prefix):
        return prefix + key[len(prefix):].split(".")[0]
    return key.split(".")[0]


def extract_encoder(
    obj: Any, *, source: str = "checkpoint", prefix: str | None = None
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """The ResNet50 encoder of a loaded checkpoint as a plain state dict with torchvision key names.

    Args:
        obj: what :func:`~monai_lessmore.bundletools.checkpoint.read_checkpoint` returned.
        source: the file name, for messages.
        prefix: the key prefix of the encoder; by default the unique prefix under which every ResNet50 encoder key
            exists (a momentum/key encoder is passed over when the query encoder is also there).

    Returns:
        ``(state_dict, report)``: the encoder tensors (CPU, contiguous, own storage) in
        ``torchvision.models.resnet50().state_dict()`` order without ``fc.*``, and what was found and dropped.

    Raises:
        ConversionError: no complete ResNet50 encoder, shapes that are not ResNet50's, or several candidates.
    """
    container, inner = _find_container(obj, source)
    tensors = {str(k): v for k, v in inner.items() if isinstance(v, torch.Tensor)}
    non_tensors = [str(k) for k, v in inner.items() if not isinstance(v, torch.Tensor)]
    shapes = resnet50_encoder_shapes()
    encoder = set(shapes)
    coverage = _prefix_coverage(list(tensors), encoder)
    if prefix is None:
        full = [p for p, s in coverage.items() if len(s) == len(encoder)]
        if len(full) > 1:
            full = [p for p in full if not _MOMENTUM.search(p)] or full
        if not full:
            raise _not_resnet50(source, obj, container, tensors, coverage, len(encoder), "no complete ResNet50 encoder")
        if len(full) > 1:
            raise ConversionError(
                f"{source} holds several complete ResNet50 encoders, under the prefixes {sorted(full)}; "
                "pass the one to convert with --prefix (Python: prefix=...)"
            )
        prefix = full[0]
    else:
        have = coverage.get(prefix, set())
        if len(have) != len(encoder):
            raise _not_resnet50(source, obj, container, tensors, coverage, len(encoder),
                                f"prefix {prefix!r} was given but covers {len(have)} of {len(encoder)} encoder keys")
    wrong = [f"{prefix}{k}: {tuple(tensors[prefix + k].shape)} (ResNet50: {tuple(s)})" for k, s in shapes.items()
             if tensors[prefix + k].shape != s]
    if wrong:
        raise _not_resnet50(source, obj, container, tensors, coverage, len(encoder),
                            f"{len(wrong)} tensors have other shapes than torchvision's ResNet50, e.g. {wrong[:4]}")
    state = {k: tensors[prefix + k].detach().cpu().contiguous().clone() for k in shapes}
    used = {prefix + k for k in shapes}
    dropped = Counter(_group(k, prefix) for k in tensors if k not in used)
    full_keys = set(resnet50_encoder_shapes(include_fc=True))
    report = ConversionReport(
        source=source,
        method=_method(obj, container, prefix, tensors),
        container=container,
        prefix=prefix,
        n_source_tensors=len(tensors),
        n_kept=len(state),
        dropped=dict(sorted(dropped.items())),
        ignored_non_tensors=non_tensors,
        missing_keys=sorted(full_keys - state.keys()),
        unexpected_keys=sorted(state.keys() - full_keys),
    )
    return state, report


def _copy_template(template: Path, bundle: Path) -> list[str]:
    copied = []
    for src in sorted(template.rglob("*")):
        rel = src.relative_to(template)
        if not src.is_file() or _SKIP_TEMPLATE & set(rel.parts) or (rel.parts[0] == "models" and rel.name != ".gitkeep"):
            continue
        dest = bundle / rel
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
            copied.append(str(rel))
    return copied


def _template_folder(template: str | Path) -> Path:
    """A bundle folder, or the folder of the shipped bundle of that name."""
    from monai_lessmore.resources import bundle_template

    if isinstance(template, str) and not Path(template).exists() and "/" not in template:
        return bundle_template(template)
    return Path(template)


def import_checkpoint(
    source: str | Path,
    bundle_dir: str | Path,
    *,
    trust_pickle: bool = False,
    force: bool = False,
    prefix: str | None = None,
    template: str | Path | None = DEFAULT_TEMPLATE,
) -> ConversionReport:
    """Convert ``source`` into ``<bundle_dir>/models/model.pt`` (plain state dict, loads with ``weights_only=True``).

    When ``bundle_dir`` is not a bundle yet (no ``configs/metadata.json``), the files of ``template`` (configs, docs,
    licence, ``large_files.yml``; by default this package's ``lessmore_hash6_resnet50`` bundle) are copied first, so
    a user's own pre-training becomes a bundle of the same shape. Next to the weights ``models/conversion.json``
    records the source file, its SHA-256 and the report.

    Args:
        source: an authors' Lightning ``.ckpt``, a MoCo/SparK checkpoint, or this package's pre-training export.
        bundle_dir: the bundle folder to write into.
        trust_pickle: allow full unpickling of ``source`` (see :func:`~monai_lessmore.bundletools.checkpoint.read_checkpoint`).
        force: replace an existing ``models/model.pt``.
        prefix: the encoder's key prefix (default: detected).
        template: bundle copied around the weights when ``bundle_dir`` is not a bundle: a bundle folder, or the
            name of a bundle that ships with the package (:func:`monai_lessmore.resources.bundle_template`);
            ``None`` copies nothing.

    Returns:
        The :class:`ConversionReport`.

    Raises:
        BundleExistsError: ``models/model.pt`` exists and ``force`` is False.
        CheckpointError, UntrustedCheckpointError: ``source`` cannot be read (safely).
        ConversionError: ``source`` holds no ResNet50 encoder.
        FileNotFoundError: ``template`` names neither a folder nor a shipped bundle.
    """
    source, bundle = Path(source), Path(bundle_dir)
    model_path = bundle / "models" / "model.pt"
    if bundle.exists() and not bundle.is_dir():
        raise NotADirectoryError(f"--bundle {bundle} exists and is not a folder")
    if model_path.exists() and not force:
        raise BundleExistsError(
            f"{model_path} already exists; refusing to overwrite it. Pass --force (Python: force=True) to replace "
            "it, or choose another --bundle folder."
        )
    state, report = extract_encoder(read_checkpoint(source, trust_pickle=trust_pickle), source=str(source), prefix=prefix)
    copied: list[str] = []
    if not (bundle / "configs" / "metadata.json").is_file() and template is not None:
        template = _template_folder(template)
        if (template / "configs" / "metadata.json").is_file():
            copied = _copy_template(template, bundle)
            logger.warning(
                f"{bundle} was not a bundle: copied {len(copied)} files from {template}. Its configs/metadata.json "
                "describes the authors' HASH-6 weights; edit name, description and data_source for your own."
            )
        else:
            logger.warning(f"{bundle} is not a bundle and the template {template} is absent: writing the weights only")
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(model_path, buf.getvalue())
    atomic_write_json(
        bundle / "models" / "conversion.json",
        {
            **asdict(report),
            "source": source.name,  # not the local path: the bundle may be published
            "source_sha256": file_hash(source),
            "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch_version": torch.__version__,
            "template_files_copied": copied,
        },
    )
    return report
