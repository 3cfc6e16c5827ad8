"""The sinusoid regression experiment of the MAML paper (section 5.1, appendix C), on maml.py.

`python experiment.py` meta-trains MAML and a pretrained baseline, evaluates both on 600 held-out
tasks beside the paper's table, and writes figures/ (`--help` lists the flags).
"""
import argparse
import math
import os
import shlex
import sys
import tempfile
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import jit, lax, random, vmap
from jax.tree_util import tree_map

from maml import (get_params, inner_update, loss, net_apply, net_init, opt_init, opt_update,
                  sample_sinusoids, sample_tasks, step)

# -8<- [start:setups]
# The MAML paper's text; the authors' released code (github.com/cbfinn/maml), which differs from
# the text in its inner step size and its initialisation; and the 2019 blog post.
SETUPS = {
    "paper": dict(amp_range=(0.1, 5.0), k=10, alpha=0.01, tasks=25, steps=70_000, init="stax"),
    "code": dict(amp_range=(0.1, 5.0), k=10, alpha=0.001, tasks=25, steps=70_000, init="code"),
    "blog": dict(amp_range=(0.1, 0.5), k=20, alpha=0.1, tasks=4, steps=20_000, init="stax"),
}
# Appendix C, table 2 of the paper: MSE for K = 5 after 1, 5 and 10 gradient steps.
PAPER_MSE_K5 = {"MAML": {1: 0.67, 5: 0.38, 10: 0.35}, "pretrained": {1: 2.41, 5: 2.23, 10: 2.19}}
EVAL_KS = (5, 10)  # support points per held-out task at meta-test time, as in the paper's figures
EVAL_STEPS = (0, 1, 5, 10)  # gradient steps after which the held-out MSE is reported


def code_init(key):
    """The released code's initialisation (its construct_fc_weights): every weight drawn from a
    normal of standard deviation 0.01 truncated at two standard deviations, every bias zero. The
    same layout as net_init's parameters: (W, b) per Dense layer, () per ReLU."""
    shapes = [(1, 40), (40, 40), (40, 1)]
    keys = random.split(key, len(shapes))
    w = [0.01 * random.truncated_normal(k, -2.0, 2.0, s) for k, s in zip(keys, shapes)]
    dense = [(wi, jnp.zeros(s[1])) for wi, s in zip(w, shapes)]
    return [dense[0], (), dense[1], (), dense[2]]


INITS = {"stax": lambda key: net_init(key, (-1, 1))[1], "code": code_init}
# -8<- [end:setups]


# -8<- [start:pretrain]
def pretrain_loss(params, x1, y1, x2, y2, alpha=None):
    """The paper's baseline: plain regression on every point of every task in the batch."""
    return loss(params, jnp.concatenate([x1, x2], axis=1), jnp.concatenate([y1, y2], axis=1))


@jit
def pretrain_step(i, opt_state, x1, y1, x2, y2, alpha=None):
    """One Adam step of the baseline, on the same meta-batches that MAML sees."""
    value, grads = jax.value_and_grad(pretrain_loss)(get_params(opt_state), x1, y1, x2, y2)
    return opt_update(i, grads, opt_state), value
# -8<- [end:pretrain]


# -8<- [start:train_chunk]
@partial(jit, static_argnames=("step_fn", "n_tasks", "k"))
def train_chunk(opt_state, keys, steps, amp_range, alpha, *, step_fn, n_tasks, k):
    """Run step_fn once for each step number in `steps`, for all runs at once, in one compiled loop.

    Every leaf of opt_state has a leading run axis, and keys[i, r] is the key of run r's tasks at
    step steps[i]. Dispatching one small jitted call per meta-step costs more than its maths on a
    CPU, so the loop runs inside XLA (lax.scan), and the chunk's tasks are drawn up front in one
    vectorised call. Run r at step i trains on sample_tasks(keys[i, r]): the batches of the plain
    Python loop `for i ...: opt_state, _ = step(i, opt_state, *sample_tasks(keys[i], n_tasks, k))`.
    Returns the final state and the losses, of shape (len(steps), runs)."""
    one = keys.shape[1] == 1  # one run: the program without a run axis, 10% faster on a CPU
    sample = lambda key: sample_tasks(key, n_tasks, k, amp_range)
    batches = vmap(sample)(keys[:, 0]) if one else vmap(vmap(sample))(keys)
    run_step = step_fn if one else vmap(step_fn, in_axes=(None, 0, 0, 0, 0, 0, None))

    def body(opt_state, step_and_batch):
        i, batch = step_and_batch
        return run_step(i, opt_state, *batch, alpha)
    if one:
        opt_state, losses = lax.scan(body, tree_map(lambda a: a[0], opt_state), (steps, batches))
        return tree_map(lambda a: a[None], opt_state), losses[:, None]
    return lax.scan(body, opt_state, (steps, batches))
# -8<- [end:train_chunk]


# -8<- [start:train]
def chunks(n_steps, n_chunks=20, longest=5_000):
    """(start, stop) of each chunk: about n_chunks of them, none longer than `longest` steps (the
    chunk's tasks are drawn up front, so its length sets the memory a long run needs)."""
    size = min(-(-n_steps // n_chunks), longest)
    return [(a, min(a + size, n_steps)) for a in range(0, n_steps, size)]


def step_keys(keys, n_steps):
    """Each run's key split once into one key per step, on the host: shape (n_steps, runs, 2)."""
    return np.stack([np.asarray(random.split(key, n_steps)) for key in keys], axis=1)


def compile_training(step_fn, params, setup, runs):
    """train_chunk compiled for every chunk length of the run, before anything runs: XLA's own
    account of the memory each needs is then known (memory_analysis), and the timer of `train`
    sees only training. params are one run's; the compiled loops take `runs` of them."""
    state = jax.eval_shape(lambda p: vmap(opt_init)(tree_map(lambda a: jnp.stack([a] * runs), p)),
                           params)
    static = dict(step_fn=step_fn, n_tasks=setup["tasks"], k=setup["k"])
    compiled = {}
    for a, b in chunks(setup["steps"]):
        if b - a not in compiled:
            keys = jax.ShapeDtypeStruct((b - a, runs, 2), jnp.uint32)
            steps = jax.ShapeDtypeStruct((b - a,), jnp.int32)
            compiled[b - a] = train_chunk.lower(state, keys, steps, setup["amp_range"],
                                                setup["alpha"], **static).compile()
    return compiled


def train(compiled, params, keys, setup, name, log=print):
    """Train params (every leaf with a leading run axis) for setup["steps"] steps, run r on the task
    stream of keys[r], with the loops of compile_training; show progress.

    Returns the trained params, the loss of every step and run (steps, runs), and the steady-state
    seconds per step of all runs together. Stops the program (exit 1) when a loss stops being a
    finite number."""
    n_steps, spans = setup["steps"], chunks(setup["steps"])
    all_keys = step_keys(keys, n_steps)  # run r, step i: sample_tasks(all_keys[i, r], ...)
    every = -(-len(spans) // 20)  # a progress line every `every` chunks: about 20 in all
    opt_state, losses = vmap(opt_init)(params), []
    t0 = t_steady = time.perf_counter()
    for c, (a, b) in enumerate(spans):
        if c == 1:  # the first chunk warms up the runtime; time the steady state after it
            t_steady = time.perf_counter()
        opt_state, chunk_losses = compiled[b - a](opt_state, all_keys[a:b], np.arange(
            a, b, dtype=np.int32), setup["amp_range"], setup["alpha"])
        losses.append(np.asarray(chunk_losses))  # waits for the chunk: the progress line is honest
        if not np.all(np.isfinite(losses[-1])):
            bad, run = np.argwhere(~np.isfinite(losses[-1]))[0]
            which = f"{name} (run {run})" if len(keys) > 1 else name
            sys.exit(f"experiment.py: {which} diverged at step {a + bad} (loss is "
                     f"{losses[-1][bad, run]}); nothing was written. Try a smaller --alpha.")
        elapsed = time.perf_counter() - t0
        if (c + 1) % every == 0 or b == n_steps:
            log(f"{name}: step {b:>7,}/{n_steps:,}  loss {losses[-1].mean():8.4f}  "
                f"{b / elapsed:8,.0f} steps/s  {elapsed * (n_steps - b) / b:5.1f} s left")
    first = spans[0][1]
    steady = math.nan if n_steps <= first else (time.perf_counter() - t_steady) / (n_steps - first)
    return get_params(opt_state), np.concatenate(losses), steady
# -8<- [end:train]


# -8<- [start:evaluate]
def eval_tasks(key, n_tasks, k, amp_range, n_test=100):
    """Held-out tasks: K support points each, and the true function at n_test points on [-5, 5]."""
    sinusoid, x1 = sample_sinusoids(key, n_tasks, k, amp_range)
    x_test = jnp.linspace(-5.0, 5.0, n_test).reshape(n_test, 1)
    return x1, sinusoid(x1), x_test, sinusoid(x_test)


@partial(jit, static_argnames=("n_steps", "update"))
def adaptation_curves(params, x1, y1, x_test, y_test, alpha, n_steps, update=inner_update):
    """Test MSE of every task after 0, 1, ..., n_steps steps of `update` on its own support set.

    Returns an array of shape (n_tasks, n_steps + 1). `update(params, x1, y1, alpha)` is one
    adaptation step; a variant of MAML with its own inner update (Meta-SGD) passes it here."""
    def one_task(x1, y1, y_test):
        def body(p, _):
            return update(p, x1, y1, alpha), loss(p, x_test, y_test)
        adapted, mses = lax.scan(body, params, length=n_steps)
        return jnp.append(mses, loss(adapted, x_test, y_test))
    return vmap(one_task)(x1, y1, y_test)


def run_curves(params, tasks, k, alphas, n_steps=max(EVAL_STEPS), update=inner_update):
    """adaptation_curves of every run on the same held-out tasks, run r with step size alphas[r]:
    an array of shape (runs, n_tasks, n_steps + 1)."""
    x1, y1, x_test, y_test = tasks
    curves = vmap(partial(adaptation_curves, n_steps=n_steps, update=update),
                  in_axes=(0, None, None, None, None, 0))
    return np.asarray(curves(params, x1[:, :k], y1[:, :k], x_test, y_test, alphas))


def tune_step_size(params, tasks, k, candidates=(1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2)):
    """Each run's fine-tuning step size for the baseline: the candidate with the lowest mean
    validation MSE after 1, 5 and 10 steps (a step size that diverges counts as infinitely bad)."""
    runs = len(jax.tree_util.tree_leaves(params)[0])
    scores = []
    for a in candidates:
        c = run_curves(params, tasks, k, np.full(runs, a, np.float32))[:, :, [1, 5, 10]]
        scores.append(np.where(np.isfinite(c).all(axis=(1, 2)), c.mean(axis=(1, 2)), np.inf))
    return np.asarray(candidates)[np.argmin(scores, axis=0)]


def finite_tasks(mse):
    """The rows (tasks) of an MSE array whose adaptation never overflowed."""
    return mse[np.isfinite(mse).all(axis=1)]


def mean_ci(values):
    """Mean and half-width of its 95% confidence interval (normal approximation), over tasks.

    In float64: a task that ends far from its sinusoid can have a float32 MSE whose square
    overflows float32."""
    values = np.asarray(values, np.float64)
    return values.mean(), 1.96 * values.std(ddof=1) / math.sqrt(len(values))


# Student's t: the 0.975 quantile for 1 to 30 degrees of freedom (standard tables, 3 decimals).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042)


def t975(df):
    """The 0.975 quantile of Student's t with df degrees of freedom: the table up to 30, then the
    first terms of its expansion around the normal's 1.96 (error below 1e-4 from 30 on)."""
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def between_runs(values):
    """Mean over runs and the half-width of its 95% interval, Student's t with runs - 1 degrees
    of freedom: how far another set of as many runs could land, not the noise of one run's tasks."""
    values = np.asarray(values, np.float64)
    return values.mean(), t975(len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))


def run_means(mse):
    """Each run's mean MSE over its finite tasks, for every number of steps: (runs, n_steps + 1)."""
    return np.array([finite_tasks(m).mean(axis=0, dtype=np.float64) for m in mse])


def number(x):
    """Three decimals; scientific notation once a task that ran away makes a number huge."""
    return f"{x:.3f}" if abs(x) < 1e4 else f"{x:.2e}"
# -8<- [end:evaluate]


# -8<- [start:report]
def report(curves, step_sizes, n_tasks, paper):
    """The held-out MSE table, beside the paper's numbers if `paper`; then tasks that got worse.

    curves[name, k] has shape (runs, tasks, steps + 1). One run: each cell is the mean over tasks
    with its 95% interval. Several: the mean over runs of each run's mean, with the between-run
    interval, then each run's own numbers. A task whose adaptation diverged (its MSE overflowed to
    inf or NaN) has no place in a mean: it is left out, the row is marked *, and it is counted."""
    runs = len(next(iter(curves.values())))
    header = "".join(f"{f'n = {n}':>16}" for n in EVAL_STEPS)
    what = ("mean ± 95% CI" if runs == 1 else f"mean of {runs} runs ± 95% between-run interval, "
            f"Student's t with {runs - 1} degrees of freedom")
    lines = [f"Held-out MSE on {n_tasks} tasks after n gradient steps ({what})",
             f"{'K':>3}  {'model':<11}{'step size':>10}{header}"]
    for (name, k), mse in curves.items():
        mark = "*" if any(len(finite_tasks(m)) < len(m) for m in mse) else " "
        cell = (lambda n: mean_ci(finite_tasks(mse[0])[:, n])) if runs == 1 else \
            (lambda n: between_runs(run_means(mse)[:, n]))
        cells = "".join(f" {'%s ± %s' % tuple(map(number, cell(n))) + mark:>15}"
                        for n in EVAL_STEPS)
        sizes = sorted(set(np.ravel(step_sizes[name, k]).tolist()))
        size = f"{sizes[0]:g}" if len(sizes) == 1 else f"{sizes[0]:g}-{sizes[-1]:g}"
        lines.append(f"{k:>3}  {name:<11}{size:>10}{cells}")
        if paper and k == 5:
            cells = "".join(f"{PAPER_MSE_K5[name].get(n, '-'):>15} " for n in EVAL_STEPS)
            lines.append(f"{'':>3}  {'  (paper)':<11}{'':>10}{cells}")
    for (name, k), mse in curves.items():
        worse = [int(np.sum(~(m[:, -1] <= m[:, 0]))) for m in mse]  # NaN counts as worse
        diverged = [len(m) - len(finite_tasks(m)) for m in mse]
        if runs == 1:
            kept = finite_tasks(mse[0])
            worst = kept[:, -1][kept[:, -1] > kept[:, 0]]
            lines.append(f"K = {k:>2}, {name}: {worse[0]} of {n_tasks} tasks end {EVAL_STEPS[-1]} "
                         "steps with a higher MSE than they started with"
                         + (f" (worst: {number(worst.max())})" if len(worst) else ""))
            if diverged[0]:
                lines.append(f"{'':8}{diverged[0]} of them diverged (MSE inf or NaN): "
                             "left out of the row marked *")
            continue
        counts = lambda values: ", ".join(map(str, values))
        lines.append(f"K = {k:>2}, {name}: tasks of {n_tasks} that end {EVAL_STEPS[-1]} steps "
                     f"with a higher MSE than they started with, per run: {counts(worse)}; "
                     f"diverged (left out): {counts(diverged)}")
        for r, means in enumerate(run_means(mse)):
            lines.append(f"{'':8}run {r}: " + ", ".join(
                f"n = {n}: {number(means[n])}" for n in EVAL_STEPS))
    return "".join(line.rstrip() + "\n" for line in lines)
# -8<- [end:report]


# -8<- [start:figures]
def write_whole(path, write):
    """Write a file whole or not at all: into a temporary file beside it, then an atomic rename."""
    tmp = f"{path}.{os.getpid()}.part"
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(fig, path):
    write_whole(path, lambda f: fig.savefig(f, format="png", dpi=110))


@partial(jit, static_argnames=("n_steps",))
def adapt(params, x1, y1, alpha, n_steps):
    """n_steps of inner_update on one task's support set."""
    return lax.fori_loop(0, n_steps, lambda _, p: inner_update(p, x1, y1, alpha), params)


def write_figures(out, params, tasks, curves, step_sizes, losses, setup, paper):
    """The paper's figures 2 and 3 on held-out tasks, and the meta-training loss curve. Figure 2
    shows run 0; the other two show every run, and with several runs the mean and its spread."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    first = {name: tree_map(lambda a: a[0], p) for name, p in params.items()}
    runs = len(losses["MAML"][0])
    x1, y1, x_test, y_test = tasks
    fig = Figure(figsize=(11, 4), layout="constrained")
    for ax, k in zip(fig.subplots(1, len(EVAL_KS), sharey=True), EVAL_KS):
        support = (x1[0, :k], y1[0, :k])
        ax.plot(x_test, y_test[0], "k-", lw=2, label="ground truth")
        ax.plot(*support, "k^", ms=8, label="support points")
        for name, n, style in (("MAML", 0, "C0:"), ("MAML", 1, "C0--"), ("MAML", 10, "C0-"),
                               ("pretrained", 10, "C3-")):
            adapted = adapt(first[name], *support, float(step_sizes[name, k][0]), n)
            label = f"{name}, {n} step{'s' * (n != 1)}"
            ax.plot(x_test, net_apply(adapted, x_test), style, label=label)
        ax.set(title=f"a held-out task, K = {k}" + (", run 0" if runs > 1 else ""), xlabel="x")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper")
    save(fig, os.path.join(out, "adaptation.png"))

    fig = Figure(figsize=(11, 4), layout="constrained")
    steps = np.arange(curves["MAML", EVAL_KS[0]].shape[-1])
    # Up to a little above the error before adapting: a mean that a few runaway tasks send far
    # higher leaves the plot at the top rather than flattening every other curve.
    top = 1.25 * max(sum(mean_ci(finite_tasks(m)[:, 0])) for mse in curves.values() for m in mse)
    for ax, k in zip(fig.subplots(1, len(EVAL_KS), sharey=True), EVAL_KS):
        for name, color in (("MAML", "C0"), ("pretrained", "C3")):
            mse = curves[name, k]
            diverged = sum(len(m) - len(finite_tasks(m)) for m in mse)
            label = name + (f" ({diverged} diverged task{'s' * (diverged > 1)} left out)"
                            if diverged else "")
            if runs == 1:
                mean, ci = np.transpose([mean_ci(c) for c in finite_tasks(mse[0]).T])
            else:
                means = run_means(mse)
                mean, ci = np.transpose([between_runs(c) for c in means.T])
                for run_mean in means:  # each run, thin: the spread the interval summarises
                    ax.plot(steps, run_mean, "-", color=color, lw=0.6, alpha=0.5)
                label += f", mean of {runs} runs"
            ax.plot(steps, mean, "o-", color=color, label=label)
            ax.fill_between(steps, mean - ci, mean + ci, color=color, alpha=0.2)
            if paper and k == 5:
                theirs = PAPER_MSE_K5[name]
                ax.plot(list(theirs), list(theirs.values()), "x", color=color, ms=9,
                        label=f"{name} (paper)")
        ax.set(title=f"K = {k}", xlabel="gradient steps at meta-test time", ylabel="MSE",
               ylim=(0, top))
        ax.legend()
    save(fig, os.path.join(out, "mse_vs_steps.png"))

    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    window = max(1, len(losses["MAML"]) // 200)
    for name, color in (("MAML", "C0"), ("pretrained", "C3")):
        for r in range(runs):
            smooth = np.convolve(losses[name][:, r], np.ones(window) / window, mode="valid")
            ax.plot(np.arange(len(smooth)) + window, smooth, color=color,
                    lw=1 if runs == 1 else 0.6,
                    label=f"{name} ({window}-step mean{', each run' if runs > 1 else ''})"
                    if r == 0 else None)
    ax.set(yscale="log", xlabel="training step", ylabel="training loss on the meta-batch",
           title=f"meta-training, {setup['tasks']} tasks of K = {setup['k']} per step")
    ax.legend()
    save(fig, os.path.join(out, "meta_training_loss.png"))
# -8<- [end:figures]


# -8<- [start:memory]
def available_memory():
    """Bytes the default device can still take: what the accelerator reports, or on the CPU the
    operating system's count of available memory (free memory plus caches it can drop)."""
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    try:
        with open("/proc/meminfo") as f:
            return 1024 * int(next(ln for ln in f if ln.startswith("MemAvailable:")).split()[1])
    except (OSError, StopIteration):  # not Linux: the free pages
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def needs(compiled):
    """The bytes one call of a compiled computation holds at its peak, by XLA's own account:
    its arguments, its outputs and its temporaries."""
    m = compiled.memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes


def size(n_bytes):
    unit = max(u for u in range(5) if n_bytes >= 1024 ** u or u == 0)
    return f"{n_bytes / 1024 ** unit:.1f} {['B', 'KiB', 'MiB', 'GiB', 'TiB'][unit]}"


def check_tasks_fit(ap, setup, args):
    """Stop now (exit 2) if one training chunk's tasks alone, which its loop must hold, exceed the
    available memory. A lower bound, counted before compiling: XLA is not asked to compile shapes
    that cannot fit (jax 0.4.29's XLA crashes compiling loops over ~1e13 elements)."""
    size_ = max(b - a for a, b in chunks(setup["steps"]))
    # x1, y1, x2, y2 of every task of every run, K numbers each, 4 bytes a float32
    tasks_bytes = size_ * args.seeds * setup["tasks"] * 4 * setup["k"] * 4
    free = available_memory()
    if tasks_bytes > free:
        ap.error(f"argument --tasks/--k/--steps/--seeds: training {args.seeds:,} run(s) of "
                 f"{setup['steps']:,} steps of {setup['tasks']:,} tasks with K = {setup['k']:,} "
                 f"needs at least {size(tasks_bytes)} (a chunk's tasks alone), more than the "
                 f"{size(free)} available")


def check_memory(ap, setup, args, compiled):
    """Stop now (exit 2, one line naming the flags) if training or evaluation cannot fit in memory:
    XLA's account of every compiled training loop and of the evaluation, and the host's arrays of
    keys and losses, against what the device has available. Nothing has run yet."""
    free, runs = available_memory(), args.seeds
    host = runs * setup["steps"] * (8 + 2 * 4)  # each step's key, and two losses, per run
    train_bytes = max(needs(c) for c in compiled) + host
    if train_bytes > free:
        ap.error(f"argument --tasks/--k/--steps/--seeds: training {runs:,} run(s) of "
                 f"{setup['steps']:,} steps of {setup['tasks']:,} tasks with K = {setup['k']:,} "
                 f"needs {size(train_bytes)} (XLA's count), more than the {size(free)} available")
    shapes = jax.eval_shape(partial(eval_tasks, n_tasks=args.eval_tasks, k=max(EVAL_KS),
                                    amp_range=setup["amp_range"]), random.PRNGKey(0))
    draw = jit(eval_tasks, static_argnums=(1, 2)).lower(random.PRNGKey(0), args.eval_tasks,
                                                          max(EVAL_KS), setup["amp_range"])
    state = jax.eval_shape(lambda: tree_map(lambda a: jnp.stack([a] * runs),
                                            INITS[setup["init"]](random.PRNGKey(0))))
    curves = jit(vmap(partial(adaptation_curves, n_steps=max(EVAL_STEPS)),
                      in_axes=(0, None, None, None, None, 0))).lower(
        state, *shapes, jax.ShapeDtypeStruct((runs,), jnp.float32))
    eval_bytes = needs(draw.compile()) + needs(curves.compile())
    if eval_bytes > free:
        ap.error(f"argument --eval-tasks/--seeds: evaluating {runs:,} run(s) on "
                 f"{args.eval_tasks:,} held-out tasks needs {size(eval_bytes)} (XLA's count), "
                 f"more than the {size(free)} available")
# -8<- [end:memory]


# -8<- [start:main]
def parse_args(argv=None):
    """The flags; a bad value stops the program here with one line naming the flag (exit 2)."""
    def checked(convert, ok, allowed):
        def parse(text):
            try:
                value = convert(text)
            except ValueError:
                value = None
            if value is None or not ok(value):
                raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}")
            return value
        return parse
    count = checked(int, lambda v: v >= 1, "a whole number >= 1")
    ap = argparse.ArgumentParser(prog="experiment.py",
                                 description="MAML on the sinusoid regression of Finn et al. 2017.")
    ap.error = lambda message: ap.exit(2, f"{ap.prog}: error: {message}\n")  # one line, no usage
    default = lambda name: "(" + ", ".join(f"{s} {SETUPS[s][name]:,}" for s in SETUPS) + ")"
    ap.add_argument("--setup", choices=SETUPS, default="paper",
                    help="the paper's text, the authors' released code, or the 2019 blog")
    ap.add_argument("--steps", type=count, metavar="N",
                    help="meta-training steps, and the baseline's " + default("steps"))
    ap.add_argument("--tasks", type=count, metavar="N",
                    help="tasks per meta-batch " + default("tasks"))
    ap.add_argument("--k", type=count, metavar="K",
                    help="support and query points per task " + default("k"))
    ap.add_argument("--alpha", type=checked(float, lambda v: 0 < v < math.inf, "a number > 0"),
                    metavar="A", help="inner step size " + default("alpha"))
    ap.add_argument("--seed", default=0,
                    type=checked(int, lambda v: 0 <= v < 2**32, "a whole number in [0, 2**32)"),
                    metavar="S", help="seed of run 0; run r uses seed S + r (0)")
    ap.add_argument("--seeds", type=count, default=1, metavar="N",
                    help="independent runs, trained together as one computation (1)")
    ap.add_argument("--eval-tasks", type=checked(int, lambda v: v >= 2, "a whole number >= 2"),
                    default=600, metavar="N", help="held-out tasks to evaluate on (600)")
    ap.add_argument("--out", default="figures", metavar="DIR",
                    help="folder for the figures, results.txt and params.npz (figures)")
    args = ap.parse_args(argv)
    if args.seed + args.seeds > 2**32:
        ap.error(f"argument --seeds: run r uses seed {args.seed} + r, which must stay below 2**32; "
                 f"expected at most {2**32 - args.seed}, got {args.seeds}")
    try:  # fail now, not after training, if the figures cannot be written
        os.makedirs(args.out, exist_ok=True)
        tempfile.TemporaryFile(dir=args.out).close()
    except OSError as e:
        ap.error(f"argument --out: cannot write figures to {args.out!r} ({e.strerror})")
    setup = dict(SETUPS[args.setup])
    setup.update({name: getattr(args, name) for name in ("steps", "tasks", "k", "alpha")
                  if getattr(args, name) is not None})
    return args, setup, ap


def run_keys(seed, runs):
    """The five keys of every run: initial parameters, MAML's task stream, the baseline's, the
    validation tasks and the test tasks, each an array of shape (runs, 2). Run r derives its keys
    from seed + r, so run 0 is the single run of the same seed."""
    return np.stack([np.asarray(random.split(random.PRNGKey(seed + r), 5)) for r in range(runs)], 1)


def main(argv=None):
    args, setup, ap = parse_args(argv)
    command = shlex.join(["python", "experiment.py", *(sys.argv[1:] if argv is None else argv)])
    runs = f"{args.seeds} runs (seeds {args.seed}-{args.seed + args.seeds - 1})" \
        if args.seeds > 1 else f"seed {args.seed}"
    print(f"MAML, {args.setup} setup: {setup['steps']:,} steps of {setup['tasks']} tasks, "
          f"K = {setup['k']}, alpha = {setup['alpha']:g}, amplitude U{list(setup['amp_range'])}; "
          f"{runs}; {jax.devices()[0].platform}")
    # Every run is evaluated on run 0's validation and test tasks.
    k_init, k_maml, k_base, k_val, k_test = run_keys(args.seed, args.seeds)
    init = vmap(INITS[setup["init"]])(k_init)
    one = tree_map(lambda a: a[0], init)
    t0 = time.perf_counter()
    check_tasks_fit(ap, setup, args)
    compiled = {name: compile_training(fn, one, setup, args.seeds)
                for name, fn in (("MAML", step), ("pretrained", pretrain_step))}
    check_memory(ap, setup, args, [c for loops in compiled.values() for c in loops.values()])
    print(f"compiled in {time.perf_counter() - t0:.1f} s; memory checked")
    params, losses = {}, {}
    params["MAML"], losses["MAML"], per_step = train(compiled["MAML"], init, k_maml, setup, "MAML")
    params["pretrained"], losses["pretrained"], _ = train(compiled["pretrained"], init, k_base,
                                                          setup, "pretrained")
    print(f"meta-training: {1e3 * per_step:.3f} ms per meta-step"
          + (f" of {args.seeds} runs, {1e3 * per_step / args.seeds:.3f} ms per run-step"
             if args.seeds > 1 else "") + " (steady state: compile and first chunk excluded)")

    val, test = (eval_tasks(key, args.eval_tasks, max(EVAL_KS), setup["amp_range"])
                 for key in (k_val[0], k_test[0]))
    curves, step_sizes = {}, {}
    for k in EVAL_KS:
        for name in params:  # MAML adapts with its own alpha; the baseline's step size is tuned
            step_sizes[name, k] = np.full(args.seeds, setup["alpha"], np.float32) \
                if name == "MAML" else tune_step_size(params[name], val, k)
            curves[name, k] = run_curves(params[name], test, k, step_sizes[name, k])
    for (name, k), mse in curves.items():  # means of a surviving minority would be garbage
        for r, m in enumerate(mse):
            diverged = len(m) - len(finite_tasks(m))
            if diverged > len(m) / 2:
                sys.exit(f"experiment.py: {name} adaptation (run {r}, step size "
                         f"{step_sizes[name, k][r]:g}) diverged on {diverged} of "
                         f"{args.eval_tasks} held-out tasks (K = {k}); nothing was written. "
                         "Try a smaller --alpha.")
    paper = setup["amp_range"] == SETUPS["paper"]["amp_range"]  # the paper's tasks, its numbers
    table = report(curves, step_sizes, args.eval_tasks, paper)
    print("\n" + table, end="")
    write_figures(args.out, params, test, curves, step_sizes, losses, setup, paper)
    arrays = {f"{name}/{i}": np.asarray(leaf)  # every leaf, with its run axis first
              for name, p in params.items() for i, leaf in enumerate(jax.tree_util.tree_leaves(p))}
    arrays.update(seed=args.seed, eval_tasks=args.eval_tasks, alpha=setup["alpha"],
                  amp_range=setup["amp_range"], pretrained_step_sizes=np.array(
                      [step_sizes["pretrained", k] for k in EVAL_KS]))  # (K, runs)
    write_whole(os.path.join(args.out, "params.npz"), lambda f: np.savez(f, **arrays))
    write_whole(os.path.join(args.out, "results.txt"),
                lambda f: f.write(f"Command: {command}\n{table}".encode()))
    print(f"figures, params.npz and results.txt written to {args.out}/")


if __name__ == "__main__":
    main()
# -8<- [end:main]
