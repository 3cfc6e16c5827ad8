"""MAML and its variants, trained and compared on the sinusoids of one of experiment.py's setups.

Each variant is a task loss built on maml.py's functions; `make_step` turns it into a training step
with the signature of maml.step, so experiment.py's own loop trains it: the same initial
parameters, task stream and 600 held-out tasks for every variant, several runs at once. Each run
of this program is a table of the Variations page; --only replaces or adds its variants' rows in
variants.json (for its setup) and keeps the others.

    python -m studies.variants               # 5 runs of each, 70,000 steps: figures/variants.*
    python -m studies.variants --setup code --only MAML,ANIL  # ANIL, the released code's setting
    python -m studies.variants --seeds 2 --steps 300 --eval-tasks 50 --out /tmp/v  # quick
"""
import os
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


# -8<- [start:anil]
def anil_inner_update(params, x1, y1, alpha=0.01):
    """maml.inner_update on the last Dense layer (W, b) alone: the body passes
    through unchanged, and since the head's gradient is taken through it, the outer
    grad still reaches the body."""
    *body, head = params

    def head_loss(head):
        return maml.loss([*body, head], x1, y1)
    new_head = tree_map(lambda p, g: p - alpha * g, head, grad(head_loss)(head))
    return [*body, new_head]


def anil_loss(params, x1, y1, x2, y2, alpha=0.01):
    return maml.loss(anil_inner_update(params, x1, y1, alpha), x2, y2)
# -8<- [end:anil]


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
    "ANIL": (make_step(anil_loss), same_theta, anil_inner_update),
}
# -8<- [end:make_step]


def train_all(models, setup, seeds, seed, eval_tasks):
    """Each of `models` (name: step, start, update, as in VARIANTS) trained for `seeds`
    runs at once by experiment.py's loop, from its keys of seed, seed + 1, ... (the same
    init and tasks for every model): by name, the held-out curves for each K and the
    seconds per meta-step."""
    test = experiment.held_out_tasks(seed, eval_tasks, setup["amp_range"])
    keys = experiment.run_keys(seed, seeds)
    curves = {}
    per_step = {}
    t0 = time.perf_counter()
    for name, (step_fn, start, update) in models.items():
        params = start(vmap(experiment.INITS[setup["init"]])(keys[0]), setup["alpha"])
        compiled = experiment.compile_training(step_fn, tree_map(lambda a: a[0], params), setup,
                                               seeds)
        state, _, per_step[name] = experiment.train(compiled, vmap(maml.opt_init)(params),
                                                    keys[1], setup, name)
        trained = maml.get_params(state)
        if start is with_alphas:  # adapt theta with the learned step sizes
            trained, alphas = trained
        else:
            alphas = np.full(seeds, setup["alpha"], np.float32)
        curves[name] = {k: experiment.run_curves(trained, test, k, alphas, update=update)
                        for k in experiment.EVAL_KS}
        print(f"{name}: trained and evaluated, {time.perf_counter() - t0:.0f} s so far",
              flush=True)
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


def run_rows(run):
    """One row per variant and K of a run: the means after n steps, the tasks of all runs
    that ended worse, ran away by the last step and diverged, the time per meta-step."""
    tasks = len(run["seeds"]) * run["eval_tasks"]
    last = run["eval_steps"][-1]
    return [[c["model"], c["k"], *(report.cell_text(c, n, "") for n in run["eval_steps"]),
             f"{sum(r['worse'] for r in c['runs']):,} of {tasks:,}",
             f"{sum(r['runaway'][last] for r in c['runs']):,}",
             f"{sum(r['diverged'] for r in c['runs']):,}",
             f"{run['ms_per_step'][c['model']]:.3f}"] for c in run["cells"]]


def run_text(run):
    """One run's table: what it trained and how it was evaluated, the table, a line for
    each cell that runaway tasks dominate, and the conditions it was measured in."""
    setup = run["setup"]
    steps = run["eval_steps"]
    n_runs = len(run["seeds"])
    header = ["variant", "K", *(f"n = {n}" for n in steps), "tasks ending worse",
              f"ran away by n = {steps[-1]}", "diverged", "ms per meta-step of all runs"]
    description = (
        f"**The `{run['setup_name']}` setup** (alpha = {setup['alpha']:g}, `{setup['init']}` "
        f"initialisation): {run['steps']:,} meta-training steps of {setup['tasks']} tasks, "
        f"K = {setup['k']}; held-out MSE on {run['eval_tasks']} tasks (the same for every "
        f"variant) after n steps, the mean of {n_runs} runs (seeds {run['seeds'][0]}-"
        f"{run['seeds'][-1]}) ± 95% between-run interval (Student's t, {n_runs - 1} degrees "
        "of freedom).")
    parts = [description, program.table(header, run_rows(run), "l" + "r" * (len(header) - 1)),
             "".join(f"- {line}\n" for line in report.runaway_lines(run)),
             program.conditions(run)]
    return "\n\n".join(part.rstrip("\n") for part in parts if part) + "\n"


def render(data):
    """figures/variants.md, from the data alone: a table for each run it holds."""
    return "\n".join([
        "A task whose MSE overflowed (inf or NaN) at any step is left out of every column of "
        "its cell, and counted as diverged; a task runs away when its MSE exceeds "
        f"{data['runaway_factor']} times its MSE before adapting. † marks a cell whose mean, "
        "in some run, such tasks dominate: it shows the median over runs.\n",
        *(run_text(run) for run in data["runs"])])


def merged(old, run):
    """variants.json's runs with `run` added: its variants' rows of the same setup leave
    the older runs (a run left with none goes), the rest stay."""
    replaced = set(run["ms_per_step"])
    runs = []
    for r in old["runs"]:
        if r["setup_name"] == run["setup_name"]:
            r = dict(r, cells=[c for c in r["cells"] if c["model"] not in replaced],
                     ms_per_step={name: ms for name, ms in r["ms_per_step"].items()
                                  if name not in replaced})
        if r["cells"]:
            runs.append(r)
    return dict(old, runs=[*runs, run])


def parse_args(argv=None):
    ap = program.parser("python -m studies.variants", __doc__.splitlines()[0], out="figures",
                        what="variants.json and variants.md")
    ap.add_argument("--setup", choices=experiment.SETUPS, default="paper",
                    help="experiment.py's setup to train and evaluate in (paper)")
    ap.add_argument("--seeds", type=program.at_least(2), default=5,
                    help="runs of each variant (5)")
    ap.add_argument("--seed", type=program.at_least(0), default=0,
                    help="run r uses seed + r (0)")
    ap.add_argument("--steps", type=program.at_least(1),
                    help="meta-training steps (the setup's: 70,000)")
    ap.add_argument("--eval-tasks", type=program.at_least(2), default=600,
                    help="held-out tasks (600)")
    ap.add_argument("--only", default=list(VARIANTS), type=program.some_of(VARIANTS),
                    help="variants to train (all)")
    return program.parse(ap, argv)


def main(argv=None):
    args = parse_args(argv)
    setup = dict(experiment.SETUPS[args.setup])
    setup["steps"] = args.steps or setup["steps"]
    load_before = program.load()
    models = {name: VARIANTS[name] for name in args.only}
    curves, per_step = train_all(models, setup, args.seeds, args.seed, args.eval_tasks)
    run = report.plain(dict(
        program.record("studies.variants", args.argv, program.jax_device(), [load_before]),
        setup_name=args.setup, setup=setup, steps=setup["steps"],
        seeds=list(range(args.seed, args.seed + args.seeds)), eval_tasks=args.eval_tasks,
        eval_steps=[1, 5, 10], ms_per_step={name: 1e3 * s for name, s in per_step.items()},
        cells=[c for name in curves for c in variant_cells(name, curves[name])]))
    path = os.path.join(args.out, "variants.json")
    old = (program.read_json(path) if os.path.exists(path)
           else dict(runaway_factor=report.RUNAWAY, runs=[]))
    print(program.write(args.out, "variants", merged(old, run), render), end="")


if __name__ == "__main__":
    main()
