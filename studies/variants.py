"""MAML and three of its variants, trained and compared on the paper's sinusoids.

Each variant is a task loss built on maml.py's functions; `make_step` turns it into a training step
with the signature of maml.step, so experiment.py's own loop trains it: the paper's settings, the
same initial parameters and task stream for every variant, several runs at once, and the same 600
held-out tasks. Writes the table the Variations page shows.

    python -m studies.variants               # 5 runs of each, 70,000 steps: figures/variants.md
    python -m studies.variants --seeds 2 --steps 300 --eval-tasks 50 --out /tmp/variants.md  # quick
"""
import argparse
import datetime
import os
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import grad, jit, lax, vmap
from jax.tree_util import tree_map

import experiment
import maml
from machinery import report


# -8<- [start:first_order]
def fo_inner_update(params, x1, y1, alpha=0.01):
    grads = grad(maml.loss)(params, x1, y1)
    grads = lax.stop_gradient(grads)  # a constant, as far as the outer grad sees
    return tree_map(lambda p, g: p - alpha * g, params, grads)


def fo_maml_loss(params, x1, y1, x2, y2, alpha=0.01):
    return maml.loss(fo_inner_update(params, x1, y1, alpha), x2, y2)
# -8<- [end:first_order]


# -8<- [start:several_steps]
def maml_loss_steps(params, x1, y1, x2, y2, alpha=0.01, n_steps=1):
    for _ in range(n_steps):  # a Python loop: unrolled while tracing
        params = maml.inner_update(params, x1, y1, alpha)
    return maml.loss(params, x2, y2)
# -8<- [end:several_steps]


# -8<- [start:scan_steps]
def inner_steps(params, x1, y1, alpha, n_steps, update=maml.inner_update, checkpoint=False):
    """n_steps of `update` as one lax.scan: the step is traced once, so the program and its
    compile time stay the same size for any n_steps. With checkpoint, reverse mode keeps only
    each step's input parameters and recomputes the step on the way back, instead of keeping
    every intermediate value of its inner gradient: less memory, one more forward pass."""
    def body(p, _):
        return update(p, x1, y1, alpha), None
    if checkpoint:  # scan already keeps XLA from merging the recomputation away: prevent_cse off
        body = jax.checkpoint(body, prevent_cse=False)
    return lax.scan(body, params, length=n_steps)[0]


def maml_loss_scan(params, x1, y1, x2, y2, alpha=0.01, n_steps=1, checkpoint=False):
    """maml_loss_steps as a scan: second order through every step, optionally checkpointed."""
    adapted = inner_steps(params, x1, y1, alpha, n_steps, maml.inner_update, checkpoint)
    return maml.loss(adapted, x2, y2)


def fo_maml_loss_scan(params, x1, y1, x2, y2, alpha=0.01, n_steps=1):
    """First order through n_steps: each step's inner gradient is a constant to the outer grad."""
    return maml.loss(inner_steps(params, x1, y1, alpha, n_steps, fo_inner_update), x2, y2)
# -8<- [end:scan_steps]


# -8<- [start:meta_sgd]
def meta_sgd_update(params, x1, y1, alphas):
    """inner_update with a step size per parameter: alphas is a tree shaped like params."""
    grads = grad(maml.loss)(params, x1, y1)
    return tree_map(lambda p, a, g: p - a * g, params, alphas, grads)


def meta_sgd_loss(meta_params, x1, y1, x2, y2, alpha=None):
    params, alphas = meta_params  # alpha is unused: the step sizes are learned
    return maml.loss(meta_sgd_update(params, x1, y1, alphas), x2, y2)
# -8<- [end:meta_sgd]


# -8<- [start:make_step]
def make_step(task_loss):
    """maml.step for another task loss: its mean over the meta-batch, its gradient, Adam."""
    batch = vmap(task_loss, in_axes=(None, 0, 0, 0, 0, None))  # tasks share the parameters

    @jit
    def step(i, opt_state, x1, y1, x2, y2, alpha=0.01):
        def batch_loss(p):
            return jnp.mean(batch(p, x1, y1, x2, y2, alpha))
        value, grads = jax.value_and_grad(batch_loss)(maml.get_params(opt_state))
        return maml.opt_update(i, grads, opt_state), value
    return step


def same_theta(theta, alpha):
    """What a variant trains, starting from theta: theta itself."""
    return theta


def with_alphas(theta, alpha):
    """Meta-SGD trains theta and a step size per parameter, each starting at alpha."""
    return theta, tree_map(lambda p: jnp.full_like(p, alpha), theta)
# name: (training step, what it trains, how a held-out task adapts)
VARIANTS = {
    "MAML": (maml.step, same_theta, maml.inner_update),
    "first-order MAML": (make_step(fo_maml_loss), same_theta, maml.inner_update),
    "MAML with 5 inner steps": (make_step(partial(maml_loss_steps, n_steps=5)), same_theta,
                                maml.inner_update),
    # Every step size starts at alpha, so Meta-SGD's first meta-step is MAML's.
    "Meta-SGD": (make_step(meta_sgd_loss), with_alphas, meta_sgd_update),
}
# -8<- [end:make_step]


def run_variant(name, setup, seeds, seed, test):
    """Train one variant for `seeds` runs at once; its held-out curves for each K, and its time."""
    step_fn, start, update = VARIANTS[name]
    keys = experiment.run_keys(seed, seeds)  # experiment.py's keys: the same init and tasks
    theta = vmap(experiment.INITS[setup["init"]])(keys[0])
    params = start(theta, setup["alpha"])
    one = tree_map(lambda a: a[0], params)
    compiled = experiment.compile_training(step_fn, one, setup, seeds)
    trained, _, per_step = experiment.train(compiled, params, keys[1], setup, name,
                                            log=lambda line: None)
    curves = {}
    for k in experiment.EVAL_KS:
        if name == "Meta-SGD":  # adapt theta with the learned step sizes
            curves[k] = experiment.run_curves(trained[0], test, k, trained[1], update=update)
        else:
            curves[k] = experiment.run_curves(trained, test, k,
                                              np.full(seeds, setup["alpha"], np.float32))
    return curves, per_step


def column_means(mse):
    """Each run's mean MSE after each number of steps, over the tasks whose MSE is finite after
    that many steps: (runs, n_steps + 1). A task that diverges by step 10 still counts at the
    steps where it had not yet diverged; leaving it out of every column would bias the early means
    towards the tasks that stay stable."""
    finite = np.isfinite(mse)
    return np.where(finite, mse, 0).sum(axis=1, dtype=np.float64) / finite.sum(axis=1)


def variant_numbers(curves, per_step):
    """One variant's numbers, for each K and n = 1, 5, 10: the mean over runs of each run's
    column mean, its between-run interval, the tasks of all runs that have overflowed by then
    (left out); the tasks ending worse (a NaN counts as worse); the time per meta-step."""
    numbers = dict(ms_per_step=1e3 * per_step, cells={})
    for k, mse in curves.items():
        means = column_means(mse)
        numbers["cells"][k] = dict(
            worse=int(np.sum(~(mse[:, :, -1] <= mse[:, :, 0]))),
            tasks=int(mse.shape[0] * mse.shape[1]),
            steps={n: dict(zip(("mean", "half"), report.between_runs(means[:, n])),
                           left_out=int(np.sum(~np.isfinite(mse[:, :, n])))) for n in (1, 5, 10)})
    return numbers


def cell_text(c):
    text = f"{report.number(c['mean'])} ± {report.number(c['half'])}"
    return text + (f" ({c['left_out']} left out)" if c["left_out"] else "")


def render(data):
    """figures/variants.md, from the data alone."""
    env = data["environment"]
    lines = [f"Measured on {env['processor']}, jax {env['jax']}, {env['device']}; {data['when']}.",
             "", f"Command: `{data['command']}`", "",
             f"Held-out MSE on {data['eval_tasks']} tasks (the same for every variant) after n "
             f"steps: mean of {data['seeds']} runs ± 95% between-run interval (Student's t, "
             f"{data['seeds'] - 1} degrees of freedom); {data['steps']:,} meta-training steps of "
             "25 tasks, K = 10, alpha = 0.01. A task whose MSE has overflowed (inf or NaN) after n "
             "steps is left out of that cell's mean, and counted there (all runs together).", "",
             "| variant | K | n = 1 | n = 5 | n = 10 | tasks ending worse, all runs | "
             "ms per meta-step of all runs |", "|---|---|---|---|---|---|---|"]
    for name, v in data["variants"].items():
        for k, c in v["cells"].items():
            lines.append(f"| {name} | {k} | " + " | ".join(cell_text(c["steps"][n]) for n in
                                                           ("1", "5", "10"))
                         + f" | {c['worse']} of {c['tasks']} | {v['ms_per_step']:.3f} |")
    return "\n".join(lines) + "\n"


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=experiment.SETUPS["paper"]["steps"])
    ap.add_argument("--eval-tasks", type=int, default=600)
    ap.add_argument("--only", default=",".join(VARIANTS), help="variants to train, comma-separated")
    ap.add_argument("--out", default="figures", help="folder for variants.json and variants.md")
    args = ap.parse_args()
    if args.seeds < 2 or args.steps < 1 or args.eval_tasks < 2:
        ap.error("expected --seeds >= 2, --steps >= 1 and --eval-tasks >= 2")
    unknown = set(args.only.split(",")) - set(VARIANTS)
    if unknown:
        ap.error(f"argument --only: unknown variant(s) {sorted(unknown)}; "
                 f"expected some of {list(VARIANTS)}")
    return args


def main():
    args = parse_args()
    os.makedirs(args.out, exist_ok=True)
    setup = dict(experiment.SETUPS["paper"], steps=args.steps)
    test_key = experiment.run_keys(args.seed, 1)[4, 0]  # experiment.py's held-out tasks
    test = experiment.eval_tasks(test_key, args.eval_tasks, max(experiment.EVAL_KS),
                                 setup["amp_range"])
    variants, t0 = {}, time.perf_counter()
    for name in args.only.split(","):
        variants[name] = variant_numbers(*run_variant(name, setup, args.seeds, args.seed, test))
        print(f"{name}: trained and evaluated, {time.perf_counter() - t0:.0f} s so far", flush=True)
    data = report.plain(dict(
        command=" ".join(["python -m studies.variants", *sys.argv[1:]]), seeds=args.seeds,
        steps=args.steps, eval_tasks=args.eval_tasks, environment=report.environment(),
        when=f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        variants=variants))
    text = render(data)
    print(text, end="")
    report.write_json(os.path.join(args.out, "variants.json"), data)
    report.write_whole(os.path.join(args.out, "variants.md"), lambda f: f.write(text.encode()))


if __name__ == "__main__":
    main()
