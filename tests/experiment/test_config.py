"""Recipes: presets resolve, every bad key or value is refused with the file and the key named."""

from __future__ import annotations

import pytest
import yaml

from monai_lessmore.experiment import ExperimentError, experiment_presets, load_experiment


def _recipe(**changes):
    base = {
        "name": "t",
        "data_root": "/data",
        "pretrain": {"data": "${data_root}/ct", "method": "swav", "overrides": {"max_epochs": 1}},
        "reductions": [{"name": "ALL", "config": {"method": "none"}}, {"name": "HASH-6", "config": "hash6"}],
        "downstream": {"overrides": {"num_runs": 1},
                       "tasks": [{"name": "COVID-CT", "overrides": {"data_root": "${data_root}/covid_ct"}}]},
    }
    base.update(changes)
    return base


def test_shipped_presets_resolve():
    assert {"tiny", "cpu-small", "cpu-long", "paper"} <= set(experiment_presets())
    for name in experiment_presets():
        recipe = load_experiment(name, data_root="/data")
        assert recipe["name"] == name
        assert [r["name"] for r in recipe["reductions"]][0] == "ALL"
        assert recipe["reductions"][0]["reducer"] == {"method": "none"}
    paper = load_experiment("paper", data_root="/data")
    assert paper["pretrain"]["data"] == "/data/pretrain"
    assert {r["name"] for r in paper["reductions"]} == {"ALL", "EveryN-10", "HASH-3", "HASH-6", "HASH-12", "SSIM-10",
                                                        "MI-10", "DeepNet-10"}
    assert paper["pretrain"]["overrides"] == {"progress_bar": False}  # the bundle's defaults are the paper's
    assert paper["backbone"] == "resnet50"


def test_cpu_long_has_the_compute_matched_row_and_the_paired_comparisons():
    recipe = load_experiment("cpu-long", data_root="/data")
    assert recipe["backbone"] == "resnet18"
    assert [r["name"] for r in recipe["reductions"]] == ["ALL", "HASH-6", "EveryN-10", "ALL-iters-HASH-6"]
    matched = recipe["reductions"][3]
    assert matched["match_iterations"] == "HASH-6" and matched["reducer"] == {"method": "none"}
    assert ["HASH-6", "ALL"] in recipe["compare"] and ["HASH-6", "ALL-iters-HASH-6"] in recipe["compare"]
    overrides = recipe["downstream"]["tasks"][0]["overrides"]
    assert overrides["num_runs"] >= 3 and overrides["freeze_epochs"] == overrides["max_epochs"]  # a linear probe


def test_placeholders_presets_and_task_overrides_are_resolved():
    recipe = load_experiment(_recipe(), data_root="/elsewhere")
    assert recipe["pretrain"]["data"] == "/elsewhere/ct"
    assert recipe["reductions"][1]["reducer"] == {"method": "hash", "threshold": 6, "algorithm": "leader"}
    task = recipe["downstream"]["tasks"][0]
    assert task["overrides"] == {"num_runs": 1, "data_root": "/elsewhere/covid_ct"}  # shared overrides merged in
    assert recipe["downstream"]["baseline"] is True and recipe["seed"] == 0
    assert recipe["compare"] == [["HASH-6", "ALL"]]  # default: every reduction against the first
    assert recipe["backbone"] == "resnet50" and "match_iterations" not in recipe["reductions"][1]


def test_a_recipe_file_is_read(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(_recipe(name=None) | {"name": "mine"}))
    assert load_experiment(path)["source"] == str(path)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"epochs": 3}, r"unknown keys \['epochs'\] in the recipe"),
        ({"pretrain": {"data": "/d", "method": "simclr"}}, r"pretrain.method must be one of \['moco', 'spark', 'swav'\]"),
        ({"pretrain": {"method": "swav"}}, r"pretrain.data is missing"),
        ({"pretrain": {"data": {"generate": "lidc"}}}, r"pretrain.data must be a folder path or \{generate: phantom"),
        ({"reductions": []}, r"reductions must be a non-empty list"),
        ({"reductions": [{"name": "A", "config": "hash6"}, {"name": "A", "config": "hash3"}]}, r"'A' appears twice"),
        ({"reductions": [{"name": "bad/name", "config": "hash6"}]}, r"names a folder"),
        ({"reductions": [{"name": "X", "config": "hash7"}]}, r"reductions\[0\] \(X\): no reduction preset 'hash7'"),
        ({"reductions": [{"name": "X", "config": {"method": "hash", "thresh": 6}}]}, r"unknown keys \['thresh'\]"),
        ({"reductions": [{"name": "X"}]}, r"reductions\[0\] \(X\) has no config"),
        ({"downstream": {"tasks": [{"name": "a"}, {"name": "a"}]}}, r"tasks\[1\].name must be a unique short name"),
        ({"downstream": {"task": []}}, r"unknown keys \['task'\] in downstream"),
        ({"pretrain": {"data": "${root}/ct"}}, r"unknown placeholder \$\{root\}"),
        ({"pretrain": {"data": {"generate": "phantom", "n": 2}}}, r"unknown keys \['n'\] in pretrain.data"),
        ({"reductions": [{"name": "A", "config": "hash6", "match_iterations": "B"}, {"name": "B", "config": "hash6"}]},
         r"reductions\[0\] \(A\): match_iterations must name a reduction listed before it, one of \[\]; got 'B'"),
        ({"reductions": [{"name": "A", "config": "hash6"}, {"name": "B", "config": "hash6", "match_iterations": "A"},
                         {"name": "C", "config": "hash6", "match_iterations": "B"}]},
         r"reductions\[2\] \(C\): match_iterations names B, which matches another reduction itself"),
        ({"compare": [["HASH-6", "EveryN"]]}, r"compare names \['EveryN'\], which are not reductions"),
        ({"compare": [["HASH-6", "HASH-6"]]}, r"compare pairs HASH-6 with itself"),
        ({"compare": ["HASH-6", "ALL"]}, r"compare must be a list of \[A, B\] pairs"),
        ({"backbone": "vgg16"}, r"backbone must be one of torchvision's ResNets \['resnet101'.*got 'vgg16'"),
        ({"backbone": "resnet18", "pretrain": {"data": "/d", "method": "spark"}},
         r"backbone resnet18 with pretrain.method spark: SparK's decoder is built on ResNet50"),
    ],
)
def test_bad_recipes_are_refused_naming_the_key(changes, message):
    with pytest.raises(ExperimentError, match=message):
        load_experiment(_recipe(**changes))


def test_a_recipe_using_data_root_needs_one():
    with pytest.raises(ExperimentError, match=r"uses \$\{data_root\}: give --data-root DIR"):
        load_experiment("cpu-small")
    assert load_experiment("tiny")["pretrain"]["data"]["generate"] == "phantom"  # no data_root needed


@pytest.mark.parametrize("changes, message", [
    ({"seed": "zero"}, r"seed must be an integer, got 'zero'"),
    ({"name": "my run/1"}, r"name must be a short name"),
    ({"downstream": {"baseline": "false"}}, r"downstream.baseline must be true or false, got 'false'"),
])
def test_bad_values_are_refused(changes, message):
    with pytest.raises(ExperimentError, match=message):
        load_experiment(_recipe(**changes))


def test_unknown_preset_and_missing_file():
    with pytest.raises(ExperimentError, match=r"no experiment preset 'huge'.*cpu-small"):
        load_experiment("huge")
    with pytest.raises(ExperimentError, match=r"experiment file /no/such.yaml does not exist"):
        load_experiment("/no/such.yaml")
