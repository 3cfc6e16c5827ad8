"""The sinusoid regression experiment of the MAML paper (section 5.1, appendix C), on maml.py.

`python experiment.py` meta-trains MAML and a pretrained baseline, evaluates both on 600 held-out
tasks beside the paper's table, and writes figures/ (`--help` lists the flags).
"""
import argparse
import math
import os
import sys
import tempfile
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import jit, lax, random, vmap

from maml import (get_params, inner_update, loss, net_apply, net_init, opt_init, opt_update,
                  sample_sinusoids, sample_tasks, step)

# -8<- [start:setups]
# The task distribution and hyperparameters of the MAML paper, and those of the 2019 blog post.
SETUPS = {
    "paper": dict(amp_range=(0.1, 5.0), k=10, alpha=0.01, tasks=25, steps=70_000),
    "blog": dict(amp_range=(0.1, 0.5), k=20, alpha=0.1, tasks=4, steps=20_000),
}
# Appendix C, table 2 of the paper: MSE for K = 5 after 1, 5 and 10 gradient steps.
PAPER_MSE_K5 = {"MAML": {1: 0.67, 5: 0.38, 10: 0.35}, "pretrained": {1: 2.41, 5: 2.23, 10: 2.19}}
EVAL_KS = (5, 10)  # support points per held-out task at meta-test time, as in the paper's figures
EVAL_STEPS = (0, 1, 5, 10)  # gradient steps after which the held-out MSE is reported
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
    """Run step_fn once for each step number in `steps`, in one compiled loop.

    Dispatching one small jitted call per meta-step costs more than its maths on a CPU, so the
    loop runs inside XLA (lax.scan), and the chunk's tasks are drawn up front in one vectorised
    call. Step i trains on sample_tasks(keys[i]): the batches of the plain Python loop
    `for i ...: opt_state, _ = step(i, opt_state, *sample_tasks(keys[i], n_tasks, k))`."""
    batches = vmap(lambda key: sample_tasks(key, n_tasks, k, amp_range))(keys)

    def body(opt_state, step_and_batch):
        i, batch = step_and_batch
        return step_fn(i, opt_state, *batch, alpha)
    return lax.scan(body, opt_state, (steps, batches))
# -8<- [end:train_chunk]


# -8<- [start:train]
def train(step_fn, params, key, setup, name, log=print, n_chunks=20):
    """Train params with step_fn for setup["steps"] steps, showing progress.

    Returns the trained params, the loss of every step, and the steady-state seconds per step.
    Stops the program (exit 1) when the loss stops being a finite number."""
    n_steps, chunk = setup["steps"], -(-setup["steps"] // n_chunks)
    keys = np.asarray(random.split(key, n_steps))  # step i's tasks: sample_tasks(keys[i], ...)
    spans = [(a, min(a + chunk, n_steps)) for a in range(0, n_steps, chunk)]
    static = dict(step_fn=step_fn, n_tasks=setup["tasks"], k=setup["k"])
    args = lambda a, b: (keys[a:b], np.arange(a, b, dtype=np.int32),
                         setup["amp_range"], setup["alpha"])
    opt_state = opt_init(params)
    t0, compiled = time.perf_counter(), {}
    for a, b in spans:  # compile every chunk length up front so that the timer sees only training
        if b - a not in compiled:
            compiled[b - a] = train_chunk.lower(opt_state, *args(a, b), **static).compile()
    log(f"{name}: compiled in {time.perf_counter() - t0:.1f} s; "
        f"{n_steps:,} steps of {setup['tasks']} tasks")
    t0, losses = time.perf_counter(), []
    for a, b in spans:
        if a == chunk:  # the first chunk warms up the runtime; time the steady state after it
            t_steady = time.perf_counter()
        opt_state, chunk_losses = compiled[b - a](opt_state, *args(a, b))
        losses.append(np.asarray(chunk_losses))  # waits for the chunk: the progress line is honest
        if not np.all(np.isfinite(losses[-1])):
            bad = a + int(np.argmin(np.isfinite(losses[-1])))
            sys.exit(f"experiment.py: {name} diverged at step {bad} (loss is {losses[-1][bad - a]}); "
                     "nothing was written. Try a smaller --alpha.")
        elapsed = time.perf_counter() - t0
        log(f"{name}: step {b:>7,}/{n_steps:,}  loss {losses[-1].mean():8.4f}  "
            f"{b / elapsed:8,.0f} steps/s  {elapsed * (n_steps - b) / b:5.1f} s left")
    steady = math.nan if n_steps <= chunk else (time.perf_counter() - t_steady) / (n_steps - chunk)
    return get_params(opt_state), np.concatenate(losses), steady
# -8<- [end:train]


# -8<- [start:evaluate]
def eval_tasks(key, n_tasks, k, amp_range, n_test=100):
    """Held-out tasks: K support points each, and the true function at n_test points on [-5, 5]."""
    sinusoid, x1 = sample_sinusoids(key, n_tasks, k, amp_range)
    x_test = jnp.linspace(-5.0, 5.0, n_test).reshape(n_test, 1)
    return x1, sinusoid(x1), x_test, sinusoid(x_test)


@partial(jit, static_argnames=("n_steps",))
def adaptation_curves(params, x1, y1, x_test, y_test, alpha, n_steps):
    """Test MSE of every task after 0, 1, ..., n_steps gradient steps on its own support set.

    Returns an array of shape (n_tasks, n_steps + 1)."""
    def one_task(x1, y1, y_test):
        def body(p, _):
            return inner_update(p, x1, y1, alpha), loss(p, x_test, y_test)
        adapted, mses = lax.scan(body, params, length=n_steps)
        return jnp.append(mses, loss(adapted, x_test, y_test))
    return vmap(one_task)(x1, y1, y_test)


def tune_step_size(params, tasks, k, candidates=(1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2)):
    """The baseline's fine-tuning step size: the candidate with the lowest mean validation MSE
    after 1, 5 and 10 steps (a step size that diverges counts as infinitely bad)."""
    x1, y1, x_test, y_test = tasks
    curves = [np.asarray(adaptation_curves(params, x1[:, :k], y1[:, :k], x_test, y_test, a, 10))
              for a in candidates]
    scores = [c[:, [1, 5, 10]].mean() if np.all(np.isfinite(c)) else np.inf for c in curves]
    return candidates[int(np.argmin(scores))]


def finite_tasks(mse):
    """The rows (tasks) of an MSE array whose adaptation never overflowed."""
    return mse[np.isfinite(mse).all(axis=1)]


def mean_ci(values):
    """Mean and half-width of its 95% confidence interval (normal approximation).

    In float64: a task that ends far from its sinusoid can have a float32 MSE whose square
    overflows float32."""
    values = np.asarray(values, np.float64)
    return values.mean(), 1.96 * values.std(ddof=1) / math.sqrt(len(values))


def number(x):
    """Three decimals; scientific notation once a task that ran away makes a number huge."""
    return f"{x:.3f}" if abs(x) < 1e4 else f"{x:.2e}"
# -8<- [end:evaluate]


# -8<- [start:report]
def report(curves, step_sizes, n_tasks, paper):
    """The held-out MSE table, beside the paper's numbers if `paper`; then tasks that got worse.

    A task whose adaptation diverged (its MSE overflowed to inf or NaN) has no place in a mean:
    it is left out of its row, the row is marked *, and the task is counted below the table."""
    header = "".join(f"{f'n = {n}':>16}" for n in EVAL_STEPS)
    lines = [f"Held-out MSE on {n_tasks} tasks after n gradient steps (mean ± 95% CI)",
             f"{'K':>3}  {'model':<11}{'step size':>10}{header}"]
    for (name, k), mse in curves.items():
        kept = finite_tasks(mse)
        mark = "*" if len(kept) < len(mse) else " "
        cells = "".join(f" {'%s ± %s' % tuple(map(number, mean_ci(kept[:, n]))) + mark:>15}"
                        for n in EVAL_STEPS)
        lines.append(f"{k:>3}  {name:<11}{step_sizes[name, k]:>10g}{cells}")
        if paper and k == 5:
            cells = "".join(f"{PAPER_MSE_K5[name].get(n, '-'):>15} " for n in EVAL_STEPS)
            lines.append(f"{'':>3}  {'  (paper)':<11}{'':>10}{cells}")
    for (name, k), mse in curves.items():
        worse = int(np.sum(~(mse[:, -1] <= mse[:, 0])))  # NaN counts as worse
        kept = finite_tasks(mse)
        worst = kept[:, -1][kept[:, -1] > kept[:, 0]]
        lines.append(f"K = {k:>2}, {name}: {worse} of {n_tasks} tasks end {EVAL_STEPS[-1]} steps "
                     "with a higher MSE than they started with"
                     + (f" (worst: {number(worst.max())})" if len(worst) else ""))
        if len(kept) < len(mse):
            lines.append(f"{'':8}{len(mse) - len(kept)} of them diverged (MSE inf or NaN): "
                         "left out of the row marked *")
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
    """The paper's figures 2 and 3 on held-out tasks, and the meta-training loss curve."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    x1, y1, x_test, y_test = tasks
    fig = Figure(figsize=(11, 4), layout="constrained")
    for ax, k in zip(fig.subplots(1, len(EVAL_KS), sharey=True), EVAL_KS):
        support = (x1[0, :k], y1[0, :k])
        ax.plot(x_test, y_test[0], "k-", lw=2, label="ground truth")
        ax.plot(*support, "k^", ms=8, label="support points")
        for name, n, style in (("MAML", 0, "C0:"), ("MAML", 1, "C0--"), ("MAML", 10, "C0-"),
                               ("pretrained", 10, "C3-")):
            adapted = adapt(params[name], *support, step_sizes[name, k], n)
            label = f"{name}, {n} step{'s' * (n != 1)}"
            ax.plot(x_test, net_apply(adapted, x_test), style, label=label)
        ax.set(title=f"a held-out task, K = {k}", xlabel="x")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper")
    save(fig, os.path.join(out, "adaptation.png"))

    fig = Figure(figsize=(11, 4), layout="constrained")
    steps = np.arange(curves["MAML", EVAL_KS[0]].shape[1])
    # Up to a little above the error before adapting: a mean that a few runaway tasks send far
    # higher leaves the plot at the top rather than flattening every other curve.
    top = 1.25 * max(sum(mean_ci(finite_tasks(mse)[:, 0])) for mse in curves.values())
    for ax, k in zip(fig.subplots(1, len(EVAL_KS), sharey=True), EVAL_KS):
        for name, color in (("MAML", "C0"), ("pretrained", "C3")):
            kept = finite_tasks(curves[name, k])
            diverged = len(curves[name, k]) - len(kept)
            mean, ci = np.transpose([mean_ci(c) for c in kept.T])
            ax.plot(steps, mean, "o-", color=color,
                    label=name + (f" ({diverged} diverged task{'s' * (diverged > 1)} left out)"
                                  if diverged else ""))
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
        smooth = np.convolve(losses[name], np.ones(window) / window, mode="valid")
        ax.plot(np.arange(len(smooth)) + window, smooth, color=color,
                label=f"{name} ({window}-step mean)")
    ax.set(yscale="log", xlabel="training step", ylabel="training loss on the meta-batch",
           title=f"meta-training, {setup['tasks']} tasks of K = {setup['k']} per step")
    ax.legend()
    save(fig, os.path.join(out, "meta_training_loss.png"))
# -8<- [end:figures]


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
    ap = argparse.ArgumentParser(description="MAML on the sinusoid regression of Finn et al. 2017.")
    ap.error = lambda message: ap.exit(2, f"{ap.prog}: error: {message}\n")  # one line, no usage
    default = lambda name: f"(paper {SETUPS['paper'][name]:,}, blog {SETUPS['blog'][name]:,})"
    ap.add_argument("--setup", choices=SETUPS, default="paper",
                    help="the paper's hyperparameters or the blog's")
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
                    metavar="S", help="seed of every random draw (0)")
    ap.add_argument("--eval-tasks", type=checked(int, lambda v: v >= 2, "a whole number >= 2"),
                    default=600, metavar="N", help="held-out tasks to evaluate on (600)")
    ap.add_argument("--out", default="figures", metavar="DIR",
                    help="folder for the figures and results.txt (figures)")
    args = ap.parse_args(argv)
    try:  # fail now, not after training, if the figures cannot be written
        os.makedirs(args.out, exist_ok=True)
        tempfile.TemporaryFile(dir=args.out).close()
    except OSError as e:
        ap.error(f"argument --out: cannot write figures to {args.out!r} ({e.strerror})")
    setup = dict(SETUPS[args.setup])
    setup.update({name: getattr(args, name) for name in ("steps", "tasks", "k", "alpha")
                  if getattr(args, name) is not None})
    return args, setup


def main(argv=None):
    args, setup = parse_args(argv)
    print(f"MAML, {args.setup} setup: {setup['steps']:,} steps of {setup['tasks']} tasks, "
          f"K = {setup['k']}, alpha = {setup['alpha']:g}, amplitude U{list(setup['amp_range'])}; "
          f"seed {args.seed}; {jax.devices()[0].platform}")
    k_init, k_maml, k_base, k_val, k_test = random.split(random.PRNGKey(args.seed), 5)
    _, init = net_init(k_init, (-1, 1))
    params, losses = {}, {}
    params["MAML"], losses["MAML"], per_step = train(step, init, k_maml, setup, "MAML")
    params["pretrained"], losses["pretrained"], _ = train(pretrain_step, init, k_base, setup,
                                                          "pretrained")
    print(f"meta-training: {1e3 * per_step:.3f} ms per meta-step "
          "(steady state: compile and first chunk excluded)")

    val, test = (eval_tasks(key, args.eval_tasks, max(EVAL_KS), setup["amp_range"])
                 for key in (k_val, k_test))
    curves, step_sizes = {}, {}
    for k in EVAL_KS:
        for name in params:  # MAML adapts with its own alpha; the baseline's step size is tuned
            alpha = setup["alpha"] if name == "MAML" else tune_step_size(params[name], val, k)
            step_sizes[name, k] = alpha
            x1, y1, x_test, y_test = test[0][:, :k], test[1][:, :k], test[2], test[3]
            curves[name, k] = np.asarray(adaptation_curves(
                params[name], x1, y1, x_test, y_test, alpha, max(EVAL_STEPS)))
    for (name, k), mse in curves.items():  # means of a surviving minority would be garbage
        diverged = len(mse) - len(finite_tasks(mse))
        if diverged > len(mse) / 2:
            sys.exit(f"experiment.py: {name} adaptation with step size {step_sizes[name, k]:g} diverged "
                     f"on {diverged} of {args.eval_tasks} held-out tasks (K = {k}); "
                     "nothing was written. Try a smaller --alpha.")
    paper = args.setup == "paper"  # the paper's numbers belong to its task distribution only
    table = report(curves, step_sizes, args.eval_tasks, paper)
    print("\n" + table, end="")
    write_figures(args.out, params, test, curves, step_sizes, losses, setup, paper)
    write_whole(os.path.join(args.out, "results.txt"), lambda f: f.write(table.encode()))
    print(f"figures and results.txt written to {args.out}/")


if __name__ == "__main__":
    main()
# -8<- [end:main]
