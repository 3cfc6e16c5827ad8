"""The authors' released code beside ours: its weights, mirrored, in our evaluation.

figures/released/ holds what four seeds of the released code (github.com/cbfinn/maml,
under TensorFlow 2; runs.json records how) gave: final weights, its own test's numbers,
its training losses. Its tasks are A sin(x - phase), the mirror image of ours. This
evaluates the mirrored weights with experiment.py's evaluation on the held-out tasks of
our committed `code` runs, at the step size the released code trains and tests with, and
writes figures/released.json and released.md, beside our runs and the paper's.

    python -m studies.released                 # figures/released.json and .md
    python -m studies.released --out /tmp/rel  # the same files elsewhere
"""
import os

import jax
import numpy as np
from jax.tree_util import tree_map

import experiment
from machinery import program, report

FIGURES = os.path.join(program.ROOT, "figures")


# -8<- [start:mirror]
def mirror(params):
    """g(x) = -f(-x): x enters negated (W1), the output leaves negated (W3, b3). It maps
    the released code's tasks, A sin(x - phase), onto ours, A sin(x + phase)."""
    (w1, b1), _, hidden, _, (w3, b3) = params
    return [(-w1, b1), (), hidden, (), (-w3, -b3)]
# -8<- [end:mirror]


def spread(means):
    """Over runs (rows), per number of steps: mean, 95% t-interval, median, range."""
    means = np.asarray(means, np.float64)
    mean, half = np.transpose([report.between_runs(column) for column in means.T])
    return dict(means=means, mean=mean, half=half, median=np.median(means, axis=0),
                min=means.min(axis=0), max=means.max(axis=0))


def numbers(runs, weights, code, argv=()):
    """released.json: per K, the released code's own test, its mirrored weights in our
    evaluation (report.run_numbers per seed) and our runs, each with its spread."""
    with jax.threefry_partitionable(True):  # the committed runs' tasks, on any jax
        tasks = experiment.held_out_tasks(code["seeds"][0], code["eval_tasks"],
                                          tuple(code["setup"]["amp_range"]))
    alpha = np.full(1, code["setup"]["alpha"], np.float32)
    # A seed at a time (a run axis of 1): jax < 0.5 runs a vmap over runs very slowly.
    seeds = [tree_map(lambda a: a[i:i + 1], mirror(weights))
             for i in range(len(runs["seeds"]))]
    cells = []
    for k in experiment.EVAL_KS:
        evaluated = [report.run_numbers(experiment.run_curves(p, tasks, k, alpha)[0])
                     for p in seeds]
        cells.append(dict(
            k=k, runs=evaluated, released=spread([r["mean"] for r in evaluated]),
            own=spread([s["test"][str(k)]["mean"] for s in runs["seeds"]]),
            ours=spread([r["mean"] for r in report.cell(code, "MAML", k)["runs"]])))
    return report.plain(dict(
        **program.record("studies.released", list(argv), program.jax_device()),
        alpha=code["setup"]["alpha"], eval_steps=experiment.EVAL_STEPS,
        seeds=[s["seed"] for s in runs["seeds"]], source=runs["source"],
        code_command=code["command"], paper=experiment.PAPER_MSE_K5["MAML"],
        cells=cells))


def row(s, steps, median=False):
    """Mean ± interval, or median [lowest, highest], after each number of steps."""
    if median:
        return [f"{s['median'][n]:.3f} [{s['min'][n]:.3f}, {s['max'][n]:.3f}]"
                for n in steps]
    return [f"{s['mean'][n]:.3f} ± {s['half'][n]:.3f}" for n in steps]


def readme_row(data):
    """The README's row: K = 5, our evaluation, after 1, 5 and 10 steps."""
    cell = next(c for c in data["cells"] if c["k"] == 5)
    return (f"| MAML | the released code, {len(data['seeds'])} seeds, mirrored, our "
            f"evaluation: mean ± 95% t-interval | {data['alpha']:g} | "
            + " | ".join(row(cell["released"], (1, 5, 10))) + " |")


def render(data):
    """figures/released.md, from the data alone."""
    steps = data["eval_steps"]
    alpha = f"{data['alpha']:g}"
    body = [[5, "the paper (one run)", "the paper's", "0.01", "-",
             *(data["paper"][str(n)] for n in steps[1:])]]
    for c in data["cells"]:
        for who, where, evaluation in (
                ("own", f"released code, {len(c['own']['means'])} seeds", "its own"),
                ("released", "released code, the same seeds, mirrored", "ours"),
                ("ours", f"ours, `code`, {len(c['ours']['means'])} runs", "ours")):
            body += [[c["k"], where, evaluation, alpha, *row(c[who], steps)],
                     ["", "median [lowest, highest]", "", "",
                      *row(c[who], steps, True)]]
    return "\n".join([
        program.table(["K", "where from", "evaluation", "step size",
                       *(f"n = {n}" for n in steps)], body, "llllrrrr"),
        "Held-out MSE after n steps: mean ± 95% t-interval over the runs. *Its own*: "
        "the released code's test, 600 tasks A sin(x - phase), the same for every "
        "seed, each scored on its K query points; its n = 0 on the K support points. "
        "*Ours*: experiment.py's evaluation on the held-out tasks of "
        f"`{data['code_command']}`, scored on 100 points evenly spaced over [-5, 5]. "
        f"The released code's runs: {data['source']}. Made by `{data['command']}`.",
        ""])


def main(argv=None):
    args = program.parse(program.parser("python -m studies.released",
                                        __doc__.splitlines()[0], out="figures",
                                        what="released.json and released.md"), argv)
    saved = np.load(os.path.join(FIGURES, "released", "weights.npz"))
    w = [saved[str(i)] for i in range(6)]  # net_init's leaves, seed axis first
    weights = [(w[0], w[1]), (), (w[2], w[3]), (), (w[4], w[5])]
    runs = program.read_json(os.path.join(FIGURES, "released", "runs.json"))
    code = program.read_json(os.path.join(FIGURES, "code", "results.json"))
    data = numbers(runs, weights, code, args.argv)
    print(program.write(args.out, "released", data, render), end="")


if __name__ == "__main__":
    main()
