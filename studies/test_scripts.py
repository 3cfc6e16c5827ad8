"""The programs in studies/ that the pages show (their committed results: test_results.py).

Run with `python -m pytest studies/test_scripts.py`. The programs run in a quick mode, in this
process where they can (their functions are called; only what they time starts processes of its
own), and each program's --help in a process of its own:
- studies.curvature on two runs that experiment.py trains here: its power iteration against the
  eigenvalues of the full Hessian, its count of tasks that ended worse against experiment.py's
  own count, and its JSON against itself;
- studies.plateau's quick run: every cell of its 2 x 2 and the slow runs trained twice as long;
- the command line every program shares (machinery/program.py).
Speed itself is measured by the programs, never asserted by a test.
"""
import ast
import importlib
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import experiment
import maml
from machinery import program
from studies.conftest import HANG_S, ROOT, cpu_env
from studies import compare, curvature, plateau

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
    """`python -m studies.curvature` on those runs, into a folder not there yet: its JSON."""
    out = saved_runs / "curvature"
    curvature.main(["--figures", str(saved_runs), "--setups", "code", "--out", str(out)])
    return program.read_json(out / "curvature.json")


@pytest.mark.slow
def test_curvature_power_iteration_finds_the_largest_hessian_eigenvalue(saved_runs,
                                                                        curvature_run):
    """The top eigenvalue that the curvature program recorded for the first three held-out tasks
    of run 0 at K = 5 is the largest of numpy's eigvalsh of the full 1,761 x 1,761 Hessian
    (float64) at that run's saved parameters, on those tasks drawn again from run 0's test key.
    Float32 Hessian-vector products and 300 iterations: agreement to 1e-3 relative (seen: ~1e-6)."""
    data = curvature_run
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


@pytest.mark.slow
def test_curvature_counts_the_tasks_that_experiment_py_found_worse(saved_runs, curvature_run):
    """For every K and run, the tasks that the curvature program found ending worse (MSE after
    10 steps above the MSE before) are as many as experiment.py's own evaluation counted in
    results.json: the program redraws the same held-out tasks and adapts with the same step
    sizes. Some task did end worse, so the comparison is not of two zeros."""
    data = curvature_run
    results = program.read_json(saved_runs / "code" / "results.json")
    theirs = {c["k"]: [run["worse"] for run in c["runs"]]
              for c in results["cells"] if c["model"] == "MAML"}
    ours = {k["k"]: [run["counts"]["worse"] for run in k["runs"]]
            for k in data["setups"][0]["ks"]}
    assert ours == theirs
    assert sum(map(sum, ours.values())) > 0, ours


@pytest.mark.slow
def test_curvature_json_holds_every_task(curvature_run):
    """The JSON has, per K, one record per seed with one eigenvalue per held-out task; its counts
    agree with its per-task data (the eigenvalues above 2 / step size, the tasks listed as worse,
    each with the eigenvalue of its task)."""
    data = curvature_run
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


@pytest.mark.slow
def test_plateau_quick_run_trains_the_open_cells_and_the_slow_runs_twice_as_long(tmp_path):
    """`python -m studies.plateau --quick` (300 steps, 2 runs a cell, 50 tasks), in this process:
    the two cells of the 2 x 2 that no setting covers are trained here, the code setting's slow
    seeds (13 and 16) are trained again for a second block that goes on from the first (through
    experiment.train's start, which once broke it unnoticed)."""
    plateau.main(["--quick", "--out", str(tmp_path)])
    data = program.read_json(tmp_path / "plateau.json")
    trained = [c for c in data["grid"] if c["source"].startswith("trained here")]
    assert len(trained) == 2 and all(c["seeds"] == [0, 1] and len(c["k5"]) == 2 for c in trained)
    code = data["catch_up"]["code"]
    assert code["seeds"] == [13, 16] and len(code["leaves_plateau"]) == 2
    assert code["at_70k"] != code["at_140k"]  # the second block trained on
    assert data["catch_up"]["paper"]["seeds"] == []  # the paper's text has no slow run


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


# ---- the command line every program shares (machinery/program.py) ------------------------------

PROGRAMS = ["compare", "cost", "curvature", "plateau", "released", "sharding", "variants"]


def files(folder):
    """Every file under a folder, with the time it was last written."""
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("name", PROGRAMS)
def test_help_exits_0_and_writes_nothing(name, tmp_path):
    """--help, from an empty folder with the repository on the path (a program that wrote its
    default --out, figures, would write it there): exit 0, the usage, and nothing written there
    or in the repository's figures/."""
    before = files(ROOT / "figures")
    run = subprocess.run([sys.executable, "-m", f"studies.{name}", "--help"], cwd=tmp_path,
                         env=cpu_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                         timeout=HANG_S)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith(f"usage: python -m studies.{name}"), run.stdout[:200]
    assert list(tmp_path.iterdir()) == [] and files(ROOT / "figures") == before


def test_compare_makes_its_out_folder_and_writes_the_committed_table_there(tmp_path):
    """--out is a folder, made when the first file is written (two levels here): comparison.json,
    comparison.md (the committed table, but for the command it records) and runs.png."""
    out = tmp_path / "a" / "b"
    compare.main(["--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["comparison.json", "comparison.md", "runs.png"]
    committed = (ROOT / "figures" / "comparison.md").read_text()
    assert (out / "comparison.md").read_text() == committed.replace(
        "`python -m studies.compare`", "`python -m studies.compare --out <a path>`")


def test_an_out_that_is_a_file_stops_in_one_line_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(SystemExit) as stop:
        compare.main(["--out", str(tmp_path / "taken" / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "--out" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


@pytest.mark.parametrize("name, argv, flag", [
    ("curvature", ["--setups", "foo"], "--setups"),
    ("curvature", ["--figures", "missing"], "--figures"),
    ("curvature", ["--setups", "paper,blog"], "--figures"),  # no blog runs are committed
    ("plateau", ["--figures", "missing"], "--figures")])
def test_saved_runs_that_are_not_there_stop_in_one_line_naming_the_flag(name, argv, flag, tmp_path,
                                                                        capsys):
    """A study of saved runs checks, before it computes anything, that every setup it reads is
    one of experiment.py's and that --figures holds its saved files: one line, exit 2, no folder
    made, rather than a traceback from deep inside the study."""
    study = importlib.import_module(f"studies.{name}")
    argv = [str(tmp_path / a) if a == "missing" else a for a in argv]
    with pytest.raises(SystemExit) as stop:
        study.main([*argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and f"argument {flag}:" in err[0], err
    assert not (tmp_path / "out").exists()


def test_the_files_keep_the_shape_the_issues_set():
    """The bounds the issues set, which no other test holds: the README at most 150 lines, no
    non-test Python file over 350 lines and no function there over 40 (issue 20); the Flax NNX
    and Equinox ports of maml.py at most 80 code lines (maml.py's bound of 65, plus ANIL's inner
    update and the framework's model, issue 22)."""
    from test_maml import code_lines

    def lines(path):
        return len((ROOT / path).read_text().splitlines())
    assert lines("README.md") <= 150
    sources = [p for folder in ("", "machinery", "studies", "studies/stacks")
               for p in (ROOT / folder).glob("*.py") if not p.name.startswith(("test_", "conftest"))]
    assert len(sources) > 20 and max(map(lines, sources)) <= 350
    long = [(p.name, node.name) for p in sources for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno >= 40]
    assert long == []
    for name in ("maml_nnx.py", "maml_equinox.py"):
        assert code_lines(ROOT / "studies" / "stacks" / name)[0] <= 80
