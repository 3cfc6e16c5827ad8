"""A run's figures, from its results data and run 0's parameters: the paper's figures 2
and 3 and the meta-training loss (Matplotlib's Figure, not pyplot)."""
import os

import numpy as np

from machinery.program import write_whole
from maml import net_apply


def save(fig, path):
    write_whole(path, lambda f: fig.savefig(f, format="png", dpi=110))


def adaptation_figure(first, tasks, results, adapt):
    """The paper's figure 2 per K: a held-out task, MAML before and after 1 and 10
    steps, the baseline after 10, of run 0 (`first`); adapt: experiment.inner_steps."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    x1, y1, x_test, y_test = tasks
    sizes = {(c["model"], c["k"]): c["step_sizes"][0] for c in results["cells"]}
    fig = Figure(figsize=(11, 4), layout="constrained")
    for ax, k in zip(fig.subplots(1, 2, sharey=True), sorted({k for _, k in sizes})):
        support = (x1[0, :k], y1[0, :k])
        ax.plot(x_test, y_test[0], "k-", lw=2, label="ground truth")
        ax.plot(*support, "k^", ms=8, label="support points")
        for name, n, style in (("MAML", 0, "C0:"), ("MAML", 1, "C0--"),
                               ("MAML", 10, "C0-"), ("pretrained", 10, "C3-")):
            adapted = adapt(first[name], *support, float(sizes[name, k]), n_steps=n)[0]
            ax.plot(x_test, net_apply(adapted, x_test), style,
                    label=f"{name}, {n} step{'s' * (n != 1)}")
        ax.set(title=f"a held-out task, K = {k}"
               + (", run 0" if len(results["seeds"]) > 1 else ""), xlabel="x")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper")
    return fig


def mse_figure(results):
    """The paper's figure 3 per K: held-out MSE against steps; with several runs, each
    run's mean thin and the mean over runs with its between-run interval."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), layout="constrained")
    cells = results["cells"]
    # Over the unadapted error: a runaway mean leaves at the top, not squashing the rest
    top = 1.25 * max(run["mean"][0] + run["ci"][0] for c in cells for run in c["runs"])
    for ax, k in zip(fig.subplots(1, 2, sharey=True), sorted({c["k"] for c in cells})):
        for cell, color in zip((c for c in cells if c["k"] == k), ("C0", "C3")):
            runs = cell["runs"]
            many = len(runs) > 1
            s = cell["over_runs"] or dict(runs[0], half=runs[0]["ci"])
            mean, ci = np.array(s["mean"], float), np.array(s["half"], float)
            steps = np.arange(len(mean))
            for run in runs if many else ():  # each run, thin: the interval's spread
                ax.plot(steps, run["mean"], "-", color=color, lw=0.6, alpha=0.5)
            diverged = sum(run["diverged"] for run in runs)
            left_out = (f" ({diverged} diverged task{'s' * (diverged > 1)} left out)"
                        if diverged else "")
            ax.plot(steps, mean, "o-", color=color, label=cell["model"] + left_out
                    + (f", mean of {len(runs)} runs" if many else ""))
            ax.fill_between(steps, mean - ci, mean + ci, color=color, alpha=0.2)
            if results["paper"] and k == 5:
                theirs = results["paper"][cell["model"]]
                ax.plot([int(n) for n in theirs], list(theirs.values()), "x",
                        color=color, ms=9, label=f"{cell['model']} (paper)")
        ax.set(title=f"K = {k}", xlabel="gradient steps at meta-test time",
               ylabel="MSE", ylim=(0, top))
    entries = {}  # one legend beside the plots, K = 5's (with the paper's) first
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    fig.legend(list(entries.values()), list(entries), loc="outside right upper")
    return fig


def training_figure(results, curves):
    """Each run's meta-training loss; curves[name]: 100-step means (windows, runs)."""
    from matplotlib import ticker
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    setup = results["setup"]
    each = len(results["seeds"]) > 1
    for (name, t), color in zip(results["training"].items(), ("C0", "C3")):
        steps = t["window"] * np.arange(1, len(curves[name]) + 1)
        for r, curve in enumerate(np.transpose(curves[name])):
            ax.plot(steps, curve, color=color, lw=0.6 if each else 1,
                    label=f"{name} ({t['window']}-step mean{', each run' * each})"
                    if r == 0 else None)
    ax.set(yscale="log", xlabel="training step",
           ylabel="training loss on the meta-batch",
           title=f"meta-training, {setup['tasks']} tasks of K = {setup['k']} per step")

    def some(value, pos=None):  # minor ticks: 2, 3 and 5 times a power of ten
        first_digit = round(value / 10 ** np.floor(np.log10(value)), 6)
        return f"{value:g}" if first_digit in (2, 3, 5) else ""
    # Plain numbers on the log axis ("3", "0.5"), not Matplotlib's "3×10⁰".
    ax.yaxis.set_major_formatter(ticker.FuncFormatter("{:g}".format))
    ax.yaxis.set_minor_formatter(ticker.FuncFormatter(some))
    ax.legend()
    return fig


def write_figures(out, first, tasks, results, curves, adapt):
    save(adaptation_figure(first, tasks, results, adapt),
         os.path.join(out, "adaptation.png"))
    save(mse_figure(results), os.path.join(out, "mse_vs_steps.png"))
    save(training_figure(results, curves), os.path.join(out, "meta_training_loss.png"))
