"""ANIL (Raghu, Raghu, Bengio & Vinyals, 2020) beside MAML, in the released code's setting.

ANIL, "almost no inner loop", adapts only the network's last Dense layer in the inner loop; the
body's layers pass through it unchanged, and the outer loop still trains all of them. Built on
maml.py's functions, turned into a training step by studies.variants.make_step and trained by
experiment.py's own loop. MAML is trained beside it, from the same seeds: the same initial
parameters, task stream and 600 held-out tasks as `experiment.py --setup code` (run r from seed r).
Writes the table the Variations page shows.

    python -m studies.anil                  # 5 runs of each, 70,000 steps: figures/anil.md
    python -m studies.anil --seeds 2 --steps 300 --eval-tasks 50 --out /tmp/anil  # quick
"""
import time

import numpy as np
from jax import grad, vmap
from jax.tree_util import tree_map

import experiment
import maml
from machinery import program, report
from studies.variants import make_step

SETUP = "code"  # the released code's setting: alpha 0.001, weights of std 0.01, zero biases
SHOWN_STEPS = (1, 5, 10)


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


# name: (training step, how a held-out task adapts)
MODELS = {"MAML": (maml.step, maml.inner_update), "ANIL": (make_step(anil_loss), anil_inner_update)}


def run_model(name, setup, seeds, test, log):
    """Train one model for `seeds` runs at once (seeds 0, 1, ...); each run's mean held-out MSE
    after 0..10 steps for each K (report.run_numbers, as results.json has it), and its time."""
    step_fn, update = MODELS[name]
    keys = experiment.run_keys(0, seeds)  # experiment.py's keys: the same init and tasks
    theta = vmap(experiment.INITS[setup["init"]])(keys[0])
    compiled = experiment.compile_training(step_fn, tree_map(lambda a: a[0], theta), setup, seeds)
    trained, _, per_step = experiment.train(compiled, theta, keys[1], setup, name, log=log)
    alphas = np.full(seeds, setup["alpha"], np.float32)
    cells = {}
    for k in experiment.EVAL_KS:
        curves = experiment.run_curves(trained, test, k, alphas, update=update)
        runs = [report.run_numbers(mse) for mse in curves]
        cells[k] = dict(runs=runs, over_runs=report.over_runs(runs))
    return dict(ms_per_step=1e3 * per_step, cells=cells)


def cell_row(name, k, c, data):
    """One row of the table: the mean ± interval after 1, 5 and 10 steps; the tasks of all runs
    that ran away (MSE above 10 times its start) by the last of them, and the runs whose mean
    they dominate; the speed."""
    over, last = c["over_runs"], SHOWN_STEPS[-1]
    runaway = sum(run["runaway"][last] for run in c["runs"])
    return [name, k, *(report.cell_text(c, n, "") for n in SHOWN_STEPS),
            f"{runaway:,} of {data['seeds'] * data['eval_tasks']:,}", over["dominated"][last],
            f"{data['models'][name]['ms_per_step']:.3f}"]


def render(data):
    """figures/anil.md, from the data alone."""
    env, setup = data["environment"], data["setup"]
    rows = [cell_row(name, k, c, data) for name, m in data["models"].items()
            for k, c in m["cells"].items()]
    load = ", ".join(map(str, data["load"]))
    return (f"Measured on {program.environment_text(env)}; {data['when']}, load average {load}."
            f"\n\nCommand: `{data['command']}`\n\n"
            f"Held-out MSE on {data['eval_tasks']} tasks (experiment.py's test tasks) after n "
            f"steps: mean of {data['seeds']} runs (seeds 0-{data['seeds'] - 1}) ± 95% between-run "
            f"interval (Student's t); {data['steps']:,} meta-training steps of {setup['tasks']} "
            f"tasks, K = {setup['k']}, the `{data['setup_name']}` setup (alpha = "
            f"{setup['alpha']:g}, weights of std 0.01, zero biases). ANIL adapts only the last "
            "layer, in training and on the held-out tasks. A task runs away when its MSE exceeds "
            f"{report.RUNAWAY} times its MSE before adapting; † marks a cell whose mean, in some "
            "run, such tasks dominate: it shows the median over runs, as the results table "
            "does.\n\n"
            + program.table(["model", "K", "n = 1", "n = 5", "n = 10", "tasks run away by n = 10",
                             "runs whose mean they dominate", "ms per meta-step of all runs"],
                            rows, "lrrrrrrr"))


def parse_args(argv=None):
    ap = program.parser("python -m studies.anil", __doc__.splitlines()[0], out="figures",
                        what="anil.json and anil.md")
    at_least = {n: program.checked(int, lambda v, n=n: v >= n, f"an integer >= {n}")
                for n in (1, 2)}
    ap.add_argument("--seeds", type=at_least[2], default=5, help="runs of each model (5)")
    ap.add_argument("--steps", type=at_least[1], default=experiment.SETUPS[SETUP]["steps"],
                    help="meta-training steps (70,000)")
    ap.add_argument("--eval-tasks", type=at_least[2], default=600, help="held-out tasks (600)")
    return program.parse(ap, argv)


def main(argv=None):
    args = parse_args(argv)
    setup = dict(experiment.SETUPS[SETUP], steps=args.steps)
    test_key = experiment.run_keys(0, 1)[4, 0]  # experiment.py's held-out tasks
    test = experiment.eval_tasks(test_key, args.eval_tasks, max(experiment.EVAL_KS),
                                 setup["amp_range"])
    models, t0 = {}, time.perf_counter()
    for name in MODELS:
        models[name] = run_model(name, setup, args.seeds, test, log=lambda line: None)
        print(f"{name}: trained and evaluated, {time.perf_counter() - t0:.0f} s so far", flush=True)
    data = report.plain(dict(
        command=program.command("studies.anil", args.argv), setup_name=SETUP, setup=setup,
        seeds=args.seeds, steps=args.steps, eval_tasks=args.eval_tasks,
        environment=program.environment(program.jax_device()), when=program.now(),
        load=program.load(), models=models))
    print(program.write(args.out, "anil", data, render), end="")


if __name__ == "__main__":
    main()
