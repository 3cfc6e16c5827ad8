"""The paper's K = 5 numbers beside ours, under the paper's text (`paper`) and the released code
(`code`): the table the README and the Results page show, and a figure with every run.

Reads figures/paper/results.json and figures/code/results.json, as
`python experiment.py --setup SETUP --seeds 20 --out figures/SETUP` wrote them, and writes
figures/comparison.md and figures/runs.png. The numbers are copied from the JSON, never
recomputed, so the table can only say what the committed results say.

    python -m studies.compare
"""
import os

import numpy as np

import experiment
from machinery import report

SETUPS = ("code", "paper")  # the released code's settings first: they reproduce the paper
STEPS = (1, 5, 10)
TOP = 10.0  # the figure's top MSE: above it, a run is counted, not placed
BOTTOM = 0.2  # below every run of either setting


def load(setup, root="figures"):
    return report.read_json(os.path.join(root, setup, "results.json"))


def k5(results, name):
    return report.cell(results, name, 5)


def mean_cell(cell, n):
    """The mean over runs and its interval, or, where runaway tasks dominate some runs' means,
    how many runs diverge (the median row beside it is the robust number)."""
    dominated = sum(run["dominated"][n] for run in cell["runs"])
    if dominated:
        return f"diverges in {dominated} of {len(cell['runs'])} runs"
    s = cell["over_runs"]
    return f"{report.number(s['mean'][n])} ± {report.number(s['half'][n])}"


def rows(results, name):
    """Three rows for one setting and model: mean ± interval, median [range], runs above twice
    the paper's number."""
    cell, n_runs = k5(results, name), len(results["seeds"])
    s, paper = cell["over_runs"], experiment.PAPER_MSE_K5[name]
    where = f"ours, `{results['setup_name']}`, {n_runs} runs"
    size = report.step_size_text(cell["step_sizes"])
    spread = [f"{report.number(s['median'][n])} [{report.number(s['min'][n])}, "
              f"{report.number(s['max'][n])}]" for n in STEPS]
    above = [f"{sum(run['mean'][n] > 2 * paper[n] for run in cell['runs'])} of {n_runs}"
             for n in STEPS]
    return [f"| {name} | {where}: mean ± 95% t-interval | {size} | "
            + " | ".join(mean_cell(cell, n) for n in STEPS) + " |",
            "| | median [lowest, highest] of the runs | | " + " | ".join(spread) + " |",
            "| | runs above twice the paper's number | | " + " | ".join(above) + " |"]


def table(loaded):
    lines = ["| model, K = 5 | where from | step size | 1 step | 5 steps | 10 steps |",
             "|---|---|---|---|---|---|"]
    for name in ("MAML", "pretrained"):
        paper = experiment.PAPER_MSE_K5[name]
        size = "0.01" if name == "MAML" else "-"  # the paper's alpha; it gives no baseline's
        lines.append(f"| {name} | the paper (one run) | {size} | "
                     + " | ".join(f"{paper[n]}" for n in STEPS) + " |")
        for setup in SETUPS:
            lines += rows(loaded[setup], name)
    commands = "; ".join(f"`{loaded[s]['command']}`" for s in SETUPS)
    n_tasks = loaded[SETUPS[0]]["eval_tasks"]
    return ("\n".join(lines) + f"\n\nHeld-out MSE on {n_tasks} tasks after 1, 5 and 10 gradient "
            "steps; each run's number is its mean over the tasks. Made by "
            f"{commands}, then `python -m studies.compare`.\n")


def runs_figure(loaded):
    """Every run's K = 5 MSE after 1, 5 and 10 steps as a point, per setting and model, with the
    paper's numbers as marks: the distribution the means summarise."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, len(STEPS), sharey=True)
    jitter = np.random.default_rng(0).uniform(-0.12, 0.12, max(len(r["seeds"])
                                                              for r in loaded.values()))
    for ax, n in zip(axes, STEPS):
        for x, (setup, name) in enumerate((s, m) for m in ("MAML", "pretrained") for s in SETUPS):
            means = np.array([run["mean"][n] for run in k5(loaded[setup], name)["runs"]])
            color, off = ("C0" if name == "MAML" else "C3"), means > TOP
            ax.plot(x + jitter[:len(means)][~off], means[~off], "o", color=color, ms=4,
                    alpha=0.7, mfc="none" if setup == "paper" else color)
            if off.any():  # runs a runaway task sent off the scale: a mark at the top, counted
                ax.plot(x, 0.8 * TOP, "^", color=color, ms=8)
                ax.annotate(f"{off.sum()} above", (x, 0.8 * TOP), xytext=(6, -3),
                            textcoords="offset points", fontsize=8)
            ax.plot([x - 0.3, x + 0.3], [experiment.PAPER_MSE_K5[name][n]] * 2, "k-", lw=2)
        ax.set_xticks(range(4), [f"{m}\n{s}" for m in ("MAML", "baseline") for s in SETUPS])
        ax.set(title=f"K = 5, after {n} step{'s' * (n > 1)}", yscale="log", ylim=(BOTTOM, TOP))
    axes[0].set_ylabel("held-out MSE, each run's mean over its tasks (log)")
    fig.suptitle("every run (a point each); the paper's number as a black bar")
    return fig


def main():
    loaded = {setup: load(setup) for setup in SETUPS}
    text = table(loaded)
    print(text, end="")
    report.write_whole(os.path.join("figures", "comparison.md"), lambda f: f.write(text.encode()))
    report.save(runs_figure(loaded), os.path.join("figures", "runs.png"))


if __name__ == "__main__":
    main()
