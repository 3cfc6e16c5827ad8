"""The benchmark (studies/bench.py), the 2019 loop it measures against (studies/blog2019.py), the
results it committed, and the pages that state them.

Run with `python -m pytest studies/test_bench.py`. The checks:
- the 2019 port computes what maml.py computes: the same loss and the same update of the same
  state on the same batch, so that the benchmark compares like with like;
- the quick mode runs (slow): every implementation asked for ran in a fresh process, and maml.py's
  two loops trained on the same batches;
- the committed run measured every implementation in every round;
- every number the Performance and From 2019 pages state about the benchmark is the JSON's, and
  every marked section of the two programs is shown on the Performance page;
- the stack part (--stacks): without a stack package its rows are skipped, saying so; the
  committed figures/stacks.md is the rendering of figures/stacks.json, and every number the
  stack page states about speed is that JSON's (the retired rows' aside).
Speed itself is measured by the program, never asserted by a test.
"""
import importlib.util
import math

import jax
import numpy as np
import pytest
from jax import random

import maml
from machinery import program
from studies import bench, blog2019
from studies.conftest import ROOT, experiment_env, stated
from studies.test_docs import includes, sections

COMMITTED = program.read_json(ROOT / "figures" / "benchmark.json")
STACKS = program.read_json(ROOT / "figures" / "stacks.json")


def test_the_2019_port_computes_maml_py_s_loss_and_update():
    """blog2019.step and maml.step, from the same state on the same meta-batch (the paper's
    setting): the same meta-loss and the same Adam update, to float32 rounding (1e-5 relative;
    the two take the loss and its gradient in one pass or in two, and vmap the tasks two ways)."""
    opt_state = maml.opt_init(maml.net_init(random.PRNGKey(0), (-1, 1))[1])
    batch = maml.sample_tasks(random.PRNGKey(1), 25, 10, (0.1, 5.0))
    ours, our_loss = maml.step(0, opt_state, *batch, 0.01)
    theirs, their_loss = blog2019.step(0, opt_state, *batch, 0.01)
    assert math.isclose(float(our_loss), float(their_loss), rel_tol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_the_careful_port_differs_from_the_blog_only_in_how_it_stacks():
    """From the same seed, the blog's sampler with jnp.stack and with np.stack gives the same
    numbers (float32 against float64: 1e-6 relative): the careful port changes the transfer, not
    the tasks. The tasks are the blog's: K points of x in [-5, 5], |y| at most the amplitude."""
    blog = blog2019.sample_tasks(np.random.default_rng(3), 4, 20, (0.1, 0.5))
    careful = blog2019.sample_tasks(np.random.default_rng(3), 4, 20, (0.1, 0.5), np.stack)
    for a, b in zip(blog, careful):
        assert a.shape == b.shape == (4, 20, 1)
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-6)
    assert np.abs(careful[0]).max() <= 5 and np.abs(careful[1]).max() <= 0.5


@pytest.mark.slow
def test_the_quick_mode_runs_and_its_table_is_its_json(tmp_path, compile_cache, monkeypatch):
    """One round of 200 steps at the paper's setting of maml.py's two loops and the blog's, into a
    folder not there yet: each ran once with a positive time; the two loops of maml.py trained on
    the same batches, so they end at the same loss (1e-3 relative: float32 sums in another
    order; another batch would differ by some 10%); the command recorded, read back by the
    program's parser, asks for this run. The workers, on the
    CPU, share the tests' compilation cache (conftest): what one compiled, the next loads (a
    sixth of the time), the programs unchanged."""
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    for name, value in experiment_env(compile_cache).items():
        monkeypatch.setenv(name, value)
    argv = ["--rounds", "1", "--steps", "200", "--only", "train,loop,blog", "--settings", "paper",
            "--out", str(tmp_path / "new")]
    bench.main(argv)
    data = program.read_json(tmp_path / "new" / "benchmark.json")
    times = data["ms_per_step"]
    assert list(times) == ["train", "loop", "blog"] and list(data["settings"]) == ["paper"]
    for t in times.values():
        assert len(t["paper"]["rounds"]) == 1 and t["paper"]["median"] > 0, t
    losses = [times[key]["paper"]["final_loss"][0] for key in ("train", "loop")]
    assert math.isclose(*losses, rel_tol=1e-3), losses
    words = data["command"].split()
    again = bench.parse_args(words[3:words.index("--out")])
    assert (again.rounds, again.steps, again.only, again.settings) == \
        (1, 200, ["train", "loop", "blog"], ["paper"])


def test_help_writes_nothing_and_a_bad_flag_is_one_line(tmp_path, capsys):
    for argv, code in ((["--help"], 0), (["--only", "blog,nothing"], 2), (["--steps", "5"], 2)):
        with pytest.raises(SystemExit) as stop:
            bench.parse_args([*argv, "--out", str(tmp_path / "out")])
        assert stop.value.code == code
    errors = capsys.readouterr().err.strip().splitlines()
    assert [e.split(": ")[1] for e in errors] == ["error"] * 2, errors
    assert "argument --only" in errors[0] and "argument --steps" in errors[1]
    assert not (tmp_path / "out").exists()


def test_without_peers_the_pytorch_rows_are_skipped_saying_so(capsys):
    args = bench.parse_args(["--only", "train,torch,torch1"])
    args.torch_python = None
    assert bench.runnable(args) == (["train"], None)
    assert "skipping the PyTorch peers" in capsys.readouterr().out


def test_without_a_stack_package_the_port_s_rows_are_skipped_saying_so(monkeypatch, capsys):
    """Where equinox is not installed (and flax and optax are, whatever this Python has), --stacks
    runs maml.py's rows and NNX's, and says why the Equinox rows are missing; nothing imports a
    port to find out."""
    real = importlib.util.find_spec
    found = {"equinox": None, "flax": "found", "optax": "found"}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: found[name] if name in found else real(name, *a))
    args = bench.parse_args(["--stacks"])
    args.only, args.torch_python = bench.PARTS["stacks"], None
    assert bench.runnable(args) == (["loop", "step", "nnx_loop", "nnx_step"], None)
    assert "skipping maml_equinox.py's rows: equinox not installed" in capsys.readouterr().out


def test_the_committed_run_is_the_benchmark_with_every_round_of_every_implementation():
    """figures/benchmark.json's command runs the benchmark, with the PyTorch peers as the page
    says, and every implementation ran every round (its table: test_results.py)."""
    before, runs, _ = COMMITTED["command"].partition("python -m studies.bench")
    assert runs and before in ("", "TORCH_PYTHON=<a Python with torch> ")  # as the page says
    for key, by_setting in COMMITTED["ms_per_step"].items():
        for t in by_setting.values():
            assert len(t["rounds"]) == COMMITTED["rounds"] and None not in t["rounds"], key


def test_every_section_of_the_programs_is_shown_on_the_performance_page():
    shown = {(file, section) for page, file, section in includes() if page.name == "performance.md"}
    for source in ("studies/bench.py", "studies/blog2019.py"):
        missing = {s for s in sections(ROOT / source) if (source, s) not in shown}
        assert not missing, (source, missing)


def ratio(ours, baseline, setting, data=COMMITTED):
    (r,) = [r for r in data["speedups"]
            if (r["ours"], r["baseline"], r["setting"]) == (ours, baseline, setting)]
    return r


def median(key, setting, data=COMMITTED):
    return data["ms_per_step"][key][setting]["median"]


def test_the_from_2019_page_states_the_committed_speedups():
    """From 2019's "How much faster": the training loop's and the copy-paste loop's speed-ups on
    the blog as written and on the careful port, at both settings, and the rounds they are the
    median of, as the JSON has them to the digits the page gives."""
    x = [f"{ratio(o, b, s)['median']:.1f}" for o in ("train", "loop")
         for b in ("blog as written", "careful port") for s in ("paper", "blog")]
    assert stated("docs/from-2019.md", "## How much faster") == [
        "2019", *x[:4], *x[4:], str(COMMITTED["rounds"])]


def test_the_performance_page_states_the_committed_numbers():
    """Every number in the prose of the Performance page's sections about the benchmark, in
    order, is the committed JSON's (a sentence may be reworded freely; a number that is not the
    JSON's, or one added unchecked, fails): the settings."""
    s = COMMITTED["settings"]
    settings = [f"{s['paper']['tasks']}", f"{s['paper']['alpha']:g}", f"{s['paper']['amp_max']:g}",
                f"{s['blog']['tasks']}", f"{s['blog']['alpha']:g}", f"{s['blog']['amp_max']:g}"]
    assert stated("docs/performance.md", "## The measurement") == [*settings, *["2019"] * 3]


def test_the_committed_stack_run_has_every_round_of_every_row():
    """figures/stacks.json (its table: test_results.py) was made by `python -m studies.bench
    --stacks`: every row of the stack part ran every round, with flax, equinox and optax."""
    assert STACKS["command"].startswith("python -m studies.bench --stacks")
    assert list(STACKS["ms_per_step"]) == bench.PARTS["stacks"]
    for key, by_setting in STACKS["ms_per_step"].items():
        for t in by_setting.values():
            assert len(t["rounds"]) == STACKS["rounds"] and None not in t["rounds"], key
    assert all(STACKS["environment"][p] for p in ("flax", "equinox", "optax"))


def test_the_stack_page_states_the_committed_speeds():
    """Every number in the prose of the stack page's "Speed" is the committed
    stacks.json's (the paper's setting): each loop's and step's speed-up on maml.py's.
    "What made them as fast" states what that run's retired rows found (the steps as they
    were, XLA's counts: git show 9eb3abe), on the run's date, the JSON's."""
    speed = [f"{ratio(key, base, 'paper', STACKS)['median']:.2f}" for key, base in (
        ("nnx_loop", "maml.py's loop"), ("eqx_loop", "maml.py's loop"),
        ("nnx_step", "maml.step"), ("eqx_step", "maml.step"))]
    assert stated("docs/stack.md", "## Speed") == speed
    got = stated("docs/stack.md", "## What made them as fast")
    assert got[2:5] == STACKS["when"].split()[0].split("-"), got
