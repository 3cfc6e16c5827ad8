"""What N runs trained at once (`experiment.py --seeds N`) cost, next to N separate runs.

Each measurement is a fresh `python experiment.py --seeds N --steps S` (the paper's setting,
evaluated on 600 tasks, its files written to a temporary folder), timed whole from outside, with
its own steady-state time per meta-step from the results.json it writes. The rest of the wall
time is the part that does not grow with the steps: start-up, compiling, evaluation, figures. The
sizes are interleaved over --rounds rounds; the table gives medians, and from the two parts, what
a full run of 70,000 steps costs at once against N separate runs.

Run from the repository root; it writes the measurements as runs_at_once.json into the --out
folder (figures), and the table rendered from them beside it, .md:

    python -m studies.runs_at_once          # figures/runs_at_once.json and .md
    python -m studies.runs_at_once --sizes 1,16,64 --out /tmp/gpu   # on a GPU
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

from machinery import program

FULL = 70_000  # the paper's meta-training steps


def measure(runs, steps, eval_tasks):
    """One fresh `experiment.py --seeds RUNS`: the wall seconds of the whole program, and what its
    results.json says: its steady-state ms per meta-step of all runs, and the device."""
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "experiment.py", "--seeds", str(runs), "--steps",
                               str(steps), "--eval-tasks", str(eval_tasks), "--out", out],
                              cwd=program.ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            sys.exit(f"runs_at_once: experiment.py --seeds {runs} failed:\n{done.stderr[-2000:]}")
        results = program.read_json(os.path.join(out, "results.json"))
    return dict(wall_s=wall, ms_per_step=results["ms_per_step"],
                device=results["environment"]["device"])


def measure_all(sizes, rounds, steps, eval_tasks):
    """{size: [one measurement per round]}, the sizes interleaved, every other round reversed."""
    got = {n: [] for n in sizes}
    for r in range(rounds):
        for n in sizes if r % 2 == 0 else sizes[::-1]:
            got[n].append(measure(n, steps, eval_tasks))
            print(f"round {r + 1}: {n:>3} runs at once: {got[n][-1]['wall_s']:.1f} s in all, "
                  f"{got[n][-1]['ms_per_step']:.3f} ms per meta-step", flush=True)
    return got


def size_numbers(runs, rounds, steps):
    """One size's medians, its fixed part (the wall time less the steps' steady-state time) and
    the estimated time of a full run (the fixed part plus 70,000 steps)."""
    wall = statistics.median(r["wall_s"] for r in rounds)
    ms = statistics.median(r["ms_per_step"] for r in rounds)
    fixed = max(0.0, wall - steps * ms / 1e3)
    return dict(runs=runs, rounds=rounds, wall_s=wall, ms_per_step=ms, ms_per_run_step=ms / runs,
                fixed_s=fixed, full_run_s=fixed + FULL * ms / 1e3)


def results(got, args):
    """Everything the run measured, as data: figures/runs_at_once.json. `at_once_over_separately`:
    a full run of N at once against N / n full runs of the first size n, one after another."""
    sizes = [size_numbers(n, rounds, args.steps) for n, rounds in got.items()]
    one = sizes[0]
    for s in sizes:
        separately = s["runs"] / one["runs"] * one["full_run_s"]
        s["at_once_over_separately"] = s["full_run_s"] / separately
    device = sizes[0]["rounds"][0]["device"]
    return dict(command=program.command("studies.runs_at_once", args.argv),
                environment=program.environment(device), when=program.now(),
                load_after=program.load(), steps=args.steps, eval_tasks=args.eval_tasks, rounds=args.rounds, full_steps=FULL,
                sizes=sizes)


def render(data):
    """The markdown table, from the data alone."""
    rows = [[s["runs"], f"{s['ms_per_step']:.3f}", f"{s['ms_per_run_step']:.3f}",
             f"{s['wall_s']:.1f}", f"{s['fixed_s']:.1f}", f"{s['full_run_s']:.0f}",
             f"{s['at_once_over_separately']:.2f}"] for s in data["sizes"]]
    return "\n".join([
        f"Measured on {program.environment_text(data['environment'])}; {data['when']}; load "
        f"average {'/'.join(f'{x:.2f}' for x in data['load_after'])} after.", "",
        f"Command: `{data['command']}`", "",
        f"`python experiment.py --seeds N --steps {data['steps']:,}` (paper setting, "
        f"{data['eval_tasks']} held-out tasks), each a fresh process, median of "
        f"{data['rounds']} rounds. The fixed part is the wall time less the steps' "
        f"steady-state time; a full run adds {data['full_steps']:,} steps to it.", "",
        program.table(["runs at once", "ms per meta-step, all runs", "ms per run-step",
                       "whole program, s", "fixed part, s", "a full run, s (estimate)",
                       "at once / separately, full run"], rows, "rrrrrrr")]).rstrip() + "\n"


def sizes(text):
    """--sizes: runs at once, comma-separated whole numbers >= 1 (None if not)."""
    got = [int(n) for n in text.split(",") if n.strip().isdigit()]
    return got if len(got) == len(text.split(",")) and min(got) >= 1 else None


def parse_args(argv=None):
    ap = program.parser("python -m studies.runs_at_once", __doc__.splitlines()[0], out="figures",
                        what="runs_at_once.json and runs_at_once.md")
    at_least_1 = program.checked(int, lambda n: n >= 1, "an integer >= 1")
    ap.add_argument("--sizes", default=[1, 4, 16], type=program.checked(
        sizes, bool, "whole numbers >= 1, comma-separated"),
        help="runs at once, each size in turn (1,4,16)")
    ap.add_argument("--steps", type=at_least_1, default=3000,
                    help="meta-training steps of each (3000)")
    ap.add_argument("--rounds", type=at_least_1, default=3, help="every size runs once a round (3)")
    ap.add_argument("--eval-tasks", type=program.checked(int, lambda n: n >= 2, "an integer >= 2"),
                    default=600, help="held-out tasks (600)")
    return program.parse(ap, argv)


def main(argv=None):
    args = parse_args(argv)
    got = measure_all(args.sizes, args.rounds, args.steps, args.eval_tasks)
    print(program.write(args.out, "runs_at_once", results(got, args), render), end="")


if __name__ == "__main__":
    main()
