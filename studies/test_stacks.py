"""studies/stacks/: maml.py on Flax NNX + optax and on Equinox + optax computes what maml.py does.

From maml.py's initial weights carried into each framework: the loss, the inner update and the
second-order meta-gradient equal maml.py's in float64; optax's Adam, in each file's step on a flat
list of the arrays, follows maml.step's trajectory in float32; a multi-step inner loop built on
each file's inner_update takes a fresh gradient at every step; ANIL leaves the body out of the
inner step but not out of the meta-gradient.

Without flax, equinox or optax these tests skip, with the reason. Where CI adds the stacks
(.ci/run, at both corners) MAML_STACKS_REQUIRED=1 is set, and a missing package is an error.
"""
import importlib
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import grad, random
from jax.tree_util import tree_leaves, tree_map

import experiment
import maml
from studies import variants

STACKS = {"nnx": ("flax", "optax"), "equinox": ("equinox", "optax")}


def need(package):
    """A stack's package: skip without it, except where CI's stack part says it must be there."""
    if os.environ.get("MAML_STACKS_REQUIRED") == "1":
        return importlib.import_module(package)  # an ImportError here fails the test
    return pytest.importorskip(package, reason=f"{package} is not installed "
                               "(pip install -r studies/stacks/requirements.txt)")


class Nnx:
    """Carry stax's [(W, b), (), (W, b), (), (W, b)] into maml_nnx's State and back."""
    key = "nnx"  # in studies/stack_speed.py

    def __init__(self):
        self.m = importlib.import_module("studies.stacks.maml_nnx")

    def carry(self, params):
        _, state = self.m.net_init(random.PRNGKey(0))
        (w1, b1), _, (w2, b2), _, (w3, b3) = params
        # A State's leaves come in the order of its keys: dense1's bias, its kernel, dense2's...
        leaves = [b1, w1, b2, w2, b3, w3]
        assert [l.shape for l in tree_leaves(state)] == [l.shape for l in leaves]
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(state), leaves)

    def back(self, state):
        """From a State or from step's flat list of its arrays."""
        b1, w1, b2, w2, b3, w3 = tree_leaves(state)
        return [(w1, b1), (), (w2, b2), (), (w3, b3)]

    def leaves(self, state):
        return tree_leaves(state)  # what step takes

    def value_and_grad(self, f):
        return jax.value_and_grad(f)  # the State is a pytree of arrays: plain JAX


class Equinox:
    """Carry stax's parameters into maml_equinox's model, each weight (in, out) as stax's, and
    back."""
    key = "eqx"  # in studies/stack_speed.py

    def __init__(self):
        self.m = importlib.import_module("studies.stacks.maml_equinox")
        self.eqx = importlib.import_module("equinox")

    def carry(self, params):
        model = self.m.net_init(random.PRNGKey(0))
        dense = [params[0], params[2], params[4]]

        def where(m):
            return [l.weight for l in m.layers] + [l.bias for l in m.layers]
        return self.eqx.tree_at(where, model, [w for w, _ in dense] + [b for _, b in dense])

    def back(self, model):
        """From a model or from step's flat list of its arrays."""
        w1, b1, w2, b2, w3, b3 = self.leaves(model)
        return [(w1, b1), (), (w2, b2), (), (w3, b3)]

    def leaves(self, model):
        return tree_leaves(self.eqx.filter(model, self.eqx.is_inexact_array))  # what step takes

    def value_and_grad(self, f):
        return self.eqx.filter_value_and_grad(f)  # the model holds its activation function too


@pytest.fixture(params=list(STACKS))
def stack(request):
    for package in STACKS[request.param]:
        need(package)
    return {"nnx": Nnx, "equinox": Equinox}[request.param]()


def flat(tree):
    return jnp.concatenate([leaf.ravel() for leaf in tree_leaves(tree)])


def largest_difference(a, b):
    """The largest difference, relative to the largest magnitude, between two parameter trees."""
    a, b = flat(a), flat(b)
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def start(dtype):
    """maml.py's initial parameters and one meta-batch of 5 tasks with K = 10, in `dtype`."""
    params = tree_map(lambda a: a.astype(dtype), maml.net_init(random.PRNGKey(0), (-1, 1))[1])
    tasks = tuple(a.astype(dtype) for a in maml.sample_tasks(random.PRNGKey(1), 5, 10))
    return params, tasks


def test_each_file_repeats_maml_py_sample_tasks_draw_for_draw(stack):
    """Standing alone, each file repeats maml.py's sampler: the same key, the same tasks. So
    on the draws of test_maml.py's tests of the sampler's joint law (20,000 tasks of K = 5,
    from keys 8, 9 and 11 and the two split from 10), each of their statistics is the same
    number for the file's sampler, and each of their claims (independence within a task,
    between tasks, of support and query, of two keys) holds for it, with no further false
    alarm."""
    joint_law_keys = [random.PRNGKey(i) for i in (8, 9, 11)]
    joint_law_keys += list(random.split(random.PRNGKey(10)))
    draws = [(random.PRNGKey(3), 4, 7)] + [(key, 20_000, 5) for key in joint_law_keys]
    for key, n_tasks, k in draws:
        for got, want in zip(stack.m.sample_tasks(key, n_tasks, k),
                             maml.sample_tasks(key, n_tasks, k)):
            np.testing.assert_array_equal(got, want)


# float64 leaves only the rounding of a few hundred operations in a different order: 1e-12 is
# about 5,000 times the float64 epsilon, and a wrong term would be off by far more.
TIGHT = 1e-12


def test_loss_inner_update_and_second_order_meta_gradient_equal_maml_py_in_float64(stack, x64):
    params, (x1, y1, x2, y2) = start(jnp.float64)
    ours = stack.carry(params)
    assert flat(stack.back(ours)).dtype == jnp.float64
    np.testing.assert_allclose(stack.m.loss(ours, x1[0], y1[0]), maml.loss(params, x1[0], y1[0]),
                               rtol=TIGHT)
    adapted = stack.back(stack.m.inner_update(ours, x1[0], y1[0]))
    assert largest_difference(adapted, maml.inner_update(params, x1[0], y1[0])) < TIGHT
    meta = stack.value_and_grad(stack.m.batch_maml_loss)(ours, x1, y1, x2, y2)[1]
    assert largest_difference(stack.back(meta), grad(maml.batch_maml_loss)(params, x1, y1, x2, y2)) < TIGHT


def test_several_inner_steps_take_a_fresh_gradient_each_and_the_bug_that_reuses_one_fails(stack, x64):
    """Five inner steps built on the file's inner_update equal five of maml.py's, in value and in
    meta-gradient. The common bug, the first step's gradient applied five times, is 10% or more
    away from them: this check would catch it."""
    params, (x1, y1, x2, y2) = start(jnp.float64)
    alpha, steps = 0.01, 5

    def reference(p):
        for _ in range(steps):
            p = maml.inner_update(p, x1[0], y1[0], alpha)
        return maml.loss(p, x2[0], y2[0])

    def ours(p):
        for _ in range(steps):
            p = stack.m.inner_update(p, x1[0], y1[0], alpha)
        return stack.m.loss(p, x2[0], y2[0])

    def bug(p):  # the gradient taken once, at the start, and applied five times
        once = stack.back(stack.m.inner_update(p, x1[0], y1[0], alpha))
        moved = tree_map(lambda a, b: a + steps * (b - a), stack.back(p), once)
        return stack.m.loss(stack.carry(moved), x2[0], y2[0])
    want_value, want_grad = jax.value_and_grad(reference)(params)
    carried = stack.carry(params)
    got_value, got_grad = stack.value_and_grad(ours)(carried)
    np.testing.assert_allclose(got_value, want_value, rtol=TIGHT)
    assert largest_difference(stack.back(got_grad), want_grad) < TIGHT
    bug_value, bug_grad = stack.value_and_grad(bug)(carried)
    assert abs(bug_value - want_value) > 0.1 * want_value or \
        largest_difference(stack.back(bug_grad), want_grad) > 0.1


def test_anil_leaves_the_body_out_of_the_inner_step_but_not_out_of_the_meta_gradient(stack, x64):
    """The inner step moves the output layer alone; the meta-gradient through it reaches every
    layer, and equals that of studies/variants.py's ANIL on maml.py."""
    params, (x1, y1, x2, y2) = start(jnp.float64)
    ours = stack.carry(params)
    adapted = stack.back(stack.m.anil_inner_update(ours, x1[0], y1[0]))
    for (w, b), (w0, b0) in zip(adapted[:4:2], params[:4:2]):  # the body: bit for bit unmoved
        np.testing.assert_array_equal(w, w0)
        np.testing.assert_array_equal(b, b0)
    assert not jnp.array_equal(adapted[4][0], params[4][0])  # the head moved
    assert largest_difference(adapted, variants.anil_inner_update(params, x1[0], y1[0])) < TIGHT

    def meta(p):
        return stack.m.loss(stack.m.anil_inner_update(p, x1[0], y1[0]), x2[0], y2[0])
    got = stack.back(stack.value_and_grad(meta)(ours)[1])
    assert largest_difference(got, grad(variants.anil_loss)(params, x1[0], y1[0], x2[0], y2[0])) < TIGHT
    for w, b in got[:4:2]:
        assert jnp.linalg.norm(w) > 0 and jnp.linalg.norm(b) > 0  # the body gets a gradient


# After 300 Adam steps in float32 the parameters agree to below 1e-6 of their largest entry with
# jax 0.12 and to 1.6e-6 with jax 0.4.29 (NNX; measured), the meta-losses to 1e-5 relative, both
# compiled optimised (unoptimised, jax 0.4.29's Equinox losses drift 0.8% apart): optax and
# example_libraries evaluate the same formula with its operations in another order (lr * (m / d)
# against (lr * m) / d), so each step differs by an ulp or so (float32's epsilon is 1.2e-7), and
# 300 steps carry it along. A wrong bias correction or eps moves the first steps by 1e-4 or more.
STEPS, PARAMS_TOL, LOSS_TOL = 300, 1e-5, 1e-5


@pytest.mark.slow
def test_optax_adam_follows_maml_step_for_300_meta_steps_in_float32(stack, optimised):
    params, _ = start(jnp.float32)
    ours = stack.leaves(stack.carry(params))
    opt_state, ref_state = stack.m.optimizer.init(ours), maml.opt_init(params)
    keys = np.asarray(random.split(random.PRNGKey(2), STEPS))
    got_losses, want_losses = [], []
    for i, key in enumerate(keys):
        tasks = maml.sample_tasks(key, 25, 10)
        ours, opt_state, got = stack.m.step(ours, opt_state, *tasks)
        ref_state, want = maml.step(i, ref_state, *tasks)
        got_losses.append(float(got))
        want_losses.append(float(want))
    np.testing.assert_allclose(got_losses, want_losses, rtol=LOSS_TOL)
    assert largest_difference(stack.back(ours), maml.get_params(ref_state)) < PARAMS_TOL
    assert want_losses[-1] < 0.8 * want_losses[0]  # and they trained: not two frozen copies


def eqx_as_it_was(m, key):
    """maml_equinox.py's step as it was (git show 9eb3abe:studies/stack_speed.py):
    eqx.nn.MLP as it comes, its Linear's W @ x, under eqx.filter_jit; and its first
    arguments."""
    eqx = m.eqx

    @eqx.filter_jit
    def step(model, opt_state, x1, y1, x2, y2, alpha):
        value_and_grad = eqx.filter_value_and_grad(m.batch_maml_loss)
        meta_loss, meta_grads = value_and_grad(model, x1, y1, x2, y2, alpha)
        arrays = eqx.filter(model, eqx.is_inexact_array)
        updates, opt_state = m.optimizer.update(meta_grads, opt_state, arrays)
        return eqx.apply_updates(model, updates), opt_state, meta_loss
    model = eqx.nn.MLP(1, 1, width_size=40, depth=2, activation=jax.nn.relu, key=key)
    return step, [model, m.optimizer.init(eqx.filter(model, eqx.is_inexact_array))]


def xla_count(step, args, setup):
    """XLA's counts of a step (jax.jit's or eqx.filter_jit's) compiled on its first
    arguments (stack_speed.begin's) and one meta-batch: MB accessed, transposes, copies."""
    from studies import stack_speed
    batch = maml.sample_tasks(stack_speed.K_TASKS, setup["tasks"], setup["k"],
                              setup["amp_range"])
    lowered = step.lower(*args, *batch, setup["alpha"])
    compiled = getattr(lowered, "lowered", lowered).compile()  # filter_jit's has jit's
    found = compiled.cost_analysis()
    found = found[0] if isinstance(found, (list, tuple)) else found  # old jax: a list
    text = compiled.as_text()
    return dict(mbytes=found["bytes accessed"] / 1e6,
                transposes=len(re.findall(r" transpose\(", text)),
                copies=len(re.findall(r" copy\(", text)))


@pytest.mark.slow
def test_xla_gets_maml_step_s_work_from_each_port_s_step(stack, optimised):
    """XLA's counts of each compiled step (the paper's meta-batch, optimised as a user's run): each
    port's step has as many transposes and copies as maml.step, and accesses no more bytes (0.1%:
    at jax 0.4.29 NNX's step moves 16 bytes more of 3.4 million, Equinox's 10% fewer). The
    counts tell a layout apart: Equinox's step as it was, eqx.nn.MLP's W @ x vmapped over the
    points, has more than three times the transposes (24 against 7 with jax 0.10)."""
    from studies import stack_speed
    setup = experiment.SETUPS["paper"]
    steps = {name: stack_speed.begin(name) for name in ("maml", stack.key)}
    if stack.key == "eqx":
        steps["eqx_was"] = eqx_as_it_was(stack.m, stack_speed.K_INIT)
    counts = {name: xla_count(*begun, setup)
              for name, begun in steps.items()}
    want = counts["maml"]
    for name in list(counts)[1:]:
        got = counts[name]
        same = (got["transposes"], got["copies"]) == (want["transposes"], want["copies"])
        assert same == (name != "eqx_was"), (name, got, want)
    assert counts[stack.key]["mbytes"] <= 1.001 * want["mbytes"], (counts[stack.key], want)


def test_a_missing_stack_package_skips_in_the_main_suite_and_fails_in_the_stack_part(monkeypatch):
    """The switch .ci/run sets for the stack tests: without it a missing package skips, with it the
    import error stands."""
    monkeypatch.delenv("MAML_STACKS_REQUIRED", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        need("no_such_stack_package")
    monkeypatch.setenv("MAML_STACKS_REQUIRED", "1")
    with pytest.raises(ImportError):
        need("no_such_stack_package")
