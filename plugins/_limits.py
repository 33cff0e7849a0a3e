"""Upper bounds the built-ins' ``Params`` checks share (with ``musicbench.api.check_number``).

Generous sanity caps, not tuning advice: a value past one is a typo or a unit mix-up (a
budget in samples where seconds were meant), never a setting anyone runs. They keep a config
from passing validation with a value that cannot mean anything (an L-inf radius past the
full-scale range), or that would only fail hours later (a 2^40-point FFT).
"""

from __future__ import annotations

MAX_LINF_EPS = 2.0  # a full-scale sample moved to the other rail: no bound at all beyond
MAX_L2_EPS = 10_000.0  # past the L2 norm of any clip a run can hold
MAX_STEPS = 1_000_000  # iterations, epochs, steps, restarts, searches
MAX_QUERIES = 1_000_000_000  # query budgets of black-box attacks
MAX_SIZE = 65_536  # sizes: FFT lengths, widths, channels, batch sizes, populations, chunks
MAX_SECONDS = 3_600.0  # durations
MAX_WEIGHT = 1e6  # loss weights, constants, margins
MAX_LEARNING_RATE = 10.0
