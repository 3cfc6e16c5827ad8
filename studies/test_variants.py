"""Multi-step MAML as a lax.scan (experiment.inner_steps, which studies/variants.py trains with)
against the unrolled Python loop; the variants' training step, ANIL's inner step, how a run's
rows join variants.json; the Variations page's numbers against the committed variants.json.

Run with `python -m pytest studies/test_variants.py`. The comparisons of the scan run in float64
(the `x64` fixture, switched on as a context, so no other test sees it): the scan, the unrolled
loop and the checkpointed scan do the same arithmetic, in orders that XLA may fuse or reassociate
differently, so they agree to rounding. In float64 that is ~1e-16 per operation; through 5 inner
steps of sums over 1,761 parameters and 10 points, and a second-order gradient, the error stays
far below 1e-10 relative, where a real difference (a missing step, a dropped second-order term:
10% or more, see the Variations page) would be far above it. Float32 would need a tolerance near
1e-4 and could hide a small bug.
"""
import json
from functools import partial

import jax.numpy as jnp
import numpy as np
import pytest
from jax import grad, jit, random
from jax.flatten_util import ravel_pytree
from jax.tree_util import tree_leaves, tree_map

import experiment
import maml
from machinery import program
from studies import variants
from studies.conftest import ROOT, stated

# Relative distance allowed: float64 rounding through a few steps is ~1e-14, a real difference is
# >= 1e-2. (Seen with jax 0.10.2 on a CPU: exactly 0, in float64 and in float32 alike.)
RTOL = 1e-10


def one_task(seed=0, k=10):
    """The network's initial parameters and one task of the paper's distribution (float32)."""
    _, params = maml.net_init(random.PRNGKey(seed), (-1, 1))
    return params, tuple(a[0] for a in maml.sample_tasks(random.PRNGKey(seed + 1), 1, k))


def float64_task():
    """one_task in float64; call it under the x64 fixture."""
    return tree_map(partial(jnp.asarray, dtype=jnp.float64), one_task())


def flat(tree):
    return ravel_pytree(tree)[0]


def close(a, b):
    a, b = flat(a), flat(b)
    assert a.dtype == b.dtype == jnp.float64
    return bool(jnp.linalg.norm(a - b) <= RTOL * jnp.linalg.norm(b))


def scan_loss(params, x1, y1, x2, y2, n_steps=1, checkpoint=False, update=maml.inner_update):
    """The query loss after experiment.inner_steps: the scan every n-step adaptation uses."""
    adapted, _ = experiment.inner_steps(params, x1, y1, 0.01, n_steps, update, checkpoint)
    return maml.loss(adapted, x2, y2)


def loop_loss(params, x1, y1, x2, y2, n_steps=1, update=maml.inner_update):
    """The same n steps as a Python loop, unrolled while tracing: the reference."""
    for _ in range(n_steps):
        params = update(params, x1, y1, 0.01)
    return maml.loss(params, x2, y2)


@pytest.mark.parametrize("n_steps", [1, 5])
def test_inner_steps_equals_the_unrolled_loop_in_value_and_meta_gradient(n_steps, x64):
    params, task = float64_task()
    scan, loop = partial(scan_loss, n_steps=n_steps), partial(loop_loss, n_steps=n_steps)
    assert close(jit(scan)(params, *task), jit(loop)(params, *task))
    assert close(jit(grad(scan))(params, *task), jit(grad(loop))(params, *task))


def test_inner_steps_tracks_the_parameters_before_each_step(x64):
    """track(params) is taken before each of the n steps: the support losses of the loop's
    parameters 0 to n - 1, in order (the evaluation's curve appends the last one itself)."""
    params, (x1, y1, _, _) = float64_task()
    _, tracked = experiment.inner_steps(params, x1, y1, 0.01, 4,
                                        track=partial(maml.loss, inputs=x1, targets=y1))
    want = []
    for _ in range(4):
        want.append(maml.loss(params, x1, y1))
        params = maml.inner_update(params, x1, y1, 0.01)
    assert close(tracked, jnp.stack(want))


@pytest.mark.parametrize("n_steps", [1, 5])
def test_checkpointed_meta_gradient_equals_the_plain_one(n_steps, x64):
    params, task = float64_task()
    plain = partial(scan_loss, n_steps=n_steps)
    saved = partial(scan_loss, n_steps=n_steps, checkpoint=True)
    assert close(jit(grad(saved))(params, *task), jit(grad(plain))(params, *task))


def test_first_order_scan_equals_its_loop_and_differs_from_second_order(x64):
    """The first-order scan is the unrolled first-order loop; its gradient is more than 1% away
    from the second-order one (so the closeness above is not a tolerance that passes anything)."""
    params, task = float64_task()
    fo = jit(grad(partial(variants.fo_maml_loss_scan, n_steps=5)))(params, *task)
    assert close(fo, jit(grad(partial(loop_loss, n_steps=5,
                                      update=variants.fo_inner_update)))(params, *task))
    second = jit(grad(partial(scan_loss, n_steps=5)))(params, *task)
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


def test_a_task_that_overflows_at_any_step_leaves_every_column_of_its_cell():
    """The variants' rule is the experiment's (report.run_numbers): run 0's task 2 overflows only
    at step 10, yet its MSE of 9.0 after one step is out of the one-step mean too, and it is
    counted as diverged; run 1 keeps all its tasks."""
    mse = np.ones((2, 3, 11))
    mse[0, 2, 1:] = 9.0
    mse[0, 2, 10] = np.inf
    (cell,) = variants.variant_cells("MAML", {5: mse})
    assert [run["diverged"] for run in cell["runs"]] == [1, 0]
    assert cell["runs"][0]["mean"][1] == 1.0 and cell["over_runs"]["mean"][1] == 1.0


def test_anil_moves_the_head_alone_and_its_meta_gradient_reaches_the_body():
    params, (x1, y1, x2, y2) = one_task()
    adapted = variants.anil_inner_update(params, x1, y1)
    for i in (0, 2):
        for got, want in zip(adapted[i], params[i]):
            np.testing.assert_array_equal(got, want)
    assert not jnp.array_equal(adapted[4][0], params[4][0])
    body = grad(variants.anil_loss)(params, x1, y1, x2, y2)
    assert all(jnp.linalg.norm(a) > 0 for i in (0, 2) for a in body[i])


def test_a_run_replaces_its_variants_rows_of_its_setup_and_keeps_every_other():
    """--only: a new run of MAML in the paper's setup takes MAML's rows out of the older paper
    run, which keeps its other variants; a run of another setup is left whole; a run left with
    no rows goes."""
    def run(setup, *names):
        return dict(setup_name=setup, ms_per_step={n: 1.0 for n in names},
                    cells=[dict(model=n, k=k) for n in names for k in (5, 10)])
    old = dict(runaway_factor=10, runs=[run("paper", "MAML", "Meta-SGD"), run("code", "MAML"),
                                        run("paper", "ANIL")])
    new = variants.merged(old, run("paper", "MAML", "ANIL"))
    assert [(r["setup_name"], sorted(r["ms_per_step"])) for r in new["runs"]] == [
        ("paper", ["Meta-SGD"]), ("code", ["MAML"]), ("paper", ["ANIL", "MAML"])]
    assert [c["model"] for c in new["runs"][0]["cells"]] == ["Meta-SGD"] * 2
    assert new["runaway_factor"] == 10


def committed_run(setup):
    """The committed variants.json's run of a setup."""
    (run,) = [r for r in program.read_json(ROOT / "figures" / "variants.json")["runs"]
              if r["setup_name"] == setup]
    return run


PAGE = "docs/variations.md"
NAMES = ("MAML", "first-order MAML", "MAML with 5 inner steps", "Meta-SGD")
FO, FIVE, SGD = NAMES[1:]


def cells(run):
    """A run's cells by (variant, K)."""
    assert len(run["seeds"]) == 5
    return {(c["model"], c["k"]): c for c in run["cells"]}


def mse(row, name, k, n):
    """A cell's mean over runs after n steps."""
    return row[name, k]["over_runs"]["mean"][n]


def count(row, name, k, what, n=None):
    """A cell's tasks of all runs that diverged or ended worse, or (n) its runs whose mean after n
    steps runaway tasks dominate."""
    return sum(run[what] if n is None else run[what][n] for run in row[name, k]["runs"])


def test_the_variations_page_claims_hold_on_the_committed_table():
    """What 'Trained and compared' says of the paper setup's run in figures/variants.json."""
    run = committed_run("paper")
    row = cells(run)
    assert set(row) == {(n, k) for n in NAMES for k in (5, 10)}
    for k in (5, 10):
        # Second order beats first order after one step, intervals apart.
        ours, theirs = row["MAML", k]["over_runs"], row[FO, k]["over_runs"]
        assert ours["mean"][1] + ours["half"][1] < theirs["mean"][1] - theirs["half"][1]
        # No first-order task diverged or ran away.
        assert count(row, FO, k, "diverged") == 0
        assert all(count(row, FO, k, "dominated", n) == 0 for n in (1, 5, 10))
        # Five inner steps: the lowest 10-step error, the fewest worse tasks, the worst at one.
        assert mse(row, FIVE, k, 10) == min(mse(row, n, k, 10) for n in NAMES)
        assert count(row, FIVE, k, "worse") == min(count(row, n, k, "worse") for n in NAMES)
        assert mse(row, FIVE, k, 1) == max(mse(row, n, k, 1) for n in NAMES)
        # Meta-SGD: the best after one step; after ten, runaway tasks dominate every run's mean.
        assert mse(row, SGD, k, 1) == min(mse(row, n, k, 1) for n in NAMES)
        assert count(row, SGD, k, "dominated", 10) == 5
    # ...and with K = 5 about a quarter of its tasks overflow (left out of all its columns).
    assert 0.15 < count(row, SGD, 5, "diverged") / (5 * run["eval_tasks"]) < 0.35
    # MAML's K = 5 ten-step mean is runaway tasks' in some run; first order's is ordinary.
    assert count(row, "MAML", 5, "dominated", 10) > 0 and mse(row, FO, 5, 10) < 1


def test_the_variations_page_states_the_committed_numbers():
    """The numbers 'Trained and compared' gives, to its digits: from figures/variants.json, and
    the times from the interleaved measurement of figures/cost.json (the variants' own times were
    taken one after another under uneven load)."""
    run = committed_run("paper")
    row = cells(run)
    cost = {(p["mode"], p["S"]): p["ms"] for p in json.loads(
        (ROOT / "figures" / "cost.json").read_text())["points"] if p["sweep"] == "inner steps"}
    want = {f"{mse(row, n, k, 1):.2f}" for k in (5, 10) for n in ("MAML", FO, SGD)}
    want |= {f"{mse(row, FIVE, k, 10):.2f}" for k in (5, 10)}
    tasks = len(run["seeds"]) * run["eval_tasks"]
    want |= {f"{n:,}" for k in (5, 10) for n in (count(row, SGD, k, "diverged"),
                                                 tasks - count(row, SGD, k, "diverged"))}
    want |= {str(count(row, "MAML", 5, "dominated", 10)), str(len(run["seeds"]))}
    want |= {f"{tasks:,}",
             f"{100 * (1 - cost['first order', 1] / cost['second order', 1]):.0f}",
             f"{cost['second order', 5] / cost['second order', 1]:.1f}"}
    shown = set(stated(PAGE, "## Trained and compared"))
    assert want <= shown, want - shown


def test_the_variations_page_states_anils_numbers_and_its_claims_hold():
    """What the page says of ANIL beside MAML in the released code's setting: the one-step means,
    intervals apart; with K = 5 the tasks of all runs that ran away by step ten, dominating every
    run's mean there, none of MAML's; with K = 10 one task, and a ten-step mean about five times
    MAML's."""
    run = committed_run("code")
    row = cells(run)
    assert set(row) == {(n, k) for n in ("MAML", "ANIL") for k in (5, 10)}
    assert run["setup"]["alpha"] == 0.001 and run["steps"] == 70_000
    for k in (5, 10):
        ours, theirs = row["ANIL", k]["over_runs"], row["MAML", k]["over_runs"]
        assert ours["mean"][1] - ours["half"][1] > theirs["mean"][1] + theirs["half"][1]
    assert count(row, "ANIL", 5, "dominated", 10) == len(run["seeds"])
    assert count(row, "MAML", 5, "runaway", 10) == 0  # "MAML has none"
    assert count(row, "ANIL", 10, "runaway", 10) == 1  # "one task does"
    ratio = mse(row, "ANIL", 10, 10) / mse(row, "MAML", 10, 10)
    assert 4.5 < ratio < 5.5, ratio  # "about five times"
    tasks = len(run["seeds"]) * run["eval_tasks"]
    want = {f"{mse(row, n, k, 1):.3f}" for n in ("ANIL", "MAML") for k in (5, 10)}
    want |= {str(count(row, "ANIL", 5, "runaway", 10)), f"{tasks:,}", str(len(run["seeds"]))}
    shown = set(stated(PAGE, "## Trained and compared"))
    assert want <= shown, want - shown
