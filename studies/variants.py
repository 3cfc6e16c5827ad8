"""MAML and three of its variants, trained and compared on the paper's sinusoids.

Each variant is a task loss built on maml.py's functions; `make_step` turns it into a training step
with the signature of maml.step, so experiment.py's own loop trains it: the paper's settings, the
same initial parameters, task stream and 600 held-out tasks for every variant, several runs at
once. Writes the table the Variations page shows.

    python -m studies.variants               # 5 runs of each, 70,000 steps: figures/variants.*
    python -m studies.variants --seeds 2 --steps 300 --eval-tasks 50 --out /tmp/v  # quick
"""
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import grad, jit, lax, vmap
from jax.tree_util import tree_map

import experiment
import maml
from machinery import program, report


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
def maml_loss_scan(params, x1, y1, x2, y2, alpha=0.01, n_steps=1, checkpoint=False):
    """maml_loss_steps as a scan (experiment.inner_steps, the evaluation's own): second
    order through every step, optionally checkpointed."""
    adapted, _ = experiment.inner_steps(params, x1, y1, alpha, n_steps,
                                        checkpoint=checkpoint)
    return maml.loss(adapted, x2, y2)


def fo_maml_loss_scan(params, x1, y1, x2, y2, alpha=0.01, n_steps=1):
    """First order through n_steps: each step's inner gradient is a constant to the
    outer grad."""
    adapted, _ = experiment.inner_steps(params, x1, y1, alpha, n_steps, fo_inner_update)
    return maml.loss(adapted, x2, y2)
# -8<- [end:scan_steps]


# -8<- [start:meta_sgd]
def meta_sgd_update(params, x1, y1, alphas):
    """inner_update with a step size per parameter: alphas, a tree like params."""
    grads = grad(maml.loss)(params, x1, y1)
    return tree_map(lambda p, a, g: p - a * g, params, alphas, grads)


def meta_sgd_loss(meta_params, x1, y1, x2, y2, alpha=None):
    params, alphas = meta_params  # alpha is unused: the step sizes are learned
    return maml.loss(meta_sgd_update(params, x1, y1, alphas), x2, y2)
# -8<- [end:meta_sgd]


# -8<- [start:make_step]
def make_step(task_loss):
    """maml.step for another task loss: its mean over the meta-batch, its gradient,
    Adam."""
    batch = vmap(task_loss, in_axes=(None, 0, 0, 0, 0, None))  # tasks share the params

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
    "MAML with 5 inner steps": (make_step(partial(maml_loss_steps, n_steps=5)),
                                same_theta, maml.inner_update),
    # Every step size starts at alpha, so Meta-SGD's first meta-step is MAML's.
    "Meta-SGD": (make_step(meta_sgd_loss), with_alphas, meta_sgd_update),
}
# -8<- [end:make_step]


def held_out_tasks(seed, n_tasks, amp_range):
    """The held-out tasks experiment.py evaluates a run of `seed` on (drawn from its test key)."""
    return experiment.eval_tasks(experiment.run_keys(seed, 1)[4, 0], n_tasks,
                                 max(experiment.EVAL_KS), amp_range)


def train_all(models, setup, seeds, seed, eval_tasks):
    """Each of `models` (name: step, start, update, as in VARIANTS) trained for `seeds` runs at
    once by experiment.py's loop, from its keys of seed, seed + 1, ... (the same init and tasks
    for every model): by name, the held-out curves for each K and the seconds per meta-step."""
    test = held_out_tasks(seed, eval_tasks, setup["amp_range"])
    keys = experiment.run_keys(seed, seeds)
    curves, per_step, t0 = {}, {}, time.perf_counter()
    for name, (step_fn, start, update) in models.items():
        params = start(vmap(experiment.INITS[setup["init"]])(keys[0]), setup["alpha"])
        compiled = experiment.compile_training(step_fn, tree_map(lambda a: a[0], params), setup,
                                               seeds)
        state, _, per_step[name] = experiment.train(compiled, vmap(maml.opt_init)(params),
                                                    keys[1], setup, name, log=lambda line: None)
        trained = maml.get_params(state)
        if start is with_alphas:  # adapt theta with the learned step sizes
            trained, alphas = trained
        else:
            alphas = np.full(seeds, setup["alpha"], np.float32)
        curves[name] = {k: experiment.run_curves(trained, test, k, alphas, update=update)
                        for k in experiment.EVAL_KS}
        print(f"{name}: trained and evaluated, {time.perf_counter() - t0:.0f} s so far", flush=True)
    return curves, per_step


# -8<- [start:cells]
def variant_cells(name, curves):
    """One variant's cells, as experiment.py's results.json holds them: for each K,
    every run's numbers (report.run_numbers: a task whose adaptation overflowed at any
    step is left out of every column, and counted) and the numbers over runs
    (report.over_runs)."""
    runs = {k: [report.run_numbers(m) for m in mse] for k, mse in curves.items()}
    return [dict(model=name, k=k, runs=r, over_runs=report.over_runs(r))
            for k, r in runs.items()]
# -8<- [end:cells]


def render(data):
    """figures/variants.md, from the data alone."""
    steps, n_runs, tasks = data["eval_steps"], len(data["seeds"]), data["eval_tasks"]
    rows = [[c["model"], c["k"], *(report.cell_text(c, n, "") for n in steps),
             f"{sum(r['worse'] for r in c['runs'])} of {n_runs * tasks}",
             sum(r["diverged"] for r in c["runs"]), f"{data['ms_per_step'][c['model']]:.3f}"]
            for c in data["cells"]]
    return "\n".join([
        f"Measured on {program.environment_text(data['environment'])}; {data['when']}, load "
        f"{', '.join(map(str, data['load']))}.", "", f"Command: `{data['command']}`", "",
        f"Held-out MSE on {tasks} tasks (the same for every variant) after n steps: mean of "
        f"{n_runs} runs ± 95% between-run interval (Student's t, {n_runs - 1} degrees of "
        f"freedom); {data['steps']:,} meta-training steps of {data['setup']['tasks']} tasks, "
        f"K = {data['setup']['k']}, alpha = {data['setup']['alpha']:g}. A task whose MSE "
        "overflowed (inf or NaN) at any step is left out of every column of its cell, and counted "
        "as diverged. † marks a cell whose mean, in some run, tasks that ran away (MSE over "
        f"{data['runaway_factor']}x its start) dominate: it shows the median over runs.", "",
        program.table(["variant", "K", *(f"n = {n}" for n in steps),
                       "tasks ending worse, all runs", "diverged tasks, all runs",
                       "ms per meta-step of all runs"], rows, "lrrrrrrr"),
        "".join(f"- {line}\n" for line in report.runaway_lines(data))]).rstrip() + "\n"


def parse_args(argv=None):
    ap = program.parser("python -m studies.variants", __doc__.splitlines()[0], out="figures",
                        what="variants.json and variants.md")
    at_least = {n: program.checked(int, lambda v, n=n: v >= n, f"an integer >= {n}")
                for n in (0, 1, 2)}
    ap.add_argument("--seeds", type=at_least[2], default=5, help="runs of each variant (5)")
    ap.add_argument("--seed", type=at_least[0], default=0, help="run r uses seed + r (0)")
    ap.add_argument("--steps", type=at_least[1], default=experiment.SETUPS["paper"]["steps"],
                    help="meta-training steps (70,000)")
    ap.add_argument("--eval-tasks", type=at_least[2], default=600, help="held-out tasks (600)")
    ap.add_argument("--only", default=list(VARIANTS), type=program.checked(
        lambda text: text.split(","), lambda names: set(names) <= set(VARIANTS),
        f"some of {', '.join(VARIANTS)}, comma-separated"), help="variants to train (all)")
    return program.parse(ap, argv)


def main(argv=None):
    args = parse_args(argv)
    setup = dict(experiment.SETUPS["paper"], steps=args.steps)
    curves, per_step = train_all({name: VARIANTS[name] for name in args.only}, setup, args.seeds,
                                 args.seed, args.eval_tasks)
    data = report.plain(dict(
        command=program.command("studies.variants", args.argv), steps=args.steps,
        seeds=list(range(args.seed, args.seed + args.seeds)), eval_tasks=args.eval_tasks,
        eval_steps=[1, 5, 10], setup=setup, runaway_factor=report.RUNAWAY,
        environment=program.environment(program.jax_device()), when=program.now(),
        load=program.load(), ms_per_step={name: 1e3 * s for name, s in per_step.items()},
        cells=[c for name in curves for c in variant_cells(name, curves[name])]))
    print(program.write(args.out, "variants", data, render), end="")


if __name__ == "__main__":
    main()
