"""musicbench: adversarial robustness benchmark for music models.

The core harness lives here; built-in plugins live in :mod:`musicbench_plugins` and are
discovered through the ``musicbench`` entry-point group like any third-party package.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("musicbench")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

RESULTS_VERSION = "6"
"""Version of the harness's result-bearing code (scoring, re-scoring, metrics, FAD; the modules
in :data:`musicbench.sources.CORE_MODULES`). It is part of every cell key: bump it when a
change to that code changes results. 2: FAD over every attacked clip, exact intervals.
3: clean clips judged once per (dataset, model, defense) over eval_draws; pseudo-label clean
accuracy = agreement with the undefended top-1; success judged over eval_draws.
4: under EOT an attack's early-stop margin is the largest over draws; black-box attacks get
EOT only from their own entry; defense flags measured on real clips too.
5: every batch of clips draws from its own streams (seeded by the cell's and the batch's first
position) instead of streams continued across batches, so a cell split into clip shards gives
the unsharded records; set metrics under a randomized defense draw from their own stream.
6: intervals of clips that share a work are clustered by work (Korn-Graubard; the means'
bootstrap resamples works); black-box attacks get the defense's EOT draws by default, and
``score_rows``' margin objective is the margin of the draw-averaged scores."""

__all__ = ["__version__", "RESULTS_VERSION"]

from musicbench.hookspecs import hookimpl  # noqa: E402  (the one name plugin authors need)

__all__ += ["hookimpl"]
