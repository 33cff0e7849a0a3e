"""The public API for plugin authors: everything a plugin may import from musicbench.

``__all__`` lists exactly what is public and kept stable; anything else in ``musicbench`` (and
everything in ``musicbench_plugins``, the built-ins) may change without notice. The built-ins
import the helpers below from here too, so a third-party plugin can do whatever they do.

This module imports torch. A plugin's entry-point module, imported at every discovery, should
import only ``from musicbench import hookimpl`` (and this module under ``TYPE_CHECKING``), and
register its components by import string. docs/plugins.md section 6 describes every name.
"""

from __future__ import annotations

from musicbench.audio import BadAudioError, load_audio
from musicbench.budgets import check_snr_db, project_l2
from musicbench.checkpoints import load_module, save_module
from musicbench.datacache import (
    INT16_SCALE,
    atomic_folder,
    load_or_build,
    read_clip_cache,
    recipe_path,
    to_int16,
    write_clip_cache,
)
from musicbench.errors import (
    AttackContractError,
    ConfigError,
    GradientRefusedError,
    MusicbenchError,
    NotTrainedError,
    QueryBudgetExceededError,
)
from musicbench.hookspecs import hookimpl
from musicbench.interfaces import (
    DEFAULT_THREAT_MODEL,
    Attack,
    AttackResult,
    Bound,
    CellAudio,
    Component,
    Context,
    Dataset,
    Defense,
    Encoder,
    Example,
    Inpainter,
    Metric,
    NoParams,
    NullProgress,
    Preprocessor,
    Progress,
    SampleMetric,
    SetMetric,
    SetMetricResult,
    TargetModel,
    Task,
    Threat,
    ThreatModel,
    TrainingDefense,
    snr_radius,
)
from musicbench.metrics import snr_db
from musicbench.params import MAX_SEED, check_number, check_seed
from musicbench.plugins import PluginSystem
from musicbench.queries import Objective, remaining_budget, score_rows
from musicbench.registry import RegisterFn
from musicbench.training import TrainedModel, TrainedOnFirstUse
from musicbench.victim import Victim

__all__ = [
    # registering plugins
    "hookimpl",
    "RegisterFn",
    # the interfaces (musicbench.interfaces)
    "Attack",
    "AttackResult",
    "Bound",
    "Component",
    "Context",
    "Dataset",
    "Defense",
    "Encoder",
    "Example",
    "Inpainter",
    "Metric",
    "NoParams",
    "NullProgress",
    "Preprocessor",
    "Progress",
    "SampleMetric",
    "SetMetric",
    "SetMetricResult",
    "CellAudio",
    "TargetModel",
    "Task",
    "Threat",
    "ThreatModel",
    "DEFAULT_THREAT_MODEL",
    "TrainingDefense",
    # what attacks are given
    "Victim",
    # errors (musicbench.errors, musicbench.audio)
    "MusicbenchError",
    "ConfigError",
    "NotTrainedError",
    "AttackContractError",
    "GradientRefusedError",
    "QueryBudgetExceededError",
    "BadAudioError",
    # training on first use, weights on disk
    "TrainedOnFirstUse",
    "TrainedModel",
    "save_module",
    "load_module",
    # batched query scoring for black-box attacks
    "score_rows",
    "remaining_budget",
    "Objective",
    # range checks for Params.__post_init__
    "check_number",
    "check_seed",
    "MAX_SEED",
    # budgets and distances
    "snr_radius",
    "check_snr_db",
    "project_l2",
    "snr_db",
    # datasets: reading audio files, the on-disk clip cache
    "load_audio",
    "recipe_path",
    "load_or_build",
    "atomic_folder",
    "write_clip_cache",
    "read_clip_cache",
    "to_int16",
    "INT16_SCALE",
    # testing a plugin
    "PluginSystem",
]
