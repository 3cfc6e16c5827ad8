"""What a meta-step costs: as the inner steps, the tasks and K grow, and where one step's time
goes (step_costs, which studies/bench.py runs). Each size's meta-step (S inner steps in a lax.scan,
second order, checkpointed or first order, then Adam) is compiled alone for XLA's count of its
memory, and timed as experiment.py trains it, in interleaved rounds: cost.json, cost.md, cost.png.

    python -m studies.cost                             # the full sweep, some minutes on 2 cores
    python -m studies.cost --quick --out /tmp/cost     # small sizes, seconds: a test
"""
import os
import re
import statistics
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import jit, lax, random, vmap

import experiment
import maml
from machinery import figures, preflight, program
from studies import variants

MODES = ("second order", "checkpointed", "first order")
PAPER = dict(tasks=25, K=10, alpha=0.01, amp_range=(0.1, 5.0))  # the paper's meta-batch
# The sizes: the inner steps at the paper's meta-batch, every tasks x K at S = 1, second order.
FULL = dict(steps=(1, 2, 5, 10, 20, 50, 100), tasks=(1, 5, 25, 100, 400), ks=(5, 10, 50, 200),
            rounds=7, seconds_per_call=0.25)
# Quick: the fewest points every fit needs, (S = 1, 25 tasks, K = 10) in both sweeps.
QUICK = dict(steps=(1, 2), tasks=(5, 25), ks=(5, 10), rounds=2, seconds_per_call=0.02)


def task_loss(mode, n_steps):
    """The MAML objective of one task through n_steps inner steps, in one of the MODES."""
    if mode == "first order":
        return partial(variants.fo_maml_loss_scan, n_steps=n_steps)
    return partial(variants.maml_loss_scan, n_steps=n_steps, checkpoint=mode == "checkpointed")


def settings(sizes):
    """Every point to measure: which sweep, the mode, S, the tasks per meta-batch and K."""
    return [dict(sweep="inner steps", mode=m, S=s, tasks=PAPER["tasks"], K=PAPER["K"])
            for s in sizes["steps"] for m in MODES] + [
        dict(sweep="meta-batch", mode="second order", S=1, tasks=t, K=k)
        for t in sizes["tasks"] for k in sizes["ks"]]


def compile_point(point, seconds_per_call):
    """The point's step compiled alone (its memory, its compile time), and in train_chunk for
    about seconds_per_call (3 to 1,000 steps, by 3 calls of it alone): what measure calls."""
    step = variants.make_step(task_loss(point["mode"], point["S"]))
    opt_state = maml.opt_init(maml.net_init(random.PRNGKey(0), (-1, 1))[1])
    batch = maml.sample_tasks(random.PRNGKey(1), point["tasks"], point["K"])
    t0 = time.perf_counter()
    alone = step.lower(0, opt_state, *batch, PAPER["alpha"]).compile()
    compile_s, m, times = time.perf_counter() - t0, alone.memory_analysis(), []
    for _ in range(4):  # the first warms up
        t0 = time.perf_counter()
        alone(0, opt_state, *batch, PAPER["alpha"])[1].block_until_ready()
        times.append(time.perf_counter() - t0)
    n = int(np.clip(round(seconds_per_call / statistics.median(times[1:])), 3, 1_000))
    state = jax.tree_util.tree_map(lambda a: a[None], opt_state)  # train_chunk's run axis
    keys = np.asarray(random.split(random.PRNGKey(2), n))[:, None]  # (n, 1 run, 2)
    steps = np.arange(n, dtype=np.int32)
    chunk = experiment.train_chunk.lower(
        state, keys, steps, PAPER["amp_range"], PAPER["alpha"], step_fn=step,
        n_tasks=point["tasks"], k=point["K"]).compile()
    return dict(argument_bytes=int(m.argument_size_in_bytes),
                output_bytes=int(m.output_size_in_bytes), temp_bytes=int(m.temp_size_in_bytes),
                compile_s=compile_s, steps_per_call=n), (chunk, state, keys, steps)


def measure(points, sizes, log=print):
    """Every point's memory, then its time per step, the median of rounds: a call of each a round,
    every other round reversed (a busy spell slows a round, not a point)."""
    measured, runs, compiled = [], [], {}
    for point in points:
        size = tuple(point[k] for k in ("mode", "S", "tasks", "K"))  # in both sweeps: once
        if size not in compiled:
            compiled[size] = compile_point(point, sizes["seconds_per_call"])
            log(f"compiled {point}: {compiled[size][0]}")
        result, run = compiled[size]
        measured.append(dict(point, **result, ms_rounds=[], finite=True))
        runs.append(run)
    for r in range(sizes["rounds"]):
        for i in range(len(points)) if r % 2 == 0 else reversed(range(len(points))):
            chunk, state, keys, steps = runs[i]
            t0 = time.perf_counter()
            losses = np.asarray(chunk(state, keys, steps, PAPER["amp_range"], PAPER["alpha"])[1])
            measured[i]["ms_rounds"].append(1e3 * (time.perf_counter() - t0) / len(steps))
            measured[i]["finite"] &= bool(np.isfinite(losses).all())  # NaN would time other work
        log(f"round {r + 1} of {sizes['rounds']} timed")
    return [dict(p, ms=statistics.median(p["ms_rounds"])) for p in measured]


def fit_specs(sizes):
    """The growth rates to fit: exponents (log y against log x) from each range's middle size up,
    past a step's fixed costs; per-step costs (y against S) over all S, as they grow linearly."""
    upper = {name: sizes[name][(len(sizes[name]) - 1) // 2] for name in ("steps", "tasks", "ks")}
    specs = [dict(kind=kind, y=y, x="S", where=dict(sweep="inner steps", mode=mode),
                  x_from=upper["steps"] if kind == "exponent" else sizes["steps"][0])
             for mode in MODES for kind in ("exponent", "slope") for y in ("temp_bytes", "ms")]
    for y in ("temp_bytes", "ms"):
        specs += [dict(kind="exponent", y=y, x="tasks", x_from=upper["tasks"],
                       where=dict(sweep="meta-batch", K=PAPER["K"])),
                  dict(kind="exponent", y=y, x="K", x_from=upper["ks"],
                       where=dict(sweep="meta-batch", tasks=PAPER["tasks"]))]
    return specs


def fit(spec, points):
    """A least-squares line through the spec's points: its slope in log-log ("exponent": y grows
    as x to that power) or in linear space ("slope": y per unit of x)."""
    chosen = [p for p in select(points, **spec["where"]) if p[spec["x"]] >= spec["x_from"]]
    x, y = (np.array([p[spec[v]] for p in chosen], np.float64) for v in ("x", "y"))
    if spec["kind"] == "exponent":
        x, y = np.log(x), np.log(y)
    return dict(spec, value=float(np.polyfit(x, y, 1)[0]), n_points=len(chosen))


def ms(x):
    """Milliseconds to three significant figures."""
    return f"{x:.3g}"


def select(points, **where):
    return [p for p in points if all(p[k] == v for k, v in where.items())]


def fitted(data, kind, y, x, **where):
    """The value of the one fit of data["fits"] that matches."""
    (f,) = [f for f in data["fits"] if (f["kind"], f["y"], f["x"]) == (kind, y, x)
            and all(f["where"].get(k) == v for k, v in where.items())]
    return f["value"]


def grid(points, row, column, header, arguments=False):
    """Markdown: a row for each value of `row`, a column for `column`'s; in a cell, the point's
    temporaries (and arguments) and ms per meta-step."""
    def cell(p):
        args = f" ({preflight.readable(p['argument_bytes'])})" if arguments else ""
        return f"{preflight.readable(p['temp_bytes'])}{args}, {ms(p['ms'])} ms"
    columns = sorted({p[column] for p in points}, key=MODES.index if column == "mode" else None)
    return program.table([header[0], *(header[1].format(c) for c in columns)], [
        [r, *(cell(select(points, **{row: r, column: c})[0]) for c in columns)]
        for r in sorted({p[row] for p in points})])


def growth_table(data):
    """Markdown: the fitted exponents and per-step costs, each naming its range."""
    s_from = next(f["x_from"] for f in data["fits"] if f["kind"] == "exponent" and f["x"] == "S")
    ys = {"temp_bytes": "temporaries", "ms": "time"}

    def per_step(y, mode):
        value = fitted(data, "slope", y, "S", mode=mode)
        return preflight.readable(value) if y == "temp_bytes" else f"{ms(value)} ms"
    rows = [[f"{name} ∝ S^a, S ≥ {s_from}: a",
             *(f"{fitted(data, 'exponent', y, 'S', mode=m):.2f}" for m in MODES)]
            for y, name in ys.items()]
    rows += [[f"{name} per inner step", *(per_step(y, m) for m in MODES)] for y, name in ys.items()]
    batch = [[f"{ys[f['y']]} ∝ {f['x']}^a, {f['x']} ≥ {f['x_from']}, {o} = {f['where'][o]}",
              f"{f['value']:.2f}"] for f in data["fits"] if f["x"] in ("tasks", "K")
             for o in ["K" if f["x"] == "tasks" else "tasks"]]
    return ("**Growth**: exponents are least-squares slopes in log-log (y grows as x to that "
            "power) over the upper part of each range; per inner step, the slope of a straight "
            "line through every S.\n\n" + program.table(["", *MODES], rows) + "\n"
            + program.table(["second order, S = 1", "a"], batch))


def tables(data):
    """cost.md: the conditions in one line, what a point is, then the three tables."""
    (before, *_), (after, *_) = data["load"]  # over the last minute
    steps, batch = (select(data["points"], sweep=s) for s in ("inner steps", "meta-batch"))
    fixed = sorted({(p["argument_bytes"], p["output_bytes"]) for p in steps})
    same = (f"arguments {preflight.readable(fixed[0][0])} and outputs "
            f"{preflight.readable(fixed[0][1])} in every mode and at every S" if len(fixed) == 1
            else "arguments and outputs vary: see cost.json")
    return "\n".join([
        f"Measured on {program.environment_text(data['environment'])}; {data['when']}; load "
        f"average (1 min) {before:.2f} before, {after:.2f} after; `{data['command']}`; "
        f"time: the median of {data['rounds']} interleaved rounds.", "",
        "One meta-step: the gradient of the mean MAML loss of a meta-batch through S inner "
        "steps, then Adam. Memory is XLA's count for one call of the compiled step "
        "(`memory_analysis`); time is per meta-step of a chunk of steps in one `lax.scan`, as "
        "`experiment.py` trains.", "",
        f"**Inner steps** S, {PAPER['tasks']} tasks of K = {PAPER['K']}: XLA's temporaries, and "
        f"ms per meta-step; {same}.\n\n" + grid(steps, "S", "mode", ("S", "{}")),
        "**Meta-batch**, second order, S = 1: XLA's temporaries, its arguments (the tasks' points, "
        "the parameters and Adam's state), and ms per meta-step.\n\n"
        + grid(batch, "tasks", "K", ("tasks", "K = {}"), arguments=True), growth_table(data)])


def figure(data, path):
    """Log-log: temporaries (top) and time (bottom) against S for each mode (left), and against
    the tasks per meta-batch for each K (right)."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend
    from matplotlib.ticker import NullFormatter, StrMethodFormatter

    fig = Figure(figsize=(11, 7), layout="constrained")
    axes = fig.subplots(2, 2)
    lines = [(0, "S", dict(sweep="inner steps", mode=m), style, m)
             for m, style in zip(MODES, ("o-", "s--", "^:"))]
    lines += [(1, "tasks", dict(sweep="meta-batch", K=k), "o-", f"K = {k}")
              for k in sorted({p["K"] for p in select(data["points"], sweep="meta-batch")})]
    for column, x, where, style, label in lines:
        points = select(data["points"], **where)
        for ax, y, scale in zip(axes[:, column], ("temp_bytes", "ms"), (2 ** -20, 1)):
            ax.plot([p[x] for p in points], [scale * p[y] for p in points], style, label=label)
    for ax, labels in zip(axes.flat, [
            dict(title=f"inner steps ({PAPER['tasks']} tasks, K = {PAPER['K']})",
                 ylabel="XLA's temporaries, MiB"), dict(title="meta-batch (second order, S = 1)"),
            dict(xlabel="inner steps S", ylabel="ms per meta-step"),
            dict(xlabel="tasks per meta-batch")]):
        ax.set(xscale="log", yscale="log", **labels)
        for axis in (ax.xaxis, ax.yaxis):  # 0.1, 1, 10 rather than 10^-1, 10^0, 10^1
            axis.set_major_formatter(StrMethodFormatter("{x:g}"))
            axis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="major", alpha=0.3)
        ax.legend()
    figures.save(fig, path)


# -8<- [start:step_parts]
def one_by_one(fn, calls):
    """fn called from Python once for each arguments of `calls`: the cost of a call."""
    return lambda: [fn(*args) for args in calls][-1]


@jit
def scanned(state, steps, batches, alpha):
    """maml.step under lax.scan on batches given: the training loop's maths alone."""
    def body(state, step_and_batch):
        return maml.step(step_and_batch[0], state, *step_and_batch[1], alpha)
    return lax.scan(body, state, (steps, batches))


def step_parts(setup, n):
    """{part: a run of n steps of it}: the parts that step_costs times apart."""
    T, K, amp, alpha = setup["tasks"], setup["k"], setup["amp_range"], setup["alpha"]
    key, (_, params) = random.PRNGKey(1), maml.net_init(random.PRNGKey(0), (-1, 1))
    state, batch = maml.opt_init(params), maml.sample_tasks(key, T, K, amp)
    keys = np.asarray(random.split(key, n))  # as train() draws them
    steps = np.arange(n, dtype=np.int32)
    presample = jit(vmap(partial(maml.sample_tasks, n_tasks=T, k=K, amp_range=amp)))
    return dict(
        maths=partial(scanned, state, steps, presample(keys), alpha),
        presample=partial(presample, keys),
        step_call=one_by_one(maml.step, [(i, state, *batch, alpha) for i in range(n)]),
        sample_call=one_by_one(maml.sample_tasks, [(k, T, K, amp) for k in keys]),
        fold_in_call=one_by_one(random.fold_in, [(key, i) for i in range(n)]),
        nop_call=one_by_one(jit(jnp.negative), [(jnp.zeros(()),)] * n))
# -8<- [end:step_parts]


KERNEL = re.compile(r"= \S+ (?:fusion|dot|convolution|custom-call)\(")  # in a compiled HLO


def xla_counts(setup):
    """XLA's count of one compiled step's floating-point operations, and its compute kernels."""
    state = maml.opt_init(maml.net_init(random.PRNGKey(0), (-1, 1))[1])
    batch = maml.sample_tasks(random.PRNGKey(1), setup["tasks"], setup["k"], setup["amp_range"])
    compiled = maml.step.lower(0, state, *batch, setup["alpha"]).compile()
    cost = compiled.cost_analysis()
    flops = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]  # a list in old jax
    return flops, len(KERNEL.findall(compiled.as_text().split("ENTRY", 1)[1]))


def step_costs(setup, n=500, repeats=7):
    """Where a step's time goes: each part's median of `repeats` rounds in µs a step (the parts
    take turns, after an untimed round that compiles them), XLA's counts, a large product's rate."""
    big = jnp.ones((2048, 2048))
    parts = dict(step_parts(setup, n), big_matmul=partial(jnp.matmul, big, big))
    times = {name: [] for name in parts}
    for _ in range(repeats + 1):
        for name, run in parts.items():
            t0 = time.perf_counter()
            jax.block_until_ready(run())
            times[name].append(1e6 * (time.perf_counter() - t0) / n)
    us = {name: statistics.median(t[1:]) for name, t in times.items()}
    flops, kernels = xla_counts(setup)
    return dict(calls=n, repeats=repeats, mflop=flops / 1e6, kernels=kernels,
                big_gflops=2 * 2048 ** 3 / (n * us.pop("big_matmul")) / 1e3, us=us)


STEP_ROWS = [  # the table of step_costs: a label, where in a setting's costs, the format
    ("floating-point work of one step (XLA's count)", "mflop", "{:.2f} MFLOP"),
    ("compute kernels of the compiled step (fusions and dots)", "kernels", "{}"),
    ("float32 rate of a 2048 x 2048 by 2048 x 2048 product", "big_gflops", "{:.0f} GFLOP/s"),
    ("the maths: maml.step under lax.scan, its batches given, µs", "maths", "{:.1f}"),
    ("task sampling: one vmap over a chunk's keys, µs", "presample", "{:.1f}"),
    ("maml.step, called from Python, µs", "step_call", "{:.1f}"),
    ("maml.sample_tasks, called from Python, µs", "sample_call", "{:.1f}"),
    ("random.fold_in, called from Python, µs", "fold_in_call", "{:.1f}"),
    ("an empty jitted call from Python (the floor), µs", "nop_call", "{:.1f}")]


def step_table(costs):
    """Markdown: step_costs, a column for each setting."""
    flat = [{**c, **c["us"]} for c in costs.values()]
    return program.table(["", *costs], [[label, *(form.format(c[key]) for c in flat)]
                                        for label, key, form in STEP_ROWS], "l" + "r" * len(costs))


def main(argv=None):
    ap = program.parser("python -m studies.cost", __doc__.splitlines()[0], out="figures",
                        what="cost.json, cost.md and cost.png")
    ap.add_argument("--quick", action="store_true", help="small sizes and 2 rounds: a test")
    ap.add_argument("--rounds", type=program.checked(int, lambda v: v >= 1, "a whole number >= 1"),
                    help="interleaved timing rounds (7; quick: 2)")
    args = program.parse(ap, argv)
    sizes = dict(QUICK if args.quick else FULL)
    sizes["rounds"] = args.rounds or sizes["rounds"]  # --rounds given, or the sweep's own
    load_before, t0 = program.load(), time.perf_counter()
    points = measure(settings(sizes), sizes, log=partial(print, flush=True))
    data = dict(command=program.command("studies.cost", args.argv),
                environment=program.environment(program.jax_device()), when=program.now(),
                load=[load_before, program.load()], seconds=time.perf_counter() - t0,
                rounds=sizes["rounds"], setting=PAPER, sizes=sizes, points=points,
                fits=[fit(s, points) for s in fit_specs(sizes)])
    print(program.write(args.out, "cost", data, tables), end="")
    figure(data, os.path.join(args.out, "cost.png"))
    print(f"cost.json, cost.md and cost.png written to {args.out}")


if __name__ == "__main__":
    main()
