"""Build script: the metadata is in setup.cfg; this adds the shipped data files to the built package.

The bundle templates (``bundles/``) and the reduction presets (``configs/``) stay top-level folders of the source
tree, where users read and edit them. When a wheel is built they are copied into ``monai_lessmore/_data/``, where
:mod:`monai_lessmore.resources` finds them through ``importlib.resources``. An editable install copies nothing
and reads the source folders directly.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
DATA_FOLDERS = ("bundles", "configs")
#: run outputs, caches and weights never ship: a bundle's weights come from import-checkpoint or a download
SKIP_DIRS = {"__pycache__", ".ipynb_checkpoints", "runs", "eval", ".git"}
SKIP_SUFFIXES = (".pt", ".pth", ".ckpt", ".ts", ".pyc", ".tmp", ".zip")


def data_files(root: Path) -> list[Path]:
    """Files under ``root`` that ship in the package (relative paths, sorted)."""
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or SKIP_DIRS & set(rel.parts) or path.name.endswith(SKIP_SUFFIXES):
            continue
        files.append(rel)
    return files


class BuildPyWithData(build_py):
    """``build_py`` that also copies ``bundles/`` and ``configs/`` into ``monai_lessmore/_data/`` of the build."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # the editable package reads the source folders
        for folder in DATA_FOLDERS:
            src = HERE / folder
            if not src.is_dir():
                raise FileNotFoundError(f"{src} is missing: build from a complete source tree (or its sdist)")
            for rel in data_files(src):
                dest = Path(self.build_lib) / "monai_lessmore" / "_data" / folder / rel
                self.mkpath(str(dest.parent))
                self.copy_file(str(src / rel), str(dest))


setup(cmdclass={"build_py": BuildPyWithData})
