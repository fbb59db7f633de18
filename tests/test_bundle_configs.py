"""Every ``_target_`` of every shipped bundle config is a full dotted name that resolves to a callable."""

from __future__ import annotations

import json
import pydoc

import pytest

from tests.conftest import REPO_ROOT

CONFIG_FILES = sorted((REPO_ROOT / "bundles").glob("*/configs/*.json"))


def _targets(node):
    if isinstance(node, dict):
        if "_target_" in node:
            yield node["_target_"]
        for v in node.values():
            yield from _targets(v)
    elif isinstance(node, list):
        for v in node:
            yield from _targets(v)


def test_configs_are_found():
    assert {p.parent.parent.name for p in CONFIG_FILES} >= {
        "lessmore_ssl_pretrain", "lessmore_classification", "lessmore_hash6_resnet50"}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_targets_are_full_dotted_names_that_resolve(path):
    targets = sorted(set(_targets(json.loads(path.read_text()))))
    assert all(t.count(".") >= 2 for t in targets), targets
    unresolved = [t for t in targets if not callable(pydoc.locate(t))]
    assert not unresolved, f"{path}: {unresolved}"
