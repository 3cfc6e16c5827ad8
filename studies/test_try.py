"""The "Try it" page computes what maml.py computes, from the committed run.

docs/javascripts/maml.js runs in Node.js: the very file the site serves, loaded as the
page loads it (it sets window.maml), and nothing else of the site. Node.js is no Python
package; it is on GitHub's runners and on the machine CI runs on, and .ci/run sets
MAML_NODE_REQUIRED=1 at both corners, where a missing `node` fails these tests.
Elsewhere they skip, saying why. The page in a real browser: test_try_browser.py.
"""
import json
import os
import shutil
import subprocess

import jax.numpy as jnp
import numpy as np
import pytest
from jax import jit, random
from jax.tree_util import tree_leaves, tree_map

import experiment
import maml
from machinery import site_try
from studies import conftest
from studies.conftest import HANG_S, ROOT

JS = ROOT / "docs" / "javascripts" / "maml.js"
STEPS = (1, 5, 10)  # inner_updates compared, each repeated from the last
# Node.js runs the site's maml.js as the page does (it sets window.maml), on the cases
# of stdin: net_apply on a grid, and the parameters after each of `steps` inner_updates.
DRIVER = r"""
const fs = require("fs");
const vm = require("vm");
const page = { window: {} };
vm.runInNewContext(fs.readFileSync(process.env.MAML_JS, "utf8"), page);
const maml = page.window.maml;
const answers = JSON.parse(fs.readFileSync(0, "utf8")).map((c) => {
  const after = [];
  let params = c.params;
  for (let n = 1; n <= Math.max(...c.steps); n++) {
    params = maml.inner_update(params, c.xs, c.ys, c.alpha);
    if (c.steps.includes(n)) after.push(params);
  }
  return { apply: maml.net_apply(c.params, c.grid), after };
});
process.stdout.write(JSON.stringify(answers));
"""


def node():
    """The node executable: skip without one, except where CI requires it."""
    found = shutil.which("node")
    if found is None and os.environ.get("MAML_NODE_REQUIRED") == "1":
        pytest.fail("MAML_NODE_REQUIRED=1 but there is no `node` on PATH")
    if found is None:
        pytest.skip("Node.js is not installed: the page's maml.js cannot be run")
    return found


def nested(params):
    """maml.py's parameters as the page holds them, [[W1, b1], [], ...] of lists."""
    return [[np.asarray(a, np.float64).tolist() for a in layer] for layer in params]


def tree(layers):
    """The page's nested lists as maml.py's [(W1, b1), (), ...], float64 arrays."""
    return [tuple(np.asarray(a, np.float64) for a in layer) for layer in layers]


def run_js(cases):
    """maml.js on each case, in one Node.js process: net_apply on the grid, then the
    parameters after each of STEPS inner_updates."""
    result = subprocess.run([node(), "-e", DRIVER], input=json.dumps(cases), text=True,
                            capture_output=True, timeout=HANG_S,
                            env=dict(os.environ, MAML_JS=str(JS)))
    assert result.returncode == 0, result.stderr
    return [dict(apply=np.array(a["apply"]), after=[tree(p) for p in a["after"]])
            for a in json.loads(result.stdout)]


def f32(values):
    """Numbers float32 holds exactly, as float64: both sides get the same inputs."""
    return np.asarray(np.asarray(values, np.float32), np.float64)


def task(amp, phase, xs):
    return dict(xs=f32(xs), ys=f32(amp * np.sin(f32(xs) + phase)))


def committed(name):
    """Run site_try.RUN of the default setting's committed run, as the page gets it."""
    saved = np.load(ROOT / site_try.RUN_FOLDER / "params.npz")
    w1, b1, w2, b2, w3, b3 = (saved[f"{name}/{i}"][site_try.RUN] for i in range(6))
    return [(w1, b1), (), (w2, b2), (), (w3, b3)]


def cases():
    """Fixed: the committed run's two networks at their step sizes, on hand-picked
    tasks. Random: stax's initialisation and maml.sample_tasks's tasks, from explicit
    keys, at the paper's step size. K = 5 and 10."""
    results = json.loads((ROOT / site_try.RUN_FOLDER / "results.json").read_text())
    size = {(c["model"], c["k"]): c["step_sizes"][site_try.RUN]
            for c in results["cells"]}
    found = [dict(params=committed("MAML"), alpha=results["setup"]["alpha"],
                  **task(2.5, 1.0, [-4.2, -2.5, -0.3, 1.7, 3.9])),
             dict(params=committed("pretrained"), alpha=size["pretrained", 10],
                  **task(4.0, 2.5, np.linspace(-4.5, 4.5, 10))),
             dict(params=committed("pretrained"), alpha=size["pretrained", 5],
                  **task(0.7, 0.2, [0.5, 1.0, 1.5, 2.0, 4.5]))]
    for seed, k in zip(range(4), (5, 10, 5, 10)):
        _, params = maml.net_init(random.PRNGKey(seed), (-1, 1))
        x1, y1, _, _ = maml.sample_tasks(random.PRNGKey(100 + seed), 1, k)
        found.append(dict(params=params, alpha=maml.ALPHA, xs=f32(x1[0, :, 0]),
                          ys=f32(y1[0, :, 0])))
    grid = f32(np.linspace(-5.0, 5.0, 100))
    return [dict(c, params=tree(nested(c["params"])), grid=grid,
                 alpha=float(np.float32(c["alpha"]))) for c in found]


def as_json(case):
    return dict(params=nested(case["params"]), xs=case["xs"].tolist(),
                ys=case["ys"].tolist(), alpha=case["alpha"],
                grid=case["grid"].tolist(), steps=list(STEPS))


# How far apart the two may be. A floating-point sum of products is off from its exact
# value by at most gamma_n = n u / (1 - n u) times the same sum of absolute values, n
# the roundings on its longest path, u the unit roundoff (Higham, Accuracy and Stability
# of Numerical Algorithms, 2002, section 3.1): 2**-24 in maml.py's float32, 2**-53 in
# JavaScript's float64.
U32, U64 = 2.0 ** -24, 2.0 ** -53
# x W1 + b1: 2 roundings; each next layer sums 40 products and its bias: 41, twice.
FORWARD = 2 + 41 + 41
# Then the residual and its factor 2 / K: 3; back through W3: 1; through W2, 40 products
# summed: 40; times the input: 1; summed over at most 10 points: 10.
GRADIENT = FORWARD + 3 + 1 + 40 + 1 + 10


def gamma(n, u):
    return n * u / (1 - n * u)


def absolute_forward(params, xs):
    """The network on |x| with each weight and bias replaced by its absolute value: all
    its numbers are >= 0, so its ReLUs pass everything, and it bounds what each sum of
    the real network adds up. The layers' outputs a1, a2 and the output a3."""
    (w1, b1), _, (w2, b2), _, (w3, b3) = tree_map(np.abs, params)
    a1 = np.abs(xs)[:, None] @ w1 + b1
    a2 = a1 @ w2 + b2
    return a1, a2, a2 @ w3 + b3


def absolute_gradient(params, xs, ys):
    """grad_loss's backpropagation on absolute values, the residual y - t replaced by
    |y| + |t| (its rounding is relative to those): it bounds each sum in the gradient.
    """
    (w1, _), _, (w2, _), _, (w3, _) = tree_map(np.abs, params)
    a1, a2, a3 = absolute_forward(params, xs)
    c = 2 * (a3 + np.abs(ys)[:, None]) / len(xs)
    d2 = c @ w3.T
    d1 = d2 @ w2.T
    return [(np.abs(xs)[None] @ d1, d1.sum(0)), (), (a1.T @ d2, d2.sum(0)), (),
            (a2.T @ c, c.sum(0))]


def step_bounds(trajectory, case, u):
    """How far apart two computations of the trajectory, each rounding with unit u, may
    be after each step, to first order in u. Step t adds alpha times the gradient's
    rounding, and the rounding of p - alpha g. An error made earlier passes through the
    later steps times I - alpha H, whose norm is about 1 where the steps converge (the
    Hessian H's eigenvalues below 2 / alpha): the errors add up."""
    alpha = case["alpha"]
    bound, bounds = tree_map(np.zeros_like, trajectory[0]), []
    for p, q in zip(trajectory, trajectory[1:]):
        g_abs = absolute_gradient(p, case["xs"], case["ys"])
        bound = tree_map(lambda b, p, q, ga: b + alpha * gamma(GRADIENT, u) * ga
                         + gamma(2, u) * (np.abs(p) + np.abs(p - q)),
                         bound, p, q, g_abs)
        bounds.append(bound)
    return bounds


def jax_trajectory(case, dtype):
    """maml.py on the case in dtype: net_apply on the grid, and the parameters after 0
    to max(STEPS) repeated inner_updates (jitted, as in maml.step), as float64."""
    params = tree_map(lambda a: jnp.asarray(a, dtype), case["params"])
    xs, ys = (jnp.asarray(case[n], dtype)[:, None] for n in ("xs", "ys"))
    trajectory = [params]
    for _ in range(max(STEPS)):
        trajectory.append(jit(maml.inner_update)(trajectory[-1], xs, ys, case["alpha"]))
    applied = maml.net_apply(params, jnp.asarray(case["grid"], dtype)[:, None])[:, 0]
    as64 = [tree_map(lambda a: np.asarray(a, np.float64), p) for p in trajectory]
    return np.asarray(applied, np.float64), as64


def worst(got, want, bounds):
    """The largest gap between two trees of parameters, as a fraction of its bound."""
    return max(np.max(np.abs(g - w) / b)
               for g, w, b in zip(*map(tree_leaves, (got, want, bounds))))


@pytest.fixture(scope="module")
def answered():
    """The cases, maml.js's answers, and its answers with a step 3% too long."""
    found = cases()
    wrong = [dict(c, alpha=c["alpha"] * 1.03) for c in found]
    answers = run_js([as_json(c) for c in found + wrong])
    return found, answers[:len(found)], answers[len(found):]


def compare(answered, dtype, u):
    """maml.js against maml.py in dtype, every number within its bound for unit u; and
    the bounds tell a step 3% too long from the right one, in every case, after every n.
    """
    for case, js, off in zip(*answered):
        applied, trajectory = jax_trajectory(case, dtype)
        a3 = absolute_forward(case["params"], case["grid"])[2][:, 0]
        assert np.max(np.abs(js["apply"] - applied) / (gamma(FORWARD, u) * a3)) <= 1
        bounds = step_bounds(trajectory, case, u)
        for n, right, too_long in zip(STEPS, js["after"], off["after"]):
            assert worst(right, trajectory[n], bounds[n - 1]) <= 1, n
            assert worst(too_long, trajectory[n], bounds[n - 1]) > 1, n


def test_maml_js_computes_what_maml_py_computes_in_float32(answered):
    """maml.py as a user runs it, in float32, against maml.js in float64: net_apply and
    the parameters after 1, 5 and 10 inner_updates, each number within the bound on both
    sides' rounding (unit 2**-24 + 2**-53) through every step."""
    compare(answered, jnp.float32, U32 + U64)


def test_maml_js_computes_what_maml_py_computes_in_float64(answered, x64):
    """The same with maml.py in float64: then the two differ by rounding alone, bounded
    with unit 2 * 2**-53, about 4e-9 of the float32 bound."""
    compare(answered, jnp.float64, 2 * U64)


def test_the_site_gets_the_committed_run_of_the_default_setting_exactly():
    """machinery/site_try.py exports run RUN of figures/DEFAULT: both networks number
    for number (through JSON, as the page reads them), MAML's alpha, the baseline's step
    size tuned for each K, and the run's seed."""
    assert site_try.RUN_FOLDER.as_posix() == f"figures/{experiment.DEFAULT}"
    results = json.loads((ROOT / site_try.RUN_FOLDER / "results.json").read_text())
    run = json.loads(json.dumps(site_try.exported(ROOT / site_try.RUN_FOLDER)))
    for name in ("MAML", "pretrained"):
        pairs = zip(tree_leaves(tree(run[name])), tree_leaves(committed(name)))
        assert all(np.array_equal(got, saved.astype(np.float64)) for got, saved in pairs)
    setup = experiment.SETUPS[experiment.DEFAULT]
    assert run["alpha"] == results["setup"]["alpha"] == setup["alpha"]
    sizes = {str(c["k"]): c["step_sizes"][site_try.RUN] for c in results["cells"]
             if c["model"] == "pretrained"}
    assert run["step_sizes"] == sizes and set(sizes) == {"5", "10"}
    assert run["seed"] == results["seeds"][site_try.RUN] and run["run"] == site_try.RUN


def test_the_page_states_the_committed_numbers_and_is_linked_from_the_first_screen():
    """docs/try.md states the run, its seed, alpha, the baseline's step sizes and the
    number of validation tasks as results.json has them; the home page links to it
    before its first section, the walkthrough from its inner update, and one line of the
    README names it."""
    results = json.loads((ROOT / site_try.RUN_FOLDER / "results.json").read_text())
    run = site_try.exported(ROOT / site_try.RUN_FOLDER)
    stated = {f"{run['alpha']:g}", *(f"{a:g}" for a in run["step_sizes"].values()),
              str(run["seed"]), str(run["run"]), f"{results['eval_tasks']:,}"}
    on_page = set(conftest.stated("docs/try.md"))
    assert stated <= on_page, stated - on_page
    index = (ROOT / "docs" / "index.md").read_text()
    assert "(try.md)" in index.split("\n## ", 1)[0]
    walkthrough = (ROOT / "docs" / "walkthrough.md").read_text()
    inner = walkthrough.split("\n## The inner update\n", 1)[1].split("\n## ")[0]
    assert "(try.md)" in inner
    readme = (ROOT / "README.md").read_text().splitlines()
    assert len([line for line in readme if "(docs/try.md)" in line]) == 1
