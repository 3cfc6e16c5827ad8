"""The claims that experiment.py rests on: its training loop, evaluation, report and command line.

The algorithm's own claims (derivatives, batching, the sampler) are in test_maml.py.
"""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from jax import random
from jax.tree_util import tree_leaves

import experiment
import maml

HERE = os.path.dirname(os.path.abspath(__file__))


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
    fused, fused_losses = experiment.train_chunk(maml.opt_init(params), keys, np.arange(20), setup["amp_range"],
                                           0.01, step_fn=maml.step, n_tasks=25, k=10)
    np.testing.assert_allclose(fused_losses, losses, rtol=1e-5)
    for a, b in zip(tree_leaves(maml.get_params(fused)), tree_leaves(maml.get_params(state))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ---- the experiment's pieces -------------------------------------------------------------------

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


def test_mean_ci_is_mean_and_1_96_standard_errors():
    mean, half = experiment.mean_ci(np.array([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5 and half == pytest.approx(1.96 * np.std([1, 2, 3, 4], ddof=1) / 2, rel=1e-15)


def test_write_whole_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "figure.png"
    path.write_bytes(b"old")

    def broken(f):
        f.write(b"half a fig")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        experiment.write_whole(str(path), broken)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["figure.png"]
    experiment.write_whole(str(path), lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["figure.png"]


# ---- the command line --------------------------------------------------------------------------

@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
    """One persistent XLA compilation cache for every `python experiment.py` the tests start: the first run
    compiles (seconds), the later ones load its executables. The programs computed are unchanged."""
    return str(tmp_path_factory.mktemp("xla-cache"))


def run_cli(cache, *args, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return subprocess.run([sys.executable, os.path.join(HERE, "experiment.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=HERE, env=env)


def table_lines(stdout):
    """Everything `python experiment.py` prints that must not depend on the machine or the folder."""
    return [ln for ln in stdout.splitlines() if not re.search(r"compiled in|steps/s|ms per meta-step|written to", ln)]


SHORT_RUN = ("--steps", "1000", "--eval-tasks", "200", "--seed", "0")


@pytest.fixture(scope="session")
def short_run(tmp_path_factory, compile_cache):
    """`python experiment.py` for 1,000 steps of the paper's setting (seconds), evaluated on 200 tasks."""
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
    assert len(lines) == 1 and lines[0].startswith("experiment.py: error:") and flag in lines[0] and allowed in lines[0]
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
    curves = {(name, k): np.ones((3, 11)) for k in experiment.EVAL_KS for name in ("MAML", "pretrained")}
    sizes = {key: 0.01 for key in curves}
    assert experiment.report(curves, sizes, 3, paper=True).count("(paper)") == 2
    assert "(paper)" not in experiment.report(curves, sizes, 3, paper=False)


def test_report_leaves_diverged_tasks_out_of_the_means_and_counts_them():
    """Three tasks: one improves (10 -> 5), one gets worse (1 -> 2), one overflows (1 -> inf).
    The row's means use the two finite tasks and carry a *; the worse count is 2 (inf and the
    1 -> 2 task), the worst finite one ended at 2, and the diverged one is counted on its own."""
    mse = np.array([[10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0],
                    [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0],
                    [1.0, 2.0, 4.0, 8.0, 1e3, 1e9, 1e20, 1e38, np.inf, np.inf, np.inf]])
    curves = {(name, k): mse for k in experiment.EVAL_KS for name in ("MAML", "pretrained")}
    text = experiment.report(curves, {key: 0.01 for key in curves}, 3, paper=False)
    n10 = "%.3f ± %.3f*" % experiment.mean_ci(np.array([5.0, 2.0]))
    assert re.search(rf"^  5  MAML +0\.01 +5\.500 ± \S+\*.* {re.escape(n10)}$", text, re.M)
    assert "K =  5, MAML: 2 of 3 tasks end 10 steps with a higher MSE than they started with (worst: 2.000)" in text
    assert text.count("1 of them diverged (MSE inf or NaN): left out of the row marked *") == 4


def test_report_prints_a_runaway_mean_in_scientific_notation_apart_from_its_neighbours():
    """A finite but huge MSE (a task that ran away without overflowing, as seen on a GPU) must not
    glue its cell to the next one; the mean is computed in float64, where its square fits."""
    mse = np.ones((3, 11), np.float32)
    mse[0, 5:] = 3e32
    curves = {(name, k): mse for k in experiment.EVAL_KS for name in ("MAML", "pretrained")}
    with np.errstate(over="raise"):
        text = experiment.report(curves, {key: 0.01 for key in curves}, 3, paper=False)
    assert re.search(r"^  5  MAML +0\.01 +1\.000 ± 0\.000 +1\.000 ± 0\.000 +1\.00e\+32 ± \S+ +1\.00e\+32 ± \S+$",
                     text, re.M), text
    assert "(worst: 3.00e+32)" in text
