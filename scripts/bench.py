"""How fast is one MAML meta-step of maml.py, next to the code it replaces?

Runs each implementation in a fresh process, --rounds times, interleaved (round 1: every
implementation at every setting, then round 2, ...; every other round in reverse order), and
reports the median steady-state milliseconds per meta-step with the min-max over rounds, each
round's speed-up against the baselines and the median of those, and the targets. Then, in one
more process per setting, where a step's time goes: its floating-point work, this CPU's
matrix-multiply rate, and dispatch, task sampling and the maths, each timed apart.

Implementations (--only picks some, by key):
  train    experiment.py's training loop: experiment.train(maml.step, ...), as `python experiment.py` calls it
  loop     the copy-paste loop: one sample_tasks and one step call from Python per meta-step
  blog     blog_port.py: the 2019 blog's loop, ported with the fewest changes      peers, from
  careful  blog_port.py --onp-stack: the careful port                              --peers; they
  torch    torch_func.py --outer grad --compile: the fastest PyTorch peer          are not part
  torch1   the same with OMP_NUM_THREADS=1                                         of the project

usage: python docs/bench.py [--rounds 3] [--steps 3000] [--settings paper,blog]
                            [--only KEY,...] [--no-costs] [--peers DIR] [--torch-python PY]
                            [--out figures/benchmark.md]
A quick check (about 6 s here): python docs/bench.py --rounds 1 --steps 200 --only train,loop
                            --settings paper --no-costs --out /tmp/bench.md
One measurement, as the driver runs it:
    python docs/bench.py --worker {train,loop,costs} --setup {paper,blog} [--steps N]
"""
import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))  # the repository: every process runs there

# -8<- [start:settings]
# The two settings, as the peers' flags; our workers check that experiment.SETUPS says the same.
SETTINGS = {
    "paper": dict(tasks=25, k=10, alpha=0.01, amp_max=5.0),
    "blog": dict(tasks=4, k=20, alpha=0.1, amp_max=0.5),
}
# key: (label, interpreter, command after the interpreter, extra environment)
IMPLS = {
    "train": ("experiment.py training loop", "jax", [HERE, "--worker", "train"], {}),
    "loop": ("copy-paste loop", "jax", [HERE, "--worker", "loop"], {}),
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
    import experiment
    s, setup = SETTINGS[name], dict(experiment.SETUPS[name], steps=steps)
    ours = (setup["tasks"], setup["k"], setup["alpha"], setup["amp_range"])
    peers = (s["tasks"], s["k"], s["alpha"], (0.1, s["amp_max"]))
    assert ours == peers, f"experiment.SETUPS[{name!r}] is {ours}, the peers' flags {peers}"
    return setup


# -8<- [start:train]
def worker_train(name, steps):
    """experiment.py's own loop: train() as main() calls it; its timer leaves out the first chunk."""
    import experiment
    import jax
    import maml
    from jax import random
    setup = maml_setup(name, steps)
    k_init, k_maml = random.split(random.PRNGKey(0), 5)[:2]
    _, init = maml.net_init(k_init, (-1, 1))
    compiled = experiment.compile_training(maml.step, init, setup, runs=1)
    one_run = jax.tree_util.tree_map(lambda a: a[None], init)  # train() takes a run axis
    _, losses, per_step = experiment.train(compiled, one_run, k_maml[None], setup, "MAML",
                                           log=lambda line: None)
    timed = steps - experiment.chunks(steps)[0][1]
    print(f"experiment.train: {1e3 * per_step:.4f} ms/step over {timed} steps; "
          f"final loss {losses[-1, 0]:.4f}")
# -8<- [end:train]


# -8<- [start:loop]
def worker_loop(name, steps):
    """The loop a reader writes around maml.py's functions: two jitted calls per meta-step, on
    the keys that train() uses (one random.split, kept on the host), so the same batches."""
    import jax
    import maml
    import numpy as np
    from jax import random
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
def worker_costs(name, calls=500, repeats=7):
    """Where a step's time goes: each part timed apart, in microseconds per meta-step.

    Within a repeat the parts take turns, so that a busy moment of the machine hits them alike;
    each part's figure is the median of its repeats."""
    from functools import partial

    import jax
    import jax.numpy as jnp
    import experiment
    import maml
    import numpy as np
    from jax import jit, lax, random, vmap

    setup = maml_setup(name, calls)
    T, K, amp, alpha = setup["tasks"], setup["k"], setup["amp_range"], setup["alpha"]
    key = random.PRNGKey(1)
    _, params = maml.net_init(random.PRNGKey(0), (-1, 1))
    state = maml.opt_init(params)
    batch = maml.sample_tasks(key, T, K, amp)

    # The floating-point work of one step as XLA counts it, and how many compute kernels it runs.
    compiled = jit(maml.step).lower(0, state, *batch, alpha).compile()
    cost = compiled.cost_analysis()
    flops = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]  # a list in older jax
    entry = compiled.as_text().split("ENTRY", 1)[1]
    kernels = len(re.findall(r"= \S+ (?:fusion|dot|convolution|custom-call)\(", entry))

    def from_python(call):  # `calls` calls from Python, one after another; waits for the last
        def run():
            for i in range(calls):
                out = call(i)
            return out
        return run

    big = jnp.ones((2048, 2048), jnp.float32)
    x, w = jnp.ones((T * K, 40)), jnp.full((40, 40), 1 / 40)  # the hidden layer, chained in a loop
    layer = jit(lambda x, w: lax.fori_loop(0, calls, lambda i, x: x @ w, x))
    keys, steps = np.asarray(random.split(key, calls)), np.arange(calls, dtype=np.int32)  # as train
    presample = jit(lambda keys: vmap(lambda key: maml.sample_tasks(key, T, K, amp))(keys))
    batches = presample(keys)
    maths = jit(lambda state, steps, batches: lax.scan(
        lambda s, ib: maml.step(ib[0], s, *ib[1], alpha), state, (steps, batches)))
    first = (steps[:1], jax.tree_util.tree_map(lambda b: b[:1], batches))  # a scan of one step
    chunk = partial(experiment.train_chunk, step_fn=maml.step, n_tasks=T, k=K)
    one_run = jax.tree_util.tree_map(lambda a: a[None], state)  # train_chunk takes a run axis
    nop, zero = jit(lambda x: x + 1), jnp.zeros(())
    parts = {  # name: (one run, how many steps or products it holds)
        "big_matmul": (lambda: big @ big, 1),
        "layer_matmul": (lambda: layer(x, w), calls),
        "chunk": (lambda: chunk(one_run, keys[:, None], steps, amp, alpha), calls),
        "maths": (lambda: maths(state, steps, batches), calls),
        "presample": (lambda: presample(keys), calls),
        "step_call": (from_python(lambda i: maml.step(i, state, *batch, alpha)), calls),
        "scan_of_one_call": (from_python(lambda i: maths(state, *first)), calls),
        "sample_call": (from_python(lambda i: maml.sample_tasks(keys[i], T, K, amp)), calls),
        "fold_in_call": (from_python(lambda i: random.fold_in(key, i)), calls),
        "nop_call": (from_python(lambda i: nop(zero)), calls),
    }
    times = {name: [] for name in parts}
    for r in range(repeats + 1):  # the first round compiles and warms up
        for name, (run, n) in parts.items():
            t0 = time.perf_counter()
            jax.block_until_ready(run())
            if r:
                times[name].append(1e6 * (time.perf_counter() - t0) / n)
    us = {name: statistics.median(t) for name, t in times.items()}
    big_gflops = 2 * 2048**3 / us.pop("big_matmul") / 1e3
    layer_gflops = 2 * T * K * 40 * 40 / us.pop("layer_matmul") / 1e3
    print("costs: " + json.dumps(dict(flops=flops, kernels=kernels, big_gflops=big_gflops,
                                      layer_gflops=layer_gflops, us=us)))
# -8<- [end:costs]


# ---------------------------------------------------------------------------------------------
# The driver: fresh processes, interleaved rounds, medians; then the table.
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


# -8<- [start:rounds]
def measure(keys, settings, rounds, steps, pythons, peers):
    """{(key, setting): [ms per step, one per round]}; every run a fresh process."""
    ms = {}
    for r in range(rounds):
        for setting in settings:
            for key in keys if r % 2 == 0 else keys[::-1]:  # every other round in reverse
                label, python, command, env = IMPLS[key]
                if key in OURS:
                    flags = ["--setup", setting]
                else:
                    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS[setting].items()]
                stdout = run([pythons[python], *[c.format(peers=peers) for c in command], *flags,
                              "--steps", str(steps)], env)
                match = stdout and LINE.search(stdout)
                if match:
                    ms.setdefault((key, setting), []).append(float(match[2]))
                    print(f"round {r + 1} {setting:5s} {label:58s} {float(match[2]):8.4f} ms/step, "
                          f"final loss {match[4]}", flush=True)
    return ms
# -8<- [end:rounds]


def speedups(ms, ours, baseline, setting):
    """Baseline ms / our ms, one per round (the fastest variant of the baseline in each round)."""
    mine = ms.get((ours, setting), [])
    theirs = [ms[b, setting] for b in BASELINES[baseline] if ms.get((b, setting))]
    if not mine or not theirs or any(len(t) != len(mine) for t in theirs):
        return []  # not measured, or a run failed: no round-by-round pairs
    return [min(b) / o for o, *b in zip(mine, *theirs)]


def machine(torch_version):
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = re.search(r"^model name\s*:\s*(.*)$", f.read(), re.M)[1]
    except (OSError, TypeError):
        pass
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in ("jax", "jaxlib", "numpy"))
    return (f"{model}, {os.cpu_count()} cores, {platform.system()}, "
            f"Python {platform.python_version()}, {versions}, torch {torch_version or '(not run)'}")


def command(args, torch_version):
    """This run's command line, with $TORCH_PYTHON in front when that named the interpreter."""
    words = ["python", "docs/bench.py", *sys.argv[1:]]
    if torch_version and not any(w.startswith("--torch-python") for w in sys.argv[1:]):
        words.insert(0, f"TORCH_PYTHON={args.torch_python}")
    return shlex.join(words)


def timings_table(ms, keys, settings):
    head = [f"{s}: {SETTINGS[s]['tasks']} tasks, K = {SETTINGS[s]['k']}" for s in settings]
    out = ["| implementation | " + " | ".join(head) + " |", "|---|" + "---|" * len(settings)]
    for key in keys:
        cells = [ms.get((key, s)) for s in settings]
        out.append(f"| {IMPLS[key][0]} | " + " | ".join(
            f"{statistics.median(c):.3f} ({min(c):.3f}-{max(c):.3f})" if c else "-"
            for c in cells) + " |")
    return out


def speedups_table(ms, keys, settings):
    out = ["| | setting | " + " | ".join(f"vs {b}" for b in BASELINES) + " |",
           "|---|---|" + "---|" * len(BASELINES)]
    for ours in [k for k in OURS if k in keys]:
        for s in settings:
            cells = [speedups(ms, ours, b, s) for b in BASELINES]
            out.append(f"| {IMPLS[ours][0]} | {s} | " + " | ".join(
                f"{statistics.median(c):.2f}x ({', '.join(f'{v:.2f}' for v in c)})" if c else "-"
                for c in cells) + " |")
    return out


def targets_table(ms):
    out = ["| target | setting | needed | measured | result |", "|---|---|---|---|---|"]
    for ours, baseline, s, needed in TARGETS:
        c = speedups(ms, ours, baseline, s)
        got = statistics.median(c) if c else None
        result = "not measured" if got is None else "pass" if got >= needed else "FAIL"
        measured = "-" if got is None else f"{got:.2f}x"
        out.append(f"| {IMPLS[ours][0]} vs {baseline} | {s} | {needed:.2f}x | {measured} "
                   f"| {result} |")
    return out


def costs_table(costs, ms):
    def rate(gflops, c):  # a rate, and its share of the large-product rate
        return f"{gflops:.0f} GFLOP/s, {gflops / c['big_gflops']:.0%}"

    def train_rate(c, s):
        if not ms.get(("train", s)):
            return "-"
        return rate(c["flops"] / statistics.median(ms["train", s]) / 1e6, c)

    us = lambda part: lambda c, s: f"{c['us'][part]:.1f}"
    rows = [
        ("floating-point work of one step (XLA's cost analysis)",
         lambda c, s: f"{c['flops'] / 1e6:.2f} MFLOP"),
        ("compute kernels in the compiled step (fusions and dots)", lambda c, s: str(c["kernels"])),
        ("float32 matmul rate: 2048 x 2048 by 2048 x 2048",
         lambda c, s: f"{c['big_gflops']:.0f} GFLOP/s"),
        ("float32 matmul rate: the hidden layer, (T K x 40) by (40 x 40), 500 in a row",
         lambda c, s: f"{c['layer_gflops']:.0f} GFLOP/s"),
        ("experiment.train_chunk, per step", us("chunk")),
        ("- of which the maths: the step under lax.scan, batches given", us("maths")),
        ("- of which task sampling: one vmap over the chunk's keys", us("presample")),
        ("maml.step, called from Python", us("step_call")),
        ("the same step as a lax.scan of one step, called from Python", us("scan_of_one_call")),
        ("maml.sample_tasks, called from Python", us("sample_call")),
        ("random.fold_in, called from Python (experiment.py splits its keys at once)",
         us("fold_in_call")),
        ("an empty jitted call from Python (the dispatch floor)", us("nop_call")),
        ("the maths' rate, and its share of the 2048 rate",
         lambda c, s: rate(c["flops"] / c["us"]["maths"] / 1e3, c)),
        ("experiment.py training loop's rate (its median above), and its share", train_rate),
    ]
    out = ["| | " + " | ".join(costs) + " |", "|---|" + "---|" * len(costs)]
    return out + [f"| {label} | " + " | ".join(cell(c, s) for s, c in costs.items()) + " |"
                  for label, cell in rows]


def report(ms, costs, keys, settings, args, torch_version, loads):
    """The markdown: machine, command, medians, speed-ups, targets, and where the time goes."""
    when = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
    load = " before, ".join("/".join(f"{v:.2f}" for v in avg) for avg in loads)
    out = [f"Measured on {machine(torch_version)}; {when}; "
           f"load average (1, 5, 15 min) {load} after.", "",
           f"Command: `{command(args, torch_version)}`", "",
           f"**Milliseconds per meta-step**: median (min-max) of {args.rounds} rounds of "
           f"{args.steps} steps, steady state, each run a fresh process.", "",
           *timings_table(ms, keys, settings), "",
           "**Speed-up** (baseline ms / our ms): the median of the rounds, each round in brackets; "
           "against PyTorch, its faster variant in each round.", "",
           *speedups_table(ms, keys, settings), "",
           "**Targets**", "", *targets_table(ms)]
    if costs:
        out += ["", "**Where the time goes** (one more process per setting; microseconds per "
                "meta-step, median of 7 repeats of 500)", "", *costs_table(costs, ms)]
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="each implementation runs once a round")
    ap.add_argument("--steps", type=int, default=3000, help="meta-steps per run, the same for all")
    ap.add_argument("--settings", default="paper,blog", help="paper, blog or both")
    ap.add_argument("--only", default=",".join(IMPLS), help="implementations: " + ",".join(IMPLS))
    ap.add_argument("--no-costs", action="store_true", help="skip measuring where the time goes")
    ap.add_argument("--peers", default=os.path.join(ROOT, "..", "shared", "peers"),
                    help="folder of the peer scripts (default: ../shared/peers beside the repo)")
    ap.add_argument("--torch-python", default=os.environ.get("TORCH_PYTHON"),
                    help="interpreter with PyTorch (default: $TORCH_PYTHON; none: no PyTorch)")
    ap.add_argument("--out", default=os.path.join(ROOT, "figures", "benchmark.md"),
                    help="where to write the markdown table (default: figures/benchmark.md)")
    ap.add_argument("--worker", choices=["train", "loop", "costs"], help=argparse.SUPPRESS)
    ap.add_argument("--setup", choices=SETTINGS, default="paper", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        sys.path.insert(0, ROOT)
        worker = {"train": worker_train, "loop": worker_loop, "costs": worker_costs}[args.worker]
        worker(args.setup) if args.worker == "costs" else worker(args.setup, args.steps)
        return

    settings, keys = args.settings.split(","), args.only.split(",")
    peers = os.path.abspath(args.peers)
    if not set(settings) <= set(SETTINGS) or not set(keys) <= set(IMPLS):
        ap.error(f"--settings takes {','.join(SETTINGS)}; --only takes {','.join(IMPLS)}")
    torch_version = None
    if {"torch", "torch1"} & set(keys):
        found = args.torch_python and run([args.torch_python, "-c",
                                           "import torch; print(torch.__version__)"])
        torch_version = found and found.strip()
        if not torch_version:
            print("note: no PyTorch interpreter (--torch-python or $TORCH_PYTHON): "
                  "skipping the PyTorch peers")
    if not os.path.isfile(os.path.join(peers, "blog_port.py")) and set(keys) - set(OURS):
        print(f"note: no peers in {peers} (--peers): measuring maml.py alone")
        keys = [k for k in keys if k in OURS]
    keys = [k for k in keys if IMPLS[k][1] == "jax" or torch_version]

    load_before = os.getloadavg()
    pythons = {"jax": sys.executable, "torch": args.torch_python}
    ms = measure(keys, settings, args.rounds, args.steps, pythons, peers)
    costs = {}
    for setting in [] if args.no_costs else settings:
        stdout = run([sys.executable, HERE, "--worker", "costs", "--setup", setting])
        if stdout:
            costs[setting] = json.loads(stdout.split("costs: ", 1)[1])
    table = report(ms, costs, keys, settings, args, torch_version, (load_before, os.getloadavg()))

    print("\n" + table, end="")
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".part", "w") as f:  # write whole or not at all
        f.write(table)
    os.replace(out + ".part", out)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
