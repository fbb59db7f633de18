"""read_checkpoint: weights_only first, Lightning's AttributeDict as a dict, full unpickling only when trusted."""

from __future__ import annotations

import argparse

import pytest
import torch

from monai_lessmore.bundletools.checkpoint import CheckpointError, UntrustedCheckpointError, read_checkpoint
from tests.bundletools.conftest import fake_modules


def test_plain_state_dict(tmp_path):
    torch.save({"conv1.weight": torch.ones(2, 3)}, tmp_path / "a.pt")
    assert torch.equal(read_checkpoint(tmp_path / "a.pt")["conv1.weight"], torch.ones(2, 3))


def test_lightning_attribute_dict_reads_without_trust(tmp_path):
    with fake_modules() as cls:
        torch.save({"state_dict": {"model.x": torch.zeros(1)}, "hyper_parameters": cls["AttributeDict"](lr=0.15)},
                   tmp_path / "l.ckpt")
    obj = read_checkpoint(tmp_path / "l.ckpt")  # pytorch_lightning is not installed: read as a plain dict
    assert type(obj["hyper_parameters"]) is dict and obj["hyper_parameters"] == {"lr": 0.15}


def test_full_unpickling_needs_trust(tmp_path):
    with fake_modules(State="lessmore_gone.mod") as cls:
        torch.save({"state_dict": {"w": torch.ones(1)}, "ns": argparse.Namespace(a=1), "s": cls["State"](k=2)},
                   tmp_path / "u.ckpt")
    with pytest.raises(UntrustedCheckpointError, match=r"weights_only=True.*argparse\.Namespace.*arbitrary code.*--trust-pickle"):
        read_checkpoint(tmp_path / "u.ckpt")
    obj = read_checkpoint(tmp_path / "u.ckpt", trust_pickle=True)
    assert torch.equal(obj["state_dict"]["w"], torch.ones(1))
    assert obj["ns"].a == 1  # importable classes are the real ones
    assert type(obj["s"]).__module__ == "missing.lessmore_gone.mod"  # the missing module becomes a placeholder


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.ckpt")
    (tmp_path / "g.ckpt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="g.ckpt is not a readable torch checkpoint"):
        read_checkpoint(tmp_path / "g.ckpt")
