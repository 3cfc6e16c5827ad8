"""How experiment.py reports a run: statistics over tasks and runs, the results as data
(results.json holds every number the table shows: programs, tests and pages read it),
the table rendered from that data alone, the figures, whole-or-nothing writes."""
import math
import os
import sys

import numpy as np
from jax.tree_util import tree_leaves, tree_map

from machinery import figures, program

RUNAWAY = 10  # a task "runs away" once its MSE exceeds 10 times its MSE before adapting
PLATEAU_WINDOW = 100  # training losses are kept, and judged, as means of 100 steps


def run_line(args, setup, platform):
    """The line a run starts with: what it trains, on what, with which seeds."""
    runs = f"{args.seeds} runs (seeds {args.seed}-{args.seed + args.seeds - 1})" \
        if args.seeds > 1 else f"seed {args.seed}"
    return (f"MAML, {args.setup} setup: {setup['steps']:,} steps of {setup['tasks']:,} "
            f"tasks, K = {setup['k']:,}, alpha = {setup['alpha']:g}, amplitude "
            f"U{list(setup['amp_range'])}; {runs}; {platform}")


def speed_line(ms, runs):
    """The line after training: its steady ms per meta-step (NaN: resumed, untimed)."""
    per_run = f" of {runs} runs, {ms / runs:.3f} ms per run-step" * (runs > 1)
    return "meta-training: " + ("resumed, not timed" if math.isnan(ms) else
                                f"{ms:.3f} ms per meta-step{per_run} (steady state: "
                                "compile, first chunk out)")


def progress(name, steps, losses, per_s):
    """A progress line: steps (done, of the run), the last chunk's mean loss, speed."""
    step, n_steps = steps
    return (f"{name}: step {step:>7,}/{n_steps:,}  loss {losses.mean():8.4f}  "
            f"{per_s:8,.0f} steps/s  {(n_steps - step) / per_s:5.1f} s left")


def stop_diverged(what):
    """Exit 1 in one line: a run that diverged writes nothing."""
    sys.exit(f"experiment.py: {what}; nothing was written. Try a smaller --alpha.")


def stop_if_diverged(losses, name, first_step, runs):
    """stop_diverged if a loss of a chunk (steps, runs) is not finite."""
    if not np.isfinite(losses).all():
        bad, run = np.argwhere(~np.isfinite(losses))[0]
        which = f"{name} (run {run})" if runs > 1 else name
        stop_diverged(f"{which} diverged at step {first_step + bad} (loss is "
                      f"{losses[bad, run]})")


def most_diverged(curves):
    """((model, K), run, count) of every run whose adaptation diverged (MSE inf or NaN)
    on more than half its held-out tasks: a mean of the few survivors is garbage."""
    counts = {key: (~np.isfinite(mse).all(axis=2)).sum(axis=1)
              for key, mse in curves.items()}
    return [(key, r, int(n)) for key, c in counts.items() for r, n in enumerate(c)
            if n > curves[key].shape[1] / 2]


# -8<- [start:intervals]
def mean_ci(values):
    """Mean over tasks and the half-width of its 95% interval (normal approximation), in
    float64: the square of a far task's MSE can overflow float32."""
    values = np.asarray(values, np.float64)
    return values.mean(), 1.96 * values.std(ddof=1) / math.sqrt(len(values))


# Student's t: the 0.975 quantile for 1 to 30 degrees of freedom (tables, 3 decimals).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201,
        2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074,
        2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df):
    """The 0.975 quantile of Student's t with df degrees of freedom: the table up to 30,
    then the first terms of its expansion around 1.96 (error < 1e-4 from 30 on)."""
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964
    return (z + (z ** 3 + z) / (4 * df)
            + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2))


def between_runs(values):
    """Mean over runs and the half-width of its 95% interval, Student's t with runs - 1
    degrees of freedom: how far as many runs again could land, not one run's noise."""
    values = np.asarray(values, np.float64)
    half = t975(len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return values.mean(), half
# -8<- [end:intervals]


# -8<- [start:run_numbers]
def run_numbers(mse):
    """One run's numbers for one model and K from its MSE (tasks, steps + 1): per number
    of steps, the finite tasks' mean, 95% interval, median, runaway tasks and whether
    they make up over half the mean; the tasks that end worse than they start (NaN
    counts as worse), the worst of them, and the diverged."""
    kept = mse[np.isfinite(mse).all(axis=1)].astype(np.float64)
    runaway = kept > RUNAWAY * kept[:, :1]
    mean, ci = np.transpose([mean_ci(column) for column in kept.T])
    worse = kept[:, -1][kept[:, -1] > kept[:, 0]]
    return dict(mean=mean, ci=ci, median=np.median(kept, axis=0),
                runaway=runaway.sum(axis=0),
                dominated=np.where(runaway, kept, 0).sum(axis=0) > kept.sum(axis=0) / 2,
                worse=int(np.sum(~(mse[:, -1] <= mse[:, 0]))),
                diverged=len(mse) - len(kept),
                worst=worse.max() if len(worse) else None)
# -8<- [end:run_numbers]


# -8<- [start:over_runs]
def over_runs(runs):
    """Per number of steps over the runs' means: mean and between-run interval, median,
    range, runs a runaway task dominates. None for one run (no spread between runs)."""
    if len(runs) == 1:
        return None
    means = np.array([run["mean"] for run in runs])
    mean, half = np.transpose([between_runs(column) for column in means.T])
    return dict(mean=mean, half=half, median=np.median(means, axis=0),
                min=means.min(axis=0), max=means.max(axis=0),
                dominated=np.sum([run["dominated"] for run in runs], axis=0))
# -8<- [end:over_runs]


# -8<- [start:training_numbers]
def window_means(losses):
    """The means of each 100 steps of the losses (steps, runs): (steps // 100, runs)."""
    window = min(PLATEAU_WINDOW, len(losses))
    kept = losses[:len(losses) // window * window]
    return kept.reshape(-1, window, losses.shape[1]).mean(1)


def training_numbers(losses):
    """Per run of losses (steps, runs): the first step whose 100-step mean is below half
    the first 100's (leaving its starting plateau; else None); the last 1,000's mean."""
    window = min(PLATEAU_WINDOW, len(losses))
    means = window_means(losses)
    below = means < means[:1] / 2
    leaves = [int((np.argmax(b) + 1) * window) if b.any() else None for b in below.T]
    return dict(window=window, leaves_plateau=leaves, final=losses[-1000:].mean(axis=0))
# -8<- [end:training_numbers]


def results_data(*, curves, step_sizes, losses, **facts):
    """Everything a run found, as results.json's data: `facts`, the environment, a cell
    per model and K (every run's numbers and those over runs), the training."""
    runs = {key: [run_numbers(m) for m in mse] for key, mse in curves.items()}
    cells = [dict(model=name, k=k, step_sizes=step_sizes[name, k], runs=r,
                  over_runs=over_runs(r)) for (name, k), r in runs.items()]
    training = {name: training_numbers(np.asarray(l)) for name, l in losses.items()}
    return plain(dict(facts, environment=program.environment(program.jax_device()),
                      runaway_factor=RUNAWAY, cells=cells, training=training))


def cell(results, model, k):
    """The cell of one model and K in a run's results data."""
    return next(c for c in results["cells"] if c["model"] == model and c["k"] == k)


def plain(x):
    """x with numpy's numbers and arrays made JSON's; a non-finite number is null."""
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [plain(v) for v in x]
    x = x.item() if isinstance(x, np.generic) else x  # a Python bool, int or float
    return None if isinstance(x, float) and not math.isfinite(x) else x


def number(x):
    """Three decimals; scientific notation once a runaway task makes a number huge."""
    if x is None:
        return "-"
    return f"{x:.3f}" if abs(x) < 1e4 else f"{x:.2e}"


# -8<- [start:cell_text]
def cell_text(cell, n, mark):
    """One cell of the table: the mean and its interval, or, where runaway tasks make up
    most of a mean, a dagger and the median (over tasks for one run, over runs)."""
    one = cell["over_runs"] is None
    s = cell["runs"][0] if one else cell["over_runs"]
    if any(run["dominated"][n] for run in cell["runs"]):
        return f"median {number(s['median'][n])}†"
    return f"{number(s['mean'][n])} ± {number(s['ci' if one else 'half'][n])}{mark}"
# -8<- [end:cell_text]


def step_size_text(sizes):
    sizes = sorted(set(sizes))
    return f"{sizes[0]:g}" if len(sizes) == 1 else f"{sizes[0]:g}-{sizes[-1]:g}"


def table_rows(results):
    """The header and one row per model and K (each with the paper's, if it has one)."""
    steps = results["eval_steps"]
    paper = results["paper"]
    n_runs = len(results["seeds"])
    what = ("mean ± 95% CI" if n_runs == 1 else f"mean of {n_runs} runs ± 95% "
            f"between-run interval, Student's t with {n_runs - 1} degrees of freedom")
    lines = [f"Held-out MSE on {results['eval_tasks']} tasks after n gradient steps "
             f"({what})", f"{'K':>3}  {'model':<11}{'step size':>10}"
             + "".join(f"{f'n = {n}':>16}" for n in steps)]
    for cell in results["cells"]:
        mark = "*" if any(run["diverged"] for run in cell["runs"]) else " "
        cells = "".join(f" {cell_text(cell, n, mark):>15}" for n in steps)
        lines.append(f"{cell['k']:>3}  {cell['model']:<11}"
                     f"{step_size_text(cell['step_sizes']):>10}{cells}")
        if paper and cell["k"] == 5:
            theirs = paper[cell["model"]]
            lines.append(f"{'':>3}  {'  (paper)':<11}{'':>10}"
                         + "".join(f"{theirs.get(str(n), '-'):>15} " for n in steps))
    return lines


def runaway_lines(results):
    """A line for each cell whose mean runaway tasks dominate, with the mean beside."""
    lines = []
    n_runs = len(results["seeds"])
    tasks = results["eval_tasks"]
    for cell, n in ((c, n) for c in results["cells"] for n in results["eval_steps"]):
        hit = [r for r, run in enumerate(cell["runs"]) if run["dominated"][n]]
        run = cell["runs"][0]
        where = f"† K = {cell['k']}, {cell['model']}, n = {n}: "
        if hit and n_runs == 1:
            lines.append(f"{where}{run['runaway'][n]} of {tasks} tasks ran away (MSE "
                         f"over {RUNAWAY}x its start) and make up most of the mean, "
                         f"{number(run['mean'][n])}; the cell is the median over tasks")
        elif hit:
            lines.append(f"{where}diverges in {len(hit)} of {n_runs} runs (runs "
                         f"{', '.join(map(str, hit))}: tasks whose MSE grew over "
                         f"{RUNAWAY}x make up most of the run's mean); the cell is the "
                         "median over runs, the mean over runs is "
                         f"{number(cell['over_runs']['mean'][n])}")
    return lines


def task_lines(results):
    """Per model and K: the tasks that ended worse than they started, the diverged."""
    lines = []
    n_tasks = results["eval_tasks"]
    steps = results["eval_steps"]
    higher = f"{steps[-1]} steps with a higher MSE than they started with"
    for cell in results["cells"]:
        runs = cell["runs"]
        name = f"K = {cell['k']:>2}, {cell['model']}"
        if len(runs) > 1:
            worse, diverged = (", ".join(str(run[key]) for run in runs)
                               for key in ("worse", "diverged"))
            lines.append(f"{name}: tasks of {n_tasks} that end {higher}, per run: "
                         f"{worse}; diverged (left out): {diverged}")
            for r, run in enumerate(runs):
                means = ", ".join(f"n = {n}: {number(run['mean'][n])}" for n in steps)
                lines.append(f"{'':8}run {r}: {means}")
            continue
        run = runs[0]
        worst = "" if run["worst"] is None else f" (worst: {number(run['worst'])})"
        lines.append(f"{name}: {run['worse']} of {n_tasks} tasks end {higher}{worst}")
        if run["diverged"]:
            lines.append(f"{'':8}{run['diverged']} of them diverged (MSE inf or NaN): "
                         "left out of the row marked *")
    return lines


def spread_lines(results):
    """Several runs: each cell's median and range, the runs above twice the paper's."""
    n_runs = len(results["seeds"])
    paper = results["paper"]
    lines = [f"Over the {n_runs} runs (each run's mean): median [lowest, highest]"
             + ("; runs above twice the paper's number" if paper else "")]
    for cell in results["cells"]:
        s = cell["over_runs"]
        spread = "; ".join(f"n = {n}: {number(s['median'][n])} [{number(s['min'][n])}, "
                           f"{number(s['max'][n])}]" for n in results["eval_steps"][1:])
        lines.append(f"K = {cell['k']:>2}, {cell['model']}: {spread}")
        if paper and cell["k"] == 5:
            above = [f"n = {n}: {sum(r['mean'][int(n)] > 2 * v for r in cell['runs'])} "
                     f"of {n_runs} above {2 * v:.2f}"
                     for n, v in paper[cell["model"]].items()]
            lines.append(f"{'':8}" + "; ".join(above))
    return lines


def training_lines(results):
    """When each run left the plateau of its starting loss; its final training loss."""
    return [f"{name} training: the {t['window']}-step mean loss first falls below half "
            "its start at step (final loss): " + ", ".join(
                f"{'never' if s is None else f'{s:,}'} ({f:.3f})"
                for s, f in zip(t["leaves_plateau"], t["final"]))
            for name, t in results["training"].items()]


def plateau_note(results):
    """A line (or none) for a run whose MAML never left its starting plateau: its
    numbers are a model's that has not begun to meta-learn, not a bad result of MAML."""
    leaves = results["training"]["MAML"]["leaves_plateau"]
    stuck = [r for r, s in enumerate(leaves) if s is None]
    which = "the run" if len(leaves) == 1 else f"runs {', '.join(map(str, stuck))}"
    return [f"note: MAML's training loss in {which} is still above half its start "
            f"after {results['setup']['steps']:,} steps (still on its starting "
            "plateau): train longer with --steps, or see why on the Results page, "
            "'The slow runs'\n"] if stuck else []


def render(results):
    """The text table of a run, from its results data alone."""
    several = len(results["seeds"]) > 1  # one run has no spread over runs to show
    lines = (table_rows(results) + runaway_lines(results) + task_lines(results)
             + (spread_lines(results) if several else []) + training_lines(results))
    return "".join(line.rstrip() + "\n" for line in lines)


def results_text(results):
    """results.txt: the command that made the run, then its table."""
    return f"Command: {results['command']}\n{render(results)}"


def write_run(out, params, tasks, results, losses, adapt):
    """A run's files, each whole or not at all: the figures, params.npz (the trained
    parameters, run axis first, and the 100-step means of the training losses), then
    results.json and results.txt rendered from it. Returns the text of results.txt."""
    means = {name: window_means(np.asarray(l)) for name, l in losses.items()}
    first = {name: tree_map(lambda a: a[0], p) for name, p in params.items()}
    figures.write_figures(out, first, tasks, results, means, adapt)
    arrays = {f"{name}/{i}": np.asarray(leaf)
              for name, p in params.items() for i, leaf in enumerate(tree_leaves(p))}
    arrays.update({f"loss/{name}": m for name, m in means.items()})  # (windows, runs)
    arrays.update(seed=results["seeds"][0], eval_tasks=results["eval_tasks"],
                  alpha=results["setup"]["alpha"],
                  amp_range=results["setup"]["amp_range"])
    program.write_whole(os.path.join(out, "params.npz"),
                        lambda f: np.savez(f, **arrays))
    return program.write(out, "results", results, results_text, ".txt")
