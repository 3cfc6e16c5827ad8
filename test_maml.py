"""The claims that maml.py rests on, each with its tolerance and the reason for it.

Derivatives are checked in float64 (jax.enable_x64) against analytic values and central finite
differences; float32 is used only where the claim is about what the program does by default.
"""
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import grad, jit, random, vmap
from jax.tree_util import tree_leaves, tree_map

import maml

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def x64():
    """Run a test in float64, so that analytic and finite-difference values can be compared tightly."""
    with jax.enable_x64(True):
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
        assert d(1.0) == pytest.approx(np.e, rel=1e-15), f"derivative {n}"


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
        assert maml.maml_loss(params, x1[t], y1[t], x2[t], y2[t], ALPHA) == pytest.approx(want["loss"], rel=1e-12)
        gw, gb = grad(maml.maml_loss)(params, x1[t], y1[t], x2[t], y2[t], ALPHA)
        np.testing.assert_allclose([gw[0, 0], gb[0]], want["grad"], rtol=1e-10)


def test_batch_maml_loss_of_a_linear_model_is_the_mean_of_the_closed_forms(linear_model):
    params, (x1, y1, x2, y2) = linear_model
    wants = [closed_form(0.7, -0.4, *(a[t] for a in (x1, y1, x2, y2)), ALPHA) for t in range(len(x1))]
    value, (gw, gb) = jax.value_and_grad(maml.batch_maml_loss)(params, x1, y1, x2, y2, ALPHA)
    assert value == pytest.approx(np.mean([w["loss"] for w in wants]), rel=1e-12)
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
    assert maml.batch_maml_loss(params, *batch, 0.1) == pytest.approx(batch_fo(params, *batch), rel=1e-14)
    assert np.linalg.norm(full - first) > 0.01 * np.linalg.norm(full)


# ---- batching and compilation change nothing --------------------------------------------------

def test_vmap_over_tasks_equals_a_loop_over_tasks(network_and_tasks):
    # Float64; vmap reorders no sums inside one task, so agreement is at rounding level (1e-12).
    params, batch = network_and_tasks
    n = len(batch[0])
    looped = [maml.maml_loss(params, *(a[t] for a in batch), 0.05) for t in range(n)]
    assert maml.batch_maml_loss(params, *batch, 0.05) == pytest.approx(np.mean(looped), rel=1e-12)
    looped_grads = [grad(maml.maml_loss)(params, *(a[t] for a in batch), 0.05) for t in range(n)]
    mean_grad = tree_map(lambda *g: sum(g) / n, *looped_grads)
    for a, b in zip(tree_leaves(grad(maml.batch_maml_loss)(params, *batch, 0.05)), tree_leaves(mean_grad)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


def test_step_under_jit_equals_the_same_update_without_jit(network_and_tasks):
    # Float64: XLA's fusion may reorder sums; that moves results by ~1e-15, Adam's step by as little.
    params, batch = network_and_tasks
    state = maml.opt_init(params)
    for i in range(3):
        jitted, loss_jit = maml.step(i, state, *batch, 0.01)
        with jax.disable_jit():
            eager, loss_eager = maml.step(i, state, *batch, 0.01)
        assert loss_jit == pytest.approx(loss_eager, rel=1e-12)
        for a, b in zip(tree_leaves(maml.get_params(jitted)), tree_leaves(maml.get_params(eager))):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        state = jitted


def test_step_lowers_the_meta_loss_of_its_batch(network_and_tasks):
    params, batch = network_and_tasks
    state, before = maml.step(0, maml.opt_init(params), *batch, 0.01)
    for i in range(1, 20):
        state, after = maml.step(i, state, *batch, 0.01)
    assert after < 0.9 * before


def test_the_fused_training_loop_equals_the_copy_paste_loop():
    """train_chunk (lax.scan over presampled batches) computes the same steps as the loop a reader
    writes: sample_tasks(keys[i]) then step, once per iteration. Float32, 20 steps: the two
    programs are compiled differently, so rounding differs by ~1e-7 per step; Adam's normalised steps
    keep it from growing. 1e-5 relative, 1e-6 absolute."""
    setup = maml.SETUPS["paper"]
    _, params = maml.net_init(random.PRNGKey(0), (-1, 1))
    keys = np.asarray(random.split(random.PRNGKey(5), 20))
    state = maml.opt_init(params)
    losses = []
    for i in range(20):
        state, loss = maml.step(i, state, *maml.sample_tasks(keys[i], 25, 10), 0.01)
        losses.append(loss)
    fused, fused_losses = maml.train_chunk(maml.opt_init(params), keys, np.arange(20), setup["amp_range"],
                                           0.01, step_fn=maml.step, n_tasks=25, k=10)
    np.testing.assert_allclose(fused_losses, losses, rtol=1e-5)
    for a, b in zip(tree_leaves(maml.get_params(fused)), tree_leaves(maml.get_params(state))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ---- the task sampler --------------------------------------------------------------------------

def fit_sinusoid(x, y):
    """A sin(x + phase) = (A cos phase) sin x + (A sin phase) cos x: linear least squares finds it."""
    (a, b), *_ = np.linalg.lstsq(np.stack([np.sin(x), np.cos(x)], axis=1), y, rcond=None)
    return np.hypot(a, b), np.arctan2(b, a), (a, b)


@pytest.mark.parametrize("setup", ["paper", "blog"])
def test_sample_tasks_shapes_ranges_and_one_sinusoid_per_task(setup):
    s = maml.SETUPS[setup]
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


# ---- the experiment's pieces -------------------------------------------------------------------

def test_adaptation_curves_start_at_the_unadapted_loss_and_follow_inner_update():
    _, params = maml.net_init(random.PRNGKey(0), (-1, 1))
    x1, y1, x_test, y_test = maml.eval_tasks(random.PRNGKey(1), 4, 5, (0.1, 5.0))
    curves = maml.adaptation_curves(params, x1, y1, x_test, y_test, 0.01, 2)
    assert curves.shape == (4, 3)
    for t in range(4):
        once = maml.inner_update(params, x1[t], y1[t], 0.01)
        twice = maml.inner_update(once, x1[t], y1[t], 0.01)
        # float32, compiled differently (scan + vmap against plain calls): 1e-5 relative
        np.testing.assert_allclose(curves[t], [maml.loss(p, x_test, y_test[t]) for p in (params, once, twice)],
                                   rtol=1e-5)


def test_mean_ci_is_mean_and_1_96_standard_errors():
    mean, half = maml.mean_ci(np.array([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5 and half == pytest.approx(1.96 * np.std([1, 2, 3, 4], ddof=1) / 2, rel=1e-15)


def test_write_whole_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "figure.png"
    path.write_bytes(b"old")

    def broken(f):
        f.write(b"half a fig")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        maml.write_whole(str(path), broken)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["figure.png"]
    maml.write_whole(str(path), lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["figure.png"]


# ---- the command line --------------------------------------------------------------------------

@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
    """One persistent XLA compilation cache for every `python maml.py` the tests start: the first run
    compiles (seconds), the later ones load its executables. The programs computed are unchanged."""
    return str(tmp_path_factory.mktemp("xla-cache"))


def run_cli(cache, *args, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return subprocess.run([sys.executable, os.path.join(HERE, "maml.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=HERE, env=env)


def table_lines(stdout):
    """Everything `python maml.py` prints that must not depend on the machine or the folder."""
    return [ln for ln in stdout.splitlines() if not re.search(r"compiled in|steps/s|ms per meta-step|written to", ln)]


SHORT_RUN = ("--steps", "1000", "--eval-tasks", "200", "--seed", "0")


@pytest.fixture(scope="session")
def short_run(tmp_path_factory, compile_cache):
    """`python maml.py` for 1,000 steps of the paper's setting (seconds), evaluated on 200 tasks."""
    out = tmp_path_factory.mktemp("figures")
    return run_cli(compile_cache, *SHORT_RUN, "--out", str(out)), out


def mse_row(table, k, name):
    """The means and CI half-widths of one row of results.txt, for n = 0, 1, 5, 10 steps."""
    row = re.search(rf"^ *{k}  {name} +\S+((?: +\S+ ± \S+){{4}})$", table, re.M).group(1).split()
    return [(float(row[i]), float(row[i + 2])) for i in range(0, 12, 3)]


def test_a_meta_trained_model_adapts_better_than_a_pretrained_one(short_run):
    """After 1,000 meta-steps, one gradient step on K = 5 points gives MAML a held-out MSE below the
    baseline's (trained as long, step size tuned), with disjoint 95% intervals over 200 tasks, and
    at most 3/4 of it. Seen here: 1.393 +- 0.210 against 2.640 +- 0.348
    (K = 10: 1.011 +- 0.142 against 2.354 +- 0.322)."""
    result, out = short_run
    assert result.returncode == 0, result.stderr
    table = (out / "results.txt").read_text()
    for k in (5, 10):
        (m, m_ci), (b, b_ci) = mse_row(table, k, "MAML")[1], mse_row(table, k, "pretrained")[1]
        assert m + m_ci < b - b_ci and m < 0.75 * b, (k, m, m_ci, b, b_ci)


def test_cli_writes_valid_pngs_and_the_results_table(short_run):
    import matplotlib.image

    result, out = short_run
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == ["adaptation.png", "meta_training_loss.png", "mse_vs_steps.png", "results.txt"]
    for name in ("adaptation.png", "meta_training_loss.png", "mse_vs_steps.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(out / name)
        assert image.shape[0] > 300 and image.shape[1] > 500 and image.std() > 0.05  # a real picture
    table = (out / "results.txt").read_text()
    assert table in result.stdout
    assert len(mse_row(table, 5, "MAML")) == len(mse_row(table, 10, "pretrained")) == 4
    assert "0.67" in table and "2.19" in table  # the paper's numbers beside ours
    assert re.search(r"MAML: step +1,000/1,000 .* steps/s", result.stdout)  # progress was shown
    assert re.search(r"meta-training: \d+\.\d+ ms per meta-step", result.stdout)


def test_cli_same_seed_prints_the_same_numbers(short_run, compile_cache, tmp_path):
    first, first_out = short_run
    again = run_cli(compile_cache, *SHORT_RUN, "--out", str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert table_lines(again.stdout) == table_lines(first.stdout)
    assert (tmp_path / "results.txt").read_text() == (first_out / "results.txt").read_text()


BAD_FLAGS = [
    (["--steps", "0"], "--steps", ">= 1"),
    (["--steps", "-5"], "--steps", ">= 1"),
    (["--steps", "ten"], "--steps", ">= 1"),
    (["--steps", "2.5"], "--steps", ">= 1"),
    (["--tasks", "0"], "--tasks", ">= 1"),
    (["--k", "-1"], "--k", ">= 1"),
    (["--alpha", "0"], "--alpha", "> 0"),
    (["--alpha", "-0.1"], "--alpha", "> 0"),
    (["--alpha", "nan"], "--alpha", "> 0"),
    (["--alpha", "inf"], "--alpha", "> 0"),
    (["--alpha", "fast"], "--alpha", "> 0"),
    (["--seed", "-1"], "--seed", "[0, 2**32)"),
    (["--seed", str(2 ** 32)], "--seed", "[0, 2**32)"),
    (["--eval-tasks", "1"], "--eval-tasks", ">= 2"),
    (["--setup", "nature"], "--setup", "'paper', 'blog'"),
    (["--stepz", "10"], "--stepz", "unrecognized"),
]


@pytest.mark.parametrize("argv,flag,allowed", BAD_FLAGS, ids=[" ".join(a) for a, _, _ in BAD_FLAGS])
def test_cli_bad_flag_stops_with_one_line_naming_it(argv, flag, allowed, tmp_path, compile_cache):
    (tmp_path / "adaptation.png").write_bytes(b"earlier figure")
    result = run_cli(compile_cache, *argv, "--out", str(tmp_path), timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""  # stopped before any training
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("maml.py: error:") and flag in lines[0] and allowed in lines[0]
    assert os.listdir(tmp_path) == ["adaptation.png"] and (tmp_path / "adaptation.png").read_bytes() == b"earlier figure"


def test_cli_unwritable_output_folder_stops_with_one_line(tmp_path, compile_cache):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # a path under a file cannot be a folder, even for root
    result = run_cli(compile_cache, "--out", str(blocker / "figures"), timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--out" in lines[0] and "cannot write" in lines[0]
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("alpha,where", [("1e30", "MAML diverged at step 0"),
                                         ("1000", "MAML adaptation with step size 1000 diverged")])
def test_cli_divergence_stops_and_writes_nothing(alpha, where, tmp_path, compile_cache):
    """An inner step size of 1e30 turns the first meta-loss into NaN; one of 1000 trains to finite
    meta-losses (Adam's steps are bounded) but blows held-out adaptation up to inf. Both stop the run."""
    (tmp_path / "results.txt").write_text("earlier results")
    result = run_cli(compile_cache, "--steps", "1000", "--alpha", alpha, "--out", str(tmp_path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and where in lines[0] and "nothing was written" in lines[0]
    assert os.listdir(tmp_path) == ["results.txt"] and (tmp_path / "results.txt").read_text() == "earlier results"


def test_report_shows_the_papers_numbers_only_beside_the_papers_setting():
    """The paper's MSEs belong to amplitudes U[0.1, 5]; beside the blog's U[0.1, 0.5] they mislead."""
    curves = {(name, k): np.ones((3, 11)) for k in maml.EVAL_KS for name in ("MAML", "pretrained")}
    sizes = {key: 0.01 for key in curves}
    assert maml.report(curves, sizes, 3, paper=True).count("(paper)") == 2
    assert "(paper)" not in maml.report(curves, sizes, 3, paper=False)


def test_report_leaves_diverged_tasks_out_of_the_means_and_counts_them():
    """Three tasks: one improves (10 -> 5), one gets worse (1 -> 2), one overflows (1 -> inf).
    The row's means use the two finite tasks and carry a *; the worse count is 2 (inf and the
    1 -> 2 task), the worst finite one ended at 2, and the diverged one is counted on its own."""
    mse = np.array([[10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0],
                    [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0],
                    [1.0, 2.0, 4.0, 8.0, 1e3, 1e9, 1e20, 1e38, np.inf, np.inf, np.inf]])
    curves = {(name, k): mse for k in maml.EVAL_KS for name in ("MAML", "pretrained")}
    text = maml.report(curves, {key: 0.01 for key in curves}, 3, paper=False)
    n10 = "%.3f ± %.3f*" % maml.mean_ci(np.array([5.0, 2.0]))
    assert re.search(rf"^  5  MAML +0\.01 +5\.500 ± \S+\*.* {re.escape(n10)}$", text, re.M)
    assert "K =  5, MAML: 2 of 3 tasks end 10 steps with a higher MSE than they started with (worst: 2.000)" in text
    assert text.count("1 of them diverged (MSE inf or NaN): left out of the row marked *") == 4


def test_report_prints_a_runaway_mean_in_scientific_notation_apart_from_its_neighbours():
    """A finite but huge MSE (a task that ran away without overflowing, as seen on a GPU) must not
    glue its cell to the next one; the mean is computed in float64, where its square fits."""
    mse = np.ones((3, 11), np.float32)
    mse[0, 5:] = 3e32
    curves = {(name, k): mse for k in maml.EVAL_KS for name in ("MAML", "pretrained")}
    with np.errstate(over="raise"):
        text = maml.report(curves, {key: 0.01 for key in curves}, 3, paper=False)
    assert re.search(r"^  5  MAML +0\.01 +1\.000 ± 0\.000 +1\.000 ± 0\.000 +1\.00e\+32 ± \S+ +1\.00e\+32 ± \S+$",
                     text, re.M), text
    assert "(worst: 3.00e+32)" in text
