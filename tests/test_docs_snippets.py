"""Every Python snippet of README.md and docs/*.md runs as written.

Each ```` ```python ```` block runs in a fresh namespace (with the imports of the page's earlier blocks), in a temporary
folder holding the files the docs name
(made here from the phantom: ``ct.nii.gz``, ``ct_001.nii.gz``, a DICOM series ``dicom/series_002`` of another
slice size, and ``bundles/lessmore_hash6_resnet50`` with random encoder weights). The names the prose around a
snippet introduces without defining them in code are given too: ``datalist`` (a list of volume items), ``volume_shw``
(an ``(S, H, W)`` HU array) and ``images`` (a ``(B, 3, 224, 224)`` batch in [0, 1]). After a snippet, every MONAI
``DataLoader`` it left behind is iterated once: a pipeline that only fails when batches are made fails here.

A snippet that cannot run here is preceded in the markdown by ``<!-- not-runnable: REASON -->`` and is skipped with
that reason.
"""

from __future__ import annotations

import ast
import os
import re
import shutil

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```", re.S | re.M)
_NOT_RUNNABLE = re.compile(r"<!--\s*not-runnable:\s*(.*?)\s*-->\s*$")


def _imports(code: str) -> str:
    """The import statements of ``code`` (a page reads top to bottom: later snippets use earlier imports)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return ""
    return "\n".join(ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))


def _snippets():
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        earlier = []
        for m in _BLOCK.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            reason = _NOT_RUNNABLE.search(before)
            marks = [pytest.mark.skip(reason=reason.group(1))] if reason else []
            code = "\n".join([*earlier, m.group(1)])
            yield pytest.param(doc, line, code, id=f"{doc.relative_to(REPO_ROOT)}:{line}", marks=marks)
            earlier.append(_imports(m.group(1)))


SNIPPETS = list(_snippets())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The files the docs name, written once for all snippets."""
    import nibabel as nib
    import torch

    from monai_lessmore.networks.resnet import ResNet50
    from monai_lessmore.phantom import make_phantom
    from tests.io.conftest import write_series

    root = tmp_path_factory.mktemp("docs")
    volume = make_phantom(40, 64, seed=1)  # (S, H, W) HU
    nifti = nib.Nifti1Image(np.ascontiguousarray(volume.transpose(2, 1, 0)).astype(np.int16),
                            np.diag([-1.0, -1.0, 2.0, 1.0]))
    for name in ("ct.nii.gz", "ct_001.nii.gz"):
        nib.save(nifti, root / name)
    write_series(root / "dicom" / "series_002", make_phantom(30, 48, seed=2).astype(np.int16))
    bundle = root / "bundles" / "lessmore_hash6_resnet50"
    shutil.copytree(REPO_ROOT / "bundles" / "lessmore_hash6_resnet50", bundle,
                    ignore=shutil.ignore_patterns("*.pt", "*.ckpt", "eval"))
    torch.manual_seed(0)
    encoder = {k: v for k, v in ResNet50().state_dict().items() if not k.startswith("fc.")}
    torch.save(encoder, bundle / "models" / "model.pt")
    return {"root": root, "volume": volume}


def test_snippets_are_found():
    assert any(doc.name == "README.md" for doc, *_ in (p.values for p in SNIPPETS))


@pytest.mark.slow  # builds a ResNet50, reads and reduces volumes: several seconds on two shared cores
@pytest.mark.parametrize("doc, line, code", SNIPPETS)
def test_snippet_runs(doc, line, code, workspace, monkeypatch):
    import torch
    from monai.data import DataLoader

    monkeypatch.chdir(workspace["root"])
    namespace = {
        "__name__": "__doc_snippet__",
        "datalist": [{"image": "ct_001.nii.gz"}, {"image": os.path.join("dicom", "series_002")}],
        "volume_shw": workspace["volume"],
        "images": torch.rand(2, 3, 224, 224),
    }
    exec(compile(code, f"{doc.relative_to(REPO_ROOT)}:{line}", "exec"), namespace)
    for name, value in namespace.items():
        if isinstance(value, DataLoader):
            next(iter(value)), name  # the first batch is where mismatched sizes fail
