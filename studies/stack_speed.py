"""How fast the ports of studies/stacks run beside maml.py: the workers of the
benchmark's stack rows (`python -m studies.bench --stacks`, each row a process of its
own). A port is imported by its own rows alone:
without flax, equinox or optax the benchmark runs, and says that it skipped them.

A port runs as its main() runs it: its step called from Python once a meta-step, on a
flat list of the parameters, from train()'s key.
"""
import importlib
import importlib.util
import time

import jax
import numpy as np
from jax import random
from jax.tree_util import tree_leaves

import maml

# A port: its module, the packages it needs, and its first parameters as its step takes
# them (its main()'s first lines).
PORTS = {"nnx": ("maml_nnx", ("flax", "optax"),
                 lambda m, key: tree_leaves(m.net_init(key)[1])),
         "eqx": ("maml_equinox", ("equinox", "optax"),
                 lambda m, key: tree_leaves(m.eqx.filter(m.net_init(key),
                                                         m.eqx.is_inexact_array)))}
# train()'s keys, as bench.worker_loop's: the first initialises, the second draws tasks.
K_INIT, K_TASKS = random.split(random.PRNGKey(0), 5)[:2]


def missing(name):
    """The packages that a port ("nnx", "eqx") needs and this Python lacks."""
    return [p for p in PORTS[name][1] if importlib.util.find_spec(p) is None]


def port(name):
    """A port's module ("nnx", "eqx"), imported as its row runs."""
    return importlib.import_module(f"studies.stacks.{PORTS[name][0]}")


def begin(name):
    """A step ("maml", or a port's name) and its first arguments before the batch:
    maml.step's (0, its state), a port's (its parameters, optax's state), from train()'s
    key."""
    if name == "maml":
        return maml.step, [0, maml.opt_init(maml.net_init(K_INIT, (-1, 1))[1])]
    m = port(name)
    params = PORTS[name][2](m, K_INIT)
    return m.step, [params, m.optimizer.init(params)]


def time_steps(name, setup, batch_of):
    """A step (begin's name) on batch_of(i) at step i, timed as bench.worker_loop
    times maml.py's loop: the steady state after min(50, N/10) steps. Its ms per step,
    the steps timed, its last loss."""
    step, args = begin(name)
    warm = min(50, setup["steps"] // 10)
    for i in range(setup["steps"]):
        if i == warm:  # compiled and warm
            jax.block_until_ready(args)
            t0 = time.perf_counter()
        *out, loss = step(*args, *batch_of(i), setup["alpha"])
        args = [i + 1, *out] if name == "maml" else out
    jax.block_until_ready(args)
    timed = setup["steps"] - warm
    return 1e3 * (time.perf_counter() - t0) / timed, timed, float(loss)


def loop(name, setup):
    """A port's main() loop, its sample_tasks and step, on worker_loop's tasks."""
    keys = np.asarray(random.split(K_TASKS, setup["steps"]))
    m = port(name)

    def batch_of(i):
        return m.sample_tasks(keys[i], setup["tasks"], setup["k"], setup["amp_range"])
    return time_steps(name, setup, batch_of)


def alone(name, setup):
    """A step alone, on one fixed meta-batch: the loop's first."""
    key = random.split(K_TASKS, setup["steps"])[0]
    batch = maml.sample_tasks(key, setup["tasks"], setup["k"], setup["amp_range"])
    return time_steps(name, setup, lambda i: batch)

