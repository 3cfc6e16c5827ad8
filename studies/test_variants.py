"""Multi-step MAML as a lax.scan (studies/variants.py) against the unrolled Python loop.

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
from studies import variants

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


# ---- the trained variants and the Variations page's claims ----------------------------------------

def test_make_step_of_maml_loss_is_maml_step_and_meta_sgd_starts_as_maml():
    """make_step turns a task loss into maml.step's computation: for maml_loss itself, the same
    state and loss (float32, compiled apart: 1e-5 relative). Meta-SGD's first meta-step with every
    step size at alpha moves theta exactly as MAML's does (the same gradient for theta, and Adam's
    first step depends on nothing else)."""
    import numpy as np
    from jax.tree_util import tree_leaves

    _, params = maml.net_init(random.PRNGKey(0), (-1, 1))
    batch = maml.sample_tasks(random.PRNGKey(1), 25, 10)
    ours, ours_loss = variants.make_step(maml.maml_loss)(0, maml.opt_init(params), *batch)
    theirs, theirs_loss = maml.step(0, maml.opt_init(params), *batch)
    np.testing.assert_allclose(float(ours_loss), float(theirs_loss), rtol=1e-5)
    for a, b in zip(tree_leaves(maml.get_params(ours)), tree_leaves(maml.get_params(theirs))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    start = variants.with_alphas(params, 0.01)
    sgd, _ = variants.make_step(variants.meta_sgd_loss)(0, maml.opt_init(start), *batch)
    for a, b in zip(tree_leaves(maml.get_params(sgd)[0]), tree_leaves(maml.get_params(theirs))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def variants_data():
    from machinery import report
    return report.read_json("figures/variants.json")


def test_the_variants_table_is_the_rendering_of_its_data():
    from pathlib import Path
    assert Path("figures/variants.md").read_text() == variants.render(variants_data())


def test_the_variations_page_claims_hold_on_the_committed_table():
    """Each sentence of the Variations page's 'Trained and compared', against figures/variants.json;
    its times against the interleaved measurement of figures/cost.json (the variants' own times
    were taken one after another under uneven load, and the page says not to compare them)."""
    import json

    data, page = variants_data(), " ".join(open("docs/variations.md", encoding="utf-8").read().split())
    row = {(name, int(k)): c for name, v in data["variants"].items() for k, c in v["cells"].items()}
    names = ("MAML", "first-order MAML", "MAML with 5 inner steps", "Meta-SGD")
    assert set(row) == {(n, k) for n in names for k in (5, 10)} and data["seeds"] == 5

    def mse(name, k, n):
        return row[name, k]["steps"][str(n)]["mean"]

    def apart(a, b, k, n):
        x, y = row[a, k]["steps"][str(n)], row[b, k]["steps"][str(n)]
        return x["mean"] + x["half"] < y["mean"] - y["half"]

    # Second order beats first order after one step, intervals apart, with the page's numbers.
    assert apart("MAML", "first-order MAML", 5, 1) and apart("MAML", "first-order MAML", 10, 1)
    firsts = [f"{mse(n, k, 1):.2f}" for k in (5, 10) for n in names[:2]]
    assert f"{firsts[0]} against {firsts[1]} with $K = 5$, {firsts[2]} against {firsts[3]}" in page
    cost = {(p["mode"], p["S"]): p["ms"] for p in json.load(open("figures/cost.json"))["points"]
            if p["sweep"] == "inner steps"}
    assert f"about {1 - cost['first order', 1] / cost['second order', 1]:.0%} cheaper" in page
    # No first-order task overflowed; its 10-step mean is ordinary, MAML's K = 5 one is not.
    assert all(row["first-order MAML", k]["steps"][n]["left_out"] == 0 for k in (5, 10) for n in ("1", "5", "10"))
    assert mse("first-order MAML", 5, 10) < 1 < 100 < mse("MAML", 5, 10)
    # Five inner steps: the lowest 10-step error, the fewest worse tasks, the worst after one step.
    five = "MAML with 5 inner steps"
    for k in (5, 10):
        assert mse(five, k, 10) == min(mse(n, k, 10) for n in names)
        assert row[five, k]["worse"] == min(row[n, k]["worse"] for n in names)
        assert mse(five, k, 1) == max(mse(n, k, 1) for n in names)
    assert f"({mse(five, 5, 10):.2f} with $K = 5$, {mse(five, 10, 10):.2f} with $K = 10$)" in page
    assert f"{cost['second order', 5] / cost['second order', 1]:.1f} times in the interleaved" in page
    # Meta-SGD: the best after one step for both K; later its runaway tasks overflow.
    for k in (5, 10):
        assert mse("Meta-SGD", k, 1) == min(mse(v, k, 1) for v in names)
    assert f"({mse('Meta-SGD', 5, 1):.2f} and {mse('Meta-SGD', 10, 1):.2f})" in page
    assert all(mse("Meta-SGD", k, 5) > 1e30 for k in (5, 10))
    left = row["Meta-SGD", 5]["steps"]
    assert f"({left['5']['left_out']} with $K = 5$)" in page
    assert f"({left['10']['left_out']:,} of {row['Meta-SGD', 5]['tasks']:,} with $K = 5$)" in page
    assert 0.15 < left["10"]["left_out"] / row["Meta-SGD", 5]["tasks"] < 0.35
