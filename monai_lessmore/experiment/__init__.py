"""The paper's experiment as one command (``lessmore experiment RECIPE``): reduce, pre-train, fine-tune, tabulate.

:mod:`~monai_lessmore.experiment.config` reads a recipe (``configs/experiments/*.yaml``),
:mod:`~monai_lessmore.experiment.runner` runs its stages resumably through the two bundles, and
:mod:`~monai_lessmore.experiment.tables` writes ``results.csv``, ``results.md`` and the AUC plot.
"""

from monai_lessmore.experiment.config import ExperimentError, experiment_presets, load_experiment
from monai_lessmore.experiment.runner import ExperimentRunner

__all__ = ["ExperimentError", "ExperimentRunner", "experiment_presets", "load_experiment"]
