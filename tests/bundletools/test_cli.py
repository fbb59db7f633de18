"""``lessmore import-checkpoint`` / ``package-bundle`` / ``fetch-bundle``: exit codes and messages."""

from __future__ import annotations

import torch

from monai_lessmore.cli.main import main
from tests.bundletools.conftest import BUNDLE_NAME, copy_bundle


def test_import_package_fetch(authors_ckpt, encoder_state, tmp_path, capsys):
    bundle = copy_bundle(tmp_path / "src")
    assert main(["import-checkpoint", str(authors_ckpt), "--bundle", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "layout: SwAV (PyTorch Lightning); tensors in 'state_dict', encoder prefix 'model.'" in out
    assert "missing keys ['fc.bias', 'fc.weight'], unexpected keys []" in out

    assert main(["import-checkpoint", str(authors_ckpt), "--bundle", str(bundle)]) == 2
    assert "already exists; refusing to overwrite it. Pass --force" in capsys.readouterr().err
    assert main(["import-checkpoint", str(authors_ckpt), "--bundle", str(bundle), "--force"]) == 0
    capsys.readouterr()

    zip_path = tmp_path / "dist" / f"{BUNDLE_NAME}_v0.1.0.zip"
    assert main(["package-bundle", str(bundle), "--output", str(zip_path)]) == 0
    digest = zip_path.with_name(zip_path.name + ".sha256").read_text().split()[0]
    assert f"sha256: {digest}" in capsys.readouterr().out
    assert main(["package-bundle", str(bundle), "--output", str(zip_path)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err

    url = zip_path.as_uri()
    assert main(["fetch-bundle", url, "--name", BUNDLE_NAME, "--sha256", "0" * 64, "--bundle-dir", str(tmp_path / "dl")]) == 2
    assert "hash mismatch" in capsys.readouterr().err
    assert main(["fetch-bundle", url, "--name", BUNDLE_NAME, "--sha256", digest, "--bundle-dir", str(tmp_path / "dl")]) == 0
    state = torch.load(tmp_path / "dl" / BUNDLE_NAME / "models" / "model.pt", weights_only=True)
    assert torch.equal(state["layer4.2.conv3.weight"], encoder_state["layer4.2.conv3.weight"])


def test_import_errors(untrusted_ckpt, tmp_path, capsys):
    assert main(["import-checkpoint", str(untrusted_ckpt), "--bundle", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "lessmore import-checkpoint: error:" in err and "arbitrary code" in err and "--trust-pickle" in err
    assert main(["import-checkpoint", str(tmp_path / "none.ckpt"), "--bundle", str(tmp_path / "b")]) == 2
    assert "does not exist" in capsys.readouterr().err
    torch.save({"state_dict": {"head.weight": torch.zeros(2)}}, tmp_path / "other.ckpt")
    assert main(["import-checkpoint", str(tmp_path / "other.ckpt"), "--bundle", str(tmp_path / "b")]) == 2
    assert "is not a ResNet50 checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    assert main(["import-checkpoint", str(untrusted_ckpt), "--bundle", str(tmp_path / "b"), "--trust-pickle",
                 "--no-template"]) == 0
    assert sorted(p.name for p in (tmp_path / "b").rglob("*") if p.is_file()) == ["conversion.json", "model.pt"]
