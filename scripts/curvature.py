"""Why some held-out tasks run away: the curvature of their support loss against the step size.

One gradient step of size alpha multiplies the error along an eigenvector of the support loss's
Hessian, of eigenvalue lambda, by (1 - alpha lambda): near the meta-learned parameters, repeated
steps grow that error once lambda > 2 / alpha. For every run of MAML that `experiment.py` trained
and saved (figures/paper/params.npz, figures/code/params.npz), this measures the largest eigenvalue
on each held-out task at the meta-learned parameters, and sets it beside the tasks whose MSE ended
10 steps higher than it started. Writes the table the Results page shows.

    python docs/curvature.py                                # figures/curvature.txt
    python docs/curvature.py --tasks 40 --out /tmp/c.txt    # a quick look at the first 40 tasks
"""
import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import grad, jit, lax, random, vmap
from jax.flatten_util import ravel_pytree
from jax.tree_util import tree_structure, tree_unflatten

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # maml and experiment
import experiment  # noqa: E402
import maml  # noqa: E402


# -8<- [start:eigenvalue]
def top_eigenvalue(params, x1, y1, iters=300):
    """The largest eigenvalue of the Hessian of loss(params; x1, y1), by power iteration on
    Hessian-vector products (forward over reverse mode: the Hessian itself is never formed).

    Power iteration finds the eigenvalue of largest magnitude, mu. If it is negative, a second
    pass on H - mu I (whose eigenvalues are all >= 0) finds the largest one, shifted back."""
    theta, unravel = ravel_pytree(params)
    support_grad = grad(lambda t: maml.loss(unravel(t), x1, y1))
    hvp = lambda v: jax.jvp(support_grad, (theta,), (v,))[1]

    def power(shift):
        def body(_, v):
            w = hvp(v) - shift * v
            return w / jnp.linalg.norm(w)
        v = lax.fori_loop(0, iters, body, jnp.ones_like(theta) / jnp.sqrt(theta.size))
        return jnp.vdot(v, hvp(v))  # the Rayleigh quotient of the unit vector v
    mu = power(0.0)
    shift = jnp.minimum(mu, 0.0)
    return jnp.where(mu < 0, power(shift), mu)
# -8<- [end:eigenvalue]


@jit
def all_eigenvalues(params, x1, y1):
    """top_eigenvalue for every run (params carry a run axis) and every task: (runs, tasks)."""
    return vmap(lambda p: vmap(lambda a, b: top_eigenvalue(p, a, b))(x1, y1))(params)


def load(setup):
    """The MAML parameters of every run that `experiment.py --setup SETUP --out figures/SETUP`
    saved, and its seed, step size and held-out task count."""
    saved = np.load(os.path.join(ROOT, "figures", setup, "params.npz"))
    structure = tree_structure(maml.net_init(random.PRNGKey(0), (-1, 1))[1])
    leaves = [saved[f"MAML/{i}"] for i in range(structure.num_leaves)]
    return (tree_unflatten(structure, leaves), int(saved["seed"]), float(saved["alpha"]),
            int(saved["eval_tasks"]), tuple(saved["amp_range"].tolist()))


def measure(setup, n_tasks=None):
    """One line of the table for each K: eigenvalues against 2 / alpha, and the tasks that got worse."""
    params, seed, alpha, eval_tasks, amp_range = load(setup)
    test_key = experiment.run_keys(seed, 1)[4, 0]  # experiment.py's held-out tasks
    test = experiment.eval_tasks(test_key, eval_tasks, max(experiment.EVAL_KS), amp_range)
    test = tuple(a[:n_tasks] for a in test[:2]) + (test[2], test[3][:n_tasks])
    runs, lines = len(params[0][0]), []
    for k in experiment.EVAL_KS:
        lam = np.asarray(all_eigenvalues(params, test[0][:, :k], test[1][:, :k]))
        curves = experiment.run_curves(params, test, k, np.full(runs, alpha, np.float32))
        worse = ~(curves[:, :, -1] <= curves[:, :, 0])  # NaN counts as worse
        steep = lam > 2 / alpha
        lines.append(f"{setup:<6}{alpha:>7g}{2 / alpha:>9g}{k:>4}{runs:>6}{lam.size:>7}"
                     f"{np.median(lam):>10.1f}{np.percentile(lam, 99):>10.1f}{lam.max():>10.1f}"
                     f"{steep.sum():>10}{worse.sum():>10}{(steep & worse).sum():>10}"
                     f"{experiment.number(np.nanmax(np.where(np.isnan(curves[:, :, -1]), np.inf, curves[:, :, -1]))):>11}")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setups", default="paper,code")
    ap.add_argument("--tasks", type=int, default=None, help="only the first N held-out tasks")
    ap.add_argument("--out", default=os.path.join(ROOT, "figures", "curvature.txt"))
    args = ap.parse_args()
    header = (f"{'setup':<6}{'alpha':>7}{'2/alpha':>9}{'K':>4}{'runs':>6}{'tasks':>7}"
              f"{'median':>10}{'99th pct':>10}{'max':>10}{'> 2/alpha':>10}{'worse':>10}{'both':>10}{'worst MSE':>11}")
    lines = ["Largest eigenvalue lambda of each held-out task's support-loss Hessian at MAML's "
             "meta-learned parameters,", "against 2 / alpha; 'worse': the task's MSE after 10 "
             "steps of size alpha is above its MSE before adapting;", "'tasks' counts every task "
             "of every run; 'both': tasks above 2 / alpha that also ended worse; 'worst MSE': the highest",
             "MSE after 10 steps of any task of any run (inf: it overflowed).", header]
    for setup in args.setups.split(","):
        lines += measure(setup, args.tasks)
    text = "\n".join(lines) + "\n"
    print(text, end="")
    experiment.write_whole(args.out, lambda f: f.write(text.encode()))


if __name__ == "__main__":
    main()
