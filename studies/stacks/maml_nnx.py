"""maml.py on Flax NNX and optax: the same algorithm, names and order, for a project that writes its
models in Flax. `python maml_nnx.py` meta-trains on the paper's sinusoids and adapts to new ones;
it needs jax, numpy, flax and optax, and nothing from this repository.

NNX modules are mutable Python objects. Here nnx.split turns one into a static graph definition
and a pytree of its nnx.Param arrays, the functions below are pure functions of that pytree, and
JAX's own grad, vmap and jit transform them, as they do maml.py's. (nnx.grad would differentiate
the module itself, and Flax's "Tree Mode" design note plans to change what it differentiates; the
split/merge pattern is what survives that change.) `step` takes that pytree's leaves, a flat list:
a State crosses a jitted function's boundary by a flatten in Python, a list by one in C++.
"""
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax import grad, jit, random, vmap
from jax.tree_util import tree_leaves, tree_unflatten


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
    """A new network as its graph definition and its parameters (an nnx.State, a
    pytree of arrays). `...` collects any state that is not a Param: here, none."""
    graphdef, params, _ = nnx.split(MLP(nnx.Rngs(params=key)), nnx.Param, ...)
    return graphdef, params


# The structure all networks here share: the graph's, and the State's (step's list).
graphdef, state = net_init(random.PRNGKey(0))
treedef = jax.tree_util.tree_structure(state)


def net_apply(params, inputs):
    """The network of these parameters on (..., 1) inputs, merged for this call."""
    return nnx.merge(graphdef, params)(inputs)
# -8<- [end:model]


# -8<- [start:loss]
def loss(params, inputs, targets):
    return jnp.mean((net_apply(params, inputs) - targets) ** 2)


def inner_update(params, x1, y1, alpha=0.01):
    grads = grad(loss)(params, x1, y1)  # a State like params: plain JAX, no nnx.grad
    return jax.tree_util.tree_map(lambda p, g: p - alpha * g, params, grads)


def maml_loss(params, x1, y1, x2, y2, alpha=0.01):
    return loss(inner_update(params, x1, y1, alpha), x2, y2)


def batch_maml_loss(params, x1, y1, x2, y2, alpha=0.01):
    per_task = vmap(maml_loss, in_axes=(None, 0, 0, 0, 0, None))
    return jnp.mean(per_task(params, x1, y1, x2, y2, alpha))
# -8<- [end:loss]


# -8<- [start:anil]
# ANIL adapts the output layer alone: an NNX filter picks its parameters out.
HEAD = nnx.PathContains("dense3")


def anil_inner_update(params, x1, y1, alpha=0.01):
    # The head's parameters, and the rest:
    graph, head, body = nnx.split(nnx.merge(graphdef, params), HEAD, ...)

    def head_loss(head):
        return jnp.mean((nnx.merge(graph, head, body)(x1) - y1) ** 2)
    grads = grad(head_loss)(head)
    head = jax.tree_util.tree_map(lambda p, g: p - alpha * g, head, grads)
    # One State again, the body as it came: the outer grad reaches it via head_loss.
    return nnx.split(nnx.merge(graph, head, body), nnx.Param, ...)[1]
# -8<- [end:anil]


# -8<- [start:sample_tasks]
# maml.py's sampler, repeated so that this file stands alone: it needs nothing
# from this repository.
@partial(jit, static_argnums=(1, 2))
def sample_tasks(key, n_tasks, k, amp_range=(0.1, 5.0), phase_range=(0.0, jnp.pi),
                 x_range=(-5.0, 5.0)):
    u = random.uniform(key, (n_tasks, 2 + 2 * k, 1))
    (a0, a1), (p0, p1), (x0, x1) = amp_range, phase_range, x_range
    amp, phase = a0 + (a1 - a0) * u[:, :1], p0 + (p1 - p0) * u[:, 1:2]
    x = x0 + (x1 - x0) * u[:, 2:]
    y = amp * jnp.sin(x + phase)
    return x[:, :k], y[:, :k], x[:, k:], y[:, k:]
# -8<- [end:sample_tasks]


# -8<- [start:step]
optimizer = optax.adam(1e-3)  # b1 0.9, b2 0.999, eps 1e-8: example_libraries' adam


@jit
def step(leaves, opt_state, x1, y1, x2, y2, alpha=0.01):
    """One meta-update; optax keeps no parameters: they go in and out beside it, as
    the State's leaves: jit flattens a list in C++ at every call, a State in Python."""
    value_and_grad = jax.value_and_grad(batch_maml_loss)
    params = tree_unflatten(treedef, leaves)  # a State again, for this trace
    meta_loss, meta_grads = value_and_grad(params, x1, y1, x2, y2, alpha)
    updates, opt_state = optimizer.update(tree_leaves(meta_grads), opt_state, leaves)
    return optax.apply_updates(leaves, updates), opt_state, meta_loss
# -8<- [end:step]


# -8<- [start:main]
def main(steps=50_000, seed=0):
    key_init, key_tasks, key_test = random.split(random.PRNGKey(seed), 3)
    leaves = tree_leaves(net_init(key_init)[1])  # the State's arrays, for step
    opt_state = optimizer.init(leaves)
    keys = np.asarray(random.split(key_tasks, steps))  # split once, on the host
    start = time.perf_counter()
    for i, key in enumerate(keys):
        tasks = sample_tasks(key, 25, 10)
        leaves, opt_state, meta_loss = step(leaves, opt_state, *tasks)
        if (i + 1) % 10_000 == 0 or i + 1 == steps:
            print(f"step {i + 1:>6,}/{steps:,}  meta-loss {float(meta_loss):.3f}  "
                  f"{time.perf_counter() - start:.0f} s")
    x1, y1, x2, y2 = sample_tasks(key_test, 600, 100)
    params, x1, y1 = tree_unflatten(treedef, leaves), x1[:, :5], y1[:, :5]
    before, after = loss(params, x2, y2), batch_maml_loss(params, x1, y1, x2, y2)
    print(f"600 new tasks, K = 5: MSE {float(before):.2f} before adapting, "
          f"{float(after):.2f} after one inner_update "
          "(the paper: 0.67)")


if __name__ == "__main__":
    main()
# -8<- [end:main]
