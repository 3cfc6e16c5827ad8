"""What N runs trained at once (`experiment.py --seeds N`) cost, next to N separate runs.

Each is a fresh `python experiment.py --seeds N --steps S`, timed whole, with its steady-state
time per meta-step from its results.json; the rest (start-up, compiling, evaluation, figures) does
not grow with the steps. From the medians of interleaved rounds: a full run, at once or not.

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
    """One fresh `experiment.py --seeds RUNS`: its wall seconds, ms per meta-step and device."""
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


def results(args):
    """Every size once a round, every other round reversed; then runs_at_once.json: each size's
    medians, its fixed part (the wall time less the steps'), a full run's estimate, and that
    against N / n full runs of the first size n, one after another."""
    got = {n: [] for n in args.sizes}
    for r in range(args.rounds):
        for n in args.sizes if r % 2 == 0 else args.sizes[::-1]:
            got[n].append(measure(n, args.steps, args.eval_tasks))
            print(f"round {r + 1}: {n:>3} runs at once: {got[n][-1]['wall_s']:.1f} s in all, "
                  f"{got[n][-1]['ms_per_step']:.3f} ms per meta-step", flush=True)
    sizes = []
    for n, rounds in got.items():
        wall, ms = (statistics.median(r[k] for r in rounds) for k in ("wall_s", "ms_per_step"))
        fixed = max(0.0, wall - args.steps * ms / 1e3)
        full = fixed + FULL * ms / 1e3
        first = sizes[0] if sizes else dict(runs=n, full_run_s=full)
        sizes.append(dict(runs=n, rounds=rounds, wall_s=wall, ms_per_step=ms,
                          ms_per_run_step=ms / n, fixed_s=fixed, full_run_s=full,
                          at_once_over_separately=full / (n / first["runs"] * first["full_run_s"])))
    return dict(command=program.command("studies.runs_at_once", args.argv),
                environment=program.environment(sizes[0]["rounds"][0]["device"]),
                when=program.now(), load_after=program.load(), steps=args.steps,
                eval_tasks=args.eval_tasks, rounds=args.rounds, full_steps=FULL, sizes=sizes)


def render(data):
    """The markdown table, from the data alone."""
    rows = [[s["runs"], f"{s['ms_per_step']:.3f}", f"{s['ms_per_run_step']:.3f}",
             f"{s['wall_s']:.1f}", f"{s['fixed_s']:.1f}", f"{s['full_run_s']:.0f}",
             f"{s['at_once_over_separately']:.2f}"] for s in data["sizes"]]
    return "\n".join([
        f"Measured on {program.environment_text(data['environment'])}; {data['when']}; load "
        f"average {'/'.join(f'{x:.2f}' for x in data['load_after'])} after.", "",
        f"Command: `{data['command']}`", "",
        f"`python experiment.py --seeds N --steps {data['steps']:,}` (its default, the "
        f"released code's setting: 25 tasks, K = 10; "
        f"{data['eval_tasks']} held-out tasks), each a fresh process, median of "
        f"{data['rounds']} rounds. The fixed part is the wall time less the steps' "
        f"steady-state time; a full run adds {data['full_steps']:,} steps to it.", "",
        program.table(["runs at once", "ms per meta-step, all runs", "ms per run-step",
                       "whole program, s", "fixed part, s", "a full run, s (estimate)",
                       "at once / separately, full run"], rows, "rrrrrrr")]).rstrip() + "\n"


def sizes(text):
    """--sizes: runs at once, comma-separated whole numbers >= 1 (None if not)."""
    words = text.split(",")
    return [int(n) for n in words] if all(n.strip().isdigit() and int(n) for n in words) else None


def main(argv=None):
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
    args = program.parse(ap, argv)
    print(program.write(args.out, "runs_at_once", results(args), render), end="")


if __name__ == "__main__":
    main()
