"""maml.py on Flax NNX and optax: the same algorithm, names and order, for a project that writes its
models in Flax. `python maml_nnx.py` meta-trains on the paper's sinusoids and adapts to new ones;
it needs jax, numpy, flax and optax, and nothing from this repository.

NNX modules are mutable Python objects. Here nnx.split turns one into a static graph definition
and a pytree of its nnx.Param arrays, the functions below are pure functions of that pytree, and
JAX's own grad, vmap and jit transform them, as they do maml.py's. (nnx.grad would differentiate
the module itself, and Flax's "Tree Mode" design note plans to change what it differentiates; the
split/merge pattern is what survives that change.)
"""
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax import grad, jit, random, vmap


# -8<- [start:model]
class MLP(nnx.Module):
    """The paper's regressor: 1 input, two hidden layers of 40 ReLU units, 1 output."""

    def __init__(self, rngs):
        self.dense1 = nnx.Linear(1, 40, rngs=rngs)
        self.dense2 = nnx.Linear(40, 40, rngs=rngs)
        self.dense3 = nnx.Linear(40, 1, rngs=rngs)

    def __call__(self, x):
        return self.dense3(jax.nn.relu(self.dense2(jax.nn.relu(self.dense1(x)))))


def net_init(key):
    """A new network as (its graph definition, its parameters: an nnx.State, a pytree of arrays).
    The `...` filter collects any state that is not a Param: this network has none."""
    graphdef, params, _ = nnx.split(MLP(nnx.Rngs(params=key)), nnx.Param, ...)
    return graphdef, params


graphdef, _ = net_init(random.PRNGKey(0))  # the structure every network of this file shares


def net_apply(params, inputs):
    """The network of these parameters on (..., 1) inputs: a fresh module, merged for this call."""
    return nnx.merge(graphdef, params)(inputs)
# -8<- [end:model]


# -8<- [start:loss]
def loss(params, inputs, targets):
    return jnp.mean((net_apply(params, inputs) - targets) ** 2)


def inner_update(params, x1, y1, alpha=0.01):
    grads = grad(loss)(params, x1, y1)  # a State shaped like params: plain JAX, no nnx.grad
    return jax.tree_util.tree_map(lambda p, g: p - alpha * g, params, grads)


def maml_loss(params, x1, y1, x2, y2, alpha=0.01):
    return loss(inner_update(params, x1, y1, alpha), x2, y2)


def batch_maml_loss(params, x1, y1, x2, y2, alpha=0.01):
    task_losses = vmap(maml_loss, in_axes=(None, 0, 0, 0, 0, None))(params, x1, y1, x2, y2, alpha)
    return jnp.mean(task_losses)
# -8<- [end:loss]


# -8<- [start:anil]
# ANIL adapts the output layer alone: an NNX filter picks its parameters out of the State.
HEAD = nnx.PathContains("dense3")


def anil_inner_update(params, x1, y1, alpha=0.01):
    graph, head, body = nnx.split(nnx.merge(graphdef, params), HEAD, ...)  # the head, the rest

    def head_loss(head):
        return jnp.mean((nnx.merge(graph, head, body)(x1) - y1) ** 2)
    head = jax.tree_util.tree_map(lambda p, g: p - alpha * g, head, grad(head_loss)(head))
    # One State again, the body as it came: the outer grad still reaches it through head_loss.
    return nnx.split(nnx.merge(graph, head, body), nnx.Param, ...)[1]
# -8<- [end:anil]


# -8<- [start:sample_tasks]
# maml.py's sampler, repeated so that this file stands alone (it needs nothing from this repo).
@partial(jit, static_argnums=(1, 2))
def sample_tasks(key, n_tasks, k, amp_range=(0.1, 5.0), phase_range=(0.0, jnp.pi),
                 x_range=(-5.0, 5.0)):
    u = random.uniform(key, (n_tasks, 2 + 2 * k, 1))
    (a0, a1), (p0, p1), (x0, x1) = amp_range, phase_range, x_range
    amp, phase, x = a0 + (a1 - a0) * u[:, :1], p0 + (p1 - p0) * u[:, 1:2], x0 + (x1 - x0) * u[:, 2:]
    y = amp * jnp.sin(x + phase)
    return x[:, :k], y[:, :k], x[:, k:], y[:, k:]
# -8<- [end:sample_tasks]


# -8<- [start:step]
optimizer = optax.adam(1e-3)  # b1 0.9, b2 0.999, eps 1e-8: example_libraries' adam


@jit
def step(params, opt_state, x1, y1, x2, y2, alpha=0.01):
    """One meta-update; optax keeps no parameters, so they go in and come out beside its state."""
    meta_loss, meta_grads = jax.value_and_grad(batch_maml_loss)(params, x1, y1, x2, y2, alpha)
    updates, opt_state = optimizer.update(meta_grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, meta_loss
# -8<- [end:step]


# -8<- [start:main]
def main(steps=50_000, seed=0):
    key_init, key_tasks, key_test = random.split(random.PRNGKey(seed), 3)
    params = net_init(key_init)[1]
    opt_state = optimizer.init(params)
    keys = np.asarray(random.split(key_tasks, steps))  # split once, on the host: no per-step call
    start = time.perf_counter()
    for i, key in enumerate(keys):
        params, opt_state, meta_loss = step(params, opt_state, *sample_tasks(key, 25, 10))
        if (i + 1) % 10_000 == 0 or i + 1 == steps:
            print(f"step {i + 1:>6,}/{steps:,}  meta-loss {float(meta_loss):.3f}  "
                  f"{time.perf_counter() - start:.0f} s")
    x1, y1, x2, y2 = sample_tasks(key_test, 600, 100)
    x1, y1 = x1[:, :5], y1[:, :5]
    print(f"600 new tasks, K = 5: MSE {float(loss(params, x2, y2)):.2f} before adapting, "
          f"{float(batch_maml_loss(params, x1, y1, x2, y2)):.2f} after one inner_update "
          "(the paper: 0.67)")


if __name__ == "__main__":
    main()
# -8<- [end:main]
