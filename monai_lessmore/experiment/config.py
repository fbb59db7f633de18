"""The recipe of an experiment: a YAML file (or a shipped preset) read, checked and resolved in one place.

A recipe names the pre-training data, the SSL method and its bundle overrides, the reductions to compare and the
downstream tasks with their overrides of the classification bundle::

    name: my-run
    data_root: /data                      # ${data_root} in any string below; --data-root replaces it
    seed: 0
    backbone: resnet50                    # torchvision ResNet of pre-training and fine-tuning (default resnet50)
    pretrain:
      data: ${data_root}/ct               # folder of CT volumes (recursive), or {generate: phantom, ...}
      method: swav                        # swav | moco | spark
      overrides: {max_epochs: 100}        # keys of lessmore_ssl_pretrain/configs/train.json
    reductions:
      - {name: ALL, config: {method: none}}
      - {name: HASH-6, config: hash6}     # a preset of configs/reduction, a file, or reducer arguments
      - {name: ALL-iters, config: {method: none}, match_iterations: HASH-6}   # ALL for HASH-6's iterations
    compare: [[HASH-6, ALL]]              # paired per-seed differences (default: each reduction - the first)
    downstream:
      baseline: true                      # the random-initialisation row first, as the paper's Table 3
      tasks:
        - name: COVID-CT
          overrides: {dataset: covid_ct, data_root: "${data_root}/covid_ct", num_runs: 5}

``match_iterations: NAME`` makes a compute-matched control: the row pre-trains on its own kept slices with the
epoch length (iterations per epoch) of the earlier reduction ``NAME``, so with the same epochs it runs ``NAME``'s
iterations under ``NAME``'s learning-rate schedule, iteration for iteration.

Relative paths are relative to the folder the command runs in (not to the recipe file).
Shipped presets live in ``configs/experiments`` (``tiny``, ``cpu-small``, ``cpu-long``, ``paper``);
:func:`load_experiment` accepts a preset name or a file. Unknown keys, a bad method, duplicate names or a reduction
config that is not a valid preset are reported with the file and the key, before anything runs.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ExperimentError", "load_experiment", "experiment_presets", "METHODS", "GENERATORS"]

#: SSL methods of the pre-training bundle and the config files merged after train.json for each
METHODS = {"swav": (), "moco": ("train_moco.json",), "spark": ("train_spark.json",)}
#: built-in data generators (no external data): the phantom volumes and a labelled phantom task
GENERATORS = ("phantom", "phantom_regions")
#: their arguments (:func:`monai_lessmore.phantom.write_phantom_dataset`, ``write_phantom_classification``)
GENERATOR_ARGS = {"phantom": ("volumes", "slices", "size", "seed"), "phantom_regions": ("per_split", "size", "seed")}
_TOP = {"name", "description", "data_root", "seed", "backbone", "pretrain", "reductions", "compare", "downstream"}
_PRETRAIN = {"data", "method", "overrides"}
_REDUCTION = {"name", "config", "match_iterations"}
_DOWNSTREAM = {"baseline", "tasks", "overrides"}
_TASK = {"name", "overrides", "data"}
_SUFFIXES = (".yaml", ".yml", ".json")
_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")
#: recipe, reduction and task names: they name folders
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


class ExperimentError(ValueError):
    """A recipe that cannot run: the message names the file and the key, and says what to change."""


def _presets_dir() -> Path:
    from monai_lessmore.resources import configs_dir

    return configs_dir() / "experiments"


def experiment_presets() -> list[str]:
    """Names of the shipped experiment recipes (``configs/experiments/*.yaml``)."""
    folder = _presets_dir()
    return sorted(p.stem for p in folder.iterdir() if p.suffix in _SUFFIXES) if folder.is_dir() else []


def _recipe_path(recipe: str | os.PathLike) -> Path:
    path = Path(recipe)
    if path.is_file():
        return path
    text = os.fspath(recipe)
    if os.sep in text or "/" in text or path.suffix in _SUFFIXES:
        raise ExperimentError(f"experiment file {text} does not exist; give a YAML file or one of {experiment_presets()}")
    for candidate in sorted(_presets_dir().iterdir()) if _presets_dir().is_dir() else []:
        if candidate.suffix in _SUFFIXES and candidate.stem == text:
            return candidate
    raise ExperimentError(f"no experiment preset {text!r}: give a YAML file or one of {experiment_presets()}")


def _check_keys(where: str, value: Any, allowed: set[str], source: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ExperimentError(f"{source}: {where} must be a mapping, got {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise ExperimentError(f"{source}: unknown keys {unknown} in {where}; allowed: {sorted(allowed)}")
    return dict(value)


def _substitute(value: Any, variables: Mapping[str, str], source: str) -> Any:
    """``${name}`` in every string replaced by ``variables[name]`` (recursively)."""
    if isinstance(value, str):
        def repl(m: re.Match) -> str:
            if m.group(1) not in variables:
                raise ExperimentError(f"{source}: unknown placeholder ${{{m.group(1)}}}; known: ['data_root']")
            return variables[m.group(1)]

        return _PLACEHOLDER.sub(repl, value)
    if isinstance(value, Mapping):
        return {k: _substitute(v, variables, source) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, variables, source) for v in value]
    return value


def _check_data(where: str, data: Any, source: str, generators: tuple[str, ...]) -> Any:
    if isinstance(data, str):
        return data
    if isinstance(data, Mapping) and data.get("generate") in generators:
        return _check_keys(where, data, {"generate", *GENERATOR_ARGS[data["generate"]]}, source)
    raise ExperimentError(f"{source}: {where} must be a folder path or {{generate: {' | '.join(generators)}, ...}}, "
                          f"got {data!r}")


def _check_compare(compare: Any, names: list[str], source: str) -> list[list[str]]:
    """The paired comparisons ``[[A, B], ...]`` (A - B per seed); default: every reduction against the first."""
    if compare is None:
        return [[name, names[0]] for name in names[1:]]
    pairs = []
    if isinstance(compare, list):
        for pair in compare:
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(n, str) for n in pair)):
                break
            unknown = [n for n in pair if n not in names]
            if unknown:
                raise ExperimentError(f"{source}: compare names {unknown}, which are not reductions of the recipe "
                                      f"({names})")
            if pair[0] == pair[1]:
                raise ExperimentError(f"{source}: compare pairs {pair[0]} with itself")
            pairs.append(list(pair))
        else:
            return pairs
    raise ExperimentError(f"{source}: compare must be a list of [A, B] pairs of reduction names (A - B per seed), "
                          f"got {compare!r}")


def load_experiment(recipe: str | os.PathLike | Mapping[str, Any], *, data_root: str | None = None) -> dict[str, Any]:
    """Read, check and resolve a recipe.

    Args:
        recipe: a YAML/JSON file, the name of a shipped preset (``tiny``, ``cpu-small``, ``cpu-long``, ``paper``) or
            a mapping.
        data_root: replaces the recipe's ``data_root`` (the value of ``${data_root}``).

    Returns:
        The resolved recipe: placeholders substituted, every reduction's reducer arguments resolved from its preset
        (``reductions[i]["reducer"]``), defaults filled in, ``source`` naming where it came from.

    Raises:
        ExperimentError: anything that would make the run fail later; the message names the key.
    """
    if isinstance(recipe, Mapping):
        raw, source = copy.deepcopy(dict(recipe)), "experiment"
    else:
        path = _recipe_path(recipe)
        source = str(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ExperimentError(f"experiment file {source} is not valid YAML: {err}") from err
    cfg = _check_keys("the recipe", raw, _TOP, source)
    if data_root is not None:
        cfg["data_root"] = data_root
    variables = {} if cfg.get("data_root") is None else {"data_root": str(cfg["data_root"])}
    try:
        cfg = _substitute(cfg, variables, source)
    except ExperimentError as err:
        if "${data_root}" in str(err):
            raise ExperimentError(f"{source} uses ${{data_root}}: give --data-root DIR (the folder holding its data)"
                                  ) from None
        raise
    cfg["source"] = source
    cfg["name"] = str(cfg.get("name") or Path(source).stem)
    if not _NAME.fullmatch(cfg["name"]):
        raise ExperimentError(f"{source}: name must be a short name of letters, digits, '.', '_', '+', '-' (it names "
                              f"the default output folder), got {cfg['name']!r}")
    if isinstance(cfg.get("seed", 0), bool) or not isinstance(cfg.get("seed", 0), int):
        raise ExperimentError(f"{source}: seed must be an integer, got {cfg.get('seed')!r}")
    cfg["seed"] = int(cfg.get("seed", 0))
    from monai_lessmore.networks.resnet import ARCHITECTURES

    cfg["backbone"] = cfg.get("backbone") or "resnet50"
    if cfg["backbone"] not in ARCHITECTURES:
        raise ExperimentError(f"{source}: backbone must be one of torchvision's ResNets {sorted(ARCHITECTURES)}, got "
                              f"{cfg['backbone']!r}")

    pre = _check_keys("pretrain", cfg.get("pretrain", {}), _PRETRAIN, source)
    if "data" not in pre:
        raise ExperimentError(f"{source}: pretrain.data is missing: a folder of CT volumes or {{generate: phantom}}")
    pre["data"] = _check_data("pretrain.data", pre["data"], source, ("phantom",))
    pre.setdefault("method", "swav")
    if pre["method"] not in METHODS:
        raise ExperimentError(f"{source}: pretrain.method must be one of {sorted(METHODS)}, got {pre['method']!r}")
    if pre["method"] == "spark" and cfg["backbone"] != "resnet50":
        raise ExperimentError(f"{source}: backbone {cfg['backbone']} with pretrain.method spark: SparK's decoder is "
                              "built on ResNet50; use backbone resnet50 or method swav / moco")
    if not isinstance(pre.get("overrides") or {}, Mapping):
        raise ExperimentError(f"{source}: pretrain.overrides must be a mapping of bundle config keys")
    pre["overrides"] = dict(pre.get("overrides") or {})
    cfg["pretrain"] = pre

    from monai_lessmore.reduction.presets import load_reduction_config

    reductions = cfg.get("reductions")
    if not isinstance(reductions, list) or not reductions:
        raise ExperimentError(f"{source}: reductions must be a non-empty list of {{name, config}}")
    seen: set[str] = set()
    resolved = []
    for i, red in enumerate(reductions):
        red = _check_keys(f"reductions[{i}]", red, _REDUCTION, source)
        name = str(red.get("name", ""))
        if not _NAME.fullmatch(name):
            raise ExperimentError(f"{source}: reductions[{i}].name must be a short name of letters, digits, '.', '_', "
                                  f"'+', '-' (it names a folder), got {name!r}")
        if name in seen:
            raise ExperimentError(f"{source}: reduction name {name!r} appears twice")
        seen.add(name)
        if "config" not in red:
            raise ExperimentError(f"{source}: reductions[{i}] ({name}) has no config: a preset "
                                  "(hash6, everyn10, ...), a file, or reducer arguments such as {method: none}")
        try:
            reducer = load_reduction_config(red["config"])
        except (ValueError, FileNotFoundError) as err:
            raise ExperimentError(f"{source}: reductions[{i}] ({name}): {err}") from err
        entry = {"name": name, "config": red["config"], "reducer": reducer}
        if red.get("match_iterations") is not None:
            target = red["match_iterations"]
            earlier = {r["name"]: r for r in resolved}
            if target not in earlier:
                raise ExperimentError(f"{source}: reductions[{i}] ({name}): match_iterations must name a reduction "
                                      f"listed before it, one of {sorted(earlier)}; got {target!r}")
            if "match_iterations" in earlier[target]:
                raise ExperimentError(f"{source}: reductions[{i}] ({name}): match_iterations names {target}, which "
                                      "matches another reduction itself; name the reduction it matches")
            entry["match_iterations"] = str(target)
        resolved.append(entry)
    cfg["reductions"] = resolved
    cfg["compare"] = _check_compare(cfg.get("compare"), [r["name"] for r in resolved], source)

    down = _check_keys("downstream", cfg.get("downstream") or {}, _DOWNSTREAM, source)
    if not isinstance(down.get("baseline", True), bool):
        raise ExperimentError(f"{source}: downstream.baseline must be true or false, got {down['baseline']!r}")
    down["baseline"] = down.get("baseline", True)
    down["overrides"] = dict(down.get("overrides") or {})
    tasks = down.get("tasks") or []
    if not isinstance(tasks, list):
        raise ExperimentError(f"{source}: downstream.tasks must be a list of {{name, overrides}}")
    names: set[str] = set()
    checked = []
    for i, task in enumerate(tasks):
        task = _check_keys(f"downstream.tasks[{i}]", task, _TASK, source)
        name = str(task.get("name", ""))
        if not _NAME.fullmatch(name) or name in names:
            raise ExperimentError(f"{source}: downstream.tasks[{i}].name must be a unique short name, got {name!r}")
        names.add(name)
        if "data" in task:
            task["data"] = _check_data(f"downstream.tasks[{i}].data", task["data"], source, ("phantom_regions",))
        task["overrides"] = {**down["overrides"], **dict(task.get("overrides") or {})}
        checked.append(task)
    down["tasks"] = checked
    cfg["downstream"] = down
    return cfg

