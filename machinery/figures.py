"""The figures of a run, drawn from its results data (and, for the paper's figure 2, its
trained parameters): the paper's figures 2 and 3 and the meta-training loss. Matplotlib's
Figure, not pyplot: no global figure state and no GUI backend."""
import os

import numpy as np

from machinery.program import write_whole
from maml import net_apply


def save(fig, path):
    write_whole(path, lambda f: fig.savefig(f, format="png", dpi=110))


def adaptation_figure(first, tasks, results, adapt):
    """The paper's figure 2: one held-out task, MAML before and after 1 and 10 steps,
    and the baseline after 10, for each K; run 0's parameters (`first`) and step sizes.
    adapt(params, x1, y1, alpha, n_steps) is experiment.inner_steps: the figure adapts
    as the evaluation does."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    x1, y1, x_test, y_test = tasks
    sizes = {(c["model"], c["k"]): c["step_sizes"][0] for c in results["cells"]}
    fig = Figure(figsize=(11, 4), layout="constrained")
    ks = sorted({c["k"] for c in results["cells"]})
    for ax, k in zip(fig.subplots(1, 2, sharey=True), ks):
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
    """The paper's figure 3 from the results data: held-out MSE against steps, for each
    K; with several runs, each run's mean thin and the mean over runs with its
    between-run interval."""
    from matplotlib.figure import Figure

    fig, cells = Figure(figsize=(11, 4), layout="constrained"), results["cells"]
    # Up to a little above the error before adapting: a mean that a few runaway tasks
    # send far higher leaves the plot at the top rather than flattening every other
    # curve.
    top = 1.25 * max(run["mean"][0] + run["ci"][0] for c in cells for run in c["runs"])
    for ax, k in zip(fig.subplots(1, 2, sharey=True), sorted({c["k"] for c in cells})):
        for cell, color in zip((c for c in cells if c["k"] == k), ("C0", "C3")):
            runs, s = cell["runs"], cell["over_runs"]
            mean, ci = ((runs[0]["mean"], runs[0]["ci"]) if s is None
                        else (s["mean"], s["half"]))
            mean, ci = np.array(mean, float), np.array(ci, float)
            steps = np.arange(len(mean))
            for run in runs if s else ():  # each run, thin: the spread of the interval
                ax.plot(steps, run["mean"], "-", color=color, lw=0.6, alpha=0.5)
            diverged = sum(run["diverged"] for run in runs)
            left_out = (f" ({diverged} diverged task{'s' * (diverged > 1)} left out)"
                        if diverged else "")
            ax.plot(steps, mean, "o-", color=color, label=cell["model"] + left_out
                    + (f", mean of {len(runs)} runs" if s else ""))
            ax.fill_between(steps, mean - ci, mean + ci, color=color, alpha=0.2)
            if results["paper"] and k == 5:
                theirs = results["paper"][cell["model"]]
                ax.plot([int(n) for n in theirs], list(theirs.values()), "x",
                        color=color, ms=9, label=f"{cell['model']} (paper)")
        ax.set(title=f"K = {k}", xlabel="gradient steps at meta-test time",
               ylabel="MSE", ylim=(0, top))
    # One legend beside the plots, never over a curve or the paper's marks; the K = 5
    # panel's entries come first, since only it has the paper's.
    entries = {}
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
    ax, setup, each = fig.subplots(), results["setup"], len(results["seeds"]) > 1
    for (name, t), color in zip(results["training"].items(), ("C0", "C3")):
        steps = t["window"] * np.arange(1, len(curves[name]) + 1)
        for r, curve in enumerate(np.transpose(curves[name])):
            ax.plot(steps, curve, color=color, lw=0.6 if each else 1,
                    label=f"{name} ({t['window']}-step mean{', each run' * each})"
                    if r == 0 else None)
    ax.set(yscale="log", xlabel="training step",
           ylabel="training loss on the meta-batch",
           title=f"meta-training, {setup['tasks']} tasks of K = {setup['k']} per step")
    # Plain numbers on the log axis ("3", "0.5"), not Matplotlib's "3×10⁰": every
    # power of ten, and the minor ticks at 2, 3 and 5 times one.
    def plain(value, pos=None):
        return f"{value:g}"

    def some(value, pos=None):
        first_digit = round(value / 10 ** np.floor(np.log10(value)), 6)
        return plain(value) if first_digit in (2, 3, 5) else ""
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(plain))
    ax.yaxis.set_minor_formatter(ticker.FuncFormatter(some))
    ax.legend()
    return fig


def write_figures(out, first, tasks, results, curves, adapt):
    save(adaptation_figure(first, tasks, results, adapt),
         os.path.join(out, "adaptation.png"))
    save(mse_figure(results), os.path.join(out, "mse_vs_steps.png"))
    save(training_figure(results, curves), os.path.join(out, "meta_training_loss.png"))
