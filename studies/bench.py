"""How fast one meta-step of maml.py is, next to the 2019 code it replaces: figures/benchmark.json
and the Performance page's tables, rendered from it (figures/benchmark.md). Each implementation
runs in a fresh process once a round, every other round reversed: its median ms per meta-step and
the speed-ups within a round; then, a process per setting, where a step's time goes (cost.py).
The PyTorch peers, outside the project, need --peers DIR and --torch-python PY (or $TORCH_PYTHON).

    python -m studies.bench       # all it can run: 3 rounds of 2000 steps, both settings
    python -m studies.bench --rounds 1 --steps 200 --only train,loop,blog --settings paper \\
        --no-costs --out /tmp/bench                   # a quick look: some seconds
"""
import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from functools import partial

import jax
import numpy as np
from jax import random
from jax.tree_util import tree_map

import experiment
import maml
from machinery import program
from studies import blog2019, cost

SELF = ["-m", "studies.bench", "--worker"]  # a worker: this module, in a process of its own
PEER = ["{peers}/torch_func.py", "--outer", "grad", "--compile"]
# key: (label, interpreter, what follows it, extra environment)
IMPLS = {
    "train": ("experiment.py training loop", "jax", [*SELF, "train"], {}),
    "loop": ("copy-paste loop", "jax", [*SELF, "loop"], {}),
    "pinned": ("training loop on one core (taskset -c 0)", "pinned", [*SELF, "train"], {}),
    "blog": ("2019 blog as written (blog2019.py)", "jax", [*SELF, "blog"], {}),
    "careful": ("careful port (blog2019.py, NumPy stack)", "jax", [*SELF, "careful"], {}),
    "torch": ("PyTorch, compiled (torch_func.py --outer grad --compile)", "torch", PEER, {}),
    "torch1": ("PyTorch, compiled, 1 thread (OMP_NUM_THREADS=1)", "torch", PEER,
               {"OMP_NUM_THREADS": "1"}),
}
# A baseline, by the implementations that stand for it: a round's ratio is taken against the
# fastest of them in that round (PyTorch gets its better thread setting).
BASELINES = {"blog as written": ("blog",), "careful port": ("careful",),
             "PyTorch": ("torch", "torch1"), "two cores": ("train",)}
RATIOS = [("train", "blog as written"), ("train", "careful port"), ("train", "PyTorch"),
          ("loop", "blog as written"), ("loop", "careful port"), ("loop", "PyTorch"),
          ("pinned", "two cores")]
# Every implementation prints one line in this form (the peers' own).
LINE = re.compile(r"^(\S+): ([0-9.]+) ms/step over (\d+) steps; final loss (\S+)$", re.M)


def worker_train(setup):
    """experiment.py's loop: train() as main() calls it, compiled before it starts; its timer
    leaves out the first chunk."""
    k_init, k_maml = random.split(random.PRNGKey(0), 5)[:2]
    _, init = maml.net_init(k_init, (-1, 1))
    compiled = experiment.compile_training(maml.step, init, setup, runs=1)
    one_run = tree_map(lambda a: a[None], init)  # train() takes a run axis
    _, losses, per_step = experiment.train(compiled, one_run, k_maml[None], setup, "MAML",
                                           log=lambda line: None)  # the worker prints one line
    timed = setup["steps"] - experiment.chunks(setup["steps"])[0][1]
    return 1e3 * per_step, timed, float(losses[-1, 0])


# -8<- [start:loop]
def worker_loop(setup):
    """The loop a reader writes around maml.py: two compiled calls from Python a
    meta-step, on the keys train() uses (one random.split, kept on the host), so on the
    same batches."""
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
           "careful": partial(blog2019.train, careful=True)}


def peer_setting(setup):
    """A setting as the peers take it (their smallest amplitude is 0.1)."""
    assert setup["amp_range"][0] == 0.1, setup
    return dict(tasks=setup["tasks"], k=setup["k"], alpha=setup["alpha"],
                amp_max=setup["amp_range"][1])


def worker(kind, name, steps):
    """One measurement, printed as one line (the costs as JSON)."""
    setup = dict(experiment.SETUPS[name], steps=steps)
    if kind == "costs":
        print("costs: " + json.dumps(dict(cost.step_costs(setup), device=program.jax_device())))
    else:
        ms, timed, loss = WORKERS[kind](setup)
        print(f"{kind}: {ms:.4f} ms/step over {timed} steps; final loss {loss:.4f}")


def run(argv, env=None):
    """One process in the repository: its stdout, or None (saying why) when it failed."""
    out = subprocess.run(argv, capture_output=True, text=True, cwd=program.ROOT,
                         env={**os.environ, **(env or {})})
    if out.returncode:
        print(f"  FAILED (exit {out.returncode}): {' '.join(argv)}\n{out.stderr[-1500:]}")
    return None if out.returncode else out.stdout


def measure_once(key, setting, args):
    """One fresh process of one implementation: its ms per step and final loss (None where not a
    finite number), or None when it failed."""
    label, python, command, env = IMPLS[key]
    flags = ["--setup", setting] if command[0] == SELF[0] else [
        f"--{k.replace('_', '-')}={v}" for k, v in peer_setting(experiment.SETUPS[setting]).items()]
    stdout = run([*args.pythons[python], *[c.format(peers=args.peers) for c in command], *flags,
                  "--steps", str(args.steps)], env)
    found = stdout and LINE.search(stdout)
    if found:
        print(f"{setting:5s} {label:58s} {found[2]:>8s} ms/step, final loss {found[4]}", flush=True)
        loss = float(found[4])
        return dict(ms=float(found[2]), final_loss=loss if math.isfinite(loss) else None)


def measure(keys, args):
    """{key: {setting: [one measure_once per round]}}, and the load average before each round
    and after the last: every run a fresh process, every other round in reverse order."""
    runs, loads = {key: {s: [] for s in args.settings} for key in keys}, []
    for r in range(args.rounds):
        loads.append(program.load())
        print(f"round {r + 1} of {args.rounds}, load average {loads[-1]}", flush=True)
        for setting in args.settings:
            for key in keys if r % 2 == 0 else keys[::-1]:
                runs[key][setting].append(measure_once(key, setting, args))
    return runs, loads + [program.load()]


def timing(runs):
    """Every round's ms per step and final loss (None where the run failed), and the median,
    min and max of those that ran."""
    ms = [r and r["ms"] for r in runs]
    done = [v for v in ms if v is not None]
    return dict(rounds=ms, final_loss=[r and r["final_loss"] for r in runs],
                **{name: f(done) if done else None for name, f in
                   (("median", statistics.median), ("min", min), ("max", max))})


def speedup(times, ours, baseline, setting):
    """Baseline ms / our ms in each round where both ran (the baseline's fastest stand-in in that
    round), and their median; None where not measured."""
    theirs = [times[b][setting]["rounds"] for b in BASELINES[baseline] if b in times]
    if ours not in times or not theirs:
        return None
    ratios = [min(v for v in b if v is not None) / o
              for o, *b in zip(times[ours][setting]["rounds"], *theirs)
              if o is not None and any(v is not None for v in b)]
    return dict(ours=ours, baseline=baseline, setting=setting, rounds=ratios,
                median=statistics.median(ratios) if ratios else None)


def results(args, runs, loads, costs):
    """Everything the run measured, as data: figures/benchmark.json."""
    times = {key: {s: timing(runs[key][s]) for s in args.settings} for key in runs}
    ratios = [speedup(times, o, b, s) for o, b in RATIOS for s in args.settings]
    env = {"TORCH_PYTHON": "<a Python with torch>"} if args.torch_from_env else None
    hide = {"--torch-python": "<a Python with torch>", "--peers": "<the peers' folder>"}
    return dict(
        command=program.command("studies.bench", args.argv, hide=hide, env=env),
        environment=program.environment(costs and next(iter(costs.values()))["device"],
                                        torch=args.torch_version),  # the driver starts no JAX
        when=program.now(), load=loads, rounds=args.rounds, steps=args.steps,
        settings={s: peer_setting(experiment.SETUPS[s]) for s in args.settings},
        implementations={key: IMPLS[key][0] for key in runs}, ms_per_step=times,
        speedups=[r for r in ratios if r is not None], costs=costs)


def ms_text(t):
    return "-" if t["median"] is None else f"{t['median']:.3f} ({t['min']:.3f}-{t['max']:.3f})"


def speedup_text(s):
    return "-" if s is None or s["median"] is None else (
        f"{s['median']:.2f}x (" + ", ".join(f"{v:.2f}" for v in s["rounds"]) + ")")


def render(data):
    """benchmark.md: the conditions in one line, then the times, the speed-ups and the costs."""
    ones = [v[0] for v in data["load"]]  # the load average over the last minute
    out = [f"Measured on {program.environment_text(data['environment'])}; {data['when']}; "
           f"load average (1 min) {min(ones):.1f} to {max(ones):.1f} over the run; "
           f"`{data['command']}`; median (min-max) of {data['rounds']} interleaved rounds of "
           f"{data['steps']} steps, each run a fresh process.", "",
           "**Milliseconds per meta-step**", ""]
    settings, times = data["settings"], data["ms_per_step"]
    out.append(program.table(
        ["implementation", *(f"{s}: {v['tasks']} tasks, K = {v['k']}" for s, v in
                             settings.items())],
        [[label, *(ms_text(times[key][s]) for s in settings)]
         for key, label in data["implementations"].items()], "l" + "r" * len(settings)))
    found = {(r["ours"], r["baseline"], r["setting"]): r for r in data["speedups"]}
    rows = [[data["implementations"][o], f"vs {b}", *(speedup_text(found.get((o, b, s)))
                                                     for s in settings)]
            for o, b in RATIOS if any((o, b, s) in found for s in settings)]
    out += ["**Speed-up**: baseline ms / our ms, the median of the rounds (each round's ratio in "
            "brackets)", "", program.table(["", "baseline", *settings], rows,
                                           "ll" + "r" * len(settings))]
    if data["costs"]:
        out += [f"**Where a step's time goes** (one more process per setting; µs per meta-step, "
                f"median of {next(iter(data['costs'].values()))['repeats']} repeats)", "",
                cost.step_table(data["costs"])]
    return "\n".join(out)


def names(allowed):
    """An argparse type: a comma-separated subset of `allowed`, as a list in the given order."""
    return program.checked(lambda t: t.split(","), lambda v: set(v) <= set(allowed),
                           "a comma-separated list of " + ",".join(allowed))


def at_least(n):
    return program.checked(int, lambda v: v >= n, f"a whole number >= {n}")


def parse_args(argv=None):
    ap = program.parser("python -m studies.bench", __doc__.split("\n")[0], out="figures",
                        what="benchmark.json and benchmark.md")
    ap.add_argument("--rounds", type=at_least(1), default=3, help="runs of each (3)")
    ap.add_argument("--steps", type=at_least(100), default=2000, help="meta-steps a run (2000)")
    ap.add_argument("--settings", type=names(["paper", "blog"]), default=["paper", "blog"],
                    help="paper, blog or both (both)")
    ap.add_argument("--only", type=names(IMPLS), default=list(IMPLS),
                    help="some of " + ",".join(IMPLS) + " (all it can run)")
    ap.add_argument("--no-costs", action="store_true", help="skip where a step's time goes")
    ap.add_argument("--peers", metavar="DIR", help="the peers' folder, for the PyTorch rows")
    ap.add_argument("--torch-python", metavar="PY", help="a Python with torch (or $TORCH_PYTHON)")
    ap.add_argument("--worker", choices=["train", "loop", "blog", "careful", "costs"],
                    help=argparse.SUPPRESS)
    ap.add_argument("--setup", choices=experiment.SETUPS, default="paper", help=argparse.SUPPRESS)
    return program.parse(ap, argv)


def runnable(args):
    """The implementations asked for that can run here, saying why any other is skipped."""
    keys, wanted, torch = args.only, {"torch", "torch1"} & set(args.only), None
    if wanted and args.peers and args.torch_python:
        torch = run([args.torch_python, "-c", "import torch; print(torch.__version__)"])
    if wanted and not torch:
        print("note: skipping the PyTorch peers: they need --peers DIR and --torch-python PY "
              "(or $TORCH_PYTHON) with torch")
        keys = [k for k in keys if IMPLS[k][1] != "torch"]
    if "pinned" in keys and not shutil.which("taskset"):
        print("note: skipping the pinned training loop: no taskset here")
        keys = [k for k in keys if k != "pinned"]
    return keys, torch and torch.strip()


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args.worker, args.setup, args.steps)
    args.torch_from_env = args.torch_python is None and "TORCH_PYTHON" in os.environ
    args.torch_python = args.torch_python or os.environ.get("TORCH_PYTHON")
    args.peers = args.peers and os.path.abspath(args.peers)
    keys, args.torch_version = runnable(args)
    args.pythons = {"jax": [sys.executable], "pinned": ["taskset", "-c", "0", sys.executable],
                    "torch": [args.torch_python]}
    runs, loads = measure(keys, args)
    costs = {} if args.no_costs else {s: run([sys.executable, *SELF, "costs", "--setup", s])
                                      for s in args.settings}
    costs = {s: json.loads(out.split("costs: ")[1]) for s, out in costs.items() if out}
    text = program.write(args.out, "benchmark", results(args, runs, loads, costs), render)
    print("\n" + text + f"\nwritten to {os.path.join(args.out, 'benchmark.json')} and .md")


if __name__ == "__main__":
    main()
