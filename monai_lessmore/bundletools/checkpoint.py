"""Read a pre-training checkpoint file without running code hidden in it, unless the user says they trust it.

The authors of Wolf et al. (2024) published their four SwAV ResNet50s as PyTorch Lightning ``.ckpt`` files
(github.com/Wolfda95/Less_is_More). Such a file is a pickle: besides the tensors of ``state_dict`` it holds the Lightning hyper-parameters
(``AttributeDict``), loop and callback states, and whatever else the training script saved. Unpickling arbitrary
objects can execute arbitrary code, which is why :func:`read_checkpoint` first uses
``torch.load(weights_only=True)`` (tensors and plain containers only). Lightning's ``AttributeDict`` -- a ``dict``
subclass with attribute access -- is the one non-plain object every Lightning checkpoint has; it is read as a plain
``dict`` under ``weights_only=True`` (no code of it runs). Anything else needs full unpickling, which is refused
unless ``trust_pickle=True``; then classes whose modules are not installed (e.g. ``pytorch_lightning``) are replaced by
inert placeholders so the tensors can still be read.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import re
import types
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "UntrustedCheckpointError", "read_checkpoint", "LIGHTNING_PLAIN_DICTS"]

logger = logging.getLogger(__name__)

#: Lightning's hyper-parameter container under its historical import paths: a ``dict`` subclass, read as ``dict``.
LIGHTNING_PLAIN_DICTS = (
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning.pytorch.utilities.parsing.AttributeDict",
)


class CheckpointError(ValueError):
    """A checkpoint file cannot be read; the message names the file and the problem."""


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint needs full unpickling (possible code execution) and the user did not say they trust it."""


class _Placeholder(dict):
    """Stands in for a class whose module is not installed; keeps whatever the pickle gives it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.__dict__["_args"] = args
        self.__dict__["_kwargs"] = kwargs

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state


class _TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            logger.info(f"checkpoint refers to {module}.{name}, which is not installed: using a placeholder")
            return type(name, (_Placeholder,), {"__module__": f"missing.{module}"})


# torch.load takes a module with ``Unpickler``/``load``; torch subclasses our Unpickler for its persistent ids
_tolerant_pickle = types.ModuleType("lessmore_tolerant_pickle")
_tolerant_pickle.__dict__.update({k: getattr(pickle, k) for k in dir(pickle) if not k.startswith("__")})
_tolerant_pickle.Unpickler = _TolerantUnpickler  # type: ignore[attr-defined]


def _lightning_dicts_allowed() -> contextlib.AbstractContextManager:
    # torch >= 2.5 can allow a global under another name; older torch reads only plain containers
    if not hasattr(torch.serialization, "safe_globals"):
        return contextlib.nullcontext()
    return torch.serialization.safe_globals([(dict, name) for name in LIGHTNING_PLAIN_DICTS])


def _unsafe_globals(path: Path, error: Exception) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # legacy (non-zip) files: fall back to the name in the error message
        return sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(error))))


def read_checkpoint(path: str | Path, *, trust_pickle: bool = False) -> Any:
    """Load a checkpoint with ``torch.load(weights_only=True)``; full unpickling only with ``trust_pickle``.

    Args:
        path: the checkpoint file (``.ckpt``, ``.pth``, ``.pt``).
        trust_pickle: allow full unpickling when the file holds objects other than tensors and plain containers.
            Unpickling can execute arbitrary code embedded in the file: pass it only for files from a source you
            trust (e.g. the authors' download links in their README).

    Returns:
        What the file holds (usually a dict), on the CPU.

    Raises:
        CheckpointError: the file is missing or not a torch checkpoint.
        UntrustedCheckpointError: the file needs full unpickling and ``trust_pickle`` is False; the message lists
            the objects that need it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (expected a .ckpt/.pth/.pt file)")
    try:
        with _lightning_dicts_allowed():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        weights_only_error = err
    except Exception as err:
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint ({type(err).__name__}: {str(err)[:300]}); "
            "expected a file written by torch.save, e.g. a PyTorch Lightning .ckpt"
        ) from err
    unsafe = _unsafe_globals(path, weights_only_error)
    if not trust_pickle:
        raise UntrustedCheckpointError(
            f"{path} cannot be read with torch.load(weights_only=True): besides tensors it pickles "
            f"{', '.join(unsafe[:10]) or 'objects that are not allowed'}{' ...' if len(unsafe) > 10 else ''}. "
            "Reading it needs full unpickling, which can execute arbitrary code embedded in the file. If you trust "
            "where the file comes from (e.g. the authors' download links), pass --trust-pickle "
            "(Python: trust_pickle=True); only the tensors are kept, and the bundle's models/model.pt is a plain "
            "state dict that loads with weights_only=True."
        )
    logger.warning(f"{path}: full unpickling (trust_pickle=True) because it holds {unsafe[:10]}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_tolerant_pickle)
    except Exception as err:
        raise CheckpointError(f"{path} could not be unpickled even with trust_pickle ({type(err).__name__}: {err})") from err
