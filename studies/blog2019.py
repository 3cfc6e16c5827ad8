"""The 2019 blog post's batched MAML loop ("Meta-Learning in 50 Lines of JAX", Eric Jang), ported
to today's JAX with the fewest changes: the measuring stick of the Performance page.

The changes are the ones the From 2019 page lists: stax and optimizers come from
jax.example_libraries, tree_map replaces tree_multimap, net_init takes a key, adam returns its
own get_params, and today's names (jnp is jax.numpy, np is NumPy). Two more make it a benchmark:
the setting (tasks, K, inner step size, amplitudes) is an argument, so that the paper's setting
runs too, and NumPy draws from a Generator seeded by the caller rather than from its
global state. The rest is as the blog wrote it: tasks drawn on the host by NumPy, a Python loop
over the tasks, the batch stacked by jax.numpy, and one compiled step per meta-step that takes the
gradient and then the loss again.

The careful port (careful=True) changes one word: it stacks the host batch with NumPy, one array
for the device instead of one small transfer per task.
"""
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import grad, jit, vmap
from jax.example_libraries import optimizers, stax
from jax.example_libraries.stax import Dense, Relu
from jax.tree_util import tree_map

net_init, net_apply = stax.serial(Dense(40), Relu, Dense(40), Relu, Dense(1))


def loss(params, inputs, targets):
    predictions = net_apply(params, inputs)
    return jnp.mean((targets - predictions) ** 2)


def inner_update(p, x1, y1, alpha):
    grads = grad(loss)(p, x1, y1)
    return tree_map(lambda g, state: state - alpha * g, grads, p)


def maml_loss(p, x1, y1, x2, y2, alpha):
    return loss(inner_update(p, x1, y1, alpha), x2, y2)


def batch_maml_loss(p, x1_b, y1_b, x2_b, y2_b, alpha):
    task_losses = vmap(partial(maml_loss, p, alpha=alpha))(x1_b, y1_b, x2_b, y2_b)
    return jnp.mean(task_losses)


# -8<- [start:sample]
def sample_tasks(rng, outer_batch_size, inner_batch_size, amp_range, stack=jnp.stack):
    """The blog's sampler: a Python loop over the tasks, NumPy draws, then `stack`.
    The blog's was jax.numpy's (it imported jax.numpy as np), which sends every task's
    little array to the device on its own; the careful port passes np.stack."""
    As, phases = [], []
    for _ in range(outer_batch_size):
        As.append(rng.uniform(low=amp_range[0], high=amp_range[1]))
        phases.append(rng.uniform(low=0., high=np.pi))

    def get_batch():
        xs, ys = [], []
        for A, phase in zip(As, phases):
            x = rng.uniform(low=-5., high=5., size=(inner_batch_size, 1))
            xs.append(x)
            ys.append(A * np.sin(x + phase))
        return stack(xs), stack(ys)
    x1, y1 = get_batch()
    x2, y2 = get_batch()
    return x1, y1, x2, y2
# -8<- [end:sample]


opt_init, opt_update, get_params = optimizers.adam(step_size=1e-3)


@jit
def step(i, opt_state, x1, y1, x2, y2, alpha):
    p = get_params(opt_state)
    g = grad(batch_maml_loss)(p, x1, y1, x2, y2, alpha)
    l = batch_maml_loss(p, x1, y1, x2, y2, alpha)
    return opt_update(i, g, opt_state), l


def train(setup, careful=False, seed=0):
    """The blog's loop at `setup` (as experiment.SETUPS has it, with its steps): the steady-state
    ms per step, the steps timed and the last loss. The first min(50, steps // 10) steps compile
    and warm up, untimed, as in the benchmark's other loops."""
    rng, stack = np.random.default_rng(seed), np.stack if careful else jnp.stack
    out_shape, net_params = net_init(jax.random.PRNGKey(seed), (-1, 1))
    opt_state = opt_init(net_params)
    np_batched_maml_loss, steps = [], setup["steps"]
    warm = min(50, steps // 10)
    for i in range(steps):
        if i == warm:
            jax.block_until_ready(opt_state)
            t0 = time.perf_counter()
        x1_b, y1_b, x2_b, y2_b = sample_tasks(rng, setup["tasks"], setup["k"],
                                              setup["amp_range"], stack)
        opt_state, l = step(i, opt_state, x1_b, y1_b, x2_b, y2_b, setup["alpha"])
        np_batched_maml_loss.append(l)
    jax.block_until_ready(opt_state)
    return (1e3 * (time.perf_counter() - t0) / (steps - warm), steps - warm,
            float(np_batched_maml_loss[-1]))
