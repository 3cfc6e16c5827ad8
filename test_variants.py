"""Multi-step MAML as a lax.scan (scripts/variants.py) against the unrolled Python loop.

Run with `python -m pytest test_variants.py`. Everything here runs in float64 (switched on as a
context, so no other test sees it): the scan, the unrolled loop and the checkpointed scan do the
same arithmetic, in orders that XLA may fuse or reassociate differently, so they agree to rounding.
In float64 that is ~1e-16 per operation; through 5 inner steps of sums over 1,761 parameters and
10 points, and a second-order gradient, the error stays far below 1e-10 relative, where a real
difference (a missing step, a dropped second-order term: 10% or more, see the Variations page)
would be far above it. Float32 would need a tolerance near 1e-4 and could hide a small bug.
"""
from functools import partial

import jax
import jax.numpy as jnp
import pytest
from jax import grad, jit, random
from jax.flatten_util import ravel_pytree
from jax.tree_util import tree_map

import maml
from scripts import variants

# Relative distance allowed: float64 rounding through a few steps is ~1e-14, a real difference is
# >= 1e-2. (Seen with jax 0.10.2 on a CPU: exactly 0, in float64 and in float32 alike.)
RTOL = 1e-10


def float64():
    """JAX's float64 switch as a context manager: jax.enable_x64 where it exists, else (older jax,
    down to the 0.4.29 that requirements.txt admits) jax.experimental.enable_x64."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64
    return enable_x64()


def one_task(seed=0, k=10):
    """The network's initial parameters and one task of the paper's distribution (float32)."""
    _, params = maml.net_init(random.PRNGKey(seed), (-1, 1))
    return params, tuple(a[0] for a in maml.sample_tasks(random.PRNGKey(seed + 1), 1, k))


def float64_task():
    """one_task in float64; call it under float64()."""
    return tree_map(partial(jnp.asarray, dtype=jnp.float64), one_task())


def flat(tree):
    return ravel_pytree(tree)[0]


def close(a, b):
    a, b = flat(a), flat(b)
    assert a.dtype == b.dtype == jnp.float64
    return bool(jnp.linalg.norm(a - b) <= RTOL * jnp.linalg.norm(b))


def fo_loss_steps(params, x1, y1, x2, y2, alpha=0.01, n_steps=1):
    """The unrolled first-order loop, the reference for fo_maml_loss_scan."""
    for _ in range(n_steps):
        params = variants.fo_inner_update(params, x1, y1, alpha)
    return maml.loss(params, x2, y2)


@pytest.mark.parametrize("n_steps", [1, 5])
def test_scan_equals_the_unrolled_loop_in_value_and_meta_gradient(n_steps):
    with float64():
        params, task = float64_task()
        scan = partial(variants.maml_loss_scan, n_steps=n_steps)
        loop = partial(variants.maml_loss_steps, n_steps=n_steps)
        assert close(jit(scan)(params, *task), jit(loop)(params, *task))
        assert close(jit(grad(scan))(params, *task), jit(grad(loop))(params, *task))


@pytest.mark.parametrize("n_steps", [1, 5])
def test_checkpointed_meta_gradient_equals_the_plain_one(n_steps):
    with float64():
        params, task = float64_task()
        plain = partial(variants.maml_loss_scan, n_steps=n_steps)
        saved = partial(variants.maml_loss_scan, n_steps=n_steps, checkpoint=True)
        assert close(jit(grad(saved))(params, *task), jit(grad(plain))(params, *task))


def test_first_order_scan_equals_its_loop_and_differs_from_second_order():
    """The first-order scan is the unrolled first-order loop; its gradient is more than 1% away
    from the second-order one (so the closeness above is not a tolerance that passes anything)."""
    with float64():
        params, task = float64_task()
        fo = jit(grad(partial(variants.fo_maml_loss_scan, n_steps=5)))(params, *task)
        assert close(fo, jit(grad(partial(fo_loss_steps, n_steps=5)))(params, *task))
        second = jit(grad(partial(variants.maml_loss_scan, n_steps=5)))(params, *task)
        assert jnp.linalg.norm(flat(fo) - flat(second)) > 1e-2 * jnp.linalg.norm(flat(second))


def program_size(task_loss, params, task):
    """Characters of the lowered (StableHLO) program of the meta-gradient."""
    return len(jit(grad(task_loss)).lower(params, *task).as_text())


def test_the_scan_program_does_not_grow_with_the_steps_and_the_loop_does():
    params, task = one_task()
    scan = [program_size(partial(variants.maml_loss_scan, n_steps=n), params, task) for n in (2, 8)]
    loop = [program_size(partial(variants.maml_loss_steps, n_steps=n), params, task)
            for n in (2, 8)]
    assert scan[0] == scan[1], scan
    assert loop[1] > 3 * loop[0], loop
