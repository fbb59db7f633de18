"""The package works installed from a wheel (not editable), from a folder outside the repository.

The wheel is built from a copy of the source tree, installed into a fresh virtual environment that sees the
dependencies of the interpreter running the tests (nothing is downloaded), and run without ``PYTHONPATH``: the
bundle templates, the metadata schema and the reduction presets must come from inside the installed package.

The new environment sees the running interpreter's site directories, not its base interpreter's: ``python -m venv
--system-site-packages`` run from inside a virtual environment exposes the *base* installation's packages, which
lack the dependencies when they were installed into the active environment (a venv, or a conda environment whose
base is another interpreter). See :func:`make_venv`.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SOURCES = ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "MANIFEST.in", "monai_lessmore", "bundles", "configs")
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pt", "*.ckpt", "runs", "eval", "_data", "*.egg-info")


def _run(cmd, cwd, env, timeout=300):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd} exited {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def missing_wheel_build_requirements() -> str | None:
    """What this interpreter lacks to build the wheel without build isolation (nothing may be downloaded), or None.

    pyproject.toml asks for setuptools>=61 and wheel; setuptools 70.1 and later build wheels without the ``wheel``
    package. A venv made by ``python -m venv`` on Python 3.11 gets ensurepip's setuptools 65 and no ``wheel``, and
    on 3.12 no setuptools at all.
    """
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    try:
        have = Version(version("setuptools"))
    except PackageNotFoundError:
        return "setuptools is not installed (pip install 'setuptools>=70.1')"
    if have < Version("61"):
        return f"setuptools {have} is older than 61 (pip install 'setuptools>=70.1')"
    if have < Version("70.1"):
        try:
            version("wheel")
        except PackageNotFoundError:
            return (f"setuptools {have} builds wheels only with the wheel package "
                    "(pip install wheel, or pip install 'setuptools>=70.1')")
    return None


#: the ``.pth`` file through which a venv made by :func:`make_venv` sees the running interpreter's site directories
PARENT_SITE_PTH = "_lessmore_parent_site.pth"


def parent_site_dirs() -> list[str]:
    """The running interpreter's site directories, in the order they appear on its ``sys.path``.

    ``site.getsitepackages()`` (in a venv made with ``--system-site-packages`` this lists the venv's and the base's)
    plus the user site directory when it is enabled. Directories that ``.pth`` files add are not listed: they are
    added again when the new venv processes those ``.pth`` files (see :func:`make_venv`).
    """
    candidates = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        candidates.append(site.getusersitepackages())
    on_path = [os.path.realpath(p) for p in sys.path]
    found = {os.path.realpath(c) for c in candidates if os.path.isdir(c)}
    ordered = []
    for p in on_path:  # sys.path order: the user site before the global one, a venv's before its base's
        if p in found and p not in ordered:
            ordered.append(p)
    return ordered


def make_venv(venv: Path, env: dict, site_dirs: list[str] | None = None) -> tuple[Path, Path]:
    """Create a venv without pip that imports its own packages first and the running interpreter's after them.

    The venv is made without ``--system-site-packages`` and gets one ``.pth`` file (:data:`PARENT_SITE_PTH`) that
    calls ``site.addsitedir`` on each directory of ``site_dirs``, the way ``--system-site-packages`` adds the base's
    site-packages: after the venv's own site-packages, with the ``.pth`` files of those directories processed (so a
    conda environment's or a venv's own ``.pth`` additions carry over). A package installed into the venv therefore
    wins over any copy the parent environment has: a regular install or an editable install's path entry comes
    later on ``sys.path``, and a PEP 660 editable finder (setuptools' ``__editable__`` ``.pth``) is appended to
    ``sys.meta_path``, after the path-based finder that finds the venv's copy.

    Args:
        venv: the folder to create.
        env: the environment to run ``venv`` in.
        site_dirs: the directories to expose; default :func:`parent_site_dirs`.

    Returns:
        ``(python, purelib)``: the venv's interpreter and its site-packages folder.
    """
    site_dirs = parent_site_dirs() if site_dirs is None else list(site_dirs)
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], venv.parent, env)
    python = venv / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], venv.parent,
                        env).strip())
    purelib.mkdir(parents=True, exist_ok=True)
    lines = [f"import site; site.addsitedir({d!r})" for d in site_dirs]
    (purelib / PARENT_SITE_PTH).write_text("\n".join(lines) + "\n")
    return python, purelib


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(python, lessmore, env, workdir)`` of a venv holding the wheel built from this checkout."""
    missing = missing_wheel_build_requirements()
    if missing:
        pytest.skip(f"cannot build the wheel offline in this environment ({sys.prefix}): {missing}")
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
    python, _ = make_venv(venv, env)
    lessmore = venv / "bin" / "lessmore"
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)], root, env)
    work = root / "elsewhere"
    work.mkdir()
    return {"wheel": wheel, "venv": venv, "python": python, "lessmore": lessmore, "env": env, "work": work}


def test_make_venv_sees_the_parent_site_but_imports_its_own_packages_first(tmp_path):
    """The venv finds the running interpreter's packages (nibabel here), ``.pth`` additions included, but a package
    installed into the venv wins over a parent's regular, path-entry editable and PEP 660 editable copies."""
    finder_template = getattr(pytest.importorskip("setuptools.command.editable_wheel"), "_finder_template", None)
    if finder_template is None:
        pytest.skip("this setuptools has no PEP 660 finder template")
    parent, extra, checkout, work = (tmp_path / n for n in ("parent", "extra", "checkout", "work"))
    for d in (parent, extra, work):
        d.mkdir()
    (extra / "dep_mod.py").write_text("WHERE = 'extra'\n")
    for pkg in ("shadowpkg", "finderonly", "compatpkg", "monai_lessmore"):
        (checkout / pkg).mkdir(parents=True)
        (checkout / pkg / "__init__.py").write_text("WHERE = 'checkout'\n")
    (parent / "nested.pth").write_text(f"{extra}\n")  # as a conda environment's or a venv's own .pth
    # a PEP 660 editable install as setuptools writes it (a meta-path finder), and a path-entry ("compat") one
    name = "__editable___shadowpkg_0_1_finder"
    mapping = {p: str(checkout / p) for p in ("shadowpkg", "finderonly")}
    (parent / f"{name}.py").write_text(finder_template(name, mapping, {}))
    (parent / "__editable__.shadowpkg-0.1.pth").write_text(f"import {name}; {name}.install()\n")
    (parent / "__editable__.compatpkg-0.1.pth").write_text(f"{checkout}\n")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    python, purelib = make_venv(tmp_path / "venv", env, site_dirs=parent_site_dirs() + [str(parent)])
    for pkg in ("shadowpkg", "compatpkg", "monai_lessmore"):  # what installing a wheel into the venv puts there
        (purelib / pkg).mkdir()
        (purelib / pkg / "__init__.py").write_text("WHERE = 'venv'\n")
    code = ("import json, sys, dep_mod, shadowpkg, finderonly, compatpkg, monai_lessmore, nibabel; "
            "print(json.dumps({m: sys.modules[m].WHERE for m in "
            "('dep_mod', 'shadowpkg', 'finderonly', 'compatpkg', 'monai_lessmore')}))")
    got = json.loads(_run([str(python), "-c", code], work, env))
    assert got == {"dep_mod": "extra", "shadowpkg": "venv", "finderonly": "checkout", "compatpkg": "venv",
                   "monai_lessmore": "venv"}, got


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
