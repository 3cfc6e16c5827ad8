"""The claims that maml.py rests on, each with its tolerance and the reason for it.

Derivatives are checked in float64 (enable_x64) against analytic values and central finite
differences; float32 is used only where the claim is about what the program does by default.
"""
import ast
import importlib.util
import io
import math
import os
import re
import shutil
import subprocess
import sys
import tokenize

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import grad, jit, random, vmap
from jax.scipy.special import gammaincc
from jax.tree_util import tree_leaves, tree_map

import maml

try:  # jax.enable_x64 is recent; older jax has only jax.experimental.enable_x64
    from jax import enable_x64
except ImportError:
    from jax.experimental import enable_x64

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def x64():
    """Run a test in float64, so that analytic and finite-difference values can be compared tightly."""
    with enable_x64(True):
        yield


def f64_params(seed=0):
    _, params = maml.net_init(random.PRNGKey(seed), (-1, 1))
    return tree_map(lambda a: jnp.asarray(a, jnp.float64), params)


def tree_vdot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(tree_leaves(a), tree_leaves(b)))


def random_direction(params, seed):
    rng = np.random.default_rng(seed)
    return tree_map(lambda p: jnp.asarray(rng.standard_normal(p.shape)), params)


def central_difference(f, params, direction, h=1e-7):
    """(f(p + h d) - f(p - h d)) / 2h: the derivative of f along d, with an O(h^2) error."""
    f = jit(f)
    shifted = lambda s: tree_map(lambda p, d: p + s * h * d, params, direction)
    return tree_map(lambda a, b: (a - b) / (2 * h), f(shifted(1)), f(shifted(-1)))


# ---- JAX's derivatives, as the 2019 post checked them --------------------------------------------

def test_derivatives_of_exp_at_1_are_all_e(x64):
    # Exact maths; float64 rounding of exp alone: 1e-15 relative.
    f = jnp.exp
    for n, d in enumerate([grad(f), grad(grad(f)), grad(grad(grad(f)))], start=1):
        assert float(d(1.0)) == pytest.approx(np.e, rel=1e-15), f"derivative {n}"


def test_derivatives_of_x_squared_at_2_are_4_2_0(x64):
    # Polynomials of small integers: every intermediate is exact in binary, so equality is exact.
    g = jnp.square
    assert grad(g)(2.0) == 4.0
    assert grad(grad(g))(2.0) == 2.0
    assert grad(grad(grad(g)))(2.0) == 0.0


def test_maml_numerics_of_x_squared_plus_y_at_2_1(x64):
    """g(x, y) = x^2 + y at (2, 1), step size 1: gradient 4, updated point -2, MAML objective
    g(x - g'(x), y) = x^2 + y = 5, and its gradient d/dx (x - 2x)^2 = 2x = 4. All exact in binary."""
    g = lambda x, y: x ** 2 + y
    x0, y0 = 2.0, 1.0
    assert grad(g)(x0, y0) == 4.0
    assert x0 - grad(g)(x0, y0) == -2.0
    maml_objective = lambda x, y: g(x - grad(g)(x, y), y)
    assert maml_objective(x0, y0) == 5.0
    assert grad(maml_objective)(x0, y0) == 4.0


# ---- inner_update, maml_loss and batch_maml_loss against a closed form --------------------------

def linear_apply(params, x):
    w, b = params
    return x @ w + b


def closed_form(w, b, x1, y1, x2, y2, alpha):
    """For f(x) = w x + b and the MSE, MAML has a closed form (numpy, float64).

    The support loss L1 has gradient g1 = 2 [mean(r1 x1), mean(r1)] with r1 = w x1 + b - y1 and a
    constant Hessian H1 = 2 [[mean(x1^2), mean(x1)], [mean(x1), 1]]. After the inner step
    theta' = theta - alpha g1, the query loss is mean(r2^2) and, by the chain rule, the MAML gradient
    is (I - alpha H1) g2, where g2 is the query gradient at theta'. First-order MAML keeps only g2."""
    x1, y1, x2, y2 = (np.ravel(a) for a in (x1, y1, x2, y2))
    r1 = w * x1 + b - y1
    g1 = 2 * np.array([np.mean(r1 * x1), np.mean(r1)])
    w2, b2 = np.array([w, b]) - alpha * g1
    r2 = w2 * x2 + b2 - y2
    g2 = 2 * np.array([np.mean(r2 * x2), np.mean(r2)])
    h1 = 2 * np.array([[np.mean(x1 ** 2), np.mean(x1)], [np.mean(x1), 1.0]])
    return dict(adapted=(w2, b2), loss=np.mean(r2 ** 2), grad=(np.eye(2) - alpha * h1) @ g2, first_order=g2)


@pytest.fixture
def linear_model(monkeypatch, x64):
    """maml.loss calls maml.net_apply by name: swapping in a linear model keeps every MAML function
    as it is while giving the maths a closed form. (No jitted function is called under the swap,
    so no compiled trace of the linear model is left behind.)"""
    monkeypatch.setattr(maml, "net_apply", linear_apply)
    x1, y1, x2, y2 = (np.asarray(a, np.float64) for a in maml.sample_tasks(random.PRNGKey(3), 3, 7))
    return (jnp.array([[0.7]]), jnp.array([-0.4])), (x1, y1, x2, y2)


ALPHA = 0.03  # large enough that the second-order term alpha * H1 g2 is far above float64 rounding


def test_inner_update_and_maml_loss_match_the_closed_form_of_a_linear_model(linear_model):
    # Float64 with a handful of operations: agreement to 1e-12 relative.
    params, (x1, y1, x2, y2) = linear_model
    for t in range(len(x1)):
        want = closed_form(0.7, -0.4, x1[t], y1[t], x2[t], y2[t], ALPHA)
        (w2, b2) = maml.inner_update(params, x1[t], y1[t], ALPHA)
        np.testing.assert_allclose([w2[0, 0], b2[0]], want["adapted"], rtol=1e-12)
        assert float(maml.maml_loss(params, x1[t], y1[t], x2[t], y2[t], ALPHA)) == pytest.approx(want["loss"], rel=1e-12)
        gw, gb = grad(maml.maml_loss)(params, x1[t], y1[t], x2[t], y2[t], ALPHA)
        np.testing.assert_allclose([gw[0, 0], gb[0]], want["grad"], rtol=1e-10)


def test_batch_maml_loss_of_a_linear_model_is_the_mean_of_the_closed_forms(linear_model):
    params, (x1, y1, x2, y2) = linear_model
    wants = [closed_form(0.7, -0.4, *(a[t] for a in (x1, y1, x2, y2)), ALPHA) for t in range(len(x1))]
    value, (gw, gb) = jax.value_and_grad(maml.batch_maml_loss)(params, x1, y1, x2, y2, ALPHA)
    assert float(value) == pytest.approx(float(np.mean([w["loss"] for w in wants])), rel=1e-12)
    np.testing.assert_allclose([gw[0, 0], gb[0]], np.mean([w["grad"] for w in wants], axis=0), rtol=1e-10)


def test_the_maml_gradient_is_not_the_first_order_one(linear_model):
    """The second-order term -alpha H1 g2 really flows through inner_update: the MAML gradient
    differs from the first-order gradient g2 by exactly that term (closed form), and by far more
    than rounding (>1% of the gradient here)."""
    params, (x1, y1, x2, y2) = linear_model
    want = closed_form(0.7, -0.4, x1[0], y1[0], x2[0], y2[0], ALPHA)
    gw, gb = grad(maml.maml_loss)(params, x1[0], y1[0], x2[0], y2[0], ALPHA)
    full = np.array([gw[0, 0], gb[0]])
    np.testing.assert_allclose(full - want["first_order"], want["grad"] - want["first_order"], rtol=1e-9)
    assert np.linalg.norm(full - want["first_order"]) > 0.01 * np.linalg.norm(full)


# ---- the same functions on the real network, against finite differences ------------------------

@pytest.fixture
def network_and_tasks(x64):
    params = f64_params(seed=1)
    x1, y1, x2, y2 = maml.sample_tasks(random.PRNGKey(2), 4, 10)
    return params, (x1, y1, x2, y2)


# Central differences with h = 1e-7 in float64: truncation error ~h^2 = 1e-14, rounding ~1e-16/h = 1e-9,
# relative to derivatives of order 1. A ReLU kink breaks this only if a pre-activation sits within
# ~h of zero: with h = 1e-5 one of the ~6,400 (point, unit) pairs here did (0.7% off); at 1e-7 none
# of these fixed draws does. Hence 1e-6 relative, with an absolute floor of 1e-8.
FD = dict(rtol=1e-6, atol=1e-8)


def test_inner_update_steps_along_the_finite_difference_gradient_of_the_loss(network_and_tasks):
    params, (x1, y1, _, _) = network_and_tasks
    alpha = 0.01
    step = tree_map(lambda a, b: (b - a) / -alpha, params, maml.inner_update(params, x1[0], y1[0], alpha))
    for seed in range(3):
        d = random_direction(params, seed)
        fd = central_difference(lambda p: maml.loss(p, x1[0], y1[0]), params, d)
        # The displacement was divided by alpha = 0.01, which amplifies its float64 rounding 100-fold.
        np.testing.assert_allclose(tree_vdot(step, d), fd, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.01, 0.1])
def test_maml_gradient_of_the_network_matches_finite_differences(network_and_tasks, alpha):
    params, batch = network_and_tasks
    g = grad(maml.batch_maml_loss)(params, *batch, alpha)
    for seed in range(3):
        d = random_direction(params, seed)
        fd = central_difference(lambda p: maml.batch_maml_loss(p, *batch, alpha), params, d)
        np.testing.assert_allclose(tree_vdot(g, d), fd, **FD)


def test_second_derivative_of_the_maml_loss_matches_finite_differences(network_and_tasks):
    """The Hessian of the MAML objective along a direction (third derivatives of the network loss,
    through the inner update) against central differences of its gradient."""
    params, (x1, y1, x2, y2) = network_and_tasks
    g = grad(maml.maml_loss)
    d = random_direction(params, 7)
    _, hvp = jax.jvp(lambda p: g(p, x1[0], y1[0], x2[0], y2[0], 0.1), (params,), (d,))
    fd = central_difference(lambda p: g(p, x1[0], y1[0], x2[0], y2[0], 0.1), params, d)
    for a, b in zip(tree_leaves(hvp), tree_leaves(fd)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_full_maml_gradient_of_the_network_differs_from_first_order(network_and_tasks):
    """Stopping the gradient through the inner gradient (first-order MAML) changes the meta-gradient
    of the real network by a visible amount (>1% here), so the second-order terms really flow."""
    params, batch = network_and_tasks

    def first_order_maml_loss(p, x1, y1, x2, y2, alpha):
        grads = jax.lax.stop_gradient(grad(maml.loss)(p, x1, y1))
        return maml.loss(tree_map(lambda a, b: a - alpha * b, p, grads), x2, y2)

    def batch_fo(p, *b):
        return jnp.mean(vmap(first_order_maml_loss, (None, 0, 0, 0, 0, None))(p, *b, 0.1))

    full = np.concatenate([np.ravel(a) for a in tree_leaves(grad(maml.batch_maml_loss)(params, *batch, 0.1))])
    first = np.concatenate([np.ravel(a) for a in tree_leaves(grad(batch_fo)(params, *batch))])
    assert float(maml.batch_maml_loss(params, *batch, 0.1)) == pytest.approx(float(batch_fo(params, *batch)), rel=1e-14)
    assert np.linalg.norm(full - first) > 0.01 * np.linalg.norm(full)


# ---- batching and compilation change nothing --------------------------------------------------

def test_vmap_over_tasks_equals_a_loop_over_tasks(network_and_tasks):
    # Float64; vmap reorders no sums inside one task, so agreement is at rounding level (1e-12).
    params, batch = network_and_tasks
    n = len(batch[0])
    looped = [maml.maml_loss(params, *(a[t] for a in batch), 0.05) for t in range(n)]
    assert float(maml.batch_maml_loss(params, *batch, 0.05)) == pytest.approx(float(np.mean(looped)), rel=1e-12)
    looped_grads = [grad(maml.maml_loss)(params, *(a[t] for a in batch), 0.05) for t in range(n)]
    mean_grad = tree_map(lambda *g: sum(g) / n, *looped_grads)
    for a, b in zip(tree_leaves(grad(maml.batch_maml_loss)(params, *batch, 0.05)), tree_leaves(mean_grad)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


def test_step_under_jit_equals_the_same_update_without_jit(network_and_tasks):
    # Float64: XLA's fusion may reorder sums; that moves results by ~1e-15, Adam's step by as little.
    params, batch = network_and_tasks
    state = maml.opt_init(params)
    for i in range(2):  # the second step: Adam's count and moments carried through jit too
        jitted, loss_jit = maml.step(i, state, *batch, 0.01)
        with jax.disable_jit():
            eager, loss_eager = maml.step(i, state, *batch, 0.01)
        assert float(loss_jit) == pytest.approx(float(loss_eager), rel=1e-12)
        for a, b in zip(tree_leaves(maml.get_params(jitted)), tree_leaves(maml.get_params(eager))):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        state = jitted


def test_step_lowers_the_meta_loss_of_its_batch(network_and_tasks):
    params, batch = network_and_tasks
    state, before = maml.step(0, maml.opt_init(params), *batch, 0.01)
    for i in range(1, 20):
        state, after = maml.step(i, state, *batch, 0.01)
    assert after < 0.9 * before


def fresh_maml():
    """maml.py imported anew, as in a new process: a module of its own, whose jitted step has
    not been traced yet."""
    spec = importlib.util.spec_from_file_location("fresh_maml", os.path.join(HERE, "maml.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_network_rebound_before_steps_first_call_is_used_and_one_rebound_after_is_not():
    """The README's ways to put in one's own network: edit the net_apply line, or rebind
    maml.net_apply before the first call of step. Rebound to a network that predicts 0, whose
    meta-loss is the mean of y2 squared, step returns that loss (float32: to 1e-6). step's first
    call traced it and compiled what it traced: rebound back to the ReLU network, step still
    returns the zero network's loss, bit for bit, while batch_maml_loss, not jitted, looks
    net_apply up at each call and gives the ReLU network's (5% away here)."""
    m = fresh_maml()
    relu_apply = m.net_apply
    params = m.net_init(random.PRNGKey(0), (-1, 1))[1]
    state = m.opt_init(params)
    batch = m.sample_tasks(random.PRNGKey(1), 4, 10)
    zero_net_loss = float(np.mean(np.asarray(batch[3], np.float64) ** 2))
    m.net_apply = lambda params, x: jnp.zeros_like(x)
    _, first = m.step(0, state, *batch)
    assert float(first) == pytest.approx(zero_net_loss, rel=1e-6)
    m.net_apply = relu_apply
    _, later = m.step(0, state, *batch)
    assert float(later) == float(first)
    assert float(m.batch_maml_loss(params, *batch)) != pytest.approx(zero_net_loss, rel=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 6))
def test_200_steps_lower_the_one_step_query_loss_of_new_tasks_whatever_the_seeds(seed):
    """The README's example, with other keys for the initialisation, the training stream and the
    new tasks: after 200 meta-steps, one inner_update from the trained parameters leaves 100 new
    tasks with a lower query loss than one from the initial parameters. Seen here for ten seed
    triples: 13% to 35% lower; a claim that held for one seed only would fail here."""
    _, params = maml.net_init(random.PRNGKey(3 * seed), (-1, 1))
    opt_state = maml.opt_init(params)
    for i, key in enumerate(np.asarray(random.split(random.PRNGKey(3 * seed + 1), 200))):
        opt_state, _ = maml.step(i, opt_state, *maml.sample_tasks(key, 25, 10))
    new_tasks = maml.sample_tasks(random.PRNGKey(3 * seed + 2), 100, 10)
    assert maml.batch_maml_loss(maml.get_params(opt_state), *new_tasks) < maml.batch_maml_loss(params, *new_tasks)


# ---- the task sampler --------------------------------------------------------------------------

def fit_sinusoid(x, y):
    """A sin(x + phase) = (A cos phase) sin x + (A sin phase) cos x: linear least squares
    finds it, in float64, for one task's points x, y of shape (k,) or many tasks' (n, k)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m = np.stack([np.sin(x), np.cos(x)], axis=-1)
    mt = np.swapaxes(m, -1, -2)
    a, b = np.moveaxis(np.linalg.solve(mt @ m, mt @ y[..., None])[..., 0], -1, 0)
    return np.hypot(a, b), np.arctan2(b, a), (a, b)


# The paper's amplitudes and K, and the 2019 blog post's.
@pytest.mark.parametrize("s", [dict(amp_range=(0.1, 5.0), k=10), dict(amp_range=(0.1, 0.5), k=20)],
                         ids=["paper", "blog"])
def test_sample_tasks_shapes_ranges_and_one_sinusoid_per_task(s):
    x1, y1, x2, y2 = maml.sample_tasks(random.PRNGKey(0), 50, s["k"], s["amp_range"])
    for a in (x1, y1, x2, y2):
        assert isinstance(a, jax.Array) and a.shape == (50, s["k"], 1) and a.dtype == jnp.float32
    assert -5.0 <= float(jnp.min(jnp.stack([x1, x2]))) and float(jnp.max(jnp.stack([x1, x2]))) < 5.0
    for t in range(50):
        amp, phase, coef = fit_sinusoid(np.ravel(x1[t]), np.ravel(y1[t]))
        # The task's function, recovered from its support points alone, explains its query points:
        # float32 sin at |y| <= 5 carries errors ~1e-6; 1e-4 absolute leaves room and no more.
        np.testing.assert_allclose(coef[0] * np.sin(x2[t]) + coef[1] * np.cos(x2[t]), y2[t], atol=1e-4)
        assert s["amp_range"][0] - 1e-4 <= amp <= s["amp_range"][1] + 1e-4
        assert -1e-4 <= phase <= np.pi + 1e-4


def test_sample_tasks_draws_inputs_and_phases_from_the_ranges_it_is_given():
    """Inputs from x in [1, 2) and phases in [1, 1.1) (the paper's are [-5, 5) and [0, pi); ranges
    that start away from 0, so that a range's start counts): every input inside, and 500 of them
    reach within 0.05 of both ends; every task's phase, recovered by least squares, inside (to
    1e-4, the fit's float32 error)."""
    x1, y1, x2, _ = maml.sample_tasks(random.PRNGKey(3), 50, 5, phase_range=(1.0, 1.1), x_range=(1.0, 2.0))
    xs = np.concatenate([np.ravel(x1), np.ravel(x2)])
    assert 1.0 <= xs.min() < 1.05 and 1.95 < xs.max() < 2.0
    phases = [fit_sinusoid(np.ravel(x1[t]), np.ravel(y1[t]))[1] for t in range(50)]
    assert 1.0 - 1e-4 <= min(phases) and max(phases) <= 1.1 + 1e-4


def test_sample_tasks_same_key_same_tasks_other_key_other_tasks():
    a = maml.sample_tasks(random.PRNGKey(4), 25, 10)
    b = maml.sample_tasks(random.PRNGKey(4), 25, 10)
    c = maml.sample_tasks(random.PRNGKey(5), 25, 10)
    for u, v, w in zip(a, b, c):
        assert np.array_equal(u, v) and not np.allclose(u, w)
    assert not np.allclose(a[0], a[2])  # support and query points are separate draws


def test_sample_tasks_is_jittable_and_vmappable_over_keys():
    keys = vmap(lambda i: random.fold_in(random.PRNGKey(0), i))(jnp.arange(3))
    batched = jit(vmap(lambda k: maml.sample_tasks(k, 25, 10)))(keys)
    assert batched[0].shape == (3, 25, 10, 1)
    np.testing.assert_array_equal(batched[0][1], maml.sample_tasks(random.fold_in(random.PRNGKey(0), 1), 25, 10)[0])



# ---- the task sampler's joint law --------------------------------------------------------------
# The tests above check each number's law alone. They pass a sampler whose phase is a function of
# the amplitude, whose inputs follow the phase, whose query points are its support points, or
# whose tasks are all one task. The claims below are about the joint law: some of the numbers
# drawn are independent, each uniform on its range. Mapped to [0, 1) by those ranges, N draws of
# them are tested by two statistics with known laws under the claim:
#  - Pearson's chi-square on a grid (10 x 10 for two numbers, 5 x 5 x 5 for three), against
#    N / cells draws in each cell: chi-square with cells - 1 degrees of freedom, at least 100
#    draws expected in each cell. It sees a dependence of any shape: a phase that is any
#    function of the amplitude puts every draw on one curve;
#  - Spearman's rank correlation with the margins known, r = 12 mean((U - 1/2)(V - 1/2)): mean 0
#    and variance 1 / N exactly, sqrt(N) r normal (a mean of bounded, symmetric terms). It sees a
#    weak monotone dependence that the grid spreads over many cells.
# With a fixed key each test is deterministic. With a random key, each check fails with
# probability FALSE_ALARM. jax < 0.5 draws other bits from the same key, so each CI corner is a
# fresh draw. The 44 checks below fail a run with probability at most 44 x 5e-7 = 2.2e-5 (union
# bound), 4.4e-5 for CI's two corners. Smallest dependence detected with power > 0.999, at
# N = 20,000 tasks (10,000 pairs of tasks): a rank correlation of 0.058 (0.082); on the 10 x 10
# grid, Cohen's w = sqrt(sum (p - q)^2 / q) of 0.092 (0.13), e.g. two numbers equal in 3.1% (4.3%)
# of tasks, w = 3 x that share; on the 5 x 5 x 5 grid, w = 0.096. (Noncentral chi-square and
# normal powers, computed with scipy.stats, which the tests do not need.)
FALSE_ALARM = 5e-7
N_TASKS = 20_000  # tasks in each draw
K = 5  # support points, and query points, of each task


def uniform_scores(values, low, high):
    """Draws from U[low, high) mapped to [0, 1); a value a rounding error outside stays inside."""
    scores = (np.asarray(values, np.float64) - low) / (high - low)
    return np.clip(scores, 0.0, 1.0 - 1e-12)


def scores(amp, phase, x):
    """n tasks' amplitudes (n,), phases (n,) and inputs (n, m, 1), each mapped to [0, 1) by
    its range. A phase recovered a rounding error below 0 stays at 0 rather than wrap round."""
    phase = np.mod(phase + np.pi / 2, 2 * np.pi) - np.pi / 2
    return dict(amp=uniform_scores(amp, *maml.AMP_RANGE),
                phase=uniform_scores(phase, *maml.PHASE_RANGE),
                x=uniform_scores(np.asarray(x)[..., 0], *maml.X_RANGE))


def sinusoid_draws(key):
    """sample_sinusoids' tasks: A sin phase and A cos phase read off each task's function at
    x = 0 and pi/2, and its 2K inputs."""
    sinusoid, x = maml.sample_sinusoids(key, N_TASKS, 2 * K)
    a_sin = np.ravel(sinusoid(jnp.zeros((N_TASKS, 1, 1))))
    a_cos = np.ravel(sinusoid(jnp.full((N_TASKS, 1, 1), jnp.pi / 2)))
    return scores(np.hypot(a_sin, a_cos), np.arctan2(a_sin, a_cos), x)


def task_draws(key):
    """sample_tasks' tasks: amplitude and phase fitted to each task's K support points, and its
    inputs, support then query."""
    x1, y1, x2, _ = maml.sample_tasks(key, N_TASKS, K)
    amp, phase, _ = fit_sinusoid(x1[..., 0], y1[..., 0])
    return scores(amp, phase, np.concatenate([x1, x2], axis=1))


DRAWS = {"sample_sinusoids": sinusoid_draws, "sample_tasks": task_draws}


def chi_square_p(*columns, bins):
    """The p-value of Pearson's chi-square of N draws of len(columns) numbers in [0, 1) against
    the uniform law on the cube, on a grid of `bins` per side: the upper tail of chi-square with
    cells - 1 degrees of freedom (gammaincc, the regularised upper incomplete gamma function)."""
    counts, _ = np.histogramdd(np.stack(columns, axis=1), bins=bins,
                               range=[(0.0, 1.0)] * len(columns))
    expected = len(columns[0]) / counts.size
    statistic = np.sum((counts - expected) ** 2) / expected
    return float(gammaincc((counts.size - 1) / 2, statistic / 2))


def assert_independent(u, v, what):
    """u and v, N draws each in [0, 1): independent and uniform, by both statistics."""
    p = chi_square_p(u, v, bins=10)
    assert p > FALSE_ALARM, f"{what}: chi-square p-value {p:.1e}"
    rho = 12 * np.mean((u - 0.5) * (v - 0.5))
    p = math.erfc(abs(rho) * math.sqrt(len(u)) / math.sqrt(2))
    assert p > FALSE_ALARM, f"{what}: rank correlation {rho:.3f}, p-value {p:.1e}"


def two_positions(n, m):
    """For task t, two distinct positions among its m inputs, going through every ordered
    pair in turn: a tie between any two of a task's inputs shows in n / (m (m - 1)) tasks."""
    t = np.arange(n)
    return t % m, (t % m + 1 + t // m % (m - 1)) % m


def assert_independent_tasks(a, b):
    """Task t of draws a and task t of draws b: independent, number by number (amplitudes,
    phases, and the inputs at position t mod m)."""
    n, m = a["x"].shape
    at = (np.arange(n), np.arange(n) % m)
    assert_independent(a["amp"], b["amp"], "two tasks' amplitudes")
    assert_independent(a["phase"], b["phase"], "two tasks' phases")
    assert_independent(a["x"][at], b["x"][at], "two tasks' inputs")


@pytest.mark.parametrize("draws", DRAWS.values(), ids=DRAWS)
def test_amplitude_phase_and_each_input_of_a_task_are_independent(draws):
    """Within each of 20,000 tasks: amplitude, phase and an input (each position in turn), two
    by two and all three at once; and two of the task's inputs (each pair in turn)."""
    d = draws(random.PRNGKey(8))
    n, m = d["x"].shape
    first, second = two_positions(n, m)
    x, other_x = d["x"][np.arange(n), first], d["x"][np.arange(n), second]
    assert_independent(d["amp"], d["phase"], "amplitude and phase")
    assert_independent(d["amp"], x, "amplitude and an input")
    assert_independent(d["phase"], x, "phase and an input")
    assert_independent(x, other_x, "two inputs of a task")
    p = chi_square_p(d["amp"], d["phase"], x, bins=5)
    assert p > FALSE_ALARM, f"amplitude, phase and an input: chi-square p-value {p:.1e}"


@pytest.mark.parametrize("draws", DRAWS.values(), ids=DRAWS)
def test_the_tasks_of_a_meta_batch_are_independent(draws):
    """Tasks 0, 2, 4, ... against tasks 1, 3, 5, ...: 10,000 pairs of neighbours, each pair
    independent of the others under the claim. A batch of one task repeated, or of tasks
    that share a draw with their neighbour, fails."""
    d = draws(random.PRNGKey(9))
    assert_independent_tasks({k: v[0::2] for k, v in d.items()},
                             {k: v[1::2] for k, v in d.items()})


@pytest.mark.parametrize("draws", DRAWS.values(), ids=DRAWS)
def test_two_keys_give_independent_meta_batches(draws):
    """Two keys split from one, as the training loops make them: task t of one meta-batch is
    independent of task t of the other. A sampler that draws part of a task from a fixed key
    fails."""
    key_a, key_b = random.split(random.PRNGKey(10))
    assert_independent_tasks(draws(key_a), draws(key_b))


def test_support_and_query_points_are_distinct_draws_of_one_task():
    """One task: every query point of 20,000 tasks lies on the sinusoid fitted to the task's
    support points (float32 sin at |y| <= 5 errs by ~1e-6, more where a task's support points
    fix the fit badly: seen at most 1.5e-5 over 300 keys; a query point of another sinusoid
    misses by ~1). Distinct draws: a query input (each position in turn) is independent of a
    support input (each position in turn)."""
    x1, y1, x2, y2 = (np.asarray(a)[..., 0] for a in maml.sample_tasks(random.PRNGKey(11),
                                                                          N_TASKS, K))
    _, _, (a, b) = fit_sinusoid(x1, y1)
    on_fit = a[:, None] * np.sin(x2) + b[:, None] * np.cos(x2)
    np.testing.assert_allclose(on_fit, y2, atol=1e-3)
    t = np.arange(N_TASKS)
    support = uniform_scores(x1[t, t % K], *maml.X_RANGE)
    query = uniform_scores(x2[t, t // K % K], *maml.X_RANGE)
    assert_independent(support, query, "a support input and a query input")


# ---- maml.py on its own ------------------------------------------------------------------------

def test_maml_py_needs_no_package_but_jax_and_numpy():
    """Every import statement of the file, at any depth, names jax, numpy or a module of Python's
    standard library: a copy-paste user installs nothing else."""
    tree = ast.parse(open(os.path.join(HERE, "maml.py")).read())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imported += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    packages = {name.split(".")[0] for name in imported} - set(sys.stdlib_module_names)
    assert packages == {"jax", "numpy"}, imported


def code_lines(path):
    """Lines holding code: not blank, not only a comment, not part of a docstring (as the hook counts)."""
    src = open(path).read()
    docstrings = set()
    for node in ast.walk(ast.parse(src)):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
    code = set()
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                            tokenize.ENDMARKER):
            code.update(range(tok.start[0], tok.end[0] + 1))
    return len(code - docstrings), len(src.splitlines())


def test_maml_py_is_about_50_lines_of_code_and_at_most_135_in_all():
    code, total = code_lines(os.path.join(HERE, "maml.py"))
    assert 40 <= code <= 65 and total <= 135, (code, total)


@pytest.mark.slow
def test_maml_py_alone_in_an_empty_folder_meta_trains_and_adapts(tmp_path):
    """maml.py copied alone into an empty folder, run with 1,000 meta-steps (the default is 50,000,
    the paper 70,000): it prints its progress and a last line in which one inner_update lowers the MSE
    of 600 new tasks. Seen here: 3.06 before adapting, 1.26 after. The bound, after < 0.8 x before,
    still fails an untrained network, which one step barely moves (seen: 4.37 to 4.16)."""
    shutil.copy(os.path.join(HERE, "maml.py"), tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(JAX_PLATFORMS="cpu")
    # The time limit bounds a hang, not the speed: 1,000 steps take seconds alone, and half an
    # hour leaves a busy machine all the slack it needs.
    run = subprocess.run([sys.executable, "-c", "import maml; maml.main(steps=1000)"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    assert set(os.listdir(tmp_path)) <= {"maml.py", "__pycache__"}  # it needed nothing else and wrote nothing
    lines = run.stdout.splitlines()
    assert re.fullmatch(r"step  1,000/1,000  meta-loss \d+\.\d{3}  \d+ s", lines[0]), lines
    last = re.fullmatch(r"600 new tasks, K = 5: MSE (\d+\.\d\d) before adapting, (\d+\.\d\d) after one "
                        r"inner_update \(the paper: 0\.67\)", lines[-1])
    assert last and len(lines) == 2, lines
    before, after = map(float, last.groups())
    assert after < 0.8 * before, (before, after)


# ---- the distributions and defaults the paper fixes --------------------------------------------

def ks_uniform(values, low, high):
    """Kolmogorov-Smirnov statistic of values against U[low, high]: the largest gap between the
    empirical distribution function and the uniform one."""
    v = np.sort(np.ravel(values))
    cdf, n = (v - low) / (high - low), len(v)
    return max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))


def test_sampled_amplitudes_phases_and_inputs_are_uniform_on_the_papers_ranges():
    """The paper's distribution, not just its bounds: amplitude U[0.1, 5], phase U[0, pi] (each
    recovered from a task's points by least squares), x U[-5, 5]. With a fixed key, each
    Kolmogorov-Smirnov statistic stays below its 0.1% critical value, 1.95 / sqrt(n): a draw from
    [-5, 0), a constant amplitude or a squared uniform all exceed it many times over. The
    defaults are the paper's, so they are what is sampled here."""
    x1, y1, x2, y2 = maml.sample_tasks(random.PRNGKey(7), 2000, 5)
    fits = [fit_sinusoid(np.ravel(x1[t]), np.ravel(y1[t])) for t in range(2000)]
    amps, phases = np.array([f[0] for f in fits]), np.array([f[1] for f in fits])
    xs = np.concatenate([np.ravel(x1), np.ravel(x2)])
    for values, low, high in ((amps, 0.1, 5.0), (phases, 0.0, np.pi), (xs, -5.0, 5.0)):
        assert ks_uniform(values, low, high) < 1.95 / np.sqrt(len(values)), (low, high)
    assert ks_uniform(amps ** 2 / 5, 0.1, 5.0) > 1.95 / np.sqrt(len(amps))  # the test can fail


def test_the_network_is_the_papers_1_40_40_1_and_the_inner_step_defaults_to_0_01():
    """Layer shapes (1, 40), (40, 40), (40, 1) with biases, ReLUs between; every function's alpha
    defaults to the paper's 0.01: the default call equals the call with 0.01, exactly; under jit
    a default is a constant and an argument is traced, so step's two programs are compiled
    differently: float32 rounding, 1e-6 relative (another step size moves them by 1e-3 or more)."""
    _, params = maml.net_init(random.PRNGKey(0), (-1, 1))
    assert [tuple(np.shape(w)) for w in tree_leaves(params)] == [(1, 40), (40,), (40, 40), (40,), (40, 1), (1,)]
    x1, y1, x2, y2 = maml.sample_tasks(random.PRNGKey(1), 3, 10)
    for a, b in zip(tree_leaves(maml.inner_update(params, x1[0], y1[0])),
                    tree_leaves(maml.inner_update(params, x1[0], y1[0], 0.01))):
        np.testing.assert_array_equal(a, b)
    assert maml.maml_loss(params, x1[0], y1[0], x2[0], y2[0]) == maml.maml_loss(params, x1[0], y1[0], x2[0], y2[0], 0.01)
    assert maml.batch_maml_loss(params, x1, y1, x2, y2) == maml.batch_maml_loss(params, x1, y1, x2, y2, 0.01)
    opt = maml.opt_init(params)
    for a, b in zip(tree_leaves(maml.step(0, opt, x1, y1, x2, y2)), tree_leaves(maml.step(0, opt, x1, y1, x2, y2, 0.01))):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_both_samplers_default_to_the_papers_ranges_stated_once():
    """The paper's ranges (appendix C: amplitude [0.1, 5], phase [0, pi], x in [-5, 5]) are stated
    once, as maml.py's constants, and both samplers default to them: a default call draws exactly
    what a call with the paper's literal ranges draws. sample_sinusoids is the one to watch: no
    caller in the project uses its defaults, so only this test would see a wrong one."""
    paper = ((0.1, 5.0), (0.0, np.pi), (-5.0, 5.0))
    assert (maml.AMP_RANGE, maml.PHASE_RANGE, maml.X_RANGE) == paper
    key = random.PRNGKey(4)
    f, x = maml.sample_sinusoids(key, 7, 3)
    g, x_given = maml.sample_sinusoids(key, 7, 3, *paper)
    np.testing.assert_array_equal(x, x_given)
    np.testing.assert_array_equal(f(x), g(x))
    for a, b in zip(maml.sample_tasks(key, 7, 3), maml.sample_tasks(key, 7, 3, *paper)):
        np.testing.assert_array_equal(a, b)


def test_every_inner_step_size_defaults_to_the_one_constant():
    """maml.ALPHA is the paper's 0.01, and every function that takes alpha defaults to it (the
    default object itself, so there is one place to change it)."""
    import inspect
    assert maml.ALPHA == 0.01
    for fn in (maml.inner_update, maml.maml_loss, maml.batch_maml_loss, maml.step):
        assert inspect.signature(fn).parameters["alpha"].default is maml.ALPHA, fn


def adam_by_hand(params, grads_per_step, steps, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    """Adam (Kingma & Ba, 2015, algorithm 1), in NumPy: the paper's meta-optimizer, step size 1e-3,
    with its default moments; `steps` are the step numbers i, counted from 0."""
    p = [np.asarray(a, np.float64) for a in tree_leaves(params)]
    m, v = [np.zeros_like(a) for a in p], [np.zeros_like(a) for a in p]
    for i, grads in zip(steps, grads_per_step):
        for j, g in enumerate(tree_leaves(grads)):
            m[j] = b1 * m[j] + (1 - b1) * np.asarray(g)
            v[j] = b2 * v[j] + (1 - b2) * np.asarray(g) ** 2
            p[j] = p[j] - lr * (m[j] / (1 - b1 ** (i + 1))) / (np.sqrt(v[j] / (1 - b2 ** (i + 1))) + eps)
    return p


@pytest.mark.parametrize("alpha", [(), (0.05,)], ids=["default alpha", "alpha 0.05"])
def test_step_is_adam_at_1e_3_on_the_maml_gradient_with_its_step_count(x64, alpha):
    """Three steps of maml.step from step number 5 (so the bias corrections use the count: an
    off-by-one or a step counted from 0 again changes them) equal Adam by hand on the gradients of
    batch_maml_loss, with the inner step size step is given, or both defaults. Float64: the two
    computations agree to ~1e-15 relative; 1e-10 leaves room."""
    params, (x1, y1, x2, y2) = f64_params(3), maml.sample_tasks(random.PRNGKey(2), 4, 10)
    batch = [jnp.asarray(a, jnp.float64) for a in (x1, y1, x2, y2)]
    state, grads, p = maml.opt_init(params), [], params
    for i in (5, 6, 7):
        grads.append(grad(maml.batch_maml_loss)(maml.get_params(state), *batch, *alpha))
        state, _ = maml.step(i, state, *batch, *alpha)
    for a, b in zip(tree_leaves(maml.get_params(state)), adam_by_hand(p, grads, (5, 6, 7))):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
