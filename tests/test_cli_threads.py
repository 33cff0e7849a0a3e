"""The CLI gives numpy's OpenBLAS one thread (its spinning threads otherwise take the cores
torch computes on) before numpy is imported, unless the user chose a number."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import os, sys
sys.argv = ["musicbench", "list", "attack"]
from musicbench import cli
assert "numpy" not in sys.modules, "the CLI imported numpy before it set the thread count"
try:
    cli.main()
except SystemExit:
    pass
print("OPENBLAS_NUM_THREADS=" + os.environ.get("OPENBLAS_NUM_THREADS", "unset"))
"""


@pytest.mark.parametrize("given, expected", [(None, "1"), ("3", "3")])
def test_the_cli_sets_numpys_blas_threads_unless_the_user_did(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if given is not None:
        env["OPENBLAS_NUM_THREADS"] = given
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == f"OPENBLAS_NUM_THREADS={expected}"


def test_the_setting_is_a_default_only():
    from musicbench.cli import limit_numpy_blas_threads

    env: dict[str, str] = {}
    limit_numpy_blas_threads(env)
    assert env == {"OPENBLAS_NUM_THREADS": "1"}
    env = {"OPENBLAS_NUM_THREADS": "8"}
    limit_numpy_blas_threads(env)
    assert env == {"OPENBLAS_NUM_THREADS": "8"}
