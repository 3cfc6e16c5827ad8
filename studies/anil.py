"""ANIL (Raghu, Raghu, Bengio & Vinyals, 2020) beside MAML, in the released code's setting.

ANIL, "almost no inner loop", adapts only the network's last Dense layer in the inner loop; the
outer loop still trains every layer. Built on maml.py's functions and trained like the variants
(studies.variants), beside MAML from the same seeds: the same initial parameters, task stream and
600 held-out tasks as `experiment.py --setup code`. Writes the table the Variations page shows.

    python -m studies.anil                  # 5 runs of each, 70,000 steps: figures/anil.md
    python -m studies.anil --seeds 2 --steps 300 --eval-tasks 50 --out /tmp/anil  # quick
"""
from jax import grad
from jax.tree_util import tree_map

import experiment
import maml
from machinery import program, report
from studies.variants import VARIANTS, make_step, same_theta, train_all, variant_cells

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


# name: (training step, what it trains, how a held-out task adapts)
MODELS = {"MAML": VARIANTS["MAML"], "ANIL": (make_step(anil_loss), same_theta, anil_inner_update)}


def cell_row(name, k, c, data):
    """One row: the mean ± interval after 1, 5 and 10 steps; the tasks of all runs that ran away
    by the last, and the runs whose mean they dominate; the speed."""
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
    curves, per_step = train_all(MODELS, setup, args.seeds, 0, args.eval_tasks)
    models = {name: dict(ms_per_step=1e3 * per_step[name],
                         cells={c["k"]: dict(runs=c["runs"], over_runs=c["over_runs"])
                                for c in variant_cells(name, curves[name])})
              for name in MODELS}
    data = report.plain(dict(
        command=program.command("studies.anil", args.argv), setup_name=SETUP, setup=setup,
        seeds=args.seeds, steps=args.steps, eval_tasks=args.eval_tasks,
        environment=program.environment(program.jax_device()), when=program.now(),
        load=program.load(), models=models))
    print(program.write(args.out, "anil", data, render), end="")


if __name__ == "__main__":
    main()
