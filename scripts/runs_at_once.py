"""What N runs trained at once (`experiment.py --seeds N`) cost, next to N separate runs.

Each measurement is a fresh `python experiment.py --seeds N --steps S` (the paper's setting,
evaluated on 600 tasks, figures written to a temporary folder), timed whole from outside, with
its own steady-state time per meta-step from its `meta-training:` line. The rest of the wall time
is the part that does not grow with the steps: start-up, compiling, evaluation, figures. The sizes
are interleaved over --rounds rounds; the table gives medians, and from the two parts, what a full
run of 70,000 steps costs at once against N separate runs.

    python docs/runs_at_once.py                                    # figures/runs_at_once.md
    python docs/runs_at_once.py --sizes 1,16,64 --out /tmp/gpu.md  # on a GPU
"""
import argparse
import datetime
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = 70_000  # the paper's meta-training steps


def measure(runs, steps, eval_tasks):
    """(wall seconds of the whole program, its steady-state seconds per meta-step of all runs)."""
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        result = subprocess.run([sys.executable, "experiment.py", "--seeds", str(runs), "--steps",
                                 str(steps), "--eval-tasks", str(eval_tasks), "--out", out], cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if result.returncode != 0:
        sys.exit(f"runs_at_once.py: experiment.py --seeds {runs} failed:\n{result.stderr[-2000:]}")
    return wall, 1e-3 * float(re.search(r"meta-training: ([0-9.]+) ms per meta-step", result.stdout)[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,4,16")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--eval-tasks", type=int, default=600)
    ap.add_argument("--out", default=os.path.join(ROOT, "figures", "runs_at_once.md"))
    args = ap.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    got = {n: [] for n in sizes}
    for r in range(args.rounds):
        for n in sizes if r % 2 == 0 else sizes[::-1]:
            got[n].append(measure(n, args.steps, args.eval_tasks))
            print(f"round {r + 1}: {n:>3} runs at once: {got[n][-1][0]:.1f} s in all, "
                  f"{1e3 * got[n][-1][1]:.3f} ms per meta-step", flush=True)
    import jax
    med = {n: (statistics.median(w for w, _ in got[n]), statistics.median(s for _, s in got[n]))
           for n in sizes}
    fixed = {n: max(0.0, w - args.steps * s) for n, (w, s) in med.items()}
    full = {n: fixed[n] + FULL * med[n][1] for n in sizes}
    one = sizes[0]
    lines = [f"Measured on {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
             f"{jax.devices()[0].device_kind}; "
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; load average "
             f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())} after.", "",
             f"Command: `{shlex.join(['python', 'docs/runs_at_once.py', *sys.argv[1:]])}`", "",
             f"`python experiment.py --seeds N --steps {args.steps:,}` (paper setting, "
             f"{args.eval_tasks} held-out tasks), each a fresh process, median of {args.rounds} rounds. The fixed part is the "
             "wall time less the steps' steady-state time; a full run adds "
             f"{FULL:,} steps to it.", "",
             "| runs at once | ms per meta-step, all runs | ms per run-step | whole program, s | "
             "fixed part, s | a full run, s (estimate) | at once / separately, full run |",
             "|---|---|---|---|---|---|---|"]
    for n in sizes:
        wall, per_step = med[n]
        lines.append(f"| {n} | {1e3 * per_step:.3f} | {1e3 * per_step / n:.3f} | {wall:.1f} | "
                     f"{fixed[n]:.1f} | {full[n]:.0f} | {full[n] / (n / one * full[one]):.2f} |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
