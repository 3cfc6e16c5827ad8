"""studies/anil.py: its committed table is the rendering of its JSON, the Variations page's numbers
are the JSON's, and its ANIL adapts the last layer alone."""
import re

import jax.numpy as jnp
import numpy as np
from jax import grad, random

import maml
from machinery import program
from studies import anil
from studies.conftest import ROOT

DATA = program.read_json(ROOT / "figures" / "anil.json")


def test_the_committed_table_is_the_rendering_of_its_json():
    assert (ROOT / "figures" / "anil.md").read_text() == anil.render(DATA)


def test_the_variations_page_numbers_are_the_json_numbers():
    section = " ".join((ROOT / "docs" / "variations.md").read_text().split("\n## ANIL", 1)[1].split())
    m = DATA["models"]

    def mean(model, k, n):
        return f"{m[model]['cells'][k]['over_runs']['mean'][n]:.3f}"
    assert f"{mean('ANIL', '5', 1)} against {mean('MAML', '5', 1)} with $K = 5$" in section
    assert f"{mean('ANIL', '10', 1)} against {mean('MAML', '10', 1)} with $K = 10$" in section
    a, b = m["ANIL"]["cells"], m["MAML"]["cells"]
    for k in ("5", "10"):
        assert a[k]["over_runs"]["mean"][1] - a[k]["over_runs"]["half"][1] > \
            b[k]["over_runs"]["mean"][1] + b[k]["over_runs"]["half"][1]
    runaway = sum(r["runaway"][10] for r in a["5"]["runs"])
    assert f"{runaway} of its {DATA['seeds'] * DATA['eval_tasks']:,}" in section
    assert a["5"]["over_runs"]["dominated"][10] == DATA["seeds"] == 5
    assert sum(r["runaway"][10] for r in b["5"]["runs"]) == 0  # "MAML has none"
    assert sum(r["runaway"][10] for r in a["10"]["runs"]) == 1  # "one task does"
    ratio = a["10"]["over_runs"]["mean"][10] / b["10"]["over_runs"]["mean"][10]
    assert 4.5 < ratio < 5.5, ratio  # "about five times"
    assert DATA["setup_name"] == "code" and DATA["seeds"] >= 5 and DATA["steps"] == 70_000
    assert re.search(r"`python -m studies\.anil`", section)


def test_anil_moves_the_head_alone_and_its_meta_gradient_reaches_the_body():
    params = maml.net_init(random.PRNGKey(0), (-1, 1))[1]
    x1, y1, x2, y2 = (a[0] for a in maml.sample_tasks(random.PRNGKey(1), 1, 10))
    adapted = anil.anil_inner_update(params, x1, y1)
    for i in (0, 2):
        for got, want in zip(adapted[i], params[i]):
            np.testing.assert_array_equal(got, want)
    assert not jnp.array_equal(adapted[4][0], params[4][0])
    body = grad(anil.anil_loss)(params, x1, y1, x2, y2)
    assert all(jnp.linalg.norm(a) > 0 for i in (0, 2) for a in body[i])
