"""Why some held-out tasks run away: the curvature of their support loss against the step size.

A gradient step of size alpha multiplies the error along a Hessian eigenvector of eigenvalue
lambda by (1 - alpha lambda): repeated steps grow it once lambda > 2 / alpha. For every MAML run
that `experiment.py` saved (figures/paper and figures/code: params.npz, results.json), this
measures each held-out task's largest eigenvalue at the meta-learned parameters, beside the tasks
whose MSE ended 10 steps higher than it started; it writes them as JSON, with the table the
Results page shows. From the repository root:

    python -m studies.curvature                 # figures/curvature.json and figures/curvature.md
    python -m studies.curvature --tasks 40 --out /tmp/c   # the first 40 tasks, a quick look
    python -m studies.curvature --figures /tmp/runs   # the runs saved in /tmp/runs/{paper,code}
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import grad, jit, lax, random, vmap
from jax.flatten_util import ravel_pytree
from jax.tree_util import tree_structure, tree_unflatten

import experiment
import maml
from machinery import program, report


# -8<- [start:eigenvalue]
def top_eigenvalue(params, x1, y1, iters=300):
    """The largest eigenvalue of the Hessian of loss(params; x1, y1), by power iteration
    on Hessian-vector products (forward over reverse mode: the Hessian is never formed).
    That finds the eigenvalue of largest magnitude, mu; if it is negative, a second pass
    on H - mu I (whose eigenvalues are all >= 0) finds the largest one, shifted back."""
    theta, unravel = ravel_pytree(params)

    def support_loss(t):
        return maml.loss(unravel(t), x1, y1)

    def hvp(v):
        return jax.jvp(grad(support_loss), (theta,), (v,))[1]

    def power(shift):
        def body(_, v):
            w = hvp(v) - shift * v
            return w / jnp.linalg.norm(w)
        v = lax.fori_loop(0, iters, body, jnp.ones_like(theta) / jnp.sqrt(theta.size))
        return jnp.vdot(v, hvp(v))  # the Rayleigh quotient of the unit vector v
    mu = power(0.0)
    return jnp.where(mu < 0, power(jnp.minimum(mu, 0.0)), mu)
# -8<- [end:eigenvalue]


# top_eigenvalue for every run (params carry a run axis) and every task: (runs, tasks)
all_eigenvalues = jit(vmap(vmap(top_eigenvalue, (None, 0, 0)), (0, None, None)))


def load(folder):
    """The MAML parameters (run axis first) that `experiment.py --out FOLDER` saved, and its
    results.json."""
    saved = np.load(os.path.join(folder, "params.npz"))
    structure = tree_structure(maml.net_init(random.PRNGKey(0), (-1, 1))[1])
    leaves = [saved[f"MAML/{i}"] for i in range(structure.num_leaves)]
    results = program.read_json(os.path.join(folder, "results.json"))
    return tree_unflatten(structure, leaves), results


def f32(x):
    """A float32 as a JSON number: the shortest decimal that reads back as the same float32 (half
    a float64's digits, and nothing lost)."""
    return float(np.format_float_positional(np.float32(x), unique=True))


def run_record(seed, step_size, lam, curve):
    """One run at one K: every task's top eigenvalue, the tasks that ended worse (MSE after the
    last step above the MSE before, or not finite) with their MSEs, and the counts."""
    before, after = curve[:, 0], curve[:, -1]
    worse = ~(after <= before)  # NaN counts as worse
    threshold = 2 / f32(step_size)
    steep = lam > threshold
    finite = np.isfinite(after)
    return dict(seed=seed, step_size=f32(step_size), threshold=threshold,
                eigenvalues=[f32(x) for x in lam],
                worse_tasks=[dict(task=int(t), eigenvalue=f32(lam[t]), mse_before=f32(before[t]),
                                  mse_after=f32(after[t]) if finite[t] else None)
                             for t in np.flatnonzero(worse)],
                counts=dict(tasks=len(lam), steep=int(steep.sum()), worse=int(worse.sum()),
                            both=int((steep & worse).sum()), overflowed=int((~finite).sum()),
                            worst_mse=f32(after[finite].max()) if finite.any() else None))


def summary(runs):
    """One K over all runs: the eigenvalues' median, 99th percentile and maximum; the counts."""
    lam = np.concatenate([r["eigenvalues"] for r in runs])
    counts = {name: sum(r["counts"][name] for r in runs)
              for name in ("tasks", "steep", "worse", "both", "overflowed")}
    worst = [r["counts"]["worst_mse"] for r in runs if r["counts"]["worst_mse"] is not None]
    return dict(runs=len(runs), median=f32(np.median(lam)), p99=f32(np.percentile(lam, 99)),
                max=f32(lam.max()), **counts, worst_mse=max(worst) if worst else None)


def measure(folder, n_tasks=None):
    """One setup: for each K experiment.py evaluated MAML at, each run's run_record with the step
    size it adapted with, on experiment.py's held-out tasks (or their first n_tasks)."""
    params, results = load(folder)
    x1, y1, x_test, y_test = experiment.held_out_tasks(
        results["seeds"][0], results["eval_tasks"], tuple(results["setup"]["amp_range"]))
    test = x1[:n_tasks], y1[:n_tasks], x_test, y_test[:n_tasks]
    ks = []
    for cell in (c for c in results["cells"] if c["model"] == "MAML"):
        k = cell["k"]
        sizes = np.asarray(cell["step_sizes"], np.float32)
        lam = np.asarray(all_eigenvalues(params, test[0][:, :k], test[1][:, :k]))
        curves = experiment.run_curves(params, test, k, sizes)
        runs = [run_record(seed, a, l, c)
                for seed, a, l, c in zip(results["seeds"], sizes, lam, curves)]
        ks.append(dict(k=k, summary=summary(runs), runs=runs))
    return dict(setup=results["setup_name"], alpha=results["setup"]["alpha"],
                seeds=results["seeds"], eval_tasks=results["eval_tasks"],
                tasks_measured=len(test[0]), ks=ks)


def render(data):
    """curvature.md, from the data alone: a row per setup and K."""
    rows = []
    for s in data["setups"]:
        for k in s["ks"]:
            n = k["summary"]
            worst = "inf" if n["overflowed"] else report.number(n["worst_mse"])
            rows.append([s["setup"], f"{s['alpha']:g}", f"{2 / s['alpha']:g}", k["k"], n["runs"],
                         f"{n['tasks']:,}", f"{n['median']:.1f}", f"{n['p99']:.1f}",
                         f"{n['max']:.1f}", f"{n['steep']:,}", n["worse"], n["both"], worst])
    return ("The largest eigenvalue lambda of each held-out task's support-loss Hessian at "
            "MAML's meta-learned parameters, against 2 / alpha. Worse: the task's MSE after 10 "
            "steps of size alpha is above its MSE before adapting. Tasks counts every task of "
            "every run; both: tasks above 2 / alpha that also ended worse; worst MSE: the "
            "highest MSE after 10 steps of any task of any run (inf: it overflowed).\n\n"
            + program.table(["setup", "alpha", "2 / alpha", "K", "runs", "tasks", "median",
                             "99th percentile", "max", "above 2 / alpha", "worse", "both",
                             "worst MSE"], rows, "lrrrrrrrrrrrr"))


def parse_args(argv=None):
    ap = program.figures_parser("curvature", __doc__.splitlines()[0],
                                "curvature.json and curvature.md")
    ap.add_argument("--setups", default="paper,code", type=program.some_of(experiment.SETUPS),
                    help="the setups to measure (paper,code)")
    ap.add_argument("--tasks", type=program.at_least(1), help="only the first N held-out tasks")
    args = program.parse(ap, argv)
    program.check_saved(ap, args, args.setups, ("params.npz", "results.json"))
    return args


def main(argv=None):
    args = parse_args(argv)
    load_before = program.load()
    setups = [measure(os.path.join(args.figures, s), args.tasks) for s in args.setups]
    data = dict(program.record("studies.curvature", args.argv, program.jax_device(),
                               [load_before]), setups=setups)
    print(program.write(args.out, "curvature", data, render), end="")


if __name__ == "__main__":
    main()
