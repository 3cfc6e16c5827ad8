"""What a second-order meta-step costs as the inner steps, the tasks and K grow.

Each setting's meta-step (as maml.step: the gradient of the batch MAML loss through S inner steps,
then Adam) is compiled alone and measured two ways: XLA's own count of the memory one call holds
(arguments, outputs, temporaries: memory_analysis), and the time per step as experiment.py trains
(train_chunk: a chunk of steps in one lax.scan, so the runtime's cost per call is spread over
the chunk), the median over interleaved rounds. The inner steps run as a lax.scan
(studies/variants.py) in three modes: second order, second order with every step checkpointed,
and first order. Writes, in --out: cost.json (every number, the command, versions, device),
cost.md (its tables, as the Performance page shows them) and cost.png.

    python -m studies.cost                             # the full sweep, some minutes on 2 cores
    python -m studies.cost --quick --out /tmp/cost     # small sizes, seconds: a test
"""
import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import sys
import time
from functools import partial

import jax
import numpy as np
from jax import random
from jax.tree_util import tree_map

import experiment
import maml
from machinery import preflight, report
from studies import variants

MODES = ("second order", "checkpointed", "first order")
PAPER = dict(tasks=25, K=10, alpha=0.01, amp_range=(0.1, 5.0))  # the paper's meta-batch
# The sizes swept. The inner-step sweep is at the paper's meta-batch; the meta-batch sweep (every
# tasks x K) at S = 1, second order. The paper's 25 tasks and K = 10 are in both grids.
FULL = dict(steps=(1, 2, 5, 10, 20, 50, 100), tasks=(1, 5, 25, 100, 400), ks=(5, 10, 50, 200),
            rounds=7, seconds_per_call=0.25)
QUICK = dict(steps=(1, 8), tasks=(5, 25), ks=(5, 10), rounds=2, seconds_per_call=0.02)


def task_loss(mode, n_steps):
    """The MAML objective of one task through n_steps inner steps, in one of the MODES."""
    if mode == "first order":
        return partial(variants.fo_maml_loss_scan, n_steps=n_steps)
    return partial(variants.maml_loss_scan, n_steps=n_steps, checkpoint=mode == "checkpointed")


def settings(sizes):
    """Every point to measure: which sweep, the mode, S, the tasks per meta-batch and K."""
    points = [dict(sweep="inner steps", mode=m, S=s, tasks=PAPER["tasks"], K=PAPER["K"])
              for s in sizes["steps"] for m in MODES]
    points += [dict(sweep="meta-batch", mode="second order", S=1, tasks=t, K=k)
               for t in sizes["tasks"] for k in sizes["ks"]]
    return points


def compile_point(point, seconds_per_call):
    """The point's meta-step compiled alone, for XLA's count of its memory, and inside
    experiment.train_chunk for as many steps as take about seconds_per_call, to time it.
    Returns the memory, the compile time, and what timed_call needs."""
    step = variants.make_step(task_loss(point["mode"], point["S"]))
    opt_state = maml.opt_init(maml.net_init(random.PRNGKey(0), (-1, 1))[1])
    batch = maml.sample_tasks(random.PRNGKey(1), point["tasks"], point["K"])
    t0 = time.perf_counter()
    alone = step.lower(0, opt_state, *batch, PAPER["alpha"]).compile()
    compile_s = time.perf_counter() - t0
    m = alone.memory_analysis()
    memory = dict(argument_bytes=int(m.argument_size_in_bytes),
                  output_bytes=int(m.output_size_in_bytes), temp_bytes=int(m.temp_size_in_bytes))
    n = steps_per_call(alone, opt_state, batch, seconds_per_call)
    state = tree_map(lambda a: a[None], opt_state)  # train_chunk's run axis, one run
    keys = np.asarray(random.split(random.PRNGKey(2), n))[:, None]  # (n, 1 run, 2)
    steps = np.arange(n, dtype=np.int32)
    chunk = experiment.train_chunk.lower(
        state, keys, steps, PAPER["amp_range"], PAPER["alpha"], step_fn=step,
        n_tasks=point["tasks"], k=point["K"]).compile()
    return dict(memory, compile_s=compile_s, steps_per_call=n), (chunk, state, keys, steps)


def steps_per_call(alone, opt_state, batch, seconds):
    """How many steps to time in one call: about `seconds` by the median of 3 calls of the
    step alone (dispatch included, so an overestimate of small steps), from 3 to 1,000."""
    alone(0, opt_state, *batch, PAPER["alpha"])[1].block_until_ready()  # warm up
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        alone(0, opt_state, *batch, PAPER["alpha"])[1].block_until_ready()
        times.append(time.perf_counter() - t0)
    return int(np.clip(round(seconds / statistics.median(times)), 3, 1_000))


def timed_call(chunk, state, keys, steps):
    """Milliseconds per meta-step of one call of a compiled chunk, and whether its losses are
    finite (a step that diverged would time NaN arithmetic)."""
    t0 = time.perf_counter()
    _, losses = chunk(state, keys, steps, PAPER["amp_range"], PAPER["alpha"])
    losses = np.asarray(losses)  # waits for the chunk
    return 1e3 * (time.perf_counter() - t0) / len(steps), bool(np.isfinite(losses).all())


def measure(points, sizes, log=print):
    """Every point's memory and compile time, then its time per step: one call of each point per
    round, the order reversed every other round, so that a busy spell of the machine slows all
    points of a round rather than all rounds of a point. The median is the point's time."""
    measured, runs = [], []
    for point in points:
        result, run = compile_point(point, sizes["seconds_per_call"])
        measured.append(dict(point, **result, ms_rounds=[], finite=True))
        runs.append(run)
        log(f"compiled {point}: {result}")
    for r in range(sizes["rounds"]):
        order = range(len(points)) if r % 2 == 0 else reversed(range(len(points)))
        for i in order:
            per_step, finite = timed_call(*runs[i])
            measured[i]["ms_rounds"].append(per_step)
            measured[i]["finite"] &= finite
        log(f"round {r + 1} of {sizes['rounds']} timed")
    for p in measured:
        p["ms"] = statistics.median(p["ms_rounds"])
    return measured


def fit_specs(sizes):
    """The growth rates to fit. Exponents (the slope of log y against log x) from the middle
    size of each range up (S >= 10, tasks >= 25, K >= 10 in the full sweep), where the fixed
    costs of a step (Adam, the arguments) no longer dominate;
    per-step costs (the slope of y against S) over the whole range, since they grow linearly."""
    upper = {name: values[(len(values) - 1) // 2] for name, values in sizes.items()
             if name in ("steps", "tasks", "ks")}
    specs = []
    for mode in MODES:
        where = dict(sweep="inner steps", mode=mode)
        specs += [dict(kind="exponent", y=y, x="S", where=where, x_from=upper["steps"])
                  for y in ("temp_bytes", "ms")]
        specs += [dict(kind="slope", y=y, x="S", where=where, x_from=sizes["steps"][0])
                  for y in ("temp_bytes", "ms")]
    for y in ("temp_bytes", "ms"):
        specs += [dict(kind="exponent", y=y, x="tasks", x_from=upper["tasks"],
                       where=dict(sweep="meta-batch", K=PAPER["K"])),
                  dict(kind="exponent", y=y, x="K", x_from=upper["ks"],
                       where=dict(sweep="meta-batch", tasks=PAPER["tasks"]))]
    return specs


def fit(spec, points):
    """A least-squares line through the points the spec selects: its slope in log-log space
    ("exponent": y grows as x to that power) or in linear space ("slope": y per unit of x)."""
    chosen = [p for p in points if p[spec["x"]] >= spec["x_from"]
              and all(p[key] == value for key, value in spec["where"].items())]
    x = np.array([p[spec["x"]] for p in chosen], np.float64)
    y = np.array([p[spec["y"]] for p in chosen], np.float64)
    if spec["kind"] == "exponent":
        x, y = np.log(x), np.log(y)
    return dict(spec, value=float(np.polyfit(x, y, 1)[0]), n_points=len(chosen))


def environment():
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {p: importlib.metadata.version(p) for p in ("jax", "jaxlib", "numpy")}
    return dict(versions, python=platform.python_version(), cpu=cpu, cores=os.cpu_count(),
                device=f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
                date=f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")


def ms(x):
    """Milliseconds to three significant figures."""
    return f"{x:.3g}"


def select(points, **where):
    return [p for p in points if all(p[key] == value for key, value in where.items())]


def fitted(data, kind, y, x, **where):
    """The value of the one fit of data["fits"] that matches."""
    (f,) = [f for f in data["fits"] if (f["kind"], f["y"], f["x"]) == (kind, y, x)
            and all(f["where"].get(key) == value for key, value in where.items())]
    return f["value"]


def steps_cell(p):
    return f"{preflight.readable(p['temp_bytes'])}, {ms(p['ms'])} ms"


def batch_cell(p):
    temp, args = preflight.readable(p["temp_bytes"]), preflight.readable(p["argument_bytes"])
    return f"{temp} ({args}), {ms(p['ms'])} ms"


def steps_table(data):
    """Markdown: temporaries and time per meta-step against S, one column per mode."""
    points = select(data["points"], sweep="inner steps")
    fixed = sorted({(p["argument_bytes"], p["output_bytes"]) for p in points})
    same = (f"arguments {preflight.readable(fixed[0][0])} and outputs "
            f"{preflight.readable(fixed[0][1])}"
            " in every mode and at every S" if len(fixed) == 1 else
            "arguments and outputs vary: see cost.json")
    lines = [f"**Inner steps** S, {PAPER['tasks']} tasks of K = {PAPER['K']}: XLA's temporaries, "
             f"and ms per meta-step; {same}.", "", "| S | " + " | ".join(MODES) + " |",
             "|---|" + "---|" * len(MODES)]
    for s in sorted({p["S"] for p in points}):
        cells = [steps_cell(select(points, S=s, mode=m)[0]) for m in MODES]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return lines


def batch_table(data):
    """Markdown: temporaries, arguments and time per meta-step against tasks and K, at S = 1."""
    points = select(data["points"], sweep="meta-batch")
    ks = sorted({p["K"] for p in points})
    lines = ["**Meta-batch**, second order, S = 1: XLA's temporaries, its arguments (the tasks' "
             "points, the parameters and Adam's state), and ms per meta-step.", "",
             "| tasks | " + " | ".join(f"K = {k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for t in sorted({p["tasks"] for p in points}):
        cells = [batch_cell(select(points, tasks=t, K=k)[0]) for k in ks]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines


def exponent_text(data, y, mode):
    return f"{fitted(data, 'exponent', y, 'S', mode=mode):.2f}"


def per_step_text(data, y, mode):
    value = fitted(data, "slope", y, "S", mode=mode)
    return preflight.readable(value) if y == "temp_bytes" else f"{ms(value)} ms"


def growth_table(data):
    """Markdown: the fitted exponents and per-step costs, each naming its range."""
    s_from = next(f["x_from"] for f in data["fits"] if f["kind"] == "exponent" and f["x"] == "S")

    def row(label, text):
        return f"| {label} | " + " | ".join(text(m) for m in MODES) + " |"
    lines = ["**Growth**: exponents are least-squares slopes in log-log (y grows as x to that "
             "power) over the upper part of each range; per inner step, the slope of a straight "
             "line through every S.", "", "| | " + " | ".join(MODES) + " |",
             "|---|" + "---|" * len(MODES)]
    for y, name in (("temp_bytes", "temporaries"), ("ms", "time")):
        lines.append(row(f"{name} ∝ S^a, S ≥ {s_from}: a",
                         partial(exponent_text, data, y)))
    lines.append(row("temporaries per inner step", partial(per_step_text, data, "temp_bytes")))
    lines.append(row("time per inner step", partial(per_step_text, data, "ms")))
    lines += ["", "| second order, S = 1 | a |", "|---|---|"]
    for f in (f for f in data["fits"] if f["x"] in ("tasks", "K")):
        other = "K" if f["x"] == "tasks" else "tasks"
        name = "temporaries" if f["y"] == "temp_bytes" else "time"
        lines.append(f"| {name} ∝ {f['x']}^a, {f['x']} ≥ {f['x_from']}, {other} = "
                     f"{f['where'][other]} | {f['value']:.2f} |")
    return lines


def tables(data):
    """cost.md: where and how it was measured, then the three tables."""
    env, loads = data["environment"], data["load_average"]
    head = [f"Measured on {env['cpu']}, {env['cores']} cores, jax {env['jax']}, {env['device']}; "
            f"{env['date']}; load average {loads[0]:.2f} before, {loads[1]:.2f} after.", "",
            f"Command: `{data['command']}`", "",
            "One meta-step: the gradient of the mean MAML loss of a meta-batch through S inner "
            "steps, then Adam. Memory is XLA's count for one call of the compiled step "
            "(`memory_analysis`); time is the median of "
            f"{data['rounds']} interleaved rounds, each a chunk of steps in one `lax.scan`, as "
            "`experiment.py` trains.", ""]
    body = steps_table(data) + [""] + batch_table(data) + [""] + growth_table(data)
    return "\n".join(head + body) + "\n"


def plain(value, _):
    return f"{value:g}"


def figure(data, path):
    """Log-log: temporaries (top) and time (bottom) against S for each mode (left), and against
    the tasks per meta-batch for each K (right)."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig = Figure(figsize=(11, 7), layout="constrained")
    axes = fig.subplots(2, 2)
    for mode, style in zip(MODES, ("o-", "s--", "^:")):
        points = select(data["points"], sweep="inner steps", mode=mode)
        for ax, y, scale in zip(axes[:, 0], ("temp_bytes", "ms"), (2 ** -20, 1)):
            ax.plot([p["S"] for p in points], [scale * p[y] for p in points], style, label=mode)
    batch = select(data["points"], sweep="meta-batch")
    for k in sorted({p["K"] for p in batch}):
        points = select(batch, K=k)
        for ax, y, scale in zip(axes[:, 1], ("temp_bytes", "ms"), (2 ** -20, 1)):
            ax.plot([p["tasks"] for p in points], [scale * p[y] for p in points], "o-",
                    label=f"K = {k}")
    where = f"{PAPER['tasks']} tasks, K = {PAPER['K']}"
    axes[0, 0].set(title=f"inner steps ({where})", ylabel="XLA's temporaries, MiB")
    axes[1, 0].set(xlabel="inner steps S", ylabel="ms per meta-step")
    axes[0, 1].set(title="meta-batch (second order, S = 1)")
    axes[1, 1].set(xlabel="tasks per meta-batch")
    for ax in axes.flat:
        ax.set(xscale="log", yscale="log")
        for axis in (ax.xaxis, ax.yaxis):  # 0.1, 1, 10 rather than 10^-1, 10^0, 10^1
            axis.set_major_formatter(FuncFormatter(plain))
            axis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="major", alpha=0.3)
        ax.legend()
    report.save(fig, path)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m studies.cost",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes and 2 rounds: a test")
    ap.add_argument("--rounds", type=int, help="interleaved timing rounds (7; quick: 2)")
    ap.add_argument("--out", default="figures", help="folder for cost.json, cost.md, cost.png")
    args = ap.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    if args.rounds is not None:
        if args.rounds < 1:
            ap.error("argument --rounds: expected a whole number >= 1")
        sizes["rounds"] = args.rounds
    os.makedirs(args.out, exist_ok=True)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    points = measure(settings(sizes), sizes, log=partial(print, flush=True))
    argv_ = sys.argv[1:] if argv is None else argv
    data = dict(command=shlex.join(["python", "-m", "studies.cost", *argv_]),
                environment=environment(), load_average=[load_before[0], os.getloadavg()[0]],
                seconds=time.perf_counter() - t0, rounds=sizes["rounds"], setting=PAPER,
                sizes=sizes, points=points, fits=[fit(s, points) for s in fit_specs(sizes)])
    text = tables(data)
    print(text, end="")
    report.write_whole(os.path.join(args.out, "cost.json"),
                           lambda f: f.write(json.dumps(data, indent=1).encode()))
    report.write_whole(os.path.join(args.out, "cost.md"), lambda f: f.write(text.encode()))
    figure(data, os.path.join(args.out, "cost.png"))
    print(f"cost.json, cost.md and cost.png written to {args.out}/")


if __name__ == "__main__":
    main()
