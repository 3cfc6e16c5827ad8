"""How fast one meta-step of maml.py is, next to the 2019 code it replaces: figures/benchmark.json
and benchmark.md (a quick look: docs/from-2019.md). Every run a fresh process, in interleaved
rounds; the PyTorch peers need --peers DIR and --torch-python PY. With --stacks: the ports
of studies/stacks beside maml.py, into stacks.json and stacks.md."""
import argparse
import importlib.metadata
import itertools
import math
import os
import re
import statistics
import subprocess
import sys
import time
from functools import partial

import jax
import numpy as np
from jax import random

import experiment
import maml
from machinery import program
from studies import blog2019, stack_speed

SELF = ["{python}", "-m", "studies.bench", "--worker"]  # this module, in a process of its own
PEER = ["{torch}", "{peers}/torch_func.py", "--outer", "grad", "--compile"]
IMPLS = {  # key: (label, command)
    "train": ("experiment.py training loop", [*SELF, "train"]),
    "loop": ("copy-paste loop", [*SELF, "loop"]),
    "blog": ("2019 blog as written (blog2019.py)", [*SELF, "blog"]),
    "careful": ("careful port (blog2019.py, NumPy stack)", [*SELF, "careful"]),
    "torch": ("PyTorch, compiled (torch_func.py --outer grad --compile)", PEER),
    "torch1": ("PyTorch, compiled, 1 thread (OMP_NUM_THREADS=1)",
               ["env", "OMP_NUM_THREADS=1", *PEER]),
    "step": ("maml.step alone, on fixed tasks", [*SELF, "step"]),
    "nnx_loop": ("Flax NNX port's loop (maml_nnx.py)", [*SELF, "nnx_loop"]),
    "nnx_step": ("maml_nnx.step alone, on fixed tasks", [*SELF, "nnx_step"]),
    "eqx_loop": ("Equinox port's loop (maml_equinox.py)", [*SELF, "eqx_loop"]),
    "eqx_step": ("maml_equinox.step alone, on fixed tasks", [*SELF, "eqx_step"]),
}
# What a run measures, and writes as NAME.json and NAME.md: the benchmark, or with --stacks the
# ports of studies/stacks beside maml.py's loop and step.
PARTS = {"benchmark": ["train", "loop", "blog", "careful", "torch", "torch1"],
         "stacks": ["loop", "step", "nnx_loop", "nnx_step", "eqx_loop", "eqx_step"]}
# A baseline, by its stand-ins: a round's ratio is against the fastest (PyTorch's better threads).
BASELINES = {"blog as written": ("blog",), "careful port": ("careful",),
             "PyTorch": ("torch", "torch1"),
             "maml.py's loop": ("loop",), "maml.step": ("step",)}
RATIOS = [("train", "blog as written"), ("train", "careful port"), ("train", "PyTorch"),
          ("loop", "blog as written"), ("loop", "careful port"), ("loop", "PyTorch"),
          *((f"{p}_{kind}", baseline) for p in stack_speed.PORTS
            for kind, baseline in (("loop", "maml.py's loop"), ("step", "maml.step")))]
# Every implementation prints one line in this form (the peers' own).
LINE = re.compile(r"^(\S+): ([0-9.]+) ms/step over (\d+) steps; final loss (\S+)$", re.M)
# The settings as the peers take them (their smallest amplitude is 0.1, as in both).
PEER_SETTINGS = {s: dict(tasks=v["tasks"], k=v["k"], alpha=v["alpha"], amp_max=v["amp_range"][1])
                 for s, v in experiment.SETUPS.items() if s in ("paper", "blog")}


def worker_train(setup):
    """experiment.py's loop: train() as main() calls it, compiled first, first chunk untimed."""
    k_init, k_maml = random.split(random.PRNGKey(0), 5)[:2]
    _, init = maml.net_init(k_init, (-1, 1))
    compiled = experiment.compile_training(maml.step, init, setup, runs=1)
    one_run = jax.tree_util.tree_map(lambda a: a[None], maml.opt_init(init))  # a run axis
    _, losses, per_step = experiment.train(compiled, one_run, k_maml[None], setup, "MAML")
    timed = setup["steps"] - experiment.chunk_size(setup["steps"])
    return 1e3 * per_step, timed, float(losses[-1, 0])


# -8<- [start:loop]
def worker_loop(setup):
    """The loop a reader writes around maml.py, on train()'s keys: the same batches."""
    k_init, key = random.split(random.PRNGKey(0), 5)[:2]
    opt_state = maml.opt_init(maml.net_init(k_init, (-1, 1))[1])
    keys = np.asarray(random.split(key, setup["steps"]))
    warm = min(50, setup["steps"] // 10)
    for i, key in enumerate(keys):
        if i == warm:  # compiled and warm: time the steady state, as every loop here
            jax.block_until_ready(opt_state)
            t0 = time.perf_counter()
        batch = maml.sample_tasks(key, setup["tasks"], setup["k"], setup["amp_range"])
        opt_state, loss = maml.step(i, opt_state, *batch, setup["alpha"])
    jax.block_until_ready(opt_state)
    timed = setup["steps"] - warm
    return 1e3 * (time.perf_counter() - t0) / timed, timed, float(loss)
# -8<- [end:loop]


WORKERS = {"train": worker_train, "loop": worker_loop, "blog": blog2019.train,
           "careful": partial(blog2019.train, careful=True),
           "step": partial(stack_speed.alone, "maml"),
           **{f"{p}_loop": partial(stack_speed.loop, p) for p in stack_speed.PORTS},
           **{f"{p}_step": partial(stack_speed.alone, p) for p in stack_speed.PORTS}}


def run(argv):
    """One process in the repository: its stdout, or None (saying why) when it failed."""
    out = subprocess.run(argv, capture_output=True, text=True, cwd=program.ROOT)
    if out.returncode:
        print(f"  FAILED (exit {out.returncode}): {' '.join(argv)}\n{out.stderr[-1500:]}")
    return None if out.returncode else out.stdout


def measure_once(key, setting, args):
    """One fresh process of one implementation, as a user's run is: its ms per step and final
    loss (None where not a finite number: JSON has none), or None when it failed."""
    label, command = IMPLS[key]
    flags = ["--setup", setting] if "{torch}" not in command else [
        f"--{k.replace('_', '-')}={v}" for k, v in PEER_SETTINGS[setting].items()]
    words = [c.format(python=sys.executable, torch=args.torch_python, peers=args.peers)
             for c in command]
    found = LINE.search(run([*words, *flags, "--steps", str(args.steps)]) or "")
    if found:
        print(f"{setting:5s} {label:58s} {found[2]:>8s} ms/step, final loss {found[4]}",
              flush=True)
        loss = float(found[4])
        return dict(ms=float(found[2]), final_loss=loss if math.isfinite(loss) else None)


def measure(keys, args):
    """{key: {setting: [each round's measure_once]}}, and the load before each round (the
    record reads it once more at the end): every other round in reverse order."""
    runs = {key: {s: [] for s in args.settings} for key in keys}
    loads = []
    for r in range(args.rounds):
        loads.append(program.load())
        print(f"round {r + 1} of {args.rounds}, load average {loads[-1]}", flush=True)
        for setting, key in itertools.product(args.settings, keys if r % 2 == 0 else keys[::-1]):
            runs[key][setting].append(measure_once(key, setting, args))
    return runs, loads


def timing(runs):
    """Each round's ms per step and final loss (None: failed); median, min, max of the rest."""
    ms = [r and r["ms"] for r in runs]
    done = [v for v in ms if v is not None]
    return dict(rounds=ms, final_loss=[r and r["final_loss"] for r in runs],
                **{name: f(done) if done else None for name, f in
                   (("median", statistics.median), ("min", min), ("max", max))})


def results(args, runs, loads):
    """benchmark.json: every measurement; a round's speed-up is over the baseline's fastest."""
    times = {key: {s: timing(runs[key][s]) for s in args.settings} for key in runs}
    speedups = []
    for (ours, baseline), s in itertools.product(RATIOS, args.settings):
        theirs = [times[b][s]["rounds"] for b in BASELINES[baseline] if b in times]
        if ours in times and theirs:
            ratios = [min(v for v in b if v is not None) / o
                      for o, *b in zip(times[ours][s]["rounds"], *theirs)
                      if o is not None and any(v is not None for v in b)]
            speedups.append(dict(ours=ours, baseline=baseline, setting=s, rounds=ratios,
                                 median=statistics.median(ratios) if ratios else None))
    torch = "<a Python with torch>"
    hide = {"--torch-python": torch, "--peers": "<the peers' folder>"}
    record = program.record(  # the driver starts no JAX (it must not hold a GPU): a worker's
        "studies.bench", args.argv, args.device, loads=loads, hide=hide,
        env=args.torch_from_env and {"TORCH_PYTHON": torch}, **args.versions)
    return dict(record, rounds=args.rounds, steps=args.steps,
                settings={s: PEER_SETTINGS[s] for s in args.settings},
                implementations={key: IMPLS[key][0] for key in runs}, ms_per_step=times,
                speedups=speedups)


def render(data):
    """benchmark.md: the times and the speed-ups, then the conditions under them."""
    settings = data["settings"]
    times = data["ms_per_step"]
    labels = data["implementations"]
    found = {(r["ours"], r["baseline"], r["setting"]): r for r in data["speedups"]}

    def ms(t):
        return "-" if t["median"] is None else "{median:.3f} ({min:.3f}-{max:.3f})".format(**t)

    def ratio(s):
        return "-" if s is None or s["median"] is None else (
            f"{s['median']:.2f}x (" + ", ".join(f"{v:.2f}" for v in s["rounds"]) + ")")
    return "\n".join([
        f"**Milliseconds per meta-step**: median (min-max) of {data['rounds']} interleaved "
        f"rounds of {data['steps']} steps, each run a fresh process", "", program.table(
            ["implementation", *(f"{s}: {v['tasks']} tasks, K = {v['k']}"
                                 for s, v in settings.items())],
            [[label, *(ms(times[key][s]) for s in settings)] for key, label in labels.items()],
            "l" + "r" * len(settings)),
        "**Speed-up**: baseline ms / our ms, the median of the rounds (each round's ratio in "
        "brackets)", "", program.table(
            ["", "baseline", *settings],
            [[labels[o], f"vs {b}", *(ratio(found.get((o, b, s))) for s in settings)]
             for o, b in RATIOS if any((o, b, s) in found for s in settings)],
            "ll" + "r" * len(settings)),
        program.conditions(data), ""])


def parse_args(argv=None):
    ap = program.parser("python -m studies.bench", __doc__.split("\n")[0], out="figures",
                        what="benchmark.json and benchmark.md (stacks.json, .md)")
    ap.add_argument("--rounds", type=program.at_least(1), default=3, help="runs of each (3)")
    ap.add_argument("--steps", type=program.at_least(100), default=2000,
                    help="meta-steps a run (2000)")
    ap.add_argument("--settings", type=program.some_of(PEER_SETTINGS), default=list(PEER_SETTINGS),
                    help="paper, blog or both (both)")
    ap.add_argument("--only", type=program.some_of(IMPLS),
                    help="some of " + ",".join(IMPLS) + " (all it can run of its part)")
    ap.add_argument("--stacks", action="store_true",
                    help="the ports of studies/stacks beside maml.py's loop and step: "
                         f"{','.join(PARTS['stacks'])}, into stacks.json and stacks.md")
    ap.add_argument("--peers", metavar="DIR", type=os.path.abspath,
                    help="the peers' folder, for the PyTorch rows")
    ap.add_argument("--torch-python", metavar="PY", help="a Python with torch (or $TORCH_PYTHON)")
    ap.add_argument("--worker", choices=[*WORKERS, "device"], help=argparse.SUPPRESS)
    ap.add_argument("--setup", choices=experiment.SETUPS, default="paper", help=argparse.SUPPRESS)
    return program.parse(ap, argv)


def runnable(args):
    """The implementations asked for that can run here, saying why any other is skipped."""
    keys = args.only
    wanted = {"torch", "torch1"} & set(args.only)
    torch = None
    for name, (module, *_) in stack_speed.PORTS.items():
        missing = stack_speed.missing(name)
        if missing and any(k.startswith(f"{name}_") for k in keys):
            print(f"note: skipping {module}.py's rows: {' and '.join(missing)} not installed "
                  "(pip install -r studies/stacks/requirements.txt)")
            keys = [k for k in keys if not k.startswith(f"{name}_")]
    if wanted and args.peers and args.torch_python:
        torch = run([args.torch_python, "-c", "import torch; print(torch.__version__)"])
    if wanted and not torch:
        print("note: skipping the PyTorch peers: they need --peers DIR and --torch-python PY "
              "(or $TORCH_PYTHON) with torch")
        keys = [k for k in keys if "{torch}" not in IMPLS[k][1]]
    return keys, torch and torch.strip()


def main(argv=None):
    args = parse_args(argv)
    setup = dict(experiment.SETUPS[args.setup], steps=args.steps)
    if args.worker == "device":  # the device the workers run on
        return print(program.jax_device())
    if args.worker:  # a worker prints one line: its time
        line = "{:.4f} ms/step over {} steps; final loss {:.4f}".format(
            *WORKERS[args.worker](setup))
        return print(f"{args.worker}: {line}")
    args.torch_from_env = args.torch_python is None and "TORCH_PYTHON" in os.environ
    args.torch_python = args.torch_python or os.environ.get("TORCH_PYTHON")
    name = "stacks" if args.stacks else "benchmark"
    args.only = args.only or PARTS[name]
    keys, torch = runnable(args)
    stacks = {p: version(p) for p in ("flax", "equinox", "optax")}
    args.versions = stacks if args.stacks else {"torch": torch}
    args.device = (run([sys.executable, *SELF[1:], "device"]) or "").strip() or None
    runs, loads = measure(keys, args)
    text = program.write(args.out, name, results(args, runs, loads), render)
    print("\n" + text + f"\nwritten to {os.path.join(args.out, name + '.json')} and .md")


def version(package):
    """An installed package's version, or None (the driver imports none of them)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
