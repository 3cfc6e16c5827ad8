"""The paper's K = 5 row beside ours under the paper's text (`paper`) and the released code (`code`).

Reads figures/paper/results.txt and figures/code/results.txt, as `python experiment.py --setup
SETUP --seeds 5 --out figures/SETUP` wrote them, and writes figures/comparison.md, the table that
the README and the Results page show. The numbers are copied, never recomputed, so the table can
only say what the committed results say.

    python docs/compare.py            # figures/comparison.md
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import experiment  # noqa: E402

SETUPS = ("paper", "code")
ROW = r"^ *(\d+)  (MAML|pretrained) +(\S+)((?: +\S+ ± \S+)+)$"
RUN = r"^ +run (\d+): (.*)$"


def parse(text):
    """The command; {(model, K): cells}, each cell (mean, half-width, marked); the step sizes;
    and {(model, K): [each run's means]} from a results.txt of several runs."""
    command = re.match(r"Command: (.*)", text)[1]
    rows, sizes, runs, current = {}, {}, {}, None
    for line in text.splitlines():
        if m := re.match(ROW, line):
            key = (m[2], int(m[1]))
            cells = re.findall(r"(\S+) ± (\S+?)(\*?)(?= |$)", m[4])
            rows[key] = [(float(a), float(b), bool(star)) for a, b, star in cells]
            sizes[key] = m[3]
        elif m := re.match(r"^K = +(\d+), (\w+): ", line):
            current = (m[2], int(m[1]))
            runs[current] = []
        elif (m := re.match(RUN, line)) and current:
            runs[current].append([float(v) for v in re.findall(r"n = \d+: (\S+?)(?:,|$)", m[2])])
    return command, rows, sizes, runs


def load(setup):
    with open(os.path.join(ROOT, "figures", setup, "results.txt"), encoding="utf-8") as f:
        return parse(f.read())


def cell(mean, half, star):
    return f"{experiment.number(mean)} ± {experiment.number(half)}{'*' if star else ''}"


def table():
    steps = [n for n in experiment.EVAL_STEPS if n > 0]
    lines = ["| model, K = 5 | where from | step size | " + " | ".join(
        f"{n} step{'s' * (n > 1)}" for n in steps) + " | each run's mean after 10 steps |",
        "|---|---|---|" + "---|" * len(steps) + "---|"]
    loaded = {setup: load(setup) for setup in SETUPS}
    for name in ("MAML", "pretrained"):
        paper = experiment.PAPER_MSE_K5[name]
        size = "0.01" if name == "MAML" else "-"  # the paper's alpha; no baseline step size is given
        lines.append(f"| {name} | the paper (one run) | {size} | "
                     + " | ".join(f"{paper[n]}" for n in steps) + " | |")
        for setup in SETUPS:
            command, rows, sizes, runs = loaded[setup]
            cells = rows[name, 5]
            n_runs = len(runs[name, 5])
            each = ", ".join(experiment.number(r[-1]) for r in runs[name, 5])
            lines.append(f"| {name} | ours, `{setup}` ({n_runs} runs) | {sizes[name, 5]} | "
                         + " | ".join(cell(*cells[experiment.EVAL_STEPS.index(n)]) for n in steps)
                         + f" | {each} |")
    commands = "; ".join(f"`{loaded[s][0]}`" for s in SETUPS)
    return ("\n".join(lines) + "\n\nHeld-out MSE on 600 tasks, mean of the runs ± the 95% "
            "between-run interval (Student's t); * marks a mean that leaves out a diverged task. "
            f"Made by {commands}, then `python docs/compare.py`.\n")


def main():
    text = table()
    print(text, end="")
    experiment.write_whole(os.path.join(ROOT, "figures", "comparison.md"),
                           lambda f: f.write(text.encode()))


if __name__ == "__main__":
    main()
