"""What the programs in studies/ share: the command line and --out (machinery/program.py);
and the bounds the issues set on the files. Their committed results: test_results.py.

Run with `python -m pytest studies/test_scripts.py`. studies.compare runs in this process (its
functions are called), each program's --help in a process of its own. Speed itself is measured
by the programs, never asserted by a test.
"""
import ast
import os
import subprocess
import sys

import pytest

from machinery import program
from studies.conftest import HANG_S, ROOT, cpu_env
from studies import compare


def test_the_recorded_command_names_no_path_of_this_machine():
    """program.command, which writes the command of every result: the PyTorch interpreter becomes
    a placeholder, a path inside the repository becomes relative, any other absolute path a
    placeholder; the other words stay as given."""
    argv = ["--torch-python", "/opt/venv/bin/python", "--out",
            os.path.join(program.ROOT, "figures", "b.json"), "--peers=/elsewhere/peers",
            "--steps", "5"]
    got = program.command("studies.bench", argv, hide={"--torch-python": "<a Python with torch>"})
    assert got == ("python -m studies.bench --torch-python <a Python with torch> "
                   "--out figures/b.json --peers=<a path> --steps 5")
    via_env = program.command("studies.bench", [], env={"TORCH_PYTHON": "<a Python with torch>"})
    assert via_env == "TORCH_PYTHON=<a Python with torch> python -m studies.bench"


# ---- the command line every program shares (machinery/program.py) ------------------------------

PROGRAMS = ["compare", "cost", "released", "sharding", "variants"]


def files(folder):
    """Every file under a folder, with the time it was last written."""
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("name", PROGRAMS)
def test_help_exits_0_and_writes_nothing(name, tmp_path):
    """--help, from an empty folder with the repository on the path (a program that wrote its
    default --out, figures, would write it there): exit 0, the usage, and nothing written there
    or in the repository's figures/."""
    before = files(ROOT / "figures")
    run = subprocess.run([sys.executable, "-m", f"studies.{name}", "--help"], cwd=tmp_path,
                         env=cpu_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                         timeout=HANG_S)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith(f"usage: python -m studies.{name}"), run.stdout[:200]
    assert list(tmp_path.iterdir()) == [] and files(ROOT / "figures") == before


def test_compare_makes_its_out_folder_and_writes_the_committed_table_there(tmp_path):
    """--out is a folder, made when the first file is written (two levels here): comparison.json,
    comparison.md (the committed table, but for the command it records) and runs.png."""
    out = tmp_path / "a" / "b"
    compare.main(["--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["comparison.json", "comparison.md", "runs.png"]
    committed = (ROOT / "figures" / "comparison.md").read_text()
    assert (out / "comparison.md").read_text() == committed.replace(
        "`python -m studies.compare`", "`python -m studies.compare --out <a path>`")


def test_an_out_that_is_a_file_stops_in_one_line_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(SystemExit) as stop:
        compare.main(["--out", str(tmp_path / "taken" / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "--out" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_the_files_keep_the_shape_the_issues_set():
    """The bounds the issues set, which no other test holds: the README at most 150 lines, no
    non-test Python file over 350 lines and no function there over 40 (issue 20); the Flax NNX
    and Equinox ports of maml.py at most 80 code lines (maml.py's bound of 65, plus ANIL's inner
    update and the framework's model, issue 22)."""
    from test_maml import code_lines

    def lines(path):
        return len((ROOT / path).read_text().splitlines())
    assert lines("README.md") <= 150
    sources = [p for folder in ("", "machinery", "studies", "studies/stacks")
               for p in (ROOT / folder).glob("*.py") if not p.name.startswith(("test_", "conftest"))]
    assert len(sources) > 20 and max(map(lines, sources)) <= 350
    long = [(p.name, node.name) for p in sources for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno >= 40]
    assert long == []
    for name in ("maml_nnx.py", "maml_equinox.py"):
        assert code_lines(ROOT / "studies" / "stacks" / name)[0] <= 80
