"""The claims that experiment.py rests on: its training loop, evaluation, report and command line.

The algorithm's own claims (derivatives, batching, the sampler) are in test_maml.py.
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import random
from jax.tree_util import tree_leaves, tree_map

import experiment
import maml
from machinery import flags, preflight, report

from studies.conftest import HANG_S, ROOT, cpu_env, experiment_env, ks_truncated_normal


# ---- the training loop -------------------------------------------------------------------------

def test_the_fused_training_loop_equals_the_copy_paste_loop():
    """train_chunk (lax.scan over presampled batches) computes the same steps as the loop a reader
    writes: sample_tasks(keys[i]) then step, once per iteration. Float32, 20 steps: the two
    programs are compiled differently, so rounding differs by ~1e-7 per step; Adam's normalised steps
    keep it from growing. 1e-5 relative, 1e-6 absolute."""
    setup = experiment.SETUPS["paper"]
    _, params = maml.net_init(random.PRNGKey(0), (-1, 1))
    keys = np.asarray(random.split(random.PRNGKey(5), 20))
    state = maml.opt_init(params)
    losses = []
    for i in range(20):
        state, loss = maml.step(i, state, *maml.sample_tasks(keys[i], 25, 10), 0.01)
        losses.append(loss)
    one_run = tree_map(lambda a: a[None], maml.opt_init(params))  # a run axis of length 1
    fused, fused_losses = experiment.train_chunk(one_run, keys[:, None], np.arange(20), setup["amp_range"],
                                                 0.01, step_fn=maml.step, n_tasks=25, k=10)
    np.testing.assert_allclose(fused_losses[:, 0], losses, rtol=1e-5)
    for a, b in zip(tree_leaves(maml.get_params(fused)), tree_leaves(maml.get_params(state))):
        np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-6)


def test_runs_trained_at_once_equal_runs_trained_one_by_one():
    """Three runs with their own initialisation and task stream, trained in one train_chunk (vmap over
    the run axis), end where each run trained alone ends. Same tolerance as above: the vmapped
    program is compiled differently, so float32 rounding differs, by ~1e-7 a step."""
    setup = experiment.SETUPS["paper"]
    inits = [maml.net_init(random.PRNGKey(seed), (-1, 1))[1] for seed in (0, 1, 2)]
    keys = np.stack([np.asarray(random.split(random.PRNGKey(10 + r), 15)) for r in range(3)], axis=1)
    run = lambda state, keys: experiment.train_chunk(state, keys, np.arange(15), setup["amp_range"], 0.01,
                                                     step_fn=maml.step, n_tasks=25, k=10)
    together, together_losses = run(maml.opt_init(tree_map(lambda *a: jnp.stack(a), *inits)), keys)
    for r, init in enumerate(inits):
        alone, alone_losses = run(tree_map(lambda a: a[None], maml.opt_init(init)), keys[:, r:r + 1])
        np.testing.assert_allclose(together_losses[:, r], alone_losses[:, 0], rtol=1e-5)
        for a, b in zip(tree_leaves(maml.get_params(together)), tree_leaves(maml.get_params(alone))):
            np.testing.assert_allclose(a[r], b[0], rtol=1e-5, atol=1e-6)


def test_step_keys_of_a_chunk_are_those_of_each_runs_whole_split():
    """step_keys makes steps a to b alone, yet run r at step i trains on random.split(keys[r], n)[i],
    exactly as if each run's key were split for the whole run at once (how the committed results
    were drawn), with either layout of the threefry counters (jax >= 0.5 and older: CI runs both):
    for runs of 1 to 70,000 steps, chunks at the start, middle and end, seeds up to 2**32 - 1."""
    keys = np.stack([np.asarray(random.PRNGKey(s)) for s in (3, 4, 2**32 - 1)])
    for n in (1, 2, 3, 7, 20, 1001, 70_000):
        whole = np.stack([np.asarray(random.split(key, n)) for key in keys], axis=1)
        for a, b in {(0, n), (0, 1), (n // 3, n // 2 + 1), (n - 1, n)}:
            got = experiment.step_keys(keys, n, a, b)
            assert got.shape == (b - a, 3, 2) and got.dtype == np.uint32
            np.testing.assert_array_equal(got, whole[a:b], err_msg=f"n={n}, steps {a} to {b}")


def test_chunks_are_about_20_of_at_most_5000_steps():
    """Every n from 1 to 3,000, and the long runs: train's chunks, of chunk_size steps but the last
    (what is left), are as few as cover the n steps; below 20 steps a chunk is a step; from 20 to
    100,000 there are between 10 and 20 chunks (about 20: never more, and never fewer than half);
    beyond, chunks are 5,000 steps, --steps 10**13 included (counted, never listed)."""
    for n in [*range(1, 3001), 70_000, 99_999, 100_000, 140_000, 1_000_003, 10**13]:
        size = experiment.chunk_size(n)
        count = -(-n // size)  # chunks
        assert 1 <= size <= n
        if n < 20:
            assert size == 1
        elif n <= 100_000:
            assert 10 <= count <= 20 and size <= 5000, (n, count)
        else:
            assert size == 5000


def test_the_released_codes_initialisation_has_the_layout_of_net_init_and_its_scale():
    """code_init: the same tree as net_init's parameters; weights of standard deviation ~0.01
    truncated at two of them (so |w| <= 0.02), biases zero. The 1,680 weights' standard deviation,
    for a normal truncated at 2 sigma, is 0.88 x 0.01; sampling error at this count is ~2%: 5% slack."""
    params = experiment.code_init(random.PRNGKey(0))
    _, stax_params = maml.net_init(random.PRNGKey(0), (-1, 1))
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(stax_params)
    assert tree_map(jnp.shape, params) == tree_map(jnp.shape, stax_params)
    weights = np.concatenate([np.ravel(w) for w, _ in params[::2]])
    assert np.abs(weights).max() <= 0.02 and all(np.all(b == 0) for _, b in params[::2])
    assert abs(weights.std() / (0.01 * 0.8796) - 1) < 0.05, weights.std()
    # The shape, not only the scale: the Kolmogorov-Smirnov statistic against a normal truncated at
    # 2 sigma stays below its 0.1% critical value, 1.95 / sqrt(1680) = 0.048; a uniform draw of the
    # same standard deviation, or an untruncated normal, exceeds it (checked below).
    assert ks_truncated_normal(weights / 0.01) < 1.95 / np.sqrt(len(weights))
    uniform = np.random.default_rng(0).uniform(-1, 1, len(weights)) * np.sqrt(3) * 0.8796
    assert ks_truncated_normal(uniform) > 1.95 / np.sqrt(len(weights))



# ---- the experiment's pieces -------------------------------------------------------------------

def test_eval_tasks_draw_amplitudes_from_the_range_they_are_given():
    """Held-out tasks of amplitudes U[2, 2.5] (not the paper's range, the sampler's default): on the
    test grid of 100 points 10/99 apart over [-5, 5], each sinusoid peaks within a factor
    cos(5/99) > 0.998 of its amplitude, so every task's peak lies in [2 x 0.998, 2.5]."""
    x1, y1, x_test, y_test = experiment.eval_tasks(random.PRNGKey(0), 300, 5, (2.0, 2.5))
    peaks = np.abs(np.asarray(y_test)).max(axis=(1, 2))
    assert x_test.shape == (100, 1) and peaks.min() >= 2.0 * 0.998 and peaks.max() <= 2.5 + 1e-6
    assert np.abs(np.asarray(y1)).max() <= 2.5 + 1e-6


def test_adaptation_curves_start_at_the_unadapted_loss_and_follow_inner_update():
    _, params = maml.net_init(random.PRNGKey(0), (-1, 1))
    x1, y1, x_test, y_test = experiment.eval_tasks(random.PRNGKey(1), 4, 5, (0.1, 5.0))
    curves = experiment.adaptation_curves(params, x1, y1, x_test, y_test, 0.01, 2)
    assert curves.shape == (4, 3)
    for t in range(4):
        once = maml.inner_update(params, x1[t], y1[t], 0.01)
        twice = maml.inner_update(once, x1[t], y1[t], 0.01)
        # float32, compiled differently (scan + vmap against plain calls): 1e-5 relative
        np.testing.assert_allclose(curves[t], [maml.loss(p, x_test, y_test[t]) for p in (params, once, twice)],
                                   rtol=1e-5)


def test_the_baseline_regresses_on_every_point_support_and_query():
    """pretrain_loss is the MSE over all 2K points of every task: with as many support as query
    points, the mean of the support loss and the query loss. A baseline that saw only the support
    points would give the first of them. Float32, the same sums reordered: 1e-6 relative."""
    _, params = maml.net_init(random.PRNGKey(0), (-1, 1))
    x1, y1, x2, y2 = maml.sample_tasks(random.PRNGKey(1), 25, 10)
    both = (maml.loss(params, x1, y1) + maml.loss(params, x2, y2)) / 2
    assert float(experiment.pretrain_loss(params, x1, y1, x2, y2)) == pytest.approx(float(both), rel=1e-6)
    assert abs(float(maml.loss(params, x1, y1)) - float(both)) > 1e-3  # the two halves differ


def two_runs():
    """Two runs' parameters, stacked on a run axis, and held-out tasks of the paper's distribution."""
    inits = [maml.net_init(random.PRNGKey(s), (-1, 1))[1] for s in (0, 1)]
    return tree_map(lambda *a: jnp.stack(a), *inits), inits, experiment.eval_tasks(
        random.PRNGKey(2), 6, 10, (0.1, 5.0))


def test_run_curves_of_several_runs_are_each_runs_own_curves():
    """run_curves adapts run r with alphas[r] on the first K support points: the same as
    adaptation_curves of that run alone. Float32, vmapped against plain: 1e-5 relative."""
    stacked, inits, (x1, y1, x_test, y_test) = two_runs()
    together = experiment.run_curves(stacked, (x1, y1, x_test, y_test), 5, np.array([0.01, 0.05], np.float32))
    assert together.shape == (2, 6, 11)
    for r, (init, alpha) in enumerate(zip(inits, (0.01, 0.05))):
        alone = experiment.adaptation_curves(init, x1[:, :5], y1[:, :5], x_test, y_test, alpha, 10)
        np.testing.assert_allclose(together[r], alone, rtol=1e-5)


def test_tune_step_size_picks_each_runs_best_candidate_and_never_a_diverging_one():
    """For each run, the candidate with the lowest mean validation MSE after 1, 5 and 10 steps,
    computed here with plain Python loops of inner_update; 1e4 diverges (inf or NaN) and is never
    picked, even though a NaN compares as neither better nor worse."""
    stacked, inits, (x1, y1, x_test, y_test) = two_runs()
    candidates = (1e-3, 0.01, 0.1, 1e4)
    got = experiment.tune_step_size(stacked, (x1, y1, x_test, y_test), 5, candidates)
    for r, init in enumerate(inits):
        scores = []
        for a in candidates:
            mses = []
            for t in range(6):
                p = init
                for n in range(1, 11):
                    p = maml.inner_update(p, x1[t, :5], y1[t, :5], a)
                    if n in (1, 5, 10):
                        mses.append(float(maml.loss(p, x_test, y_test[t])))
            scores.append(np.mean(mses) if np.all(np.isfinite(mses)) else np.inf)
        assert np.isinf(scores[-1]) and got[r] == candidates[int(np.argmin(scores))], (r, scores, got)


def test_tune_step_size_scores_steps_1_5_and_10_of_each_run_and_drops_a_candidate_only_where_it_diverged(monkeypatch):
    """The choice itself, on made-up curves (run_curves replaced: two runs, one task): after 1, 5 and
    10 steps, run 0's MSE is 3, 2 and 1 under the candidates 1, 2 and 3, run 1's is 1, 2 and inf
    (3 diverges in run 1 alone). Each run picks its own best: 3 for run 0, 1 for run 1. The steps
    that are not scored mislead: after 2 steps run 1's candidate 1 is at 100, after 6 run 0's 3."""
    level = {1.0: [3.0, 1.0], 2.0: [2.0, 2.0], 3.0: [1.0, np.inf]}

    def made_up_curves(params, tasks, k, alphas):
        curves = np.array(level[float(alphas[0])])[:, None, None] * np.ones((2, 1, 11))
        if alphas[0] == 1.0:
            curves[1, 0, 2] = 100.0
        if alphas[0] == 3.0:
            curves[0, 0, 6] = 100.0
        return curves
    monkeypatch.setattr(experiment, "run_curves", made_up_curves)
    assert experiment.tune_step_size([np.zeros((2, 1))], None, 5, (1.0, 2.0, 3.0)).tolist() == [3.0, 1.0]


def test_run_curves_adapts_with_the_update_it_is_given():
    """A variant's inner update (here: inner_update with twice the step) is the one run_curves
    adapts with: the same curves, to float32 rounding (1e-5), as plain inner_update with twice the
    step sizes."""
    stacked, _, tasks = two_runs()

    def double_step(params, x1, y1, alpha):
        return maml.inner_update(params, x1, y1, 2 * alpha)
    alphas = np.array([0.01, 0.02], np.float32)
    np.testing.assert_allclose(experiment.run_curves(stacked, tasks, 5, alphas, update=double_step),
                               experiment.run_curves(stacked, tasks, 5, 2 * alphas), rtol=1e-5)


def test_evaluate_stops_when_adaptation_diverges_on_most_tasks():
    """With a step size of 1,000, MAML's adaptation from a fresh network diverges on nearly every
    held-out task: evaluate stops the program with one line naming the run, the step size and what
    to do, before it returns any numbers."""
    setup = dict(experiment.SETUPS["paper"], alpha=1000.0)
    params = {"MAML": tree_map(lambda a: a[None], experiment.stax_init(random.PRNGKey(0)))}
    keys = experiment.run_keys(0, 1)
    with pytest.raises(SystemExit, match=r"MAML adaptation \(run 0, step size 1000\) diverged on "
                                         r"\d+ of 100 held-out tasks \(K = 5\).*Try a smaller --alpha"):
        experiment.evaluate(params, setup, SimpleNamespace(eval_tasks=100, seeds=1), (keys[3, 0], keys[4, 0]))


def test_evaluate_tunes_on_the_validation_tasks_and_reports_the_test_tasks(monkeypatch):
    """The baseline's step size is chosen on the validation tasks (keys[0]) and every reported
    curve is measured on the test tasks (keys[1]): two draws that must differ, and do. A spy on
    tune_step_size and run_curves sees which tasks each was given; evaluating on the validation
    tasks, or tuning on the test tasks, fails here (no other test would see it: both draws come
    from the same distribution)."""
    setup, keys = experiment.SETUPS["paper"], experiment.run_keys(0, 1)
    val, test = (experiment.eval_tasks(k, 20, 10, setup["amp_range"]) for k in keys[3:5, 0])
    assert not np.array_equal(val[0], test[0])
    params = {name: tree_map(lambda a: a[None], experiment.stax_init(random.PRNGKey(0)))
              for name in ("MAML", "pretrained")}
    seen = {"tuned on": [], "reported on": [], "tuning": False}
    tune, curves = experiment.tune_step_size, experiment.run_curves

    def spy_tune(p, tasks, k, *rest):
        seen["tuned on"].append(tasks[0])
        seen["tuning"] = True  # its own run_curves calls are the tuning's, not the report's
        try:
            return tune(p, tasks, k, *rest)
        finally:
            seen["tuning"] = False

    def spy_curves(p, tasks, k, *rest, **kw):
        if not seen["tuning"]:
            seen["reported on"].append(tasks[0])
        return curves(p, tasks, k, *rest, **kw)
    monkeypatch.setattr(experiment, "tune_step_size", spy_tune)
    monkeypatch.setattr(experiment, "run_curves", spy_curves)
    got, _, _ = experiment.evaluate(params, setup, SimpleNamespace(eval_tasks=20, seeds=1),
                                    (keys[3, 0], keys[4, 0]))
    np.testing.assert_array_equal(got[0], test[0])
    assert len(seen["tuned on"]) == 2 and len(seen["reported on"]) == 4  # per K; per model and K
    for x in seen["tuned on"]:
        np.testing.assert_array_equal(x, val[0])
    for x in seen["reported on"]:
        np.testing.assert_array_equal(x, test[0])


def test_every_pair_of_draws_that_must_differ_does():
    """Run r's five streams (initial weights, MAML's tasks, the baseline's tasks, validation,
    test) and run r + 1's are ten different keys, and what they draw differs too: the first
    meta-batch of MAML's stream and of the baseline's, the validation and the test tasks, and
    run 0's and run 1's first meta-batch and initial weights."""
    keys = experiment.run_keys(0, 2)
    assert len({tuple(k) for k in keys.reshape(-1, 2)}) == 10
    maml_batch, base_batch = (maml.sample_tasks(k, 25, 10)[0] for k in keys[1:3, 0])
    assert not np.array_equal(maml_batch, base_batch)
    val, test = (experiment.eval_tasks(k, 20, 10, (0.1, 5.0))[0] for k in keys[3:5, 0])
    assert not np.array_equal(val, test)
    assert not np.array_equal(*(maml.sample_tasks(k, 25, 10)[0] for k in keys[1]))
    w0, w1 = (tree_leaves(experiment.code_init(k))[0] for k in keys[0])
    assert not np.array_equal(w0, w1)


def test_run_keys_are_each_seeds_own_split_and_other_seeds_give_other_keys():
    """Run r's five keys are random.split(PRNGKey(seed + r), 5), made for every run in one program,
    up to the last seed, 2**32 - 1: run 0 of several is the single run of the same seed, and no two
    runs or seeds share a key."""
    keys = experiment.run_keys(3, 2)
    assert keys.shape == (5, 2, 2)
    for r in range(2):
        np.testing.assert_array_equal(keys[:, r], np.asarray(random.split(random.PRNGKey(3 + r), 5)))
    top = experiment.run_keys(2**32 - 3, 3)
    for r, seed in enumerate((2**32 - 3, 2**32 - 2, 2**32 - 1)):
        np.testing.assert_array_equal(top[:, r], np.asarray(random.split(random.PRNGKey(seed), 5)))
    np.testing.assert_array_equal(experiment.run_keys(3, 1)[:, 0], keys[:, 0])
    everything = np.concatenate([keys.reshape(-1, 2), experiment.run_keys(5, 2).reshape(-1, 2)])
    assert len({tuple(k) for k in everything}) == len(everything)


def test_the_training_refusal_compares_xlas_count_with_the_memory_available(monkeypatch):
    """Between the two bounds: the memory available is more than what the flags alone say a run
    holds (the lower bound counted before compiling, which then passes) but less than XLA's count
    of the compiled training loop with both models' losses. check_compiled refuses in one line
    naming the flag set furthest above its setup's default (none is: --tasks, the first of the
    ties, before --k), XLA's count and the largest value that would fit: the loop's share of the
    memory left beside the losses, in proportion."""
    setup = dict(experiment.SETUPS["paper"], steps=200)
    _, params = maml.net_init(random.PRNGKey(0), (-1, 1))
    loops = experiment.compile_training(maml.step, params, setup, 1)
    loop = max(preflight.needs(c) for c in loops.values())
    losses = 200 * 1 * 4 * 2
    need = loop + losses
    monkeypatch.setattr(preflight, "available", lambda: need - 1)
    args = SimpleNamespace(seeds=1, eval_tasks=600, defaults=experiment.SETUPS["paper"])
    preflight.check_sizes(args, setup, experiment.chunk_size(200), 1761)
    with pytest.raises(flags.Refused) as refused:
        preflight.check_compiled(args, setup, loops.values(), jax.jit(lambda: 0.0).lower().compile())
    assert str(refused.value) == (
        f"argument --tasks: training 1 run(s) of 200 steps of 25 tasks with K = 10 needs "
        f"{preflight.readable(need)} (XLA's count), more than the {preflight.readable(need - 1)} "
        f"available; expected --tasks at most about {int(25 * (need - 1 - losses) / loop)}, got 25")


def refusal(monkeypatch, free, terms, **values):
    """The line refuse_if_over refuses with, for `free` bytes available, parts of a need `terms`
    and the flags' {name: (value, default)}; None if it fits."""
    monkeypatch.setattr(preflight, "available", lambda: free)
    named = {f"--{name}": value for name, value in values.items()}
    try:
        preflight.refuse_if_over("training", "counted", terms, named)
    except flags.Refused as refused:
        return str(refused)


def test_a_refusal_names_only_a_flag_that_lowered_alone_would_make_the_run_fit(monkeypatch):
    """Of --steps 10**10 (the losses, 80 GB, grow with it) and --tasks 25 (the tasks, 20 MB): the
    line names --steps, never --tasks, which lowered to 1 would leave 80 GB (the refusal issue 29
    found named --tasks, then --k). Nor --seeds, which is at 1 already. Where no flag alone can make
    it fit (--tasks and --k both a million times their defaults, either at 1 still far too much),
    it names the flags of the largest part that are above their defaults, and their product."""
    gb = 10**9
    terms = [(20 * 10**6, ("--tasks", "--k", "--seeds")), (80 * gb, ("--steps", "--seeds"))]
    line = refusal(monkeypatch, 24 * gb, terms, steps=(10**10, 70_000), tasks=(25, 25),
                   k=(10, 10), seeds=(1, 1))
    assert line.startswith("argument --steps: training needs 74.5 GiB (counted), more than the "
                           "22.4 GiB available; expected --steps at most about 2,997,500,000, got "
                           "10,000,000,000"), line
    terms = [(10**20, ("--tasks", "--k", "--seeds")), (gb, ("--steps", "--seeds"))]
    line = refusal(monkeypatch, 24 * gb, terms, steps=(70_000, 70_000), tasks=(25 * 10**6, 25),
                   k=(10**7, 10), seeds=(1, 1))
    assert line.endswith("expected a smaller product, got 250,000,000,000,000")
    assert line.startswith("argument --tasks x --k: training needs"), line
    assert refusal(monkeypatch, 81 * gb, [(80 * gb, ("--steps",))], steps=(1, 1)) is None


# ---- the command line --------------------------------------------------------------------------

def run_cli(cache, *args):
    return subprocess.run([sys.executable, "experiment.py", *args], capture_output=True,
                          text=True, timeout=HANG_S, cwd=ROOT, env=experiment_env(cache))


def table_lines(stdout):
    """Everything `python experiment.py` prints that must not depend on the machine or the folder."""
    return [ln for ln in stdout.splitlines() if not re.search(r"compiled in|steps/s|ms per meta-step|written to", ln)]


SHORT_RUN = ("--setup", "paper", "--steps", "1000", "--eval-tasks", "200", "--seed", "0")


@pytest.fixture(scope="session")
def short_run(tmp_path_factory, compile_cache):
    """`python experiment.py` for 1,000 steps of the paper's setting (seconds), evaluated on 200 tasks."""
    out = tmp_path_factory.mktemp("figures")
    return run_cli(compile_cache, *SHORT_RUN, "--out", str(out)), out


def cell(results, k, name):
    """One run's numbers for one model and K, from results.json."""
    return next(c for c in results["cells"] if c["k"] == k and c["model"] == name)["runs"][0]


@pytest.mark.slow
def test_a_meta_trained_model_adapts_better_than_a_pretrained_one(short_run):
    """After 1,000 meta-steps, one gradient step on K = 5 points gives MAML a held-out MSE below the
    baseline's (trained as long, step size tuned), with disjoint 95% intervals over 200 tasks, and
    at most 3/4 of it. Seen here: 1.393 +- 0.210 against 2.640 +- 0.348
    (K = 10: 1.011 +- 0.142 against 2.354 +- 0.322)."""
    result, out = short_run
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    for k in (5, 10):
        maml_run, base = cell(results, k, "MAML"), cell(results, k, "pretrained")
        m, m_ci, b, b_ci = maml_run["mean"][1], maml_run["ci"][1], base["mean"][1], base["ci"][1]
        assert m + m_ci < b - b_ci and m < 0.75 * b, (k, m, m_ci, b, b_ci)


@pytest.mark.slow
def test_cli_writes_valid_pngs_and_the_results_table(short_run):
    import matplotlib.image

    result, out = short_run
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == ["adaptation.png", "meta_training_loss.png", "mse_vs_steps.png", "params.npz",
                                       "results.json", "results.txt"]
    for name in ("adaptation.png", "meta_training_loss.png", "mse_vs_steps.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(out / name)
        assert image.shape[0] > 300 and image.shape[1] > 500 and image.std() > 0.05  # a real picture
    command, table = (out / "results.txt").read_text().split("\n", 1)
    results = json.loads((out / "results.json").read_text())
    # the whole command, quoted, with the --out folder (outside the repository) as "<a path>":
    # a committed result must not name the machine it was made on
    assert command == "Command: " + results["command"] == "Command: python experiment.py " + " ".join(SHORT_RUN) \
        + " --out <a path>"
    assert table in result.stdout and table == report.render(results)  # the table is the data's
    assert [(c["model"], c["k"]) for c in results["cells"]] == [("MAML", 5), ("pretrained", 5), ("MAML", 10),
                                                                ("pretrained", 10)]
    assert results["seeds"] == [0] and results["eval_tasks"] == 200 and results["setup"]["steps"] == 1000
    assert "0.67" in table and "2.19" in table  # the paper's numbers beside ours
    assert re.search(r"MAML: step +1,000/1,000 .* steps/s", result.stdout)  # progress was shown
    assert re.search(r"meta-training: \d+\.\d+ ms per meta-step", result.stdout)


@pytest.mark.slow
def test_cli_same_seed_prints_the_same_numbers(short_run, compile_cache, tmp_path):
    first, first_out = short_run
    again = run_cli(compile_cache, *SHORT_RUN, "--out", str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert table_lines(again.stdout) == table_lines(first.stdout)
    body = lambda path: path.read_text().split("\n", 1)[1]  # below the command line, which names --out
    assert body(tmp_path / "results.txt") == body(first_out / "results.txt")


@pytest.mark.slow
def test_maml_and_the_baseline_train_on_their_own_task_streams(short_run, optimised):
    """main trains MAML on the stream of run_keys' second key and the baseline on the third's:
    the training losses it saved (100-step means) are those of train_chunk on exactly those
    streams, and not of the other one. Float32, compiled apart, both optimised: 1e-4 relative
    over 1,000 steps."""
    result, out = short_run
    saved = np.load(out / "params.npz")
    k_init, k_maml, k_base, _, _ = experiment.run_keys(0, 1)
    init = tree_map(lambda a: a[None], maml.opt_init(experiment.stax_init(k_init[0])))
    for name, fn, own, other in (("MAML", maml.step, k_maml, k_base), ("pretrained", experiment.pretrain_step,
                                                                       k_base, k_maml)):
        means = {}
        for which, keys in (("own", own), ("other", other)):
            _, losses = experiment.train_chunk(init, experiment.step_keys(keys, 1000, 0, 1000), np.arange(1000),
                                               (0.1, 5.0), 0.01, step_fn=fn, n_tasks=25, k=10)
            means[which] = np.asarray(losses).reshape(10, 100).mean(axis=1)
        np.testing.assert_allclose(saved[f"loss/{name}"][:, 0], means["own"], rtol=1e-4)
        assert not np.allclose(saved[f"loss/{name}"][:, 0], means["other"], rtol=1e-2), name


@pytest.mark.slow
def test_another_seed_gives_other_numbers(short_run, compile_cache, tmp_path):
    """--seed is honoured: seed 1 trains and evaluates other runs, so its numbers differ from seed 0's."""
    first, first_out = short_run
    other = run_cli(compile_cache, *SHORT_RUN[:-1], "1", "--out", str(tmp_path))
    assert other.returncode == 0, other.stderr
    a, b = (json.loads((d / "results.json").read_text()) for d in (first_out, tmp_path))
    assert a["seeds"] == [0] and b["seeds"] == [1]
    for ca, cb in zip(a["cells"], b["cells"]):
        assert all(abs(x - y) > 1e-6 for x, y in zip(ca["runs"][0]["mean"], cb["runs"][0]["mean"])), ca["model"]


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
    (["--setup", "nature"], "--setup", "'paper', 'code', 'blog'"),
    (["--out="], "--out", "a folder's path, got ''"),
    (["--seeds", "0"], "--seeds", ">= 1"),
    (["--seed", str(2 ** 32 - 2), "--seeds", "3"], "--seeds", "at most 2"),
    (["--stepz", "10"], "--stepz", "unrecognized"),
]


@pytest.mark.parametrize("argv,flag,allowed", BAD_FLAGS, ids=[" ".join(a) for a, _, _ in BAD_FLAGS])
def test_bad_flag_stops_with_one_line_naming_it(argv, flag, allowed, tmp_path, capsys):
    """flags.parse, in this process (a fresh interpreter per case would cost seconds each): exit 2,
    one line on stderr naming the flag and what it accepts, nothing on stdout, --out untouched."""
    (tmp_path / "adaptation.png").write_bytes(b"earlier figure")
    with pytest.raises(SystemExit) as stop:
        flags.parse([*argv, "--out", str(tmp_path)], experiment.SETUPS, experiment.DEFAULT)
    out, err = capsys.readouterr()
    assert stop.value.code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("experiment.py: error:") and flag in lines[0] and allowed in lines[0]
    assert os.listdir(tmp_path) == ["adaptation.png"] and (tmp_path / "adaptation.png").read_bytes() == b"earlier figure"


@pytest.mark.slow
def test_cli_bad_flag_stops_the_program_before_anything_runs(tmp_path, compile_cache):
    """The same through `python experiment.py`, once: the program prints nothing else and exits 2."""
    (tmp_path / "adaptation.png").write_bytes(b"earlier figure")
    result = run_cli(compile_cache, "--seeds", "0", "--out", str(tmp_path))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "experiment.py: error: argument --seeds: expected a whole number >= 1, got '0'\n"
    assert os.listdir(tmp_path) == ["adaptation.png"]


@pytest.mark.slow
def test_cli_unwritable_output_folder_stops_with_one_line(tmp_path, compile_cache):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # a path under a file cannot be a folder, even for root
    result = run_cli(compile_cache, "--out", str(blocker / "figures"))
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--out" in lines[0] and "cannot write" in lines[0]
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_an_out_where_no_file_can_be_made_stops_while_the_flags_parse(capsys):
    """/proc takes no new file, even from root, for whom os.access says yes to any folder: the
    flags' check makes a nameless file there to know, and stops in one line (exit 2) before a
    second of compiling, where the first save would have failed after it."""
    with pytest.raises(SystemExit) as stop:
        flags.parse(["--out", "/proc/maml-jax-out"], experiment.SETUPS, experiment.DEFAULT)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "argument --out: cannot write" in err[0]


@pytest.mark.slow
@pytest.mark.parametrize("alpha,where", [("1e30", "MAML diverged at step 0"),
                                         ("1000", "MAML adaptation (run 0, step size 1000) diverged")])
def test_cli_divergence_stops_and_writes_nothing(alpha, where, tmp_path, compile_cache):
    """An inner step size of 1e30 turns the first meta-loss into NaN; one of 1000 trains to finite
    meta-losses (Adam's steps are bounded) but blows held-out adaptation up to inf. Both stop the run."""
    (tmp_path / "results.txt").write_text("earlier results")
    result = run_cli(compile_cache, "--steps", "1000", "--alpha", alpha, "--out", str(tmp_path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and where in lines[0] and "nothing was written" in lines[0]
    assert os.listdir(tmp_path) == ["results.txt"] and (tmp_path / "results.txt").read_text() == "earlier results"


# ---- sizes beyond memory are refused before anything runs ------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("argv,flags,what", [
    (["--tasks", "100000000"], "--tasks", "training 1 run(s) of 70,000 steps of 100,000,000 tasks"),
    (["--k", "10000000"], "--k", "with K = 10,000,000"),
    (["--seeds", "3", "--k", "10000000"], "--k", "3 run(s) of 70,000 steps of 25 tasks with K = 10,000,000"),
    (["--eval-tasks", "100000000"], "--eval-tasks", "on 100,000,000 held-out tasks"),
], ids=["tasks", "k", "k-not-seeds", "eval-tasks"])
def test_a_run_that_cannot_fit_in_memory_is_refused_before_training(argv, flags, what, tmp_path, capsys):
    """Each of these needs terabytes, far beyond any machine: training, by the count of one chunk's
    tasks (3,500 steps x 1e8 tasks x 40 numbers x 4 bytes), made before compiling; evaluation, by
    XLA's own count of the compiled programs (the count before compiling, a number per task, run,
    model and K, is only 1.6 GB). One line naming the one flag that is too large (not
    --seeds, which is 3 times its default where K is 1e6 times), the need, what is available and
    the largest value that would fit; exit 2; nothing trained (no progress line) or written, and
    no empty folder made where --out did not exist. main in this process (the refusal is main's
    alone; test_cli_bad_flag_stops_the_program_before_anything_runs runs the program itself)."""
    (tmp_path / "results.txt").write_text("earlier results")
    for out in (tmp_path, tmp_path / "new" / "folder"):
        with pytest.raises(SystemExit) as stop:
            experiment.main([*argv, "--out", str(out)])
        assert stop.value.code == 2
    printed, err = capsys.readouterr()
    assert not (tmp_path / "new").exists()
    lines = err.strip().splitlines()
    need = [line.split(", more than the ")[0] for line in lines]  # what is free moves between the two
    assert len(lines) == 2 and need[0] == need[1], lines
    assert lines[0].startswith(f"experiment.py: error: argument {flags}: "), lines
    assert what in lines[0] and re.search(r"needs (at least )?[\d.]+ TiB \((XLA's count|counted before compiling)\), "
                                          r"more than the [\d.]+ [KMGT]?i?B available; expected "
                                          + flags + r" at most about [\d,]+, got [\d,]+$", lines[0]), lines[0]
    assert "step " not in printed  # no training step ran
    assert os.listdir(tmp_path) == ["results.txt"] and (tmp_path / "results.txt").read_text() == "earlier results"


HUGE = [(["--steps", str(10**13)], "--steps"), (["--seeds", str(10**9)], "--seeds"),
        (["--seeds", str(10**9), "--steps", "100"], "--seeds"), (["--tasks", str(10**9)], "--tasks"),
        (["--k", str(10**9)], "--k"), (["--eval-tasks", str(10**12)], "--eval-tasks")]


# Sets the address-space limit, forks the program and prints its exit code and peak resident
# memory (wait4). The program is forked from this small process, not from pytest's: a child's peak
# starts at what its parent held when it forked, and a suite's pytest holds a gigabyte or more.
LIMITED = ("import os, resource, sys; limit = int(sys.argv[1]); "
           "resource.setrlimit(resource.RLIMIT_AS, (limit, limit)); pid = os.fork(); "
           "pid or os.execv(sys.executable, [sys.executable, *sys.argv[2:]]); "
           "_, status, usage = os.wait4(pid, 0); "
           "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)")


def run_limited(argv, folder, memory=2 * 2**30, seconds=300):
    """`python experiment.py ARGV` under an address-space limit (RLIMIT_AS) and a time limit (then
    SIGKILL to its process group): its exit code, stderr, peak resident memory (bytes, its own:
    wait4) and seconds."""
    pytest.importorskip("resource")  # Unix
    t0 = time.monotonic()
    with open(folder / "stderr", "w") as err:
        child = subprocess.Popen([sys.executable, "-c", LIMITED, str(memory), "experiment.py", *argv],
                                 cwd=ROOT, env=cpu_env(), stdout=subprocess.PIPE, stderr=err,
                                 text=True, start_new_session=True)
        timer = threading.Timer(seconds, os.killpg, (child.pid, signal.SIGKILL))
        timer.start()
        out, _ = child.communicate()
        timer.cancel()
    code, peak_kib = map(int, out.split()[-2:])
    return code, (folder / "stderr").read_text(), peak_kib * 1024, time.monotonic() - t0


@pytest.mark.slow
@pytest.mark.parametrize("argv,flag", HUGE, ids=[" ".join(a) for a, _ in HUGE])
def test_a_huge_flag_is_refused_before_anything_grows_with_it(argv, flag, tmp_path):
    """Each of these needs terabytes: the program, run under an address-space limit of 2 GiB (more
    than importing jax and starting XLA take; a chunk plan, key split or allocation that grew with
    the flag would fail against it) and a time limit of 300 s (generous: the refusal is arithmetic,
    before anything compiles, but importing jax and starting XLA take seconds on an idle machine and
    a minute at a load of 15), exits 2 with one line naming the flag that drives the need, writes
    nothing, and peaks under 1 GiB of resident memory. Before, --steps 10**13 grew to 16 GB building
    its chunk plan and keys, and --seeds 1000000 --steps 100 looped over the seeds for 32 minutes."""
    out = tmp_path / "out"
    code, err, peak, seconds = run_limited([*argv, "--out", str(out)], tmp_path)
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1, (code, err[-3000:], seconds)
    assert lines[0].startswith(f"experiment.py: error: argument {flag}: ") and "needs at least" in err
    assert peak < 2**30 and not out.exists(), (peak, seconds)


# ---- what a newcomer's first commands leave behind ------------------------------------------------

@pytest.mark.slow
def test_a_closed_pipe_ends_the_run_quietly_with_exit_141(compile_cache, tmp_path):
    """`python experiment.py | head -1`: the reader goes after one line. The program ends with
    exit 141 (the shell's code for a closed pipe, which the Running page lists and no other
    outcome uses: 1 is a diverged run, 2 a refusal) and no traceback on stderr."""
    env = experiment_env(compile_cache)
    run = subprocess.Popen([sys.executable, "experiment.py", "--steps", "200", "--eval-tasks", "20",
                            "--out", str(tmp_path / "run")], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = run.stdout.readline()
    run.stdout.close()  # as head does, after its line
    err = run.stderr.read()
    assert run.wait(timeout=HANG_S) == 141 and first.startswith("MAML, code setup"), (first, err)
    assert err == "", err


@pytest.mark.slow
def test_the_readme_commands_leave_git_status_clean(compile_cache, tmp_path):
    """In a clone of the committed tree, plain `python experiment.py` (shortened by --steps and
    --eval-tasks) writes to runs/code-seed0/, which .gitignore covers, says so, and says its MAML
    run is still on its starting plateau (200 steps of the released code's setting are far too
    few to leave it); `git status` is clean afterwards, as it is after the tests (pytest's cache
    and __pycache__ are ignored too)."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = experiment_env(compile_cache)
    run = subprocess.run([sys.executable, "experiment.py", "--steps", "200", "--eval-tasks", "20"],
                         cwd=clone, env=env, capture_output=True, text=True, timeout=HANG_S)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (clone / "runs" / "code-seed0" / "results.json").is_file()
    lines = run.stdout.splitlines()
    assert "written to runs/code-seed0/" in lines[-2]
    assert lines[-1].startswith("note: MAML's training loss in the run is still above half its start")
    subprocess.run([sys.executable, "-m", "pytest", "-q", "test_maml.py", "-k", "closed_form"],
                   cwd=clone, env=env, capture_output=True, timeout=HANG_S)
    status = subprocess.run(["git", "status", "--porcelain", "--ignored=no"], cwd=clone,
                            capture_output=True, text=True, check=True).stdout
    assert status == "", status
