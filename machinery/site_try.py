"""MkDocs hook: the trained networks that the "Try it" page adapts in the browser.

When the site is built, it writes javascripts/maml-run.json from the committed default
run, figures/code (params.npz and results.json): run RUN's MAML and pretrained networks
in maml.py's layout as nested lists, [[W1, b1], [], [W2, b2], [], [W3, b3]], MAML's
alpha, and the baseline's step size tuned for each K. The float32 numbers are written
exactly, as the float64 of the same value. Nothing is copied by hand or committed.
"""
import json
from pathlib import Path

import numpy as np

RUN_FOLDER = Path("figures", "code")  # experiment.py's DEFAULT setup, twenty runs
RUN = 0  # the first, seed 0: the run its figures and results.txt show first
TARGET = Path("javascripts", "maml-run.json")  # docs/javascripts/try.js reads it


def nested(saved, name):
    """Run RUN's parameters of one model (name/0 to name/5) in maml.py's layout."""
    w1, b1, w2, b2, w3, b3 = (saved[f"{name}/{i}"][RUN].tolist() for i in range(6))
    return [[w1, b1], [], [w2, b2], [], [w3, b3]]


def exported(folder):
    """What the page needs, from a folder that experiment.py wrote."""
    results = json.loads((folder / "results.json").read_text())
    saved = np.load(folder / "params.npz")
    sizes = {(c["model"], c["k"]): c["step_sizes"][RUN] for c in results["cells"]}
    return {"folder": RUN_FOLDER.as_posix(), "command": results["command"], "run": RUN,
            "seed": results["seeds"][RUN], "alpha": results["setup"]["alpha"],
            "amp_range": results["setup"]["amp_range"],
            "step_sizes": {k: sizes["pretrained", k] for _, k in sizes},
            "MAML": nested(saved, "MAML"), "pretrained": nested(saved, "pretrained")}


def on_post_build(config):
    """Write the file into the built site (also under `mkdocs serve`)."""
    folder = Path(config["config_file_path"]).parent / RUN_FOLDER
    target = Path(config["site_dir"], TARGET)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(exported(folder)))
