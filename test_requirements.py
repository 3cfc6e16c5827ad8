"""The versions the project claims are the versions CI tests.

.ci/run installs requirements.txt twice in fresh environments: as it is (the newest versions) and
constrained by .ci/oldest.txt (the oldest). That proves the lower bounds only if .ci/oldest.txt
pins every package of requirements.txt exactly at its lower bound.
"""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def entries(path):
    """{package: version specifiers} of a requirements file, comments and blank lines left out."""
    found = {}
    for line in (ROOT / path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, spec = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", line).groups()
            found[name.lower()] = [s.strip() for s in spec.split(",") if s.strip()]
    return found


def test_every_requirement_has_a_lower_bound_and_oldest_txt_pins_exactly_it():
    wanted, pinned = entries("requirements.txt"), entries(".ci/oldest.txt")
    assert set(wanted) == set(pinned), f"packages differ: {set(wanted) ^ set(pinned)}"
    for name, specs in wanted.items():
        lower = [s[2:] for s in specs if s.startswith(">=")]
        assert len(lower) == 1, f"{name}: exactly one lower bound (>=) expected, got {specs}"
        assert pinned[name] == [f"=={lower[0]}"], f"{name}: .ci/oldest.txt has {pinned[name]}, not =={lower[0]}"


def test_ci_runs_the_readme_test_command_in_fresh_environments_at_both_ends():
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    assert "pip install -r requirements.txt && python -m pytest" in readme.split("\n## ", 1)[0]
    assert "python3 -m venv" in ci and "pip install -q -r requirements.txt" in ci and "python -m pytest" in ci
    assert re.search(r"^fresh newest$", ci, re.M) and re.search(r"^fresh oldest -c \.ci/oldest\.txt$", ci, re.M)
    build = re.search(r"^ *NO_MKDOCS_2_WARNING=1 mkdocs build (.*)$", ci, re.M)  # the command, not a comment
    assert build and "--strict" in build[1] and not re.search(r"(^| )-(q|v)( |$)", build[1]), build
