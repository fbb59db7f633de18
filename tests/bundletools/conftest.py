"""Synthetic checkpoints with the real layouts of the authors' and other pre-training codes (no download, ever).

The layouts are facts from the public code (see :mod:`monai_lessmore.bundletools.convert`): the authors' SwAV Lightning
module keeps its network as ``self.model`` (pl_bolts-style ``swav_resnet``: ResNet50 + ``projection_head``
Linear-BN1d-ReLU-Linear 2048->2048->128 + ``prototypes`` Linear(128, 500, bias=False)), saved by Lightning as
``{"epoch", "global_step", "pytorch-lightning_version", "state_dict", "loops", "callbacks", "optimizer_states",
"lr_schedulers", "hparams_name", "hyper_parameters": AttributeDict}``.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT

BUNDLE_NAME = "lessmore_hash6_resnet50"
BUNDLE = REPO_ROOT / "bundles" / BUNDLE_NAME


@contextlib.contextmanager
def fake_modules(**classes: str):
    """Register importable modules for pickling (``pytorch_lightning``'s ``AttributeDict``, plus ``classes``:
    ``{class name: module name}``), and remove them afterwards, so loading later must cope without them."""
    made: dict[str, types.ModuleType] = {}

    def module(name: str) -> types.ModuleType:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            sub = ".".join(parts[:i])
            if sub not in sys.modules:
                made[sub] = sys.modules[sub] = types.ModuleType(sub)
        return sys.modules[name]

    parsing = module("pytorch_lightning.utilities.parsing")
    attribute_dict = type("AttributeDict", (dict,), {"__module__": parsing.__name__})
    parsing.AttributeDict = attribute_dict
    out = {"AttributeDict": attribute_dict}
    for cls_name, mod_name in classes.items():
        cls = type(cls_name, (), {"__module__": mod_name, "__init__": lambda self, **kw: self.__dict__.update(kw)})
        setattr(module(mod_name), cls_name, cls)
        out[cls_name] = cls
    try:
        yield out
    finally:
        for name in made:
            sys.modules.pop(name, None)


def random_encoder(seed: int = 6) -> dict[str, torch.Tensor]:
    """A ResNet50 encoder state dict (torchvision keys, no fc) with non-trivial BatchNorm statistics."""
    from monai_lessmore.networks.resnet import ResNet50

    torch.manual_seed(seed)
    state = {k: v for k, v in ResNet50().state_dict().items() if not k.startswith("fc.")}
    for k, v in state.items():
        if k.endswith("running_mean"):
            state[k] = torch.randn_like(v)
        elif k.endswith("running_var"):
            state[k] = torch.rand_like(v) + 0.5
        elif k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(1234)
        elif k.endswith("bn1.bias") or k.endswith("bn2.bias"):
            state[k] = torch.randn_like(v) * 0.01
    return state


def swav_head() -> dict[str, torch.Tensor]:
    """The SwAV projection head and prototypes of the authors' module (hidden 2048, output 128, 500 prototypes)."""
    return {
        "projection_head.0.weight": torch.randn(2048, 2048) * 0.01, "projection_head.0.bias": torch.zeros(2048),
        "projection_head.1.weight": torch.ones(2048), "projection_head.1.bias": torch.zeros(2048),
        "projection_head.1.running_mean": torch.zeros(2048), "projection_head.1.running_var": torch.ones(2048),
        "projection_head.1.num_batches_tracked": torch.tensor(10),
        "projection_head.3.weight": torch.randn(128, 2048) * 0.01, "projection_head.3.bias": torch.zeros(128),
        "prototypes.weight": torch.randn(500, 128),
    }


def lightning_swav_checkpoint(encoder: dict[str, torch.Tensor], attribute_dict: type, **extra) -> dict:
    """The authors' SwAV ``.ckpt`` layout: ``state_dict`` with ``model.``-prefixed encoder, head and prototypes."""
    state_dict = {f"model.{k}": v for k, v in {**encoder, **swav_head()}.items()}
    hparams = attribute_dict(gpus=1, dataset="petct", arch="resnet50", hidden_mlp=2048, feat_dim=128,
                             nmb_prototypes=500, nmb_crops=(2, 6), optimizer="lars", learning_rate=0.15)
    return {
        "epoch": 799, "global_step": 304800, "pytorch-lightning_version": "1.6.5",
        "state_dict": state_dict,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 800}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": None, "best_model_path": "x.ckpt"}},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.00015, "momentum": 0.9, "params": [0, 1]}]}],
        "lr_schedulers": [{"base_lrs": [0.15], "last_epoch": 304800, "lr_lambdas": [None]}],
        "hparams_name": "kwargs",
        "hyper_parameters": hparams,
        **extra,
    }


@pytest.fixture(scope="session")
def encoder_state() -> dict[str, torch.Tensor]:
    return random_encoder()


@pytest.fixture(scope="session")
def authors_ckpt(tmp_path_factory, encoder_state) -> Path:
    """The authors' PET-CT HASH-6 layout; only Lightning's AttributeDict besides tensors (reads with weights_only)."""
    path = tmp_path_factory.mktemp("ckpt") / "swav_petct_hash6.ckpt"
    with fake_modules() as cls:
        torch.save(lightning_swav_checkpoint(encoder_state, cls["AttributeDict"]), path)
    return path


@pytest.fixture(scope="session")
def untrusted_ckpt(tmp_path_factory, encoder_state) -> Path:
    """The same plus objects that need full unpickling: an argparse.Namespace and a class of a module that is gone."""
    path = tmp_path_factory.mktemp("ckpt") / "swav_with_objects.ckpt"
    with fake_modules(CallbackState="lessmore_gone.callbacks") as cls:
        ckpt = lightning_swav_checkpoint(encoder_state, cls["AttributeDict"], args=argparse.Namespace(lr=0.15),
                                         callback_state=cls["CallbackState"](patience=3))
        torch.save(ckpt, path)
    return path


def copy_bundle(dest: Path) -> Path:
    """A copy of the repository's bundle (weights are never written into the repository)."""
    target = dest / BUNDLE_NAME
    shutil.copytree(BUNDLE, target)
    return target


@pytest.fixture(scope="session")
def converted_bundle(tmp_path_factory, authors_ckpt) -> Path:
    """A copy of the bundle whose models/model.pt was converted from :func:`authors_ckpt`."""
    from monai_lessmore.bundletools.convert import import_checkpoint

    bundle = copy_bundle(tmp_path_factory.mktemp("bundle"))
    import_checkpoint(authors_ckpt, bundle)
    return bundle


@pytest.fixture(scope="session")
def slice_files(tmp_path_factory) -> list[str]:
    """Three small grayscale PNG slices."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("slices")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        p = root / f"slice_{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 48), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths
