"""The documentation site tells the truth and builds.

Run with `python -m pytest studies/test_docs.py`. What `mkdocs build --strict` checks itself (a
page missing from the nav or a nav entry missing, a broken link or anchor, a snippet whose file or
section is missing) is left to the build, which a test here runs. The checks:
- every plain ```python block on a page runs, in order, and its asserts hold, and the pages that
  have such blocks are exactly the expected ones (a block that stopped counting as Python fails);
- every included section is named and between well-formed markers (a missing end marker would
  paste the rest of the file), and every section of maml.py, experiment.py and the machinery
  is shown somewhere; docs/ holds no program;
- the mutmut configuration the Testing page shows names files that exist;
- the README pastes the comparison with the paper that studies/compare.py wrote, and what
  `python maml.py` printed; studies/compare.py, run again, writes the committed table;
- every line of code a page shows (an included .py section, or a block written on the page) fits
  the code column, INCLUDED_WIDTH characters;
- `mkdocs build --strict` passes with no warning, and no built page loads a script, stylesheet,
  font or image from another host (MathJax comes from the site itself).
The programs the pages show are tested in test_scripts.py, test_variants.py and test_cost.py.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from studies.conftest import HANG_S, ROOT, cpu_env
DOCS = ROOT / "docs"

# A fence opens with three or more backticks (or tildes) and an info string, and closes with the
# same run of characters; pages may indent a fence (inside an admonition, say).
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")
# A snippet include line, as pymdownx.snippets reads it: `--8<-- "path"` or `--8<-- "path:section"`.
INCLUDE = re.compile(r"""^[ \t]*-{1,}8<-{1,}[ \t]+(["'])(?P<target>[^"'\n]+)\1[ \t]*$""", re.M)
# A section marker in a source file: `# -8<- [start:name]` / `# -8<- [end:name]`.
MARKER = re.compile(r"-{1,}8<-{1,}[ \t]+\[(?P<kind>start|end):(?P<name>[-\w]+)\]")


def pages():
    """The Markdown pages of the site: docs/ without following links (docs/figures links to
    ../figures, whose Markdown is included into pages, not published as pages)."""
    found = []
    for folder, dirs, files in os.walk(DOCS):
        found += [Path(folder, f) for f in files if f.endswith(".md")]
    return sorted(found)


def fenced_blocks(text):
    """(info string, content) of every fenced code block of a Markdown text, in order."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m["indent"], m["fence"], m["info"].strip()
        body, i = [], i + 1
        while i < len(lines) and not re.match(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", lines[i]):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        blocks.append((info, "\n".join(body)))
        i += 1
    return blocks


def runnable_python(path):
    """The plain ```python blocks of a page: the language is python (or py), and the block is code
    written on the page, not a snippet include of a real file (those files are tested elsewhere)."""
    code = []
    for info, body in fenced_blocks(path.read_text()):
        language = info.split()[0].lstrip(".{").lower() if info else ""
        if language in ("python", "py") and not INCLUDE.search(body):
            code.append(body)
    return code


PAGES_WITH_PYTHON = [p for p in pages() + [ROOT / "README.md"] if p.exists() and runnable_python(p)]


def test_the_pages_with_python_blocks_are_exactly_these():
    """The block runner below runs these pages' blocks, no fewer: if a block stopped counting as
    Python (a changed fence, say), its page would drop out of the list and this test would fail."""
    names = {p.relative_to(ROOT).as_posix() for p in PAGES_WITH_PYTHON}
    assert names == {"README.md", "docs/from-2019.md", "docs/jax.md", "docs/results.md", "docs/running.md", "docs/variations.md",
                     "docs/walkthrough.md"}, names


def hooks():
    """The build hooks mkdocs.yml names (read as text: the file uses MkDocs' own YAML tags)."""
    text = (ROOT / "mkdocs.yml").read_text()
    block = re.search(r"^hooks:\n((?:[ \t]+-[^\n]*\n)+)", text, re.M)
    return {ROOT / name for name in re.findall(r"-\s*(\S+)", block[1])} if block else set()


def test_docs_holds_the_site_alone_and_no_page_touches_sys_path():
    """No program under docs/ (the studies live in studies/, the build hooks mkdocs.yml names in
    machinery/), and no page or program a reader sees manipulates sys.path."""
    programs = {p for p in DOCS.rglob("*.py") if "figures" not in p.parts}
    assert not programs, f"a program under docs/: {sorted(map(str, programs))}"
    assert hooks() and all(h.is_file() and h.parent.name == "machinery" for h in hooks()), hooks()
    seen = [*pages(), ROOT / "README.md", *ROOT.glob("*.py"), *(ROOT / "studies").glob("*.py")]
    touches = re.compile(r"sys\.path\.(insert|append|extend)|sys\.path\s*(\[|\+=|=)|PYTHONPATH=")
    assert not [p.name for p in seen if touches.search(p.read_text()) and not p.name.startswith("test_")]


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES_WITH_PYTHON, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_python_blocks_of_the_page_run_and_their_asserts_hold(page):
    """The page's python blocks, concatenated in order, run in one fresh interpreter at the
    repository root (on the CPU, with 4 host devices for the pages that shard) and exit 0."""
    source = "\n\n".join(runnable_python(page))
    env = cpu_env(XLA_FLAGS="--xla_force_host_platform_device_count=4")
    result = subprocess.run([sys.executable, "-"], input=source, cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=HANG_S)
    assert result.returncode == 0, f"{page.name}: its python blocks failed\n{result.stderr[-3000:]}"


def sections(path):
    """The section names of a file, checking its markers: each [start:X] has exactly one [end:X]
    after it, and no name is used twice."""
    starts, ends = {}, {}
    for n, line in enumerate(path.read_text().splitlines()):
        for m in MARKER.finditer(line):
            table = starts if m["kind"] == "start" else ends
            assert m["name"] not in table, f"{path.name}: section {m['name']!r} marked twice"
            table[m["name"]] = n
    assert set(starts) == set(ends), f"{path.name}: unmatched markers {set(starts) ^ set(ends)}"
    for name, line in starts.items():
        assert ends[name] > line, f"{path.name}: [end:{name}] comes before its [start:{name}]"
    return set(starts)


def includes():
    """(page, file, section or None) for every snippet include in docs/."""
    found = []
    for page in pages():
        for m in INCLUDE.finditer(page.read_text()):
            file, _, section = m["target"].partition(":")
            found.append((page, file, section or None))
    return found


SOURCES = ["maml.py", "experiment.py", "machinery/report.py", "machinery/preflight.py", "machinery/program.py",
           "machinery/checkpoint.py", "machinery/flags.py"]


@pytest.mark.parametrize("source", SOURCES)
def test_every_section_is_shown_on_some_page(source):
    """The walkthrough shows every section of maml.py, the running page those of experiment.py and
    of the machinery it leans on: a marked section no page shows is a marker to remove."""
    shown = {section for _, file, section in includes() if file == source}
    missing = sections(ROOT / source) - shown
    assert not missing, f"sections of {source} on no page: {sorted(missing)}"


def test_every_included_section_is_named_and_well_formed():
    """Each `--8<-- "file:section"` in docs/ names a section, not a line range, between a start
    marker and one end marker after it. pymdownx.snippets (check_paths) fails the build on a
    missing file or section, but pastes the rest of the file when the end marker is missing."""
    sectioned = [(page, file, section) for page, file, section in includes() if section]
    assert sectioned, "no snippet includes of a section found in docs/"
    for page, file, section in sectioned:
        where = f"{page.relative_to(ROOT)}: --8<-- {file}:{section}"
        assert not re.fullmatch(r"[-\d:]+", section), f"{where}: use a named section, not lines"
        assert section in sections(ROOT / file), f"{where}: no such section"


def test_the_mutmut_configuration_on_the_testing_page_names_files_that_exist():
    """The [mutmut] section the Testing page shows, to save as setup.cfg in a copy: every source
    to mutate, file to copy and test to run is in the project as it is."""
    import configparser

    (ini,) = [body for info, body in fenced_blocks((DOCS / "testing.md").read_text())
              if info == "ini"]
    config = configparser.ConfigParser()
    config.read_string(ini)
    keys = ("source_paths", "also_copy", "pytest_add_cli_args_test_selection")
    named = [path for key in keys for path in config["mutmut"][key].split()]
    assert len(named) > 10 and not [p for p in named if not (ROOT / p).exists()], named


@pytest.mark.slow
def test_the_flag_table_of_the_running_page_matches_experiment_py_help():
    """docs/running.md's table of flags lists exactly the flags (and metavars) of `experiment.py --help`."""
    help_text = subprocess.run([sys.executable, "experiment.py", "--help"], cwd=ROOT, capture_output=True,
                               text=True, timeout=HANG_S, env=cpu_env()).stdout
    usage = help_text.split("\n\n")[0]
    in_help = set(re.findall(r"\[(--[\w-]+)(?: ([A-Z]+))?", usage))
    in_table = set(re.findall(r"^\| `(--[\w-]+)(?: ([A-Z]+))?` \|", (DOCS / "running.md").read_text(), re.M))
    assert in_help, help_text
    assert in_table == in_help, f"only on the page: {in_table - in_help}; only in --help: {in_help - in_table}"


# The widest line of a file a page includes: 88 characters, what fits a code block's column with
# the copy button beside it at 1280 and at 1920 pixels (docs/stylesheets/extra.css sets the font
# and padding that make it so). Program output (```text) wraps instead, and is not held to it.
INCLUDED_WIDTH = 88


def included_lines(file, section):
    """The lines of `file` that `--8<-- "file:section"` pastes (all of them without a section)."""
    lines = (ROOT / file).read_text().splitlines()
    if section is None:
        return lines
    marks = {m["kind"]: i for i, ln in enumerate(lines) for m in MARKER.finditer(ln) if m["name"] == section}
    # a missing section is test_every_snippet_include_names_an_existing_file_and_section's failure
    return lines[marks["start"] + 1:marks["end"]] if len(marks) == 2 else []


def test_every_included_python_line_fits_the_code_column():
    """No line of a .py section that a page includes is wider than INCLUDED_WIDTH, so no code
    block of the site scrolls sideways at 1280 pixels."""
    too_wide = sorted({f"{file}:{section}: {len(line)} characters: {line.strip()[:40]}"
                       for _, file, section in includes() if file.endswith(".py")
                       for line in included_lines(file, section) if len(line) > INCLUDED_WIDTH})
    assert not too_wide, "\n".join(too_wide)


def test_every_code_block_written_on_a_page_fits_the_code_column():
    """The same width for the code written on the pages themselves (python, bash: not program
    output, which wraps)."""
    too_wide = [f"{page.relative_to(ROOT)}: {len(line)} characters: {line.strip()[:40]}"
                for page in pages() for info, body in fenced_blocks(page.read_text())
                if info.split()[:1] != ["text"] and not INCLUDE.search(body)
                for line in body.splitlines() if len(line) > INCLUDED_WIDTH]
    assert not too_wide, "\n".join(too_wide)


def test_no_text_in_a_pages_maths_escapes_an_underscore():
    r"""MathJax sets \text{...} as plain text, where \_ is no command: "example\_libraries"
    shows its backslash. The build cannot see it (MathJax runs in the browser); a name with an
    underscore goes in \mathtt{...}, which is maths, where \_ is the underscore."""
    escaped = [f"{page.relative_to(ROOT)}: {m}" for page in pages()
               for m in re.findall(r"\\text\{[^{}]*\\_[^{}]*\}", page.read_text())]
    assert not escaped, "\n".join(escaped)


def test_the_running_page_lists_exactly_the_keys_of_results_json():
    """The table of results.json's keys on docs/running.md names every top-level key of the
    committed default run's results.json, and no other."""
    import json

    text = (DOCS / "running.md").read_text()
    table = text[text.index('??? info "The keys of `results.json`"'):].split("\n\n")[1]
    on_page = {key for row in re.findall(r"^ +\| (`.+?`) \|", table, re.M) for key in re.findall(r"`(\w+)`", row)}
    keys = set(json.loads((ROOT / "figures" / "results.json").read_text()))
    assert on_page == keys, f"only on the page: {on_page - keys}; only in the JSON: {keys - on_page}"


def test_the_flag_table_gives_each_setting_s_defaults():
    """The defaults column of docs/running.md's flag table: paper / code / blog values of the
    setting's flags as experiment.SETUPS has them, and the argparse defaults of the others."""
    import experiment

    rows = dict(re.findall(r"^\| `(--[\w-]+)(?: [A-Z]+)?` \| ([^|]+) \|", (DOCS / "running.md").read_text(), re.M))
    for flag in ("steps", "tasks", "k", "alpha"):
        shown = [float(v.replace(",", "")) for v in rows[f"--{flag}"].split(" / ")]
        assert shown == [experiment.SETUPS[s][flag] for s in ("paper", "code", "blog")], (flag, shown)
    from machinery import flags

    args, _ = flags.parse([], experiment.SETUPS, experiment.DEFAULT)
    for flag, value in (("--setup", args.setup), ("--seed", args.seed), ("--seeds", args.seeds),
                        ("--eval-tasks", args.eval_tasks)):
        assert rows[flag].strip().strip("`").replace(",", "") == str(value), (flag, rows[flag])
    assert rows["--out"].strip().strip("`") == "runs/SETUP-seedS"
    assert args.out.replace("\\", "/") == f"runs/{args.setup}-seed{args.seed}"


def headings_and_content(text):
    """(level, title, has text before the next heading) of a Markdown page, fenced code skipped."""
    found, fence = [], None
    for line in text.splitlines():
        m = FENCE.match(line)
        if m and (fence is None or m["fence"].startswith(fence)):
            fence = None if fence else m["fence"]
            if found:
                found[-1][2] = True
            continue
        heading = re.match(r"^(#{1,6}) (.+)$", line) if fence is None else None
        if heading:
            found.append([len(heading[1]), heading[2], False])
        elif line.strip() and found:
            found[-1][2] = True
    return found


def test_no_page_has_an_empty_section():
    """Every heading has text before the next heading of its level or above."""
    empty = []
    for page in pages():
        found = headings_and_content(page.read_text())
        for (level, title, content), after in zip(found, found[1:] + [[0, None, None]]):
            if not content and after[0] <= level:
                empty.append(f"{page.relative_to(ROOT)}: {title}")
    assert not empty, empty


def test_readme_pastes_every_line_of_the_comparison_table():
    """README.md contains every line of figures/comparison.md, the paper's K = 5 row beside ours."""
    table = (ROOT / "figures" / "comparison.md").read_text().splitlines()
    readme = (ROOT / "README.md").read_text()
    missing = [line for line in table if line.strip() and line.rstrip() not in readme]
    assert not missing, f"lines of figures/comparison.md missing from README.md: {missing}"


def test_readme_and_walkthrough_show_what_python_maml_py_printed():
    """figures/maml.txt is the output of `python maml.py`: progress lines for its 50,000 steps,
    then the MSE of 600 new tasks before and after one inner_update. The README pastes every line
    of it, and the walkthrough includes the file."""
    text = (ROOT / "figures" / "maml.txt").read_text()
    lines = text.splitlines()
    assert [re.fullmatch(r"step +([\d,]+)/50,000  meta-loss \d+\.\d{3}  \d+ s", ln)[1] for ln in lines[:-1]] == \
        [f"{n:,}" for n in range(10_000, 50_001, 10_000)]
    before, after = map(float, re.fullmatch(r"600 new tasks, K = 5: MSE (\S+) before adapting, (\S+) after one "
                                            r"inner_update \(the paper: 0\.67\)", lines[-1]).groups())
    assert after < before / 3, (before, after)  # MAML learned: one step removes most of the error
    readme = (ROOT / "README.md").read_text()
    assert all(line in readme for line in lines), "README.md does not paste figures/maml.txt"
    assert ("figures", "maml.txt", None) in {(Path(f).parts[0], Path(f).name, s) for _, f, s in includes()}


# The last line of `python maml.py` under the versions the Tests page lists, seen here: jax
# 0.4.29 (the oldest corner) 3.08 before and 0.57 after, jax 0.10.2 3.04 and 0.59, jax 0.12.0.1
# (the newest) 3.04 and 0.61. Another release draws other random bits, so the README's numbers
# (the newest's) hold to the spread of those, 0.04 and 0.04, and a margin of one rounding step.
SPREAD = {"before": 0.05, "after": 0.05}


def last_line_numbers(line):
    return dict(zip(("before", "after"), map(float, re.fullmatch(
        r"600 new tasks, K = 5: MSE (\S+) before adapting, (\S+) after one inner_update "
        r"\(the paper: 0\.67\)", line).groups())))


def test_the_results_page_names_the_versions_every_committed_run_was_made_with():
    """Printed blocks say which versions made them: the Results page names the Python and jax
    versions, and every committed results.json records those very versions."""
    import json
    text = (DOCS / "results.md").read_text()
    for path in (ROOT / "figures").glob("**/results.json"):
        env = json.loads(path.read_text())["environment"]
        assert f"Python {env['python']} and jax {env['jax']}" in " ".join(text.split()), path


@pytest.mark.slow
def test_python_maml_py_prints_the_readmes_last_line_within_the_versions_spread():
    """`python maml.py`, as the README runs it (50,000 steps): its last line's MSE before and
    after one inner_update are the README's (figures/maml.txt) within the spread the tested
    versions show (SPREAD). A change that moves the result, a step size, a seed, the sampler,
    moves them by far more: an untrained network gives about 4.4 before and after."""
    run = subprocess.run([sys.executable, "maml.py"], cwd=ROOT, env=cpu_env(), timeout=HANG_S,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    got = last_line_numbers(run.stdout.splitlines()[-1])
    shown = last_line_numbers((ROOT / "figures" / "maml.txt").read_text().splitlines()[-1])
    for what, margin in SPREAD.items():
        assert abs(got[what] - shown[what]) <= margin, (what, got, shown)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built once by `mkdocs build --strict` (not -q, which hides failures): its folder
    and its log, for the tests that read the build."""
    folder = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_S)
    return folder, result.returncode, result.stdout + result.stderr


@pytest.mark.slow
def test_strict_build_passes_without_warnings(site):
    """`mkdocs build --strict` exits 0 and logs no WARNING; the figures and MathJax are in it."""
    folder, returncode, log = site
    assert returncode == 0, log
    assert "WARNING" not in log, log
    assert (folder / "index.html").is_file()
    assert (folder / "figures" / "adaptation.png").is_file(), "the figures were not copied into the site"
    assert (folder / "javascripts" / "mathjax" / "tex-mml-chtml.js").is_file(), "MathJax was not copied"


# What a page loads: <script src>, <link href> (stylesheets, fonts, icons), <img src>, and in CSS
# url(...) and @import. A link to read (<a href>) loads nothing and may point anywhere.
LOADS = re.compile(r"""<(?:script|link|img|source|iframe)\b[^>]*?\b(?:src|href)\s*=\s*["']([^"']+)["']""", re.I)
CSS_LOADS = re.compile(r"""url\(\s*["']?([^"')]+)|@import\s+["']([^"']+)""", re.I)


def other_hosts(urls):
    """The URLs that name a host (scheme://host or //host): all but the site's own paths and data:."""
    return sorted({u for u in urls if re.match(r"^([a-z][a-z0-9+.-]*:)?//", u.strip(), re.I)})


@pytest.mark.slow
def test_no_page_loads_a_script_stylesheet_or_font_from_another_host(site):
    """With no network the site still renders its maths and text: every script, stylesheet, font
    and image that a built page or stylesheet loads is a file of the site itself."""
    folder, returncode, log = site
    assert returncode == 0, log
    html = sorted(folder.rglob("*.html"))
    css = sorted(folder.rglob("*.css"))
    assert len(html) > 10 and css, "no built pages to read"
    found = {p.relative_to(folder).as_posix(): other_hosts(LOADS.findall(p.read_text())) for p in html}
    for p in css:
        found[p.relative_to(folder).as_posix()] = other_hosts(u for m in CSS_LOADS.findall(p.read_text())
                                                              for u in m if u)
    assert not {page: urls for page, urls in found.items() if urls}
    # and the maths library a page loads is there
    assert '<script src="../javascripts/mathjax/tex-mml-chtml.js"></script>' in (folder / "walkthrough" / "index.html").read_text()


def test_compare_remakes_the_committed_comparison_table():
    """studies/compare.py, run on the committed results of both settings, gives
    figures/comparison.md exactly: the table the README and the Results page show cannot drift
    from the runs."""
    from studies import compare

    loaded = {setup: compare.load(setup, root=str(ROOT / "figures")) for setup in compare.SETUPS}
    table = compare.render(compare.numbers(loaded))
    assert table == (ROOT / "figures" / "comparison.md").read_text()
