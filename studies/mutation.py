"""Mutation testing: how many small bugs planted in maml.py and the evaluation do the tests catch?

mutmut (not a requirement: `pip install mutmut==3.8.1` beside the project) makes one small change
at a time inside a function (a `+` for a `-`, 0.01 for 1.01) and runs the tests that call it; a
change no test notices "survives". This runs it on a copy of the project over SCOPE, and writes
every mutant's outcome as JSON, with the table the Testing page shows. From the repository root
(35 minutes on two cores on 2026-12-01: 25 for mutmut, 10 planted by hand):

    python -m studies.mutation --work /tmp/mutation --label after   # figures/mutation.json, .md
"""
import ast
import glob
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from machinery import program

ROOT = program.ROOT
# maml.py's whole algorithm, and experiment.py's evaluation with the statistics of
# machinery/report.py. mutmut names a mutant after its module: machinery.report.x_mean_ci__mutmut_3.
SCOPE = {
    "maml": ["loss", "inner_update", "maml_loss", "batch_maml_loss", "sample_sinusoids",
             "sample_tasks", "step"],
    "experiment": ["pretrain_loss", "eval_tasks", "adaptation_curves", "run_curves",
                   "tune_step_size", "evaluate"],
    "machinery.report": ["finite_tasks", "most_diverged", "mean_ci", "t975", "between_runs",
                         "run_numbers", "over_runs"],
}
# The tests that exercise them in this process (mutmut cannot follow a test into a subprocess).
TESTS = ["test_maml.py", *(f"studies/test_{name}.py" for name in
                          ("experiment", "report", "results", "variants")),
         "studies/test_docs.py::test_python_blocks_of_the_page_run_and_their_asserts_hold"]
# Left out: three slow tests that check what faster ones check too, and two that read maml.py's
# text (its imports, its length), which mutmut's copy changes whatever the mutant.
LEFT_OUT = ["empty_folder", "whatever_the_seeds", "jit_equals", "needs_no_package",
            "about_50_lines"]
PYTEST_ARGS = ["-p", "no:cacheprovider", "-k", f"not ({' or '.join(LEFT_OUT)})"]
# What the tests read besides SCOPE (machinery/ file by file: report.py is mutated).
COPY = ["machinery/__init__.py", "machinery/checkpoint.py", "machinery/figures.py",
        "machinery/preflight.py", "machinery/program.py", "studies", "figures", "docs",
        "README.md", "mkdocs.yml"]
# While mutmut maps tests to functions, a function traced by one test would not be traced again
# by the next (mutmut would think only the first test calls it): each test clears JAX's caches.
CONFTEST = '''import os

import jax
import pytest


@pytest.fixture(autouse=True, scope="session")
def trace_each_session_afresh():  # a mutant's process forks from one that collected the tests
    jax.clear_caches()


@pytest.fixture(autouse=True)
def trace_each_test_afresh():  # while mutmut maps tests to functions, each test traces anew
    if os.environ.get("MUTANT_UNDER_TEST") == "stats":
        jax.clear_caches()
'''
STATUS = {1: "killed", 3: "killed", 0: "survived", 33: "no tests", 36: "timeout", 24: "timeout",
          -24: "timeout", 152: "timeout", -9: "timeout", None: "not run"}


def undecorate(source):
    """The source with each top-level `@dec def f` written as `def f` followed by `f = dec(f)`:
    mutmut mutates only undecorated functions, and `step` is to be mutated too."""
    lines, edits = source.splitlines(keepends=True), []
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.decorator_list:
            first, rebind = node.decorator_list[0].lineno - 1, node.name
            for dec in reversed(node.decorator_list):
                rebind = f"{ast.get_source_segment(source, dec)}({rebind})"
            edits.append((first, node.lineno - 1, node.end_lineno, f"\n\n{node.name} = {rebind}\n"))
    for first, def_line, end, after in reversed(edits):
        lines[end:end] = [after]
        del lines[first:def_line]
    return "".join(lines)


def setup_cfg():
    """mutmut's configuration for the copy."""
    def listing(key, items):
        return f"{key}=\n" + "\n".join(f"    {item}" for item in items)
    return "\n".join([
        "[mutmut]", listing("source_paths", (f"{m.replace('.', '/')}.py" for m in SCOPE)),
        listing("also_copy", COPY + ["conftest.py"]),
        listing("pytest_add_cli_args_test_selection", TESTS),
        listing("pytest_add_cli_args", PYTEST_ARGS),
        "process_isolation=forkserver", "forkserver_warmup=collect", "max_stack_depth=-1", ""])


def export(commit, work, for_mutmut=False):
    """The project at `commit` in a fresh folder `work`, with commit.txt naming the commit (which
    marks the folder as one check_work lets this program empty); for mutmut, with the decorators
    unrolled, the conftest.py and mutmut's config."""
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    tree = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True,
                          check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tree)) as tar:
        tar.extractall(work, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    program.write_text(os.path.join(work, "commit.txt"), commit)
    if for_mutmut:
        for module in SCOPE:
            path = os.path.join(work, module.replace(".", "/") + ".py")
            program.write_text(path, undecorate(Path(path).read_text()))
        for name, text in (("conftest.py", CONFTEST), ("setup.cfg", setup_cfg())):
            program.write_text(os.path.join(work, name), text)


# mutmut changes only the bodies of functions; these changes outside them (the network, the
# optimiser, the evaluation's constants) are planted by hand, one at a time, in a plain copy, and
# the same tests run on each: (file, the text, what it becomes).
NET, ADAM = "Dense(40), Relu, Dense(40), Relu, Dense(1)", "optimizers.adam(step_size=1e-3)"
PLANTED = [
    ("maml.py", NET, "Dense(40), Relu, Dense(40), Dense(1)"),
    ("maml.py", NET, "Dense(40), Relu, Dense(41), Relu, Dense(1)"),
    ("maml.py", ADAM, "optimizers.adam(step_size=1e-4)"),
    ("maml.py", ADAM, "optimizers.adam(step_size=1e-3, b1=0.8)"),
    ("maml.py", ADAM, "optimizers.momentum(step_size=1e-3, mass=0.9)"),
    ("experiment.py", "EVAL_STEPS = (0, 1, 5, 10)", "EVAL_STEPS = (0, 1, 5, 9)"),
    ("experiment.py", "EVAL_KS = (5, 10)", "EVAL_KS = (5, 20)"),
    ("experiment.py", "alpha=0.01, tasks=25", "alpha=0.02, tasks=25"),
    ("experiment.py", "alpha=0.001, tasks=25", "alpha=0.002, tasks=25"),
    ("experiment.py", "10: 0.35}", "10: 0.36}"),
    ("machinery/report.py", "RUNAWAY = 10", "RUNAWAY = 11"),
    ("machinery/report.py", "2.571,", "2.57,"),
]


def plant(work, path, old, new):
    """Run the tests on a copy with one line changed: "killed" if a test fails, else "survived"."""
    target = os.path.join(work, path)
    source = Path(target).read_text()
    assert source.count(old) == 1, (path, old)
    program.write_text(target, source.replace(old, new))
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", *PYTEST_ARGS, *TESTS],
                              cwd=work, capture_output=True, text=True)
    finally:
        program.write_text(target, source)
    return {0: "survived", 1: "killed"}.get(done.returncode, f"exit code {done.returncode}")


def meta_files(work):
    """mutmut's records of a run in the copy, one per source file."""
    return sorted(glob.glob(os.path.join(work, "mutants", "**", "*.py.meta"), recursive=True))


def outcomes(work):
    """Every mutant of SCOPE and what became of it, from mutmut's records in the copy: by module
    and function in SCOPE's order, then by the mutant's number."""
    got = []
    for meta in meta_files(work):
        for name, code in json.loads(Path(meta).read_text())["exit_code_by_key"].items():
            module, _, rest = name.partition(".x_")
            function, _, number = rest.partition("__mutmut_")
            if function in SCOPE.get(module, ()):
                order = list(SCOPE).index(module), SCOPE[module].index(function), int(number)
                got.append((order, name, STATUS.get(code, f"exit code {code}")))
    return {name: status for _, name, status in sorted(got)}


def output(command, work):
    """What a command run in the copy prints (mutmut reads its configuration there)."""
    return subprocess.run(command, cwd=work, capture_output=True, text=True, check=True).stdout


# Mutants no test can kill, because they compute the same numbers: each with the reason, written
# after reading every survivor of the last run (whose report.py was at the top: report.x_...).
AS_FLOAT32 = ("The candidate step sizes go to run_curves as float64 instead of float32; JAX, in "
              "its default 32-bit mode (the experiment's), makes them float32 as they enter.")
MAML_AS_FLOAT64 = ("MAML's step size kept as float64 instead of float32: JAX makes it float32 as "
                   "it enters run_curves, so the curves are the same; results.json records 0.001 "
                   "where it recorded float32's 0.0010000000475, the same float32 number.")
EQUIVALENT = {
    "experiment.x_tune_step_size__mutmut_14": AS_FLOAT32,
    "experiment.x_tune_step_size__mutmut_17": AS_FLOAT32,
    "experiment.x_evaluate__mutmut_19": MAML_AS_FLOAT64,
    "experiment.x_evaluate__mutmut_22": MAML_AS_FLOAT64,
    "machinery.report.x_run_numbers__mutmut_2": "NumPy's astype(None) is astype(float64), its "
                                                "default type.",
}
# Modules that moved since the committed runs (report.py into machinery/): their mutants' names
# are read under today's, so that a new run's outcomes line up with the committed runs'.
MOVED = {"report": "machinery.report"}


def current(name):
    """A mutant's name (MODULE.x_FUNCTION__mutmut_N) with its module's path of today."""
    module, dot, rest = name.partition(".x_")
    return MOVED.get(module, module) + dot + rest


def migrated(data):
    """Committed data with every module and mutant under today's names."""
    def renamed(d):
        return {current(name): value for name, value in d.items()}
    runs = {label: dict(run, outcomes=renamed(run["outcomes"]))
            for label, run in data.get("runs", {}).items()}
    return dict(data, runs=runs, changes=renamed(data.get("changes", {})),
                equivalent=renamed(data.get("equivalent", {})),
                scope={MOVED.get(m, m): names for m, names in data.get("scope", {}).items()})


def results(args, old):
    """The JSON: the command, each label's run (the tests' commit, every mutant's outcome, the
    changes planted by hand), and the change of every mutant that was not killed."""
    commit = Path(args.work, "commit.txt").read_text().strip()
    planted = args.work + "-planted"
    export(commit, planted)
    run = {"commit": commit, "when": program.now(), "load": program.load(),
           "environment": program.environment(
               mutmut=output([args.mutmut, "--version"], args.work).split()[-1]),
           "outcomes": outcomes(args.work),
           "planted": [dict(file=f, line=line, planted=new, outcome=plant(planted, f, line, new))
                       for f, line, new in PLANTED]}
    changes = dict(old.get("changes", {}))
    for name, status in run["outcomes"].items():
        if status != "killed" and name not in changes:  # its lines removed (-) and added (+)
            shown = output([args.mutmut, "show", name], args.work).splitlines()
            changes[name] = [ln for ln in shown
                             if ln[:1] in "-+" and ln[:3] not in ("---", "+++")]
    hide = {"--mutmut": "<mutmut>"}
    return {"command": program.command("studies.mutation", args.argv, hide), "scope": SCOPE,
            "tests": TESTS, "left_out": LEFT_OUT, "runs": {**old.get("runs", {}), args.label: run},
            "changes": changes, "equivalent": EQUIVALENT}


def counts(outcomes, prefix=""):
    """How many of the mutants whose names start with prefix ended each way."""
    picked = [s for name, s in outcomes.items() if name.startswith(prefix)]
    return {s: picked.count(s) for s in sorted(set(picked))}


def score_table(data):
    """One row per run: its mutants by outcome, and the share killed, of all and of those that
    are not equivalent (a mutant computing the same numbers can fail no test)."""
    rows = []
    for label, run in data["runs"].items():
        c, n = counts(run["outcomes"]), len(run["outcomes"])
        real = n - sum(name in data["equivalent"] for name in run["outcomes"])
        rows.append([label, f"`{run['commit'][:7]}`", n, c.get("killed", 0), c.get("survived", 0),
                     c.get("no tests", 0), f"{100 * c.get('killed', 0) / n:.1f}%",
                     f"{100 * c.get('killed', 0) / real:.1f}%"])
    return program.table(["run", "tests of", "mutants", "killed", "survived", "no test ran",
                          "killed, of all", "killed, equivalent ones aside"], rows, "llrrrrrr")


def function_table(data):
    """One row per function of the scope: its mutants, and how many each run did not kill."""
    labels, rows = list(data["runs"]), []
    for module, names in data["scope"].items():
        for f in names:
            per = [counts(data["runs"][lb]["outcomes"], f"{module}.x_{f}__") for lb in labels]
            rows.append([f"`{module}.{f}`", sum(per[-1].values()),
                         *(sum(n for s, n in c.items() if s != "killed") for c in per)])
    return program.table(["function", "mutants", *(f"not killed, {lb}" for lb in labels)], rows,
                         "lr" + "r" * len(labels))


def render(data):
    """The Testing page's tables: the runs' scores, by function, the changes planted by hand, and
    every mutant the last run did not kill, with its change and why no test can kill it."""
    labels, last = list(data["runs"]), list(data["runs"].values())[-1]
    planted = [[f"`{p['file']}`", f"`{p['line']}`", f"`{p['planted']}`",
                *(data["runs"][lb]["planted"][i]["outcome"] for lb in labels)]
               for i, p in enumerate(last["planted"])]
    survivors = [f"- `{name}` ({status}): "
                 + " → ".join(f"`{ln[0]} {ln[1:].strip()}`" for ln in data["changes"][name])
                 + ". " + data["equivalent"].get(name, "**Not explained.**")
                 for name, status in last["outcomes"].items() if status != "killed"]
    return "\n".join([
        f"Command: `{data['command']}`", "", score_table(data), function_table(data),
        "Changes outside functions, which mutmut leaves alone, planted by hand:", "",
        program.table(["file", "line", "planted", *labels], planted),
        f"Not killed by the tests of the {labels[-1]} run:", "", *(survivors or ["- none"])]) + "\n"


def parse_args(argv=None):
    ap = program.parser("python -m studies.mutation", __doc__.splitlines()[0], out="figures",
                        what="mutation.json and mutation.md")
    ap.add_argument("--work", help="a folder for mutmut's copy (emptied first)")
    ap.add_argument("--label", help="the name of this run in the JSON (before, after)")
    ap.add_argument("--commit", default="HEAD", help="the commit whose code and tests to measure")
    ap.add_argument("--mutmut", default=shutil.which("mutmut") or "mutmut", help="mutmut's command")
    ap.add_argument("--summarise-only", action="store_true",
                    help="read the outcomes of a mutmut run already in --work instead of running "
                    "it again (the planted changes run either way)")
    ap.add_argument("--explain-only", action="store_true",
                    help="run nothing: write EQUIVALENT's reasons into --out and render it again")
    args = program.parse(ap, argv)
    if not args.explain_only and not (args.work and args.label):
        ap.error("--work and --label are needed, unless --explain-only")
    for folder in ([] if args.explain_only else [args.work, args.work + "-planted"]):
        check_work(ap, folder)
    if args.explain_only and not os.path.exists(os.path.join(args.out, "mutation.json")):
        ap.error(f"--explain-only: {args.out} holds no mutation.json to explain")
    if args.summarise_only and not meta_files(args.work):
        ap.error(f"--summarise-only: {args.work} holds no mutmut run to read")
    return args


def check_work(ap, folder):
    """A folder this program may empty: outside the repository, and new, empty or a copy it made."""
    path, root = os.path.realpath(folder), os.path.realpath(ROOT)
    if os.path.commonpath([path, root]) in (path, root):
        ap.error(f"--work: {folder} is in or above the repository; give a folder outside it")
    if (os.path.isdir(path) and os.listdir(path)
            and not os.path.exists(os.path.join(path, "commit.txt"))):
        ap.error(f"--work: {folder} holds files this program did not write; give a new or empty "
                 "folder")


def main(argv=None):
    args = parse_args(argv)
    path = os.path.join(args.out, "mutation.json")
    old = migrated(program.read_json(path)) if os.path.exists(path) else {}
    if args.explain_only:
        print(program.write(args.out, "mutation", dict(old, equivalent=EQUIVALENT), render), end="")
        return
    if not args.summarise_only:
        export(output(["git", "rev-parse", args.commit], ROOT).strip(), args.work, for_mutmut=True)
        names = [f"{m}.x_{f}__mutmut_*" for m, functions in SCOPE.items() for f in functions]
        # each mutant in its own process, two at a time
        subprocess.run([args.mutmut, "run", "--max-children", "2", *names], cwd=args.work,
                       check=True)
    print(program.write(args.out, "mutation", results(args, old), render), end="")


if __name__ == "__main__":
    main()
