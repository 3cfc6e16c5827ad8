"""The programs in scripts/ that the pages show, and the results they committed.

Run with `python -m pytest test_scripts.py`. The scripts run in a quick mode, in this process where
they can (their functions are called; only what they time starts processes of its own):
- scripts.curvature on two runs that experiment.py trains here: its power iteration against the
  eigenvalues of the full Hessian, its count of tasks that ended worse against experiment.py's
  own count, and its JSON against its table;
- scripts.bench: both of maml.py's loops time and train alike, and its JSON holds its table;
- scripts.runs_at_once: one measurement per size, consistent with itself;
- the committed figures/benchmark.json and figures/runs_at_once.json: their tables are rendered
  from them, their commands name no path of the machine they ran on, and the Performance page's
  sentences about runs at once hold for them.
Speed itself is measured by the scripts, never asserted by a test.
"""
import math
import os
import re

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import experiment
import maml
from machinery import program, report
from studies import bench, curvature, mutation, runs_at_once

FIGURES = os.path.join(program.ROOT, "figures")


@pytest.fixture(scope="module")
def saved_runs(tmp_path_factory):
    """A folder of saved runs as experiment.py writes them (params.npz, results.json): two runs
    of the released code's setting, briefly trained, evaluated on 20 held-out tasks."""
    figures = tmp_path_factory.mktemp("figures")
    experiment.main(["--setup", "code", "--seeds", "2", "--steps", "100", "--eval-tasks", "20",
                     "--out", str(figures / "code")])
    return figures


@pytest.fixture(scope="module")
def curvature_run(saved_runs):
    """`python -m studies.curvature` on those runs: its JSON and its text table."""
    out = saved_runs / "curvature.json"
    curvature.main(["--figures", str(saved_runs), "--setups", "code", "--out", str(out)])
    return report.read_json(out), out.with_suffix(".txt").read_text()


def test_curvature_power_iteration_finds_the_largest_hessian_eigenvalue(saved_runs,
                                                                        curvature_run):
    """The top eigenvalue that the curvature program recorded for the first three held-out tasks
    of run 0 at K = 5 is the largest of numpy's eigvalsh of the full 1,761 x 1,761 Hessian
    (float64) at that run's saved parameters, on those tasks drawn again from run 0's test key.
    Float32 Hessian-vector products and 300 iterations: agreement to 1e-3 relative (seen: ~1e-6)."""
    data, _ = curvature_run
    params, results = curvature.load(saved_runs / "code")
    run0 = jax.tree_util.tree_map(lambda a: a[0], params)
    key = experiment.run_keys(results["seeds"][0], 1)[4, 0]
    x1, y1, _, _ = experiment.eval_tasks(key, results["eval_tasks"], max(experiment.EVAL_KS),
                                         tuple(results["setup"]["amp_range"]))
    recorded = next(k for k in data["setups"][0]["ks"] if k["k"] == 5)["runs"][0]["eigenvalues"]
    theta, unravel = ravel_pytree(run0)

    @jax.jit
    def dense_hessian(x, y):  # compiled once for the three tasks
        return jax.hessian(lambda th: maml.loss(unravel(th), x, y))(theta)
    for t in range(3):
        want = np.linalg.eigvalsh(np.asarray(dense_hessian(x1[t, :5], y1[t, :5]), np.float64))
        assert abs(recorded[t] - want.max()) <= 1e-3 * abs(want.max()), (t, recorded[t], want.max())


def test_curvature_counts_the_tasks_that_experiment_py_found_worse(saved_runs, curvature_run):
    """For every K and run, the tasks that the curvature program found ending worse (MSE after
    10 steps above the MSE before) are as many as experiment.py's own evaluation counted in
    results.json: the program redraws the same held-out tasks and adapts with the same step
    sizes. Some task did end worse, so the comparison is not of two zeros."""
    data, _ = curvature_run
    results = report.read_json(saved_runs / "code" / "results.json")
    theirs = {c["k"]: [run["worse"] for run in c["runs"]]
              for c in results["cells"] if c["model"] == "MAML"}
    ours = {k["k"]: [run["counts"]["worse"] for run in k["runs"]]
            for k in data["setups"][0]["ks"]}
    assert ours == theirs
    assert sum(map(sum, ours.values())) > 0, ours


def test_curvature_json_holds_every_task_and_its_table(curvature_run):
    """The JSON has, per K, one record per seed with one eigenvalue per held-out task; its counts
    agree with its per-task data (the eigenvalues above 2 / step size, the tasks listed as worse,
    each with the eigenvalue of its task), and the text table is rendered from the JSON alone."""
    data, text = curvature_run
    setup = data["setups"][0]
    assert setup["tasks_measured"] == setup["eval_tasks"] == 20
    for k in setup["ks"]:
        assert [run["seed"] for run in k["runs"]] == setup["seeds"]
        for run in k["runs"]:
            lam, worse = np.array(run["eigenvalues"]), run["worse_tasks"]
            steep = lam > run["threshold"]
            assert len(lam) == run["counts"]["tasks"] == 20 and np.all(lam > 0)
            assert run["counts"]["steep"] == steep.sum()
            assert run["counts"]["worse"] == len(worse)
            assert run["counts"]["both"] == sum(steep[w["task"]] for w in worse)
            assert all(w["eigenvalue"] == lam[w["task"]] for w in worse)
    assert text == curvature.render(data)


def test_benchmark_quick_run_times_both_loops_which_train_alike(tmp_path, capsys):
    """`python -m studies.bench` in its quick mode (1 round of 200 steps at the paper's setting,
    the two loops of maml.py alone): each loop ran in a fresh process and has one positive,
    finite time; both trained on the same batches, so they end at the same loss, to 1e-3
    relative (float32 sums in another order; another batch would differ by ~10%); the peers were
    not run, so every target reads 'not measured'; the markdown is the JSON's rendering, and
    the command it records, read back by the script's own parser, asks for this run."""
    argv = ["--rounds", "1", "--steps", "200", "--only", "train,loop", "--settings", "paper",
            "--no-costs", "--out", str(tmp_path / "bench.json")]
    bench.main(argv)
    assert "FAILED" not in capsys.readouterr().out
    data = report.read_json(tmp_path / "bench.json")
    timed = data["ms_per_step"]
    assert set(timed) == {"train", "loop"} and set(data["settings"]) == {"paper"}
    for t in (timed["train"]["paper"], timed["loop"]["paper"]):
        assert len(t["rounds"]) == 1 and math.isfinite(t["median"]) and t["median"] > 0, t
    losses = [timed[key]["paper"]["final_loss"][0] for key in ("train", "loop")]
    assert math.isclose(*losses, rel_tol=1e-3), losses
    assert {t["result"] for t in data["targets"]} == {"not measured"}
    assert (tmp_path / "bench.md").read_text() == bench.render(data)
    words = data["command"].split()  # python -m studies.bench ... --out <a path>
    again = bench.parse_args(words[3:words.index("--out")])
    assert (again.rounds, again.steps, again.only, again.settings, again.no_costs) == \
        (1, 200, "train,loop", "paper", True)


def test_runs_at_once_quick_run_measures_each_size(tmp_path):
    """`python -m studies.runs_at_once` for 1 and 2 runs of 60 steps on 2 held-out tasks, one
    round: one entry per size, in order, each from a whole experiment.py that took longer than
    its own timed steps (the fixed part is positive: a time read in the wrong unit would break
    this), and the markdown is the JSON's rendering."""
    out = tmp_path / "runs.json"
    runs_at_once.main(["--sizes", "1,2", "--steps", "60", "--rounds", "1", "--eval-tasks", "2",
                       "--out", str(out)])
    data = report.read_json(out)
    assert [s["runs"] for s in data["sizes"]] == [1, 2]
    for s in data["sizes"]:
        assert len(s["rounds"]) == 1 and s["ms_per_step"] > 0
        assert s["wall_s"] > data["steps"] * s["ms_per_step"] / 1e3
        assert s["fixed_s"] > 0
    assert out.with_suffix(".md").read_text() == runs_at_once.render(data)


def test_the_recorded_command_names_no_path_of_this_machine():
    """program.command, which writes the command of every result: the PyTorch interpreter becomes
    a placeholder, a path inside the repository becomes relative, any other absolute path a
    placeholder; the other words stay as given."""
    argv = ["--torch-python", "/opt/venv/bin/python", "--out",
            os.path.join(program.ROOT, "figures", "b.json"), "--peers=/elsewhere/peers",
            "--steps", "5"]
    got = program.command("studies.bench", argv, hide={"--torch-python": "<a Python with torch>"})
    assert got == ("python -m studies.bench --torch-python <a Python with torch> "
                   "--out figures/b.json --peers=<a path> --steps 5")
    via_env = program.command("studies.bench", [], env={"TORCH_PYTHON": "<a Python with torch>"})
    assert via_env == "TORCH_PYTHON=<a Python with torch> python -m studies.bench"


COMMITTED = [("benchmark", bench), ("runs_at_once", runs_at_once), ("mutation", mutation)]


@pytest.mark.parametrize("name, script", COMMITTED, ids=[name for name, _ in COMMITTED])
def test_committed_tables_are_rendered_from_their_json(name, script):
    """figures/NAME.md is what the script renders from figures/NAME.json (neither was edited
    alone), and the command recorded in it runs that script and names no absolute path: it says
    how to remake the result, not where it was made."""
    data = report.read_json(os.path.join(FIGURES, name + ".json"))
    with open(os.path.join(FIGURES, name + ".md")) as f:
        assert f.read() == script.render(data)
    assert f"python -m {script.__name__}" in data["command"]
    assert not re.search(r"(^|[\s=])/", data["command"]), data["command"]


def test_performance_page_sentences_about_runs_at_once_hold():
    """The Performance page's section on several runs at once, against the committed
    figures/runs_at_once.json: the sizes are 1, 4 and 16; the page quotes the measured range of
    a run-step's time against one run's, one run's fixed part and 16 runs' (which grows far slower
    than N: under 5 times one run's for 16 times the runs), and the full-run ratios (at once /
    separately) of 4 and 16 runs, each as the JSON has it, to the digits the page gives."""
    data = report.read_json(os.path.join(FIGURES, "runs_at_once.json"))
    with open(os.path.join(program.ROOT, "docs", "performance.md")) as f:
        page = " ".join(f.read().split())  # the sentences, whatever the line breaks
    section = page[page.index("## Several runs at once"):page.index("## The benchmark script")]
    sizes = {s["runs"]: s for s in data["sizes"]}
    assert sorted(sizes) == [1, 4, 16]
    per_run = [sizes[n]["ms_per_run_step"] for n in (4, 16)]
    assert (f"a run-step cost {min(per_run):.2f} to {max(per_run):.2f} ms against one run's "
            f"{sizes[1]['ms_per_run_step']:.2f}") in section
    assert f"about {sizes[1]['fixed_s']:.0f} s for one run" in section
    assert f"to {sizes[16]['fixed_s']:.0f} s for 16 runs" in section
    assert sizes[16]["fixed_s"] < 5 * sizes[1]["fixed_s"]
    ratios = [sizes[n]["at_once_over_separately"] for n in (4, 16)]
    assert f"{ratios[0]:.2f} of it for 4 runs, {ratios[1]:.2f} for 16" in section


def test_from_2019_page_quotes_the_committed_speedups():
    """The From 2019 page's speed-ups are those of the committed figures/benchmark.json (each the
    median of the rounds' ratios), to the digits the page gives: the training loop and the
    copy-paste loop against the blog as written and the careful port, at both settings."""
    speedups = report.read_json(os.path.join(FIGURES, "benchmark.json"))["speedups"]
    with open(os.path.join(program.ROOT, "docs", "from-2019.md")) as f:
        page = " ".join(f.read().split())  # the sentences, whatever the line breaks

    def x(ours, baseline, setting):
        return speedups[ours][setting][baseline]["median"]
    assert (f"the training loop is {x('train', 'blog as written', 'paper'):.1f} times (paper "
            f"setting) and {x('train', 'blog as written', 'blog'):.1f} times (blog setting) "
            f"faster than the blog's loop as written, and "
            f"{x('train', 'careful port', 'paper'):.1f} and "
            f"{x('train', 'careful port', 'blog'):.1f} times faster than the careful port") in page
    assert (f"is {x('loop', 'blog as written', 'paper'):.1f} and "
            f"{x('loop', 'blog as written', 'blog'):.1f} times faster than the blog as written, "
            f"and {x('loop', 'careful port', 'paper'):.2f} and "
            f"{x('loop', 'careful port', 'blog'):.2f} times as fast as the careful port") in page


def test_mutation_testing_unrolls_a_decorator_into_the_same_function():
    """studies/mutation.py rewrites `@dec def f` as `def f` then `f = dec(f)` (mutmut leaves
    decorated functions alone): the same function, stacked decorators applied innermost first."""
    source = ("from functools import partial\nfrom jax import jit\n\n\n"
              "@partial(jit, static_argnames=('n',))\n@jit\ndef f(x, n):\n    return x * n\n")
    rewritten = mutation.undecorate(source)
    assert rewritten.endswith("def f(x, n):\n    return x * n\n\n\nf = partial(jit, static_argnames=('n',))(jit(f))\n")
    space = {}
    exec(rewritten, space)
    assert space["f"](2.0, n=3) == 6.0 and "@" not in rewritten


def test_every_mutant_the_tests_do_not_kill_is_explained():
    """figures/mutation.json: the runs before and after cover the same mutants; every one that the
    last run's tests did not kill has its reason on record (it computes the same numbers), and
    every change planted by hand outside a function was caught."""
    data = report.read_json(os.path.join(FIGURES, "mutation.json"))
    runs = list(data["runs"].values())
    assert runs[0]["outcomes"].keys() == runs[-1]["outcomes"].keys()
    missed = [name for name, status in runs[-1]["outcomes"].items() if status != "killed"]
    assert set(missed) <= set(data["equivalent"]), set(missed) - set(data["equivalent"])
    assert all(p["outcome"] == "killed" for p in runs[-1]["planted"])


def test_testing_page_states_the_mutation_runs_count_and_version():
    """The Testing page's count of mutants and mutmut's version are those of figures/mutation.json,
    and the page includes its table."""
    data = report.read_json(os.path.join(FIGURES, "mutation.json"))
    with open(os.path.join(program.ROOT, "docs", "testing.md")) as f:
        page = " ".join(f.read().split())
    last = list(data["runs"].values())[-1]
    assert f"once for each of the {len(last['outcomes'])} mutants" in page
    assert f"install mutmut {last['machine']['mutmut']} beside" in page
    assert f"pip install mutmut=={last['machine']['mutmut']}" in page
    assert '--8<-- "figures/mutation.md"' in page


@pytest.mark.parametrize("where", ["repository", "a folder of other files"])
def test_mutation_refuses_a_work_folder_it_would_wrongly_empty(where, tmp_path, capsys):
    """The mutation program empties --work before it copies the project there: the repository (or
    a folder inside or above it) and a folder of files it did not write stop it with one line
    naming --work, before anything is touched."""
    work = program.ROOT if where == "repository" else str(tmp_path)
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as stop:
        mutation.parse_args(["--work", work, "--label", "after"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and err[-1].startswith("python -m studies.mutation: error: --work: ")
    assert (tmp_path / "notes.txt").read_text() == "keep me"
