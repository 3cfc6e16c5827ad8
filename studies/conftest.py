"""What the tests of the studies and of the experiment share: the repository's root, the float64
switch, a CPU environment for a program run in a subprocess, a Kolmogorov-Smirnov statistic, and
the `slow` marker. (test_maml.py, beside maml.py at the top, stands alone: a copy-paste user takes
the two files together.)

`python -m pytest -m "not slow"` runs the claims about the code; the slow tests train or build
whole programs, the site or several runs."""
import math
import os
import re
from pathlib import Path

import jax
import numpy as np
import pytest

try:  # jax.enable_x64 is recent; older jax has only jax.experimental.enable_x64
    from jax import enable_x64
except ImportError:
    from jax.experimental import enable_x64

ROOT = Path(__file__).resolve().parent.parent  # the repository: every program runs from here
# How long a test waits for a program it starts before calling it hung: a bound on a hang, never
# a measure of speed, so that no test fails because the machine is busy. Half an hour is some 35
# times the README's `python maml.py` alone (50,000 steps in 52 s, figures/maml.txt), the
# longest program the tests start; one stuck for good fails its test instead of holding the
# suite for ever.
HANG_S = 1800


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains, builds or runs whole programs (minutes); "
                            "-m 'not slow' leaves them out")
    # In this process XLA compiles with most of its optimisations off: the claims here are about
    # what a program computes, and optimising a second-order program costs more than running it
    # (a third of the fast subset's time). The programs that the slow tests start, and the
    # committed results, run optimised, as a user's do.
    jax.config.update("jax_disable_most_optimizations", True)
    # What XLA compiles here is kept in pytest's own cache folder (.pytest_cache, which git
    # ignores; none under -p no:cacheprovider, as in CI), so a rerun loads it instead of
    # compiling again (the quick subset in half the time). Its key holds the program, the
    # options and the versions: a changed program or another jax compiles anew, and
    # `pytest --cache-clear` empties it.
    cache = getattr(config, "cache", None)
    if cache is not None:  # its folder: mkdir from pytest 7, makedir before
        folder = cache.mkdir("xla") if hasattr(cache, "mkdir") else cache.makedir("xla")
        jax.config.update("jax_compilation_cache_dir", str(folder))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


@pytest.fixture
def optimised():
    """XLA's optimisations on for one test, as a user's programs run: for a claim whose tolerance
    was measured on the optimised programs (two float32 trajectories of hundreds of steps, whose
    rounding differs by program). The caches are cleared so that everything compiles anew."""
    jax.clear_caches()
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", True)
    jax.clear_caches()


@pytest.fixture
def x64():
    """Run a test in float64, so that analytic and finite-difference values compare tightly."""
    with enable_x64(True):
        yield


def cpu_env(**extra):
    """This environment for a subprocess on the CPU, with no inherited XLA_FLAGS (they could set a
    device count) and unbuffered output (a test that kills a program reads what it printed)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **extra)
    return env


def stated(page, heading=None):
    """The numbers a page states in its prose, in order, as written ('0.57', '3,000', the 43 of
    '43%'): of the section under `heading` (to the next ## heading), or of the whole page; its
    code, snippet includes, maths, inline code, link targets, images and headings left out. Every
    test of a page's numbers checks the JSON's against these, whatever the sentences around them
    say: as a list, the numbers in order and no other; as a set, these among them."""
    text = (ROOT / page).read_text(encoding="utf-8")
    if heading is not None:
        text = text[text.index(heading) + len(heading):]
        text = text[:text.index("\n## ")] if "\n## " in text else text
    for pattern in (r"```.*?```", r"\$\$.*?\$\$", r"\$[^$]*\$", r"`[^`]*`", r"\]\([^)]*\)",
                    r"^[ \t]*--8<--[^\n]*", r"^#+ [^\n]*", r"!\[[^]]*\]"):
        text = re.sub(pattern, " ", text, flags=re.S | re.M)
    return re.findall(r"(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)?", text)


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
    """One persistent XLA compilation cache for every `python experiment.py` the tests start: the
    first run compiles (seconds), the later ones load its executables. The programs computed are
    unchanged."""
    return str(tmp_path_factory.mktemp("xla-cache"))


def experiment_env(cache):
    """cpu_env for `python experiment.py`, with the shared compilation cache."""
    return cpu_env(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def ks_truncated_normal(values, bound=2.0):
    """Kolmogorov-Smirnov statistic of values against a standard normal truncated at +-bound."""
    def phi(x):
        return 0.5 * (1 + math.erf(x / math.sqrt(2)))
    v, n = np.sort(values), len(values)
    lo, hi = phi(-bound), phi(bound)
    cdf = np.array([(phi(min(max(x, -bound), bound)) - lo) / (hi - lo) for x in v])
    return max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
