"""The 2019 blog post's batched MAML loop ("Meta-Learning in 50 Lines of JAX", Eric Jang), ported
to today's JAX with the fewest changes (listed on the From 2019 page), the setting an argument and
NumPy drawing from a seeded Generator: the Performance page's measuring stick. As the blog wrote
it, tasks are drawn on the host in a Python loop, stacked by jax.numpy, and one compiled step takes
the gradient, then the loss again; the careful port (careful=True) stacks with NumPy instead.
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
    """The blog's sampler; its `stack` was jnp.stack (it imported jax.numpy as np)."""
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
    """The blog's loop at `setup` (experiment.SETUPS's, with steps): steady ms per step, the steps
    timed and the last loss; the first min(50, steps // 10) warm up, untimed, as in bench.py."""
    rng = np.random.default_rng(seed)
    stack = np.stack if careful else jnp.stack
    out_shape, net_params = net_init(jax.random.PRNGKey(seed), (-1, 1))
    opt_state = opt_init(net_params)
    np_batched_maml_loss = []
    steps = setup["steps"]
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
