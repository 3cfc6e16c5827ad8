"""Mutation testing: how many small bugs planted in maml.py and the evaluation do the tests catch?

mutmut (not a requirement of the project: `pip install mutmut==3.8.1` beside it) copies the code,
makes one small change at a time inside a function (a `+` for a `-`, 0.01 for 1.01, a dropped
argument), and runs the tests that call that function. A change no test notices "survives".
This program prepares a copy of the project that mutmut can work on, runs it over the functions
in SCOPE, and writes what became of every mutant as JSON, with the table the Testing page shows.

Two things about the copy, both because mutmut only mutates the bodies of undecorated functions:
- `@jit` and `@partial(jit, ...)` above a function become `f = jit(f)` after it (the same
  function), so `step` and `adaptation_curves` are mutated too;
- a conftest.py clears JAX's caches before each test while mutmut maps tests to functions:
  otherwise a jitted function traced by one test is not traced again by the next, and mutmut
  would think only the first test calls it.
Each mutant runs in a fresh process (mutmut's fork server, forking before JAX is imported).

Run from the repository root (35 minutes on two cores on 2026-12-01: 25 for mutmut, 10 for the
changes planted by hand):

    python -m studies.mutation --work /tmp/mutation --label after   # figures/mutation.json, .md
"""
import argparse
import ast
import glob
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

from machinery import program, report

ROOT = program.ROOT
# The functions mutated: maml.py's whole algorithm, and the evaluation of experiment.py (held-out
# tasks, adaptation, the baseline's step size) with the statistics report.py makes of it.
SCOPE = {
    "maml": ["loss", "inner_update", "maml_loss", "batch_maml_loss", "sample_sinusoids",
             "sample_tasks", "step"],
    "experiment": ["pretrain_loss", "eval_tasks", "adaptation_curves", "run_curves",
                   "tune_step_size", "evaluate"],
    "report": ["finite_tasks", "most_diverged", "mean_ci", "t975", "between_runs", "run_numbers",
               "over_runs"],
}
# The tests that exercise them in this process (mutmut cannot follow a test into a subprocess).
TESTS = ["test_maml.py", "test_experiment.py", "test_report.py", "test_results.py", "test_variants.py",
         "test_docs.py::test_python_blocks_of_the_page_run_and_their_asserts_hold"]
# Left out: three slow tests that check what faster ones check too, and two that read maml.py's
# text (its imports, its length), which mutmut's copy changes whatever the mutant.
LEFT_OUT = ["empty_folder", "whatever_the_seeds", "jit_equals", "needs_no_package", "about_50_lines"]
COPY = ["preflight.py", "scripts", "figures", "docs", "README.md", "mkdocs.yml"]  # what tests read
CONFTEST = '''import os

import jax
import pytest


@pytest.fixture(autouse=True, scope="session")
def trace_each_session_afresh():
    """A mutant's process forks from one that collected the tests: nothing traced there counts."""
    jax.clear_caches()


@pytest.fixture(autouse=True)
def trace_each_test_afresh():
    """While mutmut maps tests to the functions they call, every test traces its functions anew."""
    if os.environ.get("MUTANT_UNDER_TEST") == "stats":
        jax.clear_caches()
'''
STATUS = {1: "killed", 3: "killed", 0: "survived", 33: "no tests", 36: "timeout", 24: "timeout",
          -24: "timeout", 152: "timeout", -9: "timeout", None: "not run"}


def undecorate(source):
    """The source with each top-level `@dec def f` written as `def f` followed by `f = dec(f)`."""
    lines = source.splitlines(keepends=True)
    edits = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.decorator_list:
            first = node.decorator_list[0].lineno - 1
            rebind = node.name
            for dec in reversed(node.decorator_list):
                rebind = f"{ast.get_source_segment(source, dec)}({rebind})"
            edits.append((first, node.lineno - 1, node.end_lineno, f"\n\n{node.name} = {rebind}\n"))
    for first, def_line, end, after in reversed(edits):
        lines[end:end] = [after]
        del lines[first:def_line]
    return "".join(lines)


def setup_cfg():
    """mutmut's configuration for the copy."""
    deselect = " or ".join(LEFT_OUT)
    return "\n".join([
        "[mutmut]",
        "source_paths=\n" + "\n".join(f"    {m}.py" for m in SCOPE),
        "also_copy=\n" + "\n".join(f"    {p}" for p in COPY + ["conftest.py"]),
        "pytest_add_cli_args_test_selection=\n" + "\n".join(f"    {t}" for t in TESTS),
        f"pytest_add_cli_args=\n    -p\n    no:cacheprovider\n    -k\n    not ({deselect})",
        "process_isolation=forkserver",
        "forkserver_warmup=collect",
        "max_stack_depth=-1",
        ""])


def export(commit, work):
    """The project's files as `commit` has them, in a fresh folder `work`, with commit.txt naming
    the commit (and marking the folder as this program's, which check_work lets it empty)."""
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    tree = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tree)) as tar:
        tar.extractall(work, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    with open(os.path.join(work, "commit.txt"), "w") as f:
        f.write(commit)


def prepare(work, commit):
    """The project at `commit` in `work`, with the decorators unrolled and mutmut's config."""
    export(commit, work)
    for name in SCOPE:
        path = os.path.join(work, f"{name}.py")
        with open(path) as f:
            source = undecorate(f.read())
        with open(path, "w") as f:
            f.write(source)
    for name, text in (("conftest.py", CONFTEST), ("setup.cfg", setup_cfg())):
        with open(os.path.join(work, name), "w") as f:
            f.write(text)


# mutmut changes only the bodies of functions; these changes to lines outside them (the network,
# the optimiser, the evaluation's constants) are planted by hand, one at a time, in a plain copy,
# and the same tests run on each: (file, the text, what it becomes).
PLANTED = [
    ("maml.py", "Dense(40), Relu, Dense(40), Relu, Dense(1)", "Dense(40), Relu, Dense(40), Dense(1)"),
    ("maml.py", "Dense(40), Relu, Dense(40), Relu, Dense(1)", "Dense(40), Relu, Dense(41), Relu, Dense(1)"),
    ("maml.py", "optimizers.adam(step_size=1e-3)", "optimizers.adam(step_size=1e-4)"),
    ("maml.py", "optimizers.adam(step_size=1e-3)", "optimizers.adam(step_size=1e-3, b1=0.8)"),
    ("maml.py", "optimizers.adam(step_size=1e-3)", "optimizers.momentum(step_size=1e-3, mass=0.9)"),
    ("experiment.py", "EVAL_STEPS = (0, 1, 5, 10)", "EVAL_STEPS = (0, 1, 5, 9)"),
    ("experiment.py", "EVAL_KS = (5, 10)", "EVAL_KS = (5, 20)"),
    ("experiment.py", "alpha=0.01, tasks=25", "alpha=0.02, tasks=25"),
    ("experiment.py", "alpha=0.001, tasks=25", "alpha=0.002, tasks=25"),
    ("experiment.py", "10: 0.35}", "10: 0.36}"),
    ("report.py", "RUNAWAY = 10", "RUNAWAY = 11"),
    ("report.py", "2.571,", "2.57,"),
]


def plant(work, path, old, new):
    """Run the tests on a copy with one line changed: "killed" if a test fails, else "survived"."""
    target = os.path.join(work, path)
    with open(target) as f:
        source = f.read()
    assert source.count(old) == 1, (path, old)
    with open(target, "w") as f:
        f.write(source.replace(old, new))
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                               "-k", f"not ({' or '.join(LEFT_OUT)})", *TESTS], cwd=work,
                              capture_output=True, text=True)
    finally:
        with open(target, "w") as f:
            f.write(source)
    return {0: "survived", 1: "killed"}.get(done.returncode, f"exit code {done.returncode}")


def plant_all(work, commit):
    """Each change of PLANTED, in a plain copy of the project at `commit`."""
    export(commit, work)
    return [dict(file=path, line=old, planted=new, outcome=plant(work, path, old, new))
            for path, old, new in PLANTED]


def patterns():
    """mutmut's names for the mutants of the functions in SCOPE."""
    return [f"{m}.x_{f}__mutmut_*" for m, names in SCOPE.items() for f in names]


def run_mutmut(mutmut, work):
    """mutmut over every function in SCOPE, each mutant in its own process, two at a time."""
    subprocess.run([mutmut, "run", "--max-children", "2", *patterns()], cwd=work, check=True)


def outcomes(work):
    """Every mutant of SCOPE and what became of it, from mutmut's records in the copy."""
    got = {}
    for meta in sorted(glob.glob(os.path.join(work, "mutants", "*.py.meta"))):
        with open(meta) as f:
            codes = json.load(f)["exit_code_by_key"]
        for name, code in codes.items():
            module, _, rest = name.partition(".x_")
            if rest.split("__mutmut_")[0] in SCOPE.get(module, ()):
                got[name] = STATUS.get(code, f"exit code {code}")
    return dict(sorted(got.items(), key=lambda kv: mutant_order(kv[0])))


def mutant_order(name):
    """maml's mutants first, then the experiment's and the report's, each function in SCOPE's order
    and its mutants by number."""
    module, _, rest = name.partition(".x_")
    function, _, number = rest.partition("__mutmut_")
    return list(SCOPE).index(module), SCOPE[module].index(function), int(number)


def change(mutmut, work, name):
    """The lines a mutant changes, as mutmut shows them: removed with '-', added with '+'."""
    shown = subprocess.run([mutmut, "show", name], cwd=work, capture_output=True, text=True,
                           check=True).stdout
    return [ln for ln in shown.splitlines() if ln[:1] in "-+" and ln[:3] not in ("---", "+++")]


# Mutants that no test can kill, because the program they make computes the same numbers; each
# with the reason, written after reading every survivor of the last run.
AS_FLOAT32 = ("The candidate step sizes go to run_curves as float64 instead of float32; JAX, in "
              "its default 32-bit mode (the experiment's), makes them float32 as they enter.")
MAML_AS_FLOAT64 = ("MAML's step size kept as float64 instead of float32: JAX makes it float32 as it "
                   "enters run_curves, so the curves are the same; results.json records 0.001 "
                   "where it recorded float32's 0.0010000000475, the same float32 number.")
EQUIVALENT = {
    "experiment.x_tune_step_size__mutmut_14": AS_FLOAT32,
    "experiment.x_tune_step_size__mutmut_17": AS_FLOAT32,
    "experiment.x_evaluate__mutmut_19": MAML_AS_FLOAT64,
    "experiment.x_evaluate__mutmut_22": MAML_AS_FLOAT64,
    "report.x_run_numbers__mutmut_2": "NumPy's astype(None) is astype(float64), its default type.",
}


def label_record(args, work):
    """One run of the tool: the tests' commit, how it was run, and every mutant's outcome."""
    with open(os.path.join(work, "commit.txt")) as f:
        commit = f.read().strip()
    return {"commit": commit, "when": program.now(), "load": program.load(),
            "machine": program.machine(mutmut=version(args.mutmut, work)), "outcomes": outcomes(work),
            "planted": plant_all(work + "-planted", commit)}


def version(mutmut, work):
    """mutmut's version, as it prints it (it reads its configuration first, so in the copy)."""
    return subprocess.run([mutmut, "--version"], cwd=work, capture_output=True, text=True,
                          check=True).stdout.split()[-1]


def results(args, old):
    """The JSON: the command, each label's run, and the change of every mutant that was not killed."""
    runs = dict(old.get("runs", {}), **{args.label: label_record(args, args.work)})
    changes = dict(old.get("changes", {}))
    for name, status in runs[args.label]["outcomes"].items():
        if status != "killed" and name not in changes:
            changes[name] = change(args.mutmut, args.work, name)
    return {"command": program.command("studies.mutation", args.argv, hide={"--mutmut": "<mutmut>"}),
            "scope": SCOPE, "tests": TESTS, "left_out": LEFT_OUT, "runs": runs,
            "changes": changes, "equivalent": EQUIVALENT}


def counts(outcomes, prefix=""):
    """How many of the mutants whose names start with prefix ended each way."""
    picked = [s for name, s in outcomes.items() if name.startswith(prefix)]
    return {s: picked.count(s) for s in sorted(set(picked))}


def score_rows(data):
    """One row per run: its mutants by outcome, and the share killed, of all and of those that
    are not equivalent (a mutant computing the same numbers can fail no test)."""
    rows = ["| run | tests of | mutants | killed | survived | no test ran | killed, of all | "
            "killed, equivalent ones aside |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for label, run in data["runs"].items():
        c, n = counts(run["outcomes"]), len(run["outcomes"])
        real = n - sum(name in data["equivalent"] for name in run["outcomes"])
        rows.append(f"| {label} | `{run['commit'][:7]}` | {n} | {c.get('killed', 0)} | "
                    f"{c.get('survived', 0)} | {c.get('no tests', 0)} | "
                    f"{100 * c.get('killed', 0) / n:.1f}% | {100 * c.get('killed', 0) / real:.1f}% |")
    return rows


def function_rows(data):
    """One row per function in SCOPE: its mutants, and how many each run did not kill."""
    labels = list(data["runs"])
    rows = ["| function | mutants | " + " | ".join(f"not killed, {lb}" for lb in labels) + " |",
            "|---|---:|" + "---:|" * len(labels)]
    for module, names in SCOPE.items():
        for f in names:
            per = [counts(data["runs"][lb]["outcomes"], f"{module}.x_{f}__") for lb in labels]
            missed = [str(sum(n for s, n in c.items() if s != "killed")) for c in per]
            rows.append(f"| `{module}.{f}` | {sum(per[-1].values())} | " + " | ".join(missed) + " |")
    return rows


def planted_rows(data):
    """One row per change planted by hand, with its outcome in each run."""
    labels = list(data["runs"])
    rows = ["| file | line | planted | " + " | ".join(labels) + " |", "|---|---|---|" + "---|" * len(labels)]
    for i, p in enumerate(list(data["runs"].values())[-1]["planted"]):
        outcomes = [data["runs"][lb]["planted"][i]["outcome"] for lb in labels]
        rows.append(f"| `{p['file']}` | `{p['line']}` | `{p['planted']}` | " + " | ".join(outcomes) + " |")
    return rows


def survivor_lines(data):
    """Every mutant the last run did not kill: its change and why no test can kill it."""
    last = list(data["runs"].values())[-1]["outcomes"]
    lines = []
    for name, status in last.items():
        if status != "killed":
            change = " → ".join(f"`{ln[0]} {ln[1:].strip()}`" for ln in data["changes"][name])
            lines.append(f"- `{name}` ({status}): {change}. "
                         + data["equivalent"].get(name, "**Not explained.**"))
    return lines or ["- none"]


def render(data):
    """The Testing page's tables: each run's score, by function, the changes planted by hand, and
    every mutant the last run did not kill."""
    return "\n".join([
        f"Command: `{data['command']}`", "", *score_rows(data), "", *function_rows(data), "",
        "Changes outside functions, which mutmut leaves alone, planted by hand:", "",
        *planted_rows(data), "", f"Not killed by the tests of the {list(data['runs'])[-1]} run:", "",
        *survivor_lines(data)]) + "\n"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m studies.mutation", allow_abbrev=False,
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--work", help="a folder for mutmut's copy (emptied first)")
    ap.add_argument("--label", help="the name of this run in the JSON (before, after)")
    ap.add_argument("--commit", default="HEAD", help="the commit whose code and tests to measure (HEAD)")
    ap.add_argument("--mutmut", default=shutil.which("mutmut") or "mutmut", help="mutmut's command")
    ap.add_argument("--summarise-only", action="store_true",
                    help="read the outcomes of a mutmut run already in --work instead of running "
                    "it again (the planted changes run either way)")
    ap.add_argument("--explain-only", action="store_true",
                    help="run nothing: write EQUIVALENT's reasons into --out and render it again")
    ap.add_argument("--out", default=os.path.join(ROOT, "figures", "mutation.json"),
                    help="the JSON to write (the markdown goes beside it, .md)")
    args = ap.parse_args(argv)
    if not args.explain_only and not (args.work and args.label):
        ap.error("--work and --label are needed, unless --explain-only")
    for folder in ([] if args.explain_only else [args.work, args.work + "-planted"]):
        check_work(ap, folder)
    if args.summarise_only and not glob.glob(os.path.join(args.work, "mutants", "*.py.meta")):
        ap.error(f"--summarise-only: {args.work} holds no mutmut run to read")
    args.argv = sys.argv[1:] if argv is None else argv
    return args


def check_work(ap, folder):
    """A folder this program may empty: outside the repository, and new, empty or a copy it made."""
    path, root = os.path.realpath(folder), os.path.realpath(ROOT)
    if os.path.commonpath([path, root]) in (path, root):
        ap.error(f"--work: {folder} is in or above the repository; give a folder outside it")
    if os.path.isdir(path) and os.listdir(path) and not os.path.exists(os.path.join(path, "commit.txt")):
        ap.error(f"--work: {folder} holds files this program did not write; give a new or empty folder")


def main(argv=None):
    args = parse_args(argv)
    if args.explain_only:
        data = dict(report.read_json(args.out), equivalent=EQUIVALENT)
        print(program.write(args.out, data, render, ".md"), end="")
        return
    if not args.summarise_only:
        commit = subprocess.run(["git", "rev-parse", args.commit], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        prepare(args.work, commit)
        run_mutmut(args.mutmut, args.work)
    old = report.read_json(args.out) if os.path.exists(args.out) else {}
    print(program.write(args.out, results(args, old), render, ".md"), end="")


if __name__ == "__main__":
    main()
