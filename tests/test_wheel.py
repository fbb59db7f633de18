"""The package works installed from a wheel (not editable), from a folder outside the repository.

The wheel is built from a copy of the source tree, installed into a fresh virtual environment that sees this
machine's dependencies (``--system-site-packages``, nothing is downloaded), and run without ``PYTHONPATH``: the
bundle templates, the metadata schema and the reduction presets must come from inside the installed package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO_ROOT

SOURCES = ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "MANIFEST.in", "monai_lessmore", "bundles", "configs")
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pt", "*.ckpt", "runs", "eval", "_data", "*.egg-info")


def _run(cmd, cwd, env, timeout=300):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd} exited {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(python, lessmore, env, workdir)`` of a venv holding the wheel built from this checkout."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO_ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=IGNORE)
        else:
            shutil.copy2(path, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_NO_INDEX"] = "1"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"),
          str(src)], root, env)
    (wheel,) = (root / "dist").glob("monai_lessmore-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], root, env)
    python, lessmore = venv / "bin" / "python", venv / "bin" / "lessmore"
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)], root, env)
    work = root / "elsewhere"
    work.mkdir()
    return {"wheel": wheel, "venv": venv, "python": python, "lessmore": lessmore, "env": env, "work": work}


def test_wheel_ships_templates_schema_and_presets_but_no_weights(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    for f in ("lessmore_ssl_pretrain/configs/train.json", "lessmore_hash6_resnet50/configs/inference.json",
              "lessmore_hash6_resnet50/LICENSE", "lessmore_classification/configs/train.json",
              "schemas/meta_schema_20220324.json"):
        assert f"monai_lessmore/_data/bundles/{f}" in names, f
    assert "monai_lessmore/_data/configs/reduction/hash6.yaml" in names
    assert "monai_lessmore/_data/configs/experiments/tiny.yaml" in names
    assert not [n for n in names if n.endswith((".pt", ".ckpt", ".pyc"))]


@pytest.mark.slow
def test_installed_wheel_runs_demo_and_import_checkpoint_outside_the_checkout(installed):
    py, env, work = str(installed["python"]), installed["env"], installed["work"]
    where = _run([py, "-c", "import monai_lessmore.resources as r; print(r.__file__); print(r.bundle_template("
                  "'lessmore_ssl_pretrain')); print(r.metadata_schema())"], work, env).split()
    venv = str(installed["venv"].resolve())
    assert all(p.startswith(venv) for p in where), where  # the package and its files, not the checkout

    out = _run([str(installed["lessmore"]), "demo", "--output", "demo", "--volumes", "1", "--pretrain-epochs", "1",
                "--no-progress"], work, env, timeout=600)
    encoder = work / "demo" / "pretrain" / "encoder.pt"
    assert encoder.is_file() and "skipped" not in out, out[-2000:]

    # the experiment recipes and the bundles' keys (its overrides are checked against them) come from the wheel
    res = subprocess.run([str(installed["lessmore"]), "experiment", "tiny", "--output", "exp", "--dry-run"], cwd=work,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"({venv}" in res.stderr and "pretrain/HASH-6: to run" in res.stderr and not (work / "exp").exists()

    _run([str(installed["lessmore"]), "import-checkpoint", str(encoder), "--bundle", "mybundle"], work, env)
    bundle = work / "mybundle"
    for f in ("configs/metadata.json", "configs/inference.json", "configs/logging.conf", "docs/README.md",
              "LICENSE", "large_files.yml", "models/model.pt", "models/conversion.json"):
        assert (bundle / f).is_file(), f
    assert json.loads((bundle / "models" / "conversion.json").read_text())["n_kept"] == 318
    # the copied bundle is a valid bundle: metadata against the shipped schema, network loads the weights
    _run([py, "-c", "import sys, monai.bundle as b, monai_lessmore.resources as r; "
          "b.verify_metadata(meta_file=sys.argv[1], filepath=str(r.metadata_schema())); "
          "b.verify_net_in_out(net_id='network', meta_file=sys.argv[1], config_file=sys.argv[2], device='cpu', "
          "bundle_root=sys.argv[3])",
          str(bundle / "configs" / "metadata.json"), str(bundle / "configs" / "inference.json"), str(bundle)],
         work, env)
