"""maml.py on Equinox and optax: the same algorithm, names and order, for a project that writes its
models in Equinox. `python maml_equinox.py` meta-trains on the paper's sinusoids and adapts to new
ones; it needs jax, numpy, equinox and optax, and nothing from this repository.

An Equinox model is itself a pytree: its arrays are the parameters, its other fields (the
activation function) are not. Equinox's filtered transforms (filter_grad, filter_vmap) act on the
floating-point arrays and pass everything else through, so the functions below take the model
where maml.py takes its parameters. `step`, called once a meta-step, takes the arrays alone, as a
flat list under plain jax.jit: filter_jit partitions its arguments on every call, and jit
flattens a Module in Python, a list in C++ (Equinox's "low-overhead training loops").
"""
import time
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import jit, random
from jax.tree_util import tree_leaves, tree_unflatten


# -8<- [start:model]
class Linear(eqx.Module):
    """eqx.nn.Linear's layer with its product turned round: x @ W + b, W of shape
    (in, out), as maml.py's Dense. eqx.nn.Linear's W @ x, vmapped over points, puts
    the points last, (40, points), and XLA transposes every activation back."""
    weight: jax.Array
    bias: jax.Array

    def __call__(self, x):
        return x @ self.weight + self.bias


def net_init(key):
    """The paper's regressor: 1 input, two hidden layers of 40 ReLU units, 1 output.
    It maps one input of shape (1,) to (1,): eqx.nn.MLP with its Linears swapped."""
    mlp = eqx.nn.MLP(1, 1, width_size=40, depth=2, activation=jax.nn.relu, key=key)
    layers = tuple(Linear(layer.weight.T, layer.bias) for layer in mlp.layers)
    return eqx.tree_at(lambda m: m.layers, mlp, layers)

# -8<- [end:model]


# -8<- [start:loss]
def loss(model, inputs, targets):
    # The model maps one point, of shape (1,): vmap it over all the points.
    predictions = jax.vmap(model)(inputs.reshape(-1, 1))
    return jnp.mean((predictions - targets.reshape(-1, 1)) ** 2)


def inner_update(model, x1, y1, alpha=0.01):
    grads = eqx.filter_grad(loss)(model, x1, y1)  # None for what is not a float array
    return eqx.apply_updates(model, jax.tree_util.tree_map(lambda g: -alpha * g, grads))


def maml_loss(model, x1, y1, x2, y2, alpha=0.01):
    return loss(inner_update(model, x1, y1, alpha), x2, y2)


def batch_maml_loss(model, x1, y1, x2, y2, alpha=0.01):
    per_task = eqx.filter_vmap(maml_loss, in_axes=(None, 0, 0, 0, 0, None))
    return jnp.mean(per_task(model, x1, y1, x2, y2, alpha))
# -8<- [end:loss]


# -8<- [start:anil]
def anil_inner_update(model, x1, y1, alpha=0.01):
    """ANIL: a filter spec, True on the output layer alone, partitions the model."""
    spec = jax.tree_util.tree_map(lambda _: False, model)
    spec = eqx.tree_at(lambda m: m.layers[-1], spec, replace=True)
    head, body = eqx.partition(model, spec)

    def head_loss(head):
        return loss(eqx.combine(head, body), x1, y1)
    grads = eqx.filter_grad(head_loss)(head)
    head = eqx.apply_updates(head, jax.tree_util.tree_map(lambda g: -alpha * g, grads))
    return eqx.combine(head, body)  # the body as it came: the outer grad reaches it
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
# What is not an array (the activation functions) is the same in every network here:
# split off once; `treedef` is the structure of the arrays, step's flat list.
arrays, static = eqx.partition(net_init(random.PRNGKey(0)), eqx.is_inexact_array)
treedef = jax.tree_util.tree_structure(arrays)


@jit
def step(leaves, opt_state, x1, y1, x2, y2, alpha=0.01):
    """One meta-update of the model's arrays, a flat list; optax's state holds their
    moments."""
    value_and_grad = eqx.filter_value_and_grad(batch_maml_loss)
    model = eqx.combine(tree_unflatten(treedef, leaves), static)  # for this trace
    meta_loss, meta_grads = value_and_grad(model, x1, y1, x2, y2, alpha)
    updates, opt_state = optimizer.update(tree_leaves(meta_grads), opt_state, leaves)
    return optax.apply_updates(leaves, updates), opt_state, meta_loss
# -8<- [end:step]


# -8<- [start:main]
def main(steps=50_000, seed=0):
    key_init, key_tasks, key_test = random.split(random.PRNGKey(seed), 3)
    leaves = tree_leaves(eqx.filter(net_init(key_init), eqx.is_inexact_array))
    opt_state = optimizer.init(leaves)  # the arrays alone: no moments for relu
    keys = np.asarray(random.split(key_tasks, steps))  # split once, on the host
    start = time.perf_counter()
    for i, key in enumerate(keys):
        tasks = sample_tasks(key, 25, 10)
        leaves, opt_state, meta_loss = step(leaves, opt_state, *tasks)
        if (i + 1) % 10_000 == 0 or i + 1 == steps:
            print(f"step {i + 1:>6,}/{steps:,}  meta-loss {float(meta_loss):.3f}  "
                  f"{time.perf_counter() - start:.0f} s")
    x1, y1, x2, y2 = sample_tasks(key_test, 600, 100)
    model = eqx.combine(tree_unflatten(treedef, leaves), static)
    x1, y1 = x1[:, :5], y1[:, :5]
    before, after = loss(model, x2, y2), batch_maml_loss(model, x1, y1, x2, y2)
    print(f"600 new tasks, K = 5: MSE {float(before):.2f} before adapting, "
          f"{float(after):.2f} after one inner_update "
          "(the paper: 0.67)")


if __name__ == "__main__":
    main()
# -8<- [end:main]
