"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, 2017) in JAX and NumPy alone.

In the paper's order: model, loss, inner update, MAML objective, batching over
tasks, task sampler, training step. `python maml.py` meta-trains on the paper's
sinusoids and adapts to new ones; the paper's whole experiment (baseline,
evaluation, figures) is `python experiment.py`.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import grad, jit, random, vmap
from jax.example_libraries import optimizers, stax
from jax.example_libraries.stax import Dense, Relu
from jax.tree_util import tree_map

# -8<- [start:model]
# The paper's regressor: 1 input, two hidden layers of 40 ReLU units, 1 output.
# net_init(key, (-1, 1)) returns (output_shape, params);
# net_apply(params, x) maps (..., 1) to (..., 1).
net_init, net_apply = stax.serial(Dense(40), Relu, Dense(40), Relu, Dense(1))
ALPHA = 0.01  # the paper's inner step size, every function's default
# -8<- [end:model]


# -8<- [start:loss]
def loss(params, inputs, targets):
    """Mean squared error of the network on a batch of points."""
    return jnp.mean((net_apply(params, inputs) - targets) ** 2)
# -8<- [end:loss]


# -8<- [start:inner_update]
def inner_update(params, x1, y1, alpha=ALPHA):
    """One step of gradient descent on a task's support set (x1, y1).

    Nothing here stops the gradient: differentiating through this function gives
    the second-order MAML gradient."""
    grads = grad(loss)(params, x1, y1)
    return tree_map(lambda p, g: p - alpha * g, params, grads)
# -8<- [end:inner_update]


# -8<- [start:maml_loss]
def maml_loss(params, x1, y1, x2, y2, alpha=ALPHA):
    """The MAML objective of one task: the query-set loss after adapting on the
    support set."""
    return loss(inner_update(params, x1, y1, alpha), x2, y2)
# -8<- [end:maml_loss]


# -8<- [start:batch_maml_loss]
def batch_maml_loss(params, x1, y1, x2, y2, alpha=ALPHA):
    """maml_loss averaged over a meta-batch: x1, y1, x2, y2 carry a task axis."""
    per_task = vmap(maml_loss, in_axes=(None, 0, 0, 0, 0, None))
    return jnp.mean(per_task(params, x1, y1, x2, y2, alpha))
# -8<- [end:batch_maml_loss]


# -8<- [start:sample_tasks]
# The paper's tasks: A sin(x + phase), A in [0.1, 5], phase in [0, pi], x in [-5, 5].
AMP_RANGE, PHASE_RANGE, X_RANGE = (0.1, 5.0), (0.0, jnp.pi), (-5.0, 5.0)


def sample_sinusoids(key, n_tasks, n_points, amp_range=AMP_RANGE,
                     phase_range=PHASE_RANGE, x_range=X_RANGE):
    """n_tasks sinusoids, as one function of x, and n_points inputs x for each, all
    from one uniform draw (a call to the generator costs more than its numbers)."""
    u = random.uniform(key, (n_tasks, 2 + n_points, 1))
    (a0, a1), (p0, p1), (x0, x1) = amp_range, phase_range, x_range
    amp, phase = a0 + (a1 - a0) * u[:, :1], p0 + (p1 - p0) * u[:, 1:2]

    def sinusoid(x):
        return amp * jnp.sin(x + phase)
    return sinusoid, x0 + (x1 - x0) * u[:, 2:]


def sample_tasks(key, n_tasks, k, amp_range=AMP_RANGE, phase_range=PHASE_RANGE,
                 x_range=X_RANGE):
    """A meta-batch: K support and K query points from each of n_tasks sinusoids, as
    x1, y1, x2, y2 of shape (n_tasks, k, 1). n_tasks and k fix the shapes, so they
    are static under jit."""
    sinusoid, x = sample_sinusoids(key, n_tasks, 2 * k, amp_range, phase_range,
                                   x_range)
    y = sinusoid(x)
    return x[:, :k], y[:, :k], x[:, k:], y[:, k:]


sample_tasks = jit(sample_tasks, static_argnums=(1, 2))
# -8<- [end:sample_tasks]


# -8<- [start:step]
opt_init, opt_update, get_params = optimizers.adam(step_size=1e-3)


@jit
def step(i, opt_state, x1, y1, x2, y2, alpha=ALPHA):
    """One meta-update: the gradient of batch_maml_loss through the inner step, then
    Adam."""
    params = get_params(opt_state)
    meta_loss, meta_grads = jax.value_and_grad(batch_maml_loss)(
        params, x1, y1, x2, y2, alpha)
    return opt_update(i, meta_grads, opt_state), meta_loss
# -8<- [end:step]


# -8<- [start:main]
def main(steps=50_000, seed=0):
    """Meta-train on the paper's tasks (it trains 70,000 steps; 50,000 take under a
    minute on two CPU cores), then adapt to new tasks with one step."""
    key_init, key_tasks, key_test = random.split(random.PRNGKey(seed), 3)
    opt_state = opt_init(net_init(key_init, (-1, 1))[1])
    # One key per step, split once on the host: no per-step call to do it.
    keys = np.asarray(random.split(key_tasks, steps))
    start = time.perf_counter()
    for i, key in enumerate(keys):
        opt_state, meta_loss = step(i, opt_state, *sample_tasks(key, 25, 10))
        if (i + 1) % 10_000 == 0 or i + 1 == steps:
            print(f"step {i + 1:>6,}/{steps:,}  meta-loss {float(meta_loss):.3f}  "
                  f"{time.perf_counter() - start:.0f} s")
    # 600 new tasks: 5 support points to adapt on, 100 query points to score.
    x1, y1, x2, y2 = sample_tasks(key_test, 600, 100)
    params, x1, y1 = get_params(opt_state), x1[:, :5], y1[:, :5]
    before = float(loss(params, x2, y2))
    after = float(batch_maml_loss(params, x1, y1, x2, y2))
    print(f"600 new tasks, K = 5: MSE {before:.2f} before adapting, {after:.2f} after "
          "one inner_update (the paper: 0.67)")


if __name__ == "__main__":
    main()
# -8<- [end:main]
