"""What second order costs: studies/cost.py, its committed data, and the page that shows them.

Run with `python -m pytest test_cost.py`. The checks:
- `python -m studies.cost --quick` runs, and XLA's memory counts order the modes as the page says
  they must: at the largest S, checkpointing holds fewer temporaries than plain second order, and
  first order fewer than either;
- the fitted growth rates in cost.json are what a least-squares fit of its own raw numbers gives,
  and cost.md is cost.json's tables, for the quick run and for the committed figures/;
- the committed sweep covers the issue's sizes, and every number the Performance page states
  about it is recomputed here from figures/cost.json.
Speed is measured by the program, never asserted: only memory, which XLA counts exactly.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from studies.cost import MODES

from studies.conftest import ROOT
COMMITTED = ROOT / "figures" / "cost.json"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The quick run's cost.json, with the folder it wrote."""
    out = tmp_path_factory.mktemp("cost")
    result = subprocess.run([sys.executable, "-m", "studies.cost", "--quick", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "cost.json").read_text()), out


def points(data, **where):
    return [p for p in data["points"] if all(p[k] == v for k, v in where.items())]


def test_quick_run_writes_its_three_files_and_times_every_point(quick):
    data, out = quick
    assert (out / "cost.png").stat().st_size > 10_000
    assert data["command"] == f"python -m studies.cost --quick --out {out}"
    for p in data["points"]:
        assert p["finite"] and len(p["ms_rounds"]) == data["rounds"] == 2, p
        assert all(math.isfinite(t) and t > 0 for t in p["ms_rounds"]), p


@pytest.mark.parametrize("source", ["quick", "committed"])
def test_memory_of_the_modes_at_the_largest_s(source, quick):
    """Checkpointing keeps fewer temporaries than second order, first order fewer than both."""
    data = quick[0] if source == "quick" else json.loads(COMMITTED.read_text())
    largest = max(data["sizes"]["steps"])
    temp = {p["mode"]: p["temp_bytes"] for p in points(data, sweep="inner steps", S=largest)}
    assert temp["first order"] < temp["checkpointed"] < temp["second order"], temp


def refit(spec, data):
    """The fit, recomputed here from the raw points with numpy alone."""
    x, y = zip(*[(p[spec["x"]], p[spec["y"]]) for p in points(data, **spec["where"])
                 if p[spec["x"]] >= spec["x_from"]])
    x, y = np.array(x, float), np.array(y, float)
    if spec["kind"] == "exponent":
        return np.polyfit(np.log(x), np.log(y), 1)[0], len(x)
    return np.polyfit(x, y, 1)[0], len(x)


@pytest.mark.parametrize("source", ["quick", "committed"])
def test_fits_and_tables_are_recomputed_from_the_raw_numbers(source, quick):
    from studies import cost
    if source == "quick":
        data, out = quick
        md = (out / "cost.md").read_text()
    else:
        data, md = json.loads(COMMITTED.read_text()), (ROOT / "figures" / "cost.md").read_text()
    assert len(data["fits"]) == 3 * 4 + 4
    for f in data["fits"]:
        value, n = refit(f, data)
        # abs_tol: a constant's exponent is 0 up to rounding (1e-15), where rel_tol cannot apply
        assert f["n_points"] == n >= 2, f
        assert math.isclose(f["value"], value, rel_tol=1e-9, abs_tol=1e-9), f
    for p in data["points"]:
        assert p["ms"] == np.median(p["ms_rounds"]), p
    assert md == cost.tables(data)


def test_the_committed_sweep_covers_the_issue_s_sizes():
    data = json.loads(COMMITTED.read_text())
    assert data["command"] == "python -m studies.cost"
    steps, tasks, ks = (1, 2, 5, 10, 20, 50, 100), (1, 5, 25, 100, 400), (5, 10, 50, 200)
    assert sorted((p["mode"], p["S"]) for p in points(data, sweep="inner steps", tasks=25, K=10)) \
        == sorted((m, s) for m in ("second order", "checkpointed", "first order") for s in steps)
    assert sorted((p["tasks"], p["K"]) for p in points(data, sweep="meta-batch", S=1,
                                                       mode="second order")) \
        == sorted((t, k) for t in tasks for k in ks)
    assert all(p["finite"] and len(p["ms_rounds"]) == data["rounds"] for p in data["points"])
    # the exponents over the upper part of each range, as the page says
    assert {(f["x"], f["x_from"]) for f in data["fits"] if f["kind"] == "exponent"} \
        == {("S", 10), ("tasks", 25), ("K", 10)}


def stated_numbers(data):
    """Every number the Performance page's "What second order costs" states, as the page writes
    it (with a word or two of its context), recomputed from cost.json; and the facts that the
    sentences around them claim, asserted."""
    from machinery.preflight import readable as size
    from studies.cost import fitted, ms
    step = {(p["mode"], p["S"]): p for p in points(data, sweep="inner steps")}
    batch = {(p["tasks"], p["K"]): p for p in points(data, sweep="meta-batch")}
    bytes_per = {m: fitted(data, "slope", "temp_bytes", "S", mode=m)
                 for m in ("second order", "checkpointed")}
    ms_per = {m: fitted(data, "slope", "ms", "S", mode=m) for m in ("second order", "first order")}
    params = 25 * 1761 * 4  # every task's adapted parameters, float32
    # checkpointing keeps exactly the adapted parameters per step (within 1%);
    assert abs(bytes_per["checkpointed"] / params - 1) < 0.01
    # first order keeps nothing per step: the same temporaries at every S from 2 on;
    first = {p["temp_bytes"] for (m, s), p in step.items() if m == "first order" and s >= 2}
    assert len(first) == 1
    slower = [step["checkpointed", s]["ms"] / step["second order", s]["ms"]
              for s in data["sizes"]["steps"] if s > 1]
    growth = [fitted(data, "exponent", "ms", "S", mode=m) for m in MODES]
    so1, so100, ck100 = step["second order", 1], step["second order", 100], step["checkpointed", 100]
    big = batch[400, 200]
    return [f"{size(bytes_per['second order'])} per inner step",
            f"{size(so100['temp_bytes'])} at S = 100", f"to {size(bytes_per['checkpointed'])}",
            f"25 × 1,761 × 4 bytes = {size(params)}", f"holds {size(ck100['temp_bytes'])}",
            f"{so100['temp_bytes'] / ck100['temp_bytes']:.1f} times less",
            f"between {min(slower):.2f} and {max(slower):.2f} times",
            f"took {ms(so1['ms'])} ms and {ms(batch[25, 10]['ms'])} ms",
            f"{size(first.pop())} at every S", f"costs {ms(ms_per['first order'])} ms",
            f"second order's {ms(ms_per['second order'])} ms",
            f"{ms_per['second order'] / ms_per['first order']:.1f} times less",
            f"{so1['ms'] / step['first order', 1]['ms']:.1f} times as long",
            f"({ms(so1['ms'])} against {ms(step['first order', 1]['ms'])} ms)",
            *(f"`{f['x']}^{f['value']:.2f}`" for f in data["fits"] if f["x"] in ("tasks", "K")),
            f"needs {size(big['temp_bytes'])} and {ms(big['ms'])} ms",
            f"between {min(growth):.2f} and {max(growth):.2f}",
            f"{size(so100['temp_bytes'])} of temporaries", f"costs {ms(so100['ms'])} ms",
            f"{70_000 * so100['ms'] / 60e3:.0f} minutes",
            f"{bytes_per['second order'] / bytes_per['checkpointed']:.1f} times more steps",
            f"{70_000 * so1['ms'] / 1e3:.0f} seconds at S = 1",
            f"about {data['seconds'] / 60:.0f} minutes",
            "load average {:.1f} at the start and {:.1f} at the end".format(*data["load_average"])]


def test_the_performance_page_states_the_committed_numbers():
    page = (ROOT / "docs" / "performance.md").read_text()
    section = page[page.index("## What second order costs"):]
    section = " ".join(section[:section.index("\n## ", 1)].split())  # line breaks as spaces
    missing = [s for s in stated_numbers(json.loads(COMMITTED.read_text())) if s not in section]
    assert not missing, missing
    assert "![" in section and "(figures/cost.png)" in section
    assert '--8<-- "figures/cost.md"' in section
