"""The interfaces every plugin implements (docs/architecture.md, 'Plugin kinds').

Conventions: audio is ``Tensor[B, T]``, mono, float32, in [-1, 1], at the component's declared
``sample_rate``. Every component has ``name``, ``version`` (part of cache keys), a ``Params``
dataclass validated from config, and takes randomness only from a ``torch.Generator`` it is given.
"""

from musicbench.interfaces.attack import (
    DEFAULT_THREAT_MODEL,
    Attack,
    AttackResult,
    Bound,
    Threat,
    ThreatModel,
    snr_radius,
)
from musicbench.interfaces.component import Component, NoParams
from musicbench.interfaces.context import Context, NullProgress, Progress
from musicbench.interfaces.dataset import Dataset, Example, Task
from musicbench.interfaces.defense import Defense, Preprocessor, TrainingDefense
from musicbench.interfaces.encoder import Encoder
from musicbench.interfaces.inpainter import Inpainter
from musicbench.interfaces.metric import (
    CellAudio,
    Metric,
    SampleMetric,
    SetMetric,
    SetMetricResult,
)
from musicbench.interfaces.model import TargetModel

__all__ = [
    "Attack",
    "AttackResult",
    "Bound",
    "snr_radius",
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
]
