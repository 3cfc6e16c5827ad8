"""The committed results: tied to today's code, and every claim the README and the Results page
make about them checked against their results.json.

The claims are stated for the twenty runs of each setting, or for every window of five
consecutive seeds among them: a claim that depends on which five seeds were picked is not one.
"""
from pathlib import Path

import jax
import numpy as np
import pytest
from jax import random

import experiment
import report

ROOT = Path(__file__).resolve().parent
RUNS = ["figures", "figures/code", "figures/paper"]  # every committed run of experiment.py


def load(folder):
    return report.read_json(ROOT / folder / "results.json")


def saved_params(folder, init):
    """The trained parameters of params.npz, as trees shaped like the setup's initialisation, with
    the run axis first on every leaf."""
    saved = np.load(ROOT / folder / "params.npz")
    treedef = jax.tree_util.tree_structure(experiment.INITS[init](random.PRNGKey(0)))
    return {name: jax.tree_util.tree_unflatten(treedef, [saved[f"{name}/{i}"] for i in range(6)])
            for name in ("MAML", "pretrained")}


@pytest.mark.parametrize("folder", RUNS)
def test_the_committed_parameters_evaluated_by_todays_code_give_the_committed_numbers(folder):
    """Each committed params.npz, adapted by today's evaluation on the held-out tasks its seed
    gives, with the step sizes its results.json records, gives that file's numbers: every run's
    median over tasks, and its mean wherever runaway tasks do not dominate it, within 1e-3
    relative (float32 through ten steps of adaptation; another XLA version may round otherwise),
    and the same count of diverged tasks. A change to the evaluation, the sampler or the keys
    fails here."""
    results = load(folder)
    setup, params = results["setup"], saved_params(folder, results["setup"]["init"])
    test = experiment.eval_tasks(experiment.run_keys(results["seeds"][0], 1)[4, 0],
                                 results["eval_tasks"], max(experiment.EVAL_KS), tuple(setup["amp_range"]))
    for cell in results["cells"]:
        mse = experiment.run_curves(params[cell["model"]], test, cell["k"],
                                    np.asarray(cell["step_sizes"], np.float32))
        for run, m in zip(cell["runs"], mse):
            now, tame = report.run_numbers(m), ~np.array(run["dominated"])
            np.testing.assert_allclose(now["median"], run["median"], rtol=1e-3)
            np.testing.assert_allclose(now["mean"][tame], np.array(run["mean"])[tame], rtol=1e-3)
            assert now["diverged"] == run["diverged"], (cell["model"], cell["k"])


@pytest.mark.parametrize("folder", RUNS)
def test_the_committed_table_is_the_rendering_of_the_committed_data(folder):
    """results.txt is the command and report.render of results.json, exactly."""
    results = load(folder)
    assert (ROOT / folder / "results.txt").read_text() == f"Command: {results['command']}\n" + report.render(results)
