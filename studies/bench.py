"""How fast is one MAML meta-step of maml.py, next to the code it replaces?

Runs each implementation in a fresh process, --rounds times, interleaved (round 1: every
implementation at every setting, then round 2, ...; every other round in reverse order), and
reports the median steady-state milliseconds per meta-step with the min-max over rounds, each
round's speed-up against the baselines and the median of those, and the targets. Then, in one
more process per setting, where a step's time goes: its floating-point work, this CPU's
matrix-multiply rate, and dispatch, task sampling and the maths, each timed apart.

Implementations (--only picks some, by key):
  train    experiment.py's training loop: experiment.train(maml.step, ...), as main() calls it
  loop     the copy-paste loop: one sample_tasks and one step call from Python per meta-step
  blog     blog_port.py: the 2019 blog's loop, ported with the fewest changes      peers, from
  careful  blog_port.py --onp-stack: the careful port                              --peers; they
  torch    torch_func.py --outer grad --compile: the fastest PyTorch peer          are not part
  torch1   the same with OMP_NUM_THREADS=1                                         of the project

Run from the repository root. The measurements go to --out as JSON, and the tables rendered
from them beside it (figures/benchmark.json and figures/benchmark.md):

usage: python -m studies.bench [--rounds 3] [--steps 3000] [--settings paper,blog]
                               [--only KEY,...] [--no-costs] [--peers DIR] [--torch-python PY]
                               [--out figures/benchmark.json]
A quick check (about 6 s here): python -m studies.bench --rounds 1 --steps 200 --only train,loop
                               --settings paper --no-costs --out /tmp/bench.json
One measurement, as the driver runs it:
    python -m studies.bench --worker {train,loop,costs} --setup {paper,blog} [--steps N]
"""
import argparse
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import jit, lax, random, vmap

import experiment
import maml
from machinery import program

ROOT = program.ROOT
SELF = ["-m", "studies.bench"]  # a worker is this module, started in the repository's root

# -8<- [start:settings]
# The two settings, as the peers' flags; our workers check that experiment.SETUPS says the same.
SETTINGS = {
    "paper": dict(tasks=25, k=10, alpha=0.01, amp_max=5.0),
    "blog": dict(tasks=4, k=20, alpha=0.1, amp_max=0.5),
}
# key: (label, interpreter, command after the interpreter, extra environment)
IMPLS = {
    "train": ("experiment.py training loop", "jax", [*SELF, "--worker", "train"], {}),
    "loop": ("copy-paste loop", "jax", [*SELF, "--worker", "loop"], {}),
    "blog": ("blog as written (blog_port.py)", "jax", ["{peers}/blog_port.py"], {}),
    "careful": ("careful port (blog_port.py --onp-stack)", "jax",
                ["{peers}/blog_port.py", "--onp-stack"], {}),
    "torch": ("PyTorch, compiled (torch_func.py --outer grad --compile)", "torch",
              ["{peers}/torch_func.py", "--outer", "grad", "--compile"], {}),
    "torch1": ("PyTorch, compiled, 1 thread (OMP_NUM_THREADS=1)", "torch",
               ["{peers}/torch_func.py", "--outer", "grad", "--compile"], {"OMP_NUM_THREADS": "1"}),
}
OURS = ("train", "loop")
# A baseline and its variants: a round's ratio is taken against the fastest variant in that round.
BASELINES = {"blog as written": ("blog",), "careful port": ("careful",),
             "fastest PyTorch": ("torch", "torch1")}
# (ours, baseline, setting, at least this many times faster)
TARGETS = [("loop", "blog as written", "paper", 4.0), ("loop", "blog as written", "blog", 3.0),
           ("train", "careful port", "paper", 1.25), ("train", "careful port", "blog", 1.25),
           ("train", "fastest PyTorch", "paper", 2.0), ("train", "fastest PyTorch", "blog", 2.0)]
# Every implementation prints one line in this form (the peers' own).
LINE = re.compile(r"^(\S+): ([0-9.]+) ms/step over (\d+) steps; final loss (\S+)$", re.M)
# -8<- [end:settings]


# ---------------------------------------------------------------------------------------------
# Workers: each runs in a process of its own and prints one line.
# ---------------------------------------------------------------------------------------------

def maml_setup(name, steps):
    s, setup = SETTINGS[name], dict(experiment.SETUPS[name], steps=steps)
    ours = (setup["tasks"], setup["k"], setup["alpha"], setup["amp_range"])
    peers = (s["tasks"], s["k"], s["alpha"], (0.1, s["amp_max"]))
    assert ours == peers, f"experiment.SETUPS[{name!r}] is {ours}, the peers' flags {peers}"
    return setup


def quiet(line):
    """A log for train() that prints nothing: the worker prints its one line."""


# -8<- [start:train]
def worker_train(name, steps):
    """experiment.py's own loop: train() as main() calls it; its timer leaves out the first
    chunk."""
    setup = maml_setup(name, steps)
    k_init, k_maml = random.split(random.PRNGKey(0), 5)[:2]
    _, init = maml.net_init(k_init, (-1, 1))
    compiled = experiment.compile_training(maml.step, init, setup, runs=1)
    one_run = jax.tree_util.tree_map(lambda a: a[None], init)  # train() takes a run axis
    _, losses, per_step = experiment.train(compiled, one_run, k_maml[None], setup, "MAML",
                                           log=quiet)
    timed = steps - experiment.chunks(steps)[0][1]
    print(f"experiment.train: {1e3 * per_step:.4f} ms/step over {timed} steps; "
          f"final loss {losses[-1, 0]:.4f}")
# -8<- [end:train]


# -8<- [start:loop]
def worker_loop(name, steps):
    """The loop a reader writes around maml.py's functions: two jitted calls per meta-step, on
    the keys that train() uses (one random.split, kept on the host), so the same batches."""
    setup = maml_setup(name, steps)
    k_init, key = random.split(random.PRNGKey(0), 5)[:2]
    _, params = maml.net_init(k_init, (-1, 1))
    opt_state = maml.opt_init(params)
    keys = np.asarray(random.split(key, steps))
    warm = min(50, steps // 10)  # compile and warm up first, as the peers do
    for i in range(steps):
        if i == warm:
            jax.block_until_ready(opt_state)
            t0 = time.perf_counter()
        batch = maml.sample_tasks(keys[i], setup["tasks"], setup["k"], setup["amp_range"])
        opt_state, loss = maml.step(i, opt_state, *batch, setup["alpha"])
    jax.block_until_ready(opt_state)
    ms = 1e3 * (time.perf_counter() - t0) / (steps - warm)
    print(f"copy-paste-loop: {ms:.4f} ms/step over {steps - warm} steps; "
          f"final loss {float(loss):.4f}")
# -8<- [end:loop]


# -8<- [start:costs]
def step_cost(setup):
    """XLA's count of one compiled step's floating-point operations, and of its compute kernels."""
    _, params = maml.net_init(random.PRNGKey(0), (-1, 1))
    batch = maml.sample_tasks(random.PRNGKey(1), setup["tasks"], setup["k"], setup["amp_range"])
    compiled = jit(maml.step).lower(0, maml.opt_init(params), *batch, setup["alpha"]).compile()
    cost = compiled.cost_analysis()
    flops = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]  # a list in older jax
    entry = compiled.as_text().split("ENTRY", 1)[1]
    kernels = len(re.findall(r"= \S+ (?:fusion|dot|convolution|custom-call)\(", entry))
    return flops, kernels


@partial(jit, static_argnames="n")
def chained_layer(x, w, n):
    """n products with the hidden layer's weights in a row: the multiply rate at that size."""
    return lax.fori_loop(0, n, lambda _, x: x @ w, x)


@jit
def scanned_steps(state, steps, batches, alpha):
    """maml.step under lax.scan on batches given: train_chunk's maths without its sampling."""
    def body(state, step_and_batch):
        i, batch = step_and_batch
        return maml.step(i, state, *batch, alpha)
    return lax.scan(body, state, (steps, batches))


def presampler(n_tasks, k, amp_range):
    """sample_tasks vmapped over a chunk's keys, as train_chunk draws them up front."""
    def sample(key):
        return maml.sample_tasks(key, n_tasks, k, amp_range)
    return jit(vmap(sample))


@jit
def nop(x):
    return x + 1


def one_by_one(fn, arguments):
    """A run that calls fn(*args) from Python for each args in turn, and returns the last output."""
    def run():
        for args in arguments:
            out = fn(*args)
        return out
    return run


def cost_parts(setup, calls):
    """{part: (a run of it, how many steps or products one run holds)}: what worker_costs times."""
    T, K, amp, alpha = setup["tasks"], setup["k"], setup["amp_range"], setup["alpha"]
    key, (_, params) = random.PRNGKey(1), maml.net_init(random.PRNGKey(0), (-1, 1))
    state, batch = maml.opt_init(params), maml.sample_tasks(key, T, K, amp)
    big = jnp.ones((2048, 2048), jnp.float32)
    x, w = jnp.ones((T * K, 40)), jnp.full((40, 40), 1 / 40)  # the hidden layer's sizes
    keys, steps = np.asarray(random.split(key, calls)), np.arange(calls, dtype=np.int32)  # as train
    presample = presampler(T, K, amp)
    batches = presample(keys)
    first = (steps[:1], jax.tree_util.tree_map(lambda b: b[:1], batches))  # a scan of one step
    chunk = partial(experiment.train_chunk, step_fn=maml.step, n_tasks=T, k=K)
    one_run = jax.tree_util.tree_map(lambda a: a[None], state)  # train_chunk takes a run axis
    return {
        "big_matmul": (partial(jnp.matmul, big, big), 1),
        "layer_matmul": (partial(chained_layer, x, w, calls), calls),
        "chunk": (partial(chunk, one_run, keys[:, None], steps, amp, alpha), calls),
        "maths": (partial(scanned_steps, state, steps, batches, alpha), calls),
        "presample": (partial(presample, keys), calls),
        "step_call": (one_by_one(maml.step, [(i, state, *batch, alpha) for i in range(calls)]),
                      calls),
        "scan_of_one_call": (one_by_one(scanned_steps, [(state, *first, alpha)] * calls), calls),
        "sample_call": (one_by_one(maml.sample_tasks, [(k, T, K, amp) for k in keys]), calls),
        "fold_in_call": (one_by_one(random.fold_in, [(key, i) for i in range(calls)]), calls),
        "nop_call": (one_by_one(nop, [(jnp.zeros(()),)] * calls), calls),
    }


def time_parts(parts, repeats):
    """Each part's median over `repeats` rounds, in microseconds per step or product. Within a
    round the parts take turns, so that a busy moment of the machine hits them alike; a first,
    untimed round compiles and warms up."""
    times = {name: [] for name in parts}
    for r in range(repeats + 1):
        for name, (run, n) in parts.items():
            t0 = time.perf_counter()
            jax.block_until_ready(run())
            if r:
                times[name].append(1e6 * (time.perf_counter() - t0) / n)
    return {name: statistics.median(t) for name, t in times.items()}


def worker_costs(name, calls=500, repeats=7):
    """Where a step's time goes: each part timed apart, in microseconds per meta-step; one line
    of JSON."""
    setup = maml_setup(name, calls)
    flops, kernels = step_cost(setup)
    us = time_parts(cost_parts(setup, calls), repeats)
    big_gflops = 2 * 2048**3 / us.pop("big_matmul") / 1e3
    layer_gflops = 2 * setup["tasks"] * setup["k"] * 40 * 40 / us.pop("layer_matmul") / 1e3
    print("costs: " + json.dumps(dict(calls=calls, repeats=repeats, mflop=flops / 1e6,
                                      kernels=kernels, big_gflops=big_gflops,
                                      layer_gflops=layer_gflops, us=us)))
# -8<- [end:costs]


# ---------------------------------------------------------------------------------------------
# The driver: fresh processes, interleaved rounds, medians; the results as data, then the tables.
# ---------------------------------------------------------------------------------------------

def run(argv, env=None):
    """Run one process in the repository; its stdout, or None (saying why) when it failed."""
    out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, **(env or {})})
    if out.returncode != 0:
        print(f"  FAILED (exit {out.returncode}): {shlex.join(argv)}\n{out.stderr[-1500:]}",
              flush=True)
        return None
    return out.stdout


def setting_flags(key, setting):
    """Our workers take the setting's name; the peers take its numbers."""
    if key in OURS:
        return ["--setup", setting]
    return [f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS[setting].items()]


def measure_once(key, setting, steps, pythons, peers):
    """One fresh process of one implementation: its ms per step and final loss (None if it is not
    a finite number), or None when the process failed."""
    label, python, command, env = IMPLS[key]
    stdout = run([pythons[python], *[c.format(peers=peers) for c in command],
                  *setting_flags(key, setting), "--steps", str(steps)], env)
    match = stdout and LINE.search(stdout)
    if not match:
        return None
    print(f"{setting:5s} {label:58s} {float(match[2]):8.4f} ms/step, final loss {match[4]}",
          flush=True)
    loss = float(match[4])
    return dict(ms=float(match[2]), final_loss=loss if math.isfinite(loss) else None)


# -8<- [start:rounds]
def measure(keys, settings, rounds, steps, pythons, peers):
    """{key: {setting: [one measure_once per round]}}; every run a fresh process, every other
    round in reverse order."""
    runs = {key: {setting: [] for setting in settings} for key in keys}
    for r in range(rounds):
        print(f"round {r + 1} of {rounds}", flush=True)
        for setting in settings:
            for key in keys if r % 2 == 0 else keys[::-1]:
                runs[key][setting].append(measure_once(key, setting, steps, pythons, peers))
    return runs
# -8<- [end:rounds]


def timing(runs):
    """Every round's ms per step and final loss (None where the run failed), and the median,
    min and max of the times of those that ran."""
    rounds = [run and run["ms"] for run in runs]
    losses = [run and run["final_loss"] for run in runs]
    done = [v for v in rounds if v is not None]
    if not done:
        return dict(rounds=rounds, final_loss=losses, median=None, min=None, max=None)
    return dict(rounds=rounds, final_loss=losses, median=statistics.median(done), min=min(done),
                max=max(done))


def speedup(timings, ours, baseline, setting):
    """Baseline ms / our ms, one per round in which both ran (against the fastest variant of the
    baseline in that round), and their median."""
    mine = timings[ours][setting]["rounds"]
    theirs = [timings[b][setting]["rounds"] for b in BASELINES[baseline] if b in timings]
    ratios = []
    for o, *b in zip(mine, *theirs):
        done = [v for v in b if v is not None]
        if o is not None and done:
            ratios.append(min(done) / o)
    return dict(rounds=ratios, median=statistics.median(ratios) if ratios else None)


def targets(speedups):
    """Each target with the speed-up measured for it, and whether it was met."""
    out = []
    for ours, baseline, setting, needed in TARGETS:
        got = speedups.get(ours, {}).get(setting, {}).get(baseline, {}).get("median")
        result = "not measured" if got is None else "pass" if got >= needed else "FAIL"
        out.append(dict(ours=ours, baseline=baseline, setting=setting, needed=needed,
                        measured=got, result=result))
    return out


def with_rates(costs, train_ms):
    """A setting's costs, with the rate of the maths and of the training loop (from its median
    ms per step, if it ran), each as GFLOP/s and as a share of the large-product rate."""
    def rate(seconds):
        gflops = costs["mflop"] * 1e6 / seconds / 1e9
        return dict(gflops=gflops, share=gflops / costs["big_gflops"])
    return dict(costs, rates=dict(maths=rate(costs["us"]["maths"] / 1e6),
                                  train=rate(train_ms / 1e3) if train_ms else None))


def results(runs, costs, args, torch_version, loads):
    """Everything the run measured, as data: figures/benchmark.json."""
    settings = args.settings.split(",")
    timings = {key: {s: timing(runs[key][s]) for s in settings} for key in runs}
    speedups = {ours: {s: {b: speedup(timings, ours, b, s) for b in BASELINES} for s in settings}
                for ours in OURS if ours in timings}
    train = timings.get("train", {})
    torch = {"TORCH_PYTHON": "<a Python with torch>"} if args.torch_from_env else None
    return dict(
        command=program.command("studies.bench", args.argv,
                               hide={"--torch-python": "<a Python with torch>"}, env=torch),
        machine=program.machine(torch=torch_version), when=program.now(),
        load=dict(before=loads[0], after=loads[1]), rounds=args.rounds, steps=args.steps,
        settings={s: SETTINGS[s] for s in settings},
        implementations={key: IMPLS[key][0] for key in runs}, ms_per_step=timings,
        speedups=speedups, targets=targets(speedups),
        costs={s: with_rates(c, train.get(s, {}).get("median")) for s, c in costs.items()})


# ---------------------------------------------------------------------------------------------
# The tables: rendered from the data alone.
# ---------------------------------------------------------------------------------------------

def ms_text(t):
    return "-" if t["median"] is None else f"{t['median']:.3f} ({t['min']:.3f}-{t['max']:.3f})"


def speedup_text(s):
    rounds = ", ".join(f"{v:.2f}" for v in s["rounds"])
    return "-" if s["median"] is None else f"{s['median']:.2f}x ({rounds})"


def timings_table(data):
    settings = data["settings"]
    head = [f"{s}: {v['tasks']} tasks, K = {v['k']}" for s, v in settings.items()]
    out = ["| implementation | " + " | ".join(head) + " |", "|---|" + "---|" * len(settings)]
    return out + [f"| {label} | " + " | ".join(ms_text(data["ms_per_step"][key][s])
                                              for s in settings) + " |"
                  for key, label in data["implementations"].items()]


def speedups_table(data):
    out = ["| | setting | " + " | ".join(f"vs {b}" for b in BASELINES) + " |",
           "|---|---|" + "---|" * len(BASELINES)]
    return out + [f"| {data['implementations'][ours]} | {s} | "
                  + " | ".join(speedup_text(by[b]) for b in BASELINES) + " |"
                  for ours, per_setting in data["speedups"].items()
                  for s, by in per_setting.items()]


def times_text(x):
    return "-" if x is None else f"{x:.2f}x"


def targets_table(data):
    out = ["| target | setting | needed | measured | result |", "|---|---|---|---|---|"]
    return out + [f"| {IMPLS[t['ours']][0]} vs {t['baseline']} | {t['setting']} | "
                  f"{times_text(t['needed'])} | {times_text(t['measured'])} | {t['result']} |"
                  for t in data["targets"]]


# The rows of the last table: (label, where a setting's costs hold the number, its format).
RATE = "{0[gflops]:.0f} GFLOP/s, {0[share]:.0%}"
COST_ROWS = [
    ("floating-point work of one step (XLA's cost analysis)", ("mflop",), "{:.2f} MFLOP"),
    ("compute kernels in the compiled step (fusions and dots)", ("kernels",), "{}"),
    ("float32 matmul rate: 2048 x 2048 by 2048 x 2048", ("big_gflops",), "{:.0f} GFLOP/s"),
    ("float32 matmul rate: the hidden layer, (T K x 40) by (40 x 40), 500 in a row",
     ("layer_gflops",), "{:.0f} GFLOP/s"),
    ("experiment.train_chunk, per step", ("us", "chunk"), "{:.1f}"),
    ("- of which the maths: the step under lax.scan, batches given", ("us", "maths"), "{:.1f}"),
    ("- of which task sampling: one vmap over the chunk's keys", ("us", "presample"), "{:.1f}"),
    ("maml.step, called from Python", ("us", "step_call"), "{:.1f}"),
    ("the same step as a lax.scan of one step, called from Python", ("us", "scan_of_one_call"),
     "{:.1f}"),
    ("maml.sample_tasks, called from Python", ("us", "sample_call"), "{:.1f}"),
    ("random.fold_in, called from Python (experiment.py splits its keys at once)",
     ("us", "fold_in_call"), "{:.1f}"),
    ("an empty jitted call from Python (the dispatch floor)", ("us", "nop_call"), "{:.1f}"),
    ("the maths' rate, and its share of the 2048 rate", ("rates", "maths"), RATE),
    ("experiment.py training loop's rate (its median above), and its share", ("rates", "train"),
     RATE),
]


def cost_text(costs, where, form):
    for name in where:
        costs = costs[name]
    return "-" if costs is None else form.format(costs)


def costs_table(data):
    costs = data["costs"]
    out = ["| | " + " | ".join(costs) + " |", "|---|" + "---|" * len(costs)]
    return out + [f"| {label} | " + " | ".join(cost_text(c, where, form) for c in costs.values())
                  + " |" for label, where, form in COST_ROWS]


def render(data):
    """The markdown: machine, command, medians, speed-ups, targets, and where the time goes."""
    load = " before, ".join("/".join(f"{v:.2f}" for v in data["load"][w])
                            for w in ("before", "after"))
    out = [f"Measured on {program.machine_text(data['machine'])}; {data['when']}; "
           f"load average (1, 5, 15 min) {load} after.", "",
           f"Command: `{data['command']}`", "",
           f"**Milliseconds per meta-step**: median (min-max) of {data['rounds']} rounds of "
           f"{data['steps']} steps, steady state, each run a fresh process.", "",
           *timings_table(data), "",
           "**Speed-up** (baseline ms / our ms): the median of the rounds, each round in brackets; "
           "against PyTorch, its faster variant in each round.", "",
           *speedups_table(data), "",
           "**Targets**", "", *targets_table(data)]
    if data["costs"]:
        c = next(iter(data["costs"].values()))
        out += ["", "**Where the time goes** (one more process per setting; microseconds per "
                f"meta-step, median of {c['repeats']} repeats of {c['calls']})", "",
                *costs_table(data)]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# The command line.
# ---------------------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m studies.bench", allow_abbrev=False,
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="each implementation runs once a round")
    ap.add_argument("--steps", type=int, default=3000, help="meta-steps per run, the same for all")
    ap.add_argument("--settings", default="paper,blog", help="paper, blog or both")
    ap.add_argument("--only", default=",".join(IMPLS), help="implementations: " + ",".join(IMPLS))
    ap.add_argument("--no-costs", action="store_true", help="skip measuring where the time goes")
    ap.add_argument("--peers", default=os.path.join(ROOT, "..", "shared", "peers"),
                    help="folder of the peer scripts (default: ../shared/peers beside the repo)")
    ap.add_argument("--torch-python", help="interpreter with PyTorch (default: $TORCH_PYTHON; "
                    "neither: no PyTorch)")
    ap.add_argument("--out", default=os.path.join(ROOT, "figures", "benchmark.json"),
                    help="the JSON to write; the markdown goes beside it, .md "
                    "(default: figures/benchmark.json)")
    ap.add_argument("--worker", choices=["train", "loop", "costs"], help=argparse.SUPPRESS)
    ap.add_argument("--setup", choices=SETTINGS, default="paper", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    args.torch_from_env = args.torch_python is None and "TORCH_PYTHON" in os.environ
    args.torch_python = args.torch_python or os.environ.get("TORCH_PYTHON")
    keys, settings = args.only.split(","), args.settings.split(",")
    if not set(settings) <= set(SETTINGS) or not set(keys) <= set(IMPLS):
        ap.error(f"--settings takes {','.join(SETTINGS)}; --only takes {','.join(IMPLS)}")
    return args


def torch_version(python):
    """The version of PyTorch that `python` imports, or None (saying why) without one."""
    found = python and run([python, "-c", "import torch; print(torch.__version__)"])
    if not found:
        print("note: no PyTorch interpreter (--torch-python or $TORCH_PYTHON): "
              "skipping the PyTorch peers")
    return found and found.strip()


def available(keys, peers, torch):
    """The implementations asked for that can run here: the peers need their folder, the
    PyTorch ones an interpreter with PyTorch."""
    if not os.path.isfile(os.path.join(peers, "blog_port.py")) and set(keys) - set(OURS):
        print(f"note: no peers in {peers} (--peers): measuring maml.py alone")
        keys = [k for k in keys if k in OURS]
    return [k for k in keys if IMPLS[k][1] == "jax" or torch]


def measure_costs(settings):
    """{setting: where a step's time goes}, each measured in one more fresh process."""
    costs = {}
    for setting in settings:
        stdout = run([sys.executable, *SELF, "--worker", "costs", "--setup", setting])
        if stdout:
            costs[setting] = json.loads(stdout.split("costs: ", 1)[1])
    return costs


def main(argv=None):
    args = parse_args(argv)
    if args.worker == "costs":
        return worker_costs(args.setup)
    if args.worker:
        return {"train": worker_train, "loop": worker_loop}[args.worker](args.setup, args.steps)
    keys, settings = args.only.split(","), args.settings.split(",")
    peers = os.path.abspath(args.peers)
    torch = torch_version(args.torch_python) if {"torch", "torch1"} & set(keys) else None
    keys = available(keys, peers, torch)
    load_before = program.load()
    pythons = {"jax": sys.executable, "torch": args.torch_python}
    runs = measure(keys, settings, args.rounds, args.steps, pythons, peers)
    costs = {} if args.no_costs else measure_costs(settings)
    data = results(runs, costs, args, torch, (load_before, program.load()))
    table = program.write(args.out, data, render, ".md")
    print("\n" + table, end="")
    print(f"written to {args.out} and {program.text_path(args.out, '.md')}")


if __name__ == "__main__":
    main()
