"""What a meta-step costs: studies/cost.py, its committed data, and the page that shows them.

Run with `python -m pytest studies/test_cost.py`. The checks:
- `python -m studies.cost --quick` runs (slow), and XLA's memory counts order the modes as the
  page says they must: at the largest S, checkpointing holds fewer temporaries than plain second
  order, and first order fewer than either;
- the fitted growth rates in cost.json are what a least-squares fit of its own raw numbers gives,
  for the quick run and for the committed figures/;
- the committed sweep covers the issue's sizes, and every number the Performance page states
  about it is recomputed here from figures/cost.json.
Speed is measured by the program, never asserted: only memory, which XLA counts exactly.
"""
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest

from machinery.preflight import readable as size
from studies.conftest import HANG_S, ROOT, cpu_env, stated
from studies.cost import MODES, fitted, ms

COMMITTED = ROOT / "figures" / "cost.json"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The quick run's cost.json, with the folder it wrote."""
    out = tmp_path_factory.mktemp("cost") / "new"  # a folder not there yet
    result = subprocess.run([sys.executable, "-m", "studies.cost", "--quick", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=HANG_S, env=cpu_env())
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "cost.json").read_text()), out


def points(data, **where):
    return [p for p in data["points"] if all(p[k] == v for k, v in where.items())]


@pytest.mark.slow
def test_quick_run_writes_its_three_files_and_times_every_point(quick):
    data, out = quick
    assert (out / "cost.png").stat().st_size > 10_000
    assert data["command"] == "python -m studies.cost --quick --out <a path>"  # outside the repo
    for p in data["points"]:
        assert p["finite"] and len(p["ms_rounds"]) == data["rounds"] == 2, p
        assert all(math.isfinite(t) and t > 0 for t in p["ms_rounds"]), p


SOURCES = [pytest.param("quick", marks=pytest.mark.slow), "committed"]


def source_data(source, request):
    """The quick run's cost.json, or the committed one."""
    if source == "committed":
        return json.loads(COMMITTED.read_text())
    return request.getfixturevalue("quick")[0]


@pytest.mark.parametrize("source", SOURCES)
def test_memory_of_the_modes_at_the_largest_s(source, request):
    """Checkpointing keeps fewer temporaries than second order, first order fewer than both."""
    data = source_data(source, request)
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


@pytest.mark.parametrize("source", SOURCES)
def test_fits_are_recomputed_from_the_raw_numbers(source, request):
    data = source_data(source, request)
    assert len(data["fits"]) == 3 * 4 + 4
    for f in data["fits"]:
        value, n = refit(f, data)
        # abs_tol: a constant's exponent is 0 up to rounding (1e-15), where rel_tol cannot apply
        assert f["n_points"] == n >= 2, f
        assert math.isclose(f["value"], value, rel_tol=1e-9, abs_tol=1e-9), f
    for p in data["points"]:
        assert p["ms"] == np.median(p["ms_rounds"]), p


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
    """Every number the Performance page's "What second order costs" states, in order, from
    cost.json; and the facts that the sentences around them claim, asserted."""
    step = {(p["mode"], p["S"]): p for p in points(data, sweep="inner steps")}
    batch = {(p["tasks"], p["K"]): p for p in points(data, sweep="meta-batch")}
    per_byte = {m: fitted(data, "slope", "temp_bytes", "S", mode=m) for m in MODES[:2]}
    per_ms = {m: fitted(data, "slope", "ms", "S", mode=m) for m in MODES[::2]}
    params = 25 * 1761 * 4  # every task's adapted parameters, float32
    assert abs(per_byte["checkpointed"] / params - 1) < 0.01  # the parameters alone, within 1%
    first = {p["temp_bytes"] for (m, s), p in step.items() if m == "first order" and s >= 2}
    assert len(first) == 1  # first order keeps nothing per step
    slower = [step["checkpointed", s]["ms"] / step["second order", s]["ms"]
              for s in data["sizes"]["steps"] if s > 1]
    growth = [fitted(data, "exponent", "ms", "S", mode=m) for m in MODES]
    so1, so100 = step["second order", 1], step["second order", 100]
    ck100 = step["checkpointed", 100]
    fits = {(f["y"], f["x"]): f["value"] for f in data["fits"] if f["x"] in ("tasks", "K")}
    return [
        *size(per_byte["second order"]).split(), *size(so100["temp_bytes"]).split(), "100",
        *size(per_byte["checkpointed"]).split(), "25", "1,761", "4", *size(params).split(),
        f"{so100['temp_bytes'] / ck100['temp_bytes']:.1f}", "100",
        *size(ck100["temp_bytes"]).split(), f"{min(slower):.2f}", f"{max(slower):.2f}", "1",
        ms(so1["ms"]), ms(batch[25, 10]["ms"]), *size(first.pop()).split(), "2",
        ms(per_ms["first order"]), ms(per_ms["second order"]),
        f"{per_ms['second order'] / per_ms['first order']:.1f}", "1",
        f"{so1['ms'] / step['first order', 1]['ms']:.1f}", ms(so1["ms"]),
        ms(step["first order", 1]["ms"]), f"{min(growth):.2f}", f"{max(growth):.2f}",
        "1", *(f"{fits[y, x]:.2f}" for y in ("temp_bytes", "ms") for x in ("tasks", "K")),
        "400", "200", *size(batch[400, 200]["temp_bytes"]).split(), ms(batch[400, 200]["ms"]),
        f"{per_byte['second order'] / per_byte['checkpointed']:.1f}",
        f"{per_ms['second order'] / per_ms['first order']:.1f}",
        *size(so100["temp_bytes"]).split(), "100", ms(so100["ms"]), "70,000",
        f"{70_000 * so100['ms'] / 60e3:.0f}", "100", f"{70_000 * so1['ms'] / 1e3:.0f}", "1"]


def test_the_performance_page_states_the_committed_numbers():
    """The numbers of the page's "What second order costs", in order, are cost.json's (a sentence
    may be reworded freely; a number that is not the JSON's, or one added unchecked, fails)."""
    data = json.loads(COMMITTED.read_text())
    assert stated("docs/performance.md", "## What second order costs") == [
        n for n in stated_numbers(data) if re.match(r"\d", n)]
