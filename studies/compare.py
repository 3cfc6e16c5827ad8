"""The paper's K = 5 numbers beside ours, under the paper's text (`paper`) and the released code
(`code`): the table the README and the Results page show, and a figure with every run.

Reads figures/paper/results.json and figures/code/results.json (`python experiment.py --setup
SETUP --seeds 20 --out figures/SETUP`) and writes comparison.json (the K = 5 numbers it copies
from them, never recomputed), comparison.md rendered from it, and runs.png.

    python -m studies.compare                 # figures/comparison.json, .md and runs.png
    python -m studies.compare --out /tmp/cmp  # the same files elsewhere
"""
import os

import numpy as np

import experiment
from machinery import figures, program, report

SETUPS = ("code", "paper")  # the released code's settings first: they reproduce the paper
MODELS = ("MAML", "pretrained")
STEPS = (1, 5, 10)
TOP = 10.0  # the figure's top MSE: above it, a run is counted, not placed
BOTTOM = 0.2  # below every run of either setting


def load(setup, root=os.path.join(program.ROOT, "figures")):
    return program.read_json(os.path.join(root, setup, "results.json"))


def cell_numbers(cell):
    """One K = 5 cell as the table and figure show it, after 1, 5 and 10 steps: its step sizes,
    the numbers over runs, each run's mean, and the runs whose mean runaway tasks dominate."""
    s = cell["over_runs"]
    runs = cell["runs"]
    return dict(step_sizes=cell["step_sizes"],
                over_runs={key: [s[key][n] for n in STEPS]
                           for key in ("mean", "half", "median", "min", "max")},
                run_means=[[run["mean"][n] for run in runs] for n in STEPS],
                dominated=[sum(run["dominated"][n] for run in runs) for n in STEPS])


def numbers(loaded, argv=()):
    """comparison.json: the paper's numbers, and each setting's K = 5 cells and how it was run."""
    return report.plain(dict(
        command=program.command("studies.compare", list(argv)), steps=STEPS,
        paper={name: [experiment.PAPER_MSE_K5[name][n] for n in STEPS] for name in MODELS},
        setups={setup: dict(command=r["command"], eval_tasks=r["eval_tasks"], runs=len(r["seeds"]),
                            cells={name: cell_numbers(report.cell(r, name, 5)) for name in MODELS})
                for setup, r in loaded.items()}))


def rows(data, setup, name):
    """Three rows for one setting and model: mean ± interval (or, where runaway tasks dominate
    some runs' means, how many diverge: the median row is the robust number), median [range],
    runs above twice the paper's number."""
    cell = data["setups"][setup]["cells"][name]
    n_runs = data["setups"][setup]["runs"]
    s = cell["over_runs"]
    paper = data["paper"][name]
    steps = range(len(data["steps"]))
    means = [f"diverges in {cell['dominated'][i]} of {n_runs} runs" if cell["dominated"][i]
             else f"{report.number(s['mean'][i])} ± {report.number(s['half'][i])}" for i in steps]
    spread = [f"{report.number(s['median'][i])} [{report.number(s['min'][i])}, "
              f"{report.number(s['max'][i])}]" for i in steps]
    above = [f"{sum(m > 2 * paper[i] for m in cell['run_means'][i])} of {n_runs}" for i in steps]
    return [[name, f"ours, `{setup}`, {n_runs} runs: mean ± 95% t-interval",
             report.step_size_text(cell["step_sizes"]), *means],
            ["", "median [lowest, highest] of the runs", "", *spread],
            ["", "runs above twice the paper's number", "", *above]]


def render(data):
    """figures/comparison.md, from the data alone."""
    body = []
    for name in MODELS:
        size = "0.01" if name == "MAML" else "-"  # the paper's alpha; it gives no baseline's
        body.append([name, "the paper (one run)", size, *map(str, data["paper"][name])])
        body += [row for setup in data["setups"] for row in rows(data, setup, name)]
    steps = [f"{n} step{'s' * (n > 1)}" for n in data["steps"]]
    commands = "; ".join(f"`{s['command']}`" for s in data["setups"].values())
    n_tasks = next(iter(data["setups"].values()))["eval_tasks"]
    return (program.table(["model, K = 5", "where from", "step size", *steps], body, "lllrrr")
            + f"\nHeld-out MSE on {n_tasks} tasks after 1, 5 and 10 gradient steps; each run's "
            f"number is its mean over the tasks. Made by {commands}, then `{data['command']}`.\n")


def runs_figure(data):
    """Every run's K = 5 MSE after 1, 5 and 10 steps as a point, per setting and model, with the
    paper's numbers as marks: the distribution the means summarise."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, len(data["steps"]), sharey=True)
    setups = list(data["setups"])
    jitter = np.random.default_rng(0).uniform(-0.12, 0.12, max(s["runs"] for s in
                                                              data["setups"].values()))
    for i, (ax, n) in enumerate(zip(axes, data["steps"])):
        for x, (setup, name) in enumerate((s, m) for m in MODELS for s in setups):
            means = np.array(data["setups"][setup]["cells"][name]["run_means"][i])
            color = "C0" if name == "MAML" else "C3"
            off = means > TOP
            ax.plot(x + jitter[:len(means)][~off], means[~off], "o", color=color, ms=4,
                    alpha=0.7, mfc="none" if setup == "paper" else color)
            if off.any():  # runs a runaway task sent off the scale: a mark at the top, counted
                ax.plot(x, 0.8 * TOP, "^", color=color, ms=8)
                ax.annotate(f"{off.sum()} above", (x, 0.8 * TOP), xytext=(6, -3),
                            textcoords="offset points", fontsize=8)
            ax.plot([x - 0.3, x + 0.3], [data["paper"][name][i]] * 2, "k-", lw=2)
        ax.set_xticks(range(4), [f"{m}\n{s}" for m in ("MAML", "baseline") for s in setups])
        ax.set(title=f"K = 5, after {n} step{'s' * (n > 1)}", yscale="log", ylim=(BOTTOM, TOP))
    axes[0].set_ylabel("held-out MSE, each run's mean over its tasks (log)")
    fig.suptitle("every run (a point each); the paper's number as a black bar")
    return fig


def main(argv=None):
    args = program.parse(program.parser("python -m studies.compare", __doc__.splitlines()[0],
                                        out="figures", what="comparison.json, .md and runs.png"),
                         argv)
    data = numbers({setup: load(setup) for setup in SETUPS}, args.argv)
    print(program.write(args.out, "comparison", data, render), end="")
    figures.save(runs_figure(program.read_json(os.path.join(args.out, "comparison.json"))),
                os.path.join(args.out, "runs.png"))


if __name__ == "__main__":
    main()
