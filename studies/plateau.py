"""Why some runs end far from the paper: the plateau where MAML's training starts, measured.

Every run's training loss starts on a plateau and, at some step, falls below half its start (it
"leaves the plateau"; report.training_numbers). This reads that step for every run of the
committed twenty-run results (figures/code, figures/paper), beside its K = 5 MSE, and then
  1. trains the slow runs again, MAML alone, for twice the steps (70,000 on exactly the task
     stream experiment.py gave them, 70,000 on a second stream of the same key): do they catch up?
  2. fills the 2 x 2 of initialisation (stax's, the released code's) by inner step size (0.01,
     0.001), training the two cells the setups do not cover, MAML alone, 10 runs each.
Writes plateau.json, and plateau.md rendered from it, into --out (figures).

    python -m studies.plateau          # about 40 minutes on two CPU cores
    python -m studies.plateau --quick --out /tmp/p  # 300 steps on 50 tasks: a smoke run
"""
import os

import numpy as np
from jax import random, vmap
from jax.tree_util import tree_map

import experiment
import maml
from machinery import program, report

SLOW = 5_000  # a run is slow if its training loss leaves the plateau after this step, or never
GRID = {("stax", 0.01): "paper", ("code", 0.001): "code",  # covered by the twenty-run results
        ("stax", 0.001): None, ("code", 0.01): None}  # trained here


def committed_runs(results):
    """Per run of a results.json: its seed, when MAML's and the baseline's training left the
    plateau, and MAML's K = 5 held-out MSE (the run's mean) after 1, 5 and 10 steps."""
    cell = report.cell(results, "MAML", 5)
    return [dict(seed=seed, maml_leaves=results["training"]["MAML"]["leaves_plateau"][r],
                 baseline_leaves=results["training"]["pretrained"]["leaves_plateau"][r],
                 k5={n: run["mean"][n] for n in (1, 5, 10)})
            for r, (seed, run) in enumerate(zip(results["seeds"], cell["runs"]))]


def is_slow(leaves):
    return leaves is None or leaves > SLOW


def train_maml(setup, seeds, blocks, test_seed=0, n_tasks=600):
    """MAML alone for the runs of `seeds` at once, `blocks` times setup["steps"] steps: block 0 on
    each run's own stream, exactly as experiment.py draws it; block b > 0 goes on from block
    b - 1's optimizer state on the stream of fold_in(key, b). Returns, per block, each run's mean
    K = 5 MSE after 1, 5 and 10 steps (on the held-out tasks of test_seed), and the training
    numbers."""
    keys = np.stack([experiment.run_keys(s, 1)[:, 0] for s in seeds], axis=1)  # (5, runs, 2)
    params = vmap(experiment.INITS[setup["init"]])(keys[0])
    compiled = experiment.compile_training(maml.step, tree_map(lambda a: a[0], params), setup,
                                           len(seeds))
    test = experiment.held_out_tasks(test_seed, n_tasks, setup["amp_range"])
    alphas = np.full(len(seeds), setup["alpha"], np.float32)
    state = vmap(maml.opt_init)(params)
    losses = []
    after = []
    for b in range(blocks):
        stream = keys[1] if b == 0 else np.asarray(vmap(random.fold_in, (0, None))(keys[1], b))
        state, block, _ = experiment.train(compiled, state, stream, setup, f"block {b + 1}",
                                           start=(b * setup["steps"], ()))
        losses.append(block)
        mse = experiment.run_curves(maml.get_params(state), test, 5, alphas)
        after.append([{n: report.run_numbers(m)["mean"][n] for n in (1, 5, 10)} for m in mse])
        print(f"  block {b + 1}/{blocks} of seeds {seeds}: K = 5 after 10 steps "
              + ", ".join(f"{m[10]:.3f}" for m in after[-1]), flush=True)
    return after, report.training_numbers(np.concatenate(losses))


def catch_up(name, runs, setup, args):
    """The slow runs of one setting, trained again for twice the steps."""
    slow = [r["seed"] for r in runs if is_slow(r["maml_leaves"])]
    if not slow:
        return dict(seeds=[], at_70k=[], at_140k=[], leaves_plateau=[])
    print(f"{name}: slow seeds {slow}, trained again for {2 * setup['steps']:,} steps", flush=True)
    after, training = train_maml(setup, slow, 2, n_tasks=args.eval_tasks)
    return dict(seeds=slow, at_70k=after[0], at_140k=after[1],
                leaves_plateau=training["leaves_plateau"])


def grid_cell(init, alpha, committed, args):
    """One cell of initialisation by inner step size: each run's plateau step and K = 5 means."""
    if GRID[init, alpha]:  # a setup's own cell: its twenty runs
        runs = committed[GRID[init, alpha]]
        return dict(source=f"figures/{GRID[init, alpha]}/results.json",
                    seeds=[r["seed"] for r in runs],
                    leaves_plateau=[r["maml_leaves"] for r in runs], k5=[r["k5"] for r in runs])
    base = "paper" if init == "stax" else "code"
    setup = dict(experiment.SETUPS[base], alpha=alpha, steps=args.steps or
                 experiment.SETUPS[base]["steps"])
    seeds = list(range(args.grid_runs))
    print(f"cell {init} x {alpha}: {len(seeds)} runs of MAML", flush=True)
    after, training = train_maml(setup, seeds, 1, n_tasks=args.eval_tasks)
    return dict(source=f"trained here: --setup {base} --alpha {alpha}, MAML alone", seeds=seeds,
                leaves_plateau=training["leaves_plateau"], k5=after[0])


def measure(args):
    committed = {name: committed_runs(program.read_json(os.path.join(args.figures, name,
                                                                       "results.json")))
                 for name in ("code", "paper")}
    setups = {name: dict(experiment.SETUPS[name], steps=args.steps or
                         experiment.SETUPS[name]["steps"]) for name in committed}
    return dict(slow_after=SLOW,
                window=report.PLATEAU_WINDOW, committed=committed,
                catch_up={name: catch_up(name, runs, setups[name], args)
                          for name, runs in committed.items()},
                grid=[dict(init=init, alpha=alpha, **grid_cell(init, alpha, committed, args))
                      for init, alpha in GRID])


def steps_text(leaves):
    return "never" if leaves is None else f"{leaves:,}"


def runs_table(data):
    return program.table(
        ["setting", "seed", "MAML leaves the plateau at step", "MAML, K = 5, after 10 steps",
         "baseline leaves the plateau at step"],
        [[f"`{name}`", r["seed"], steps_text(r["maml_leaves"]), report.number(r["k5"]["10"]),
          steps_text(r["baseline_leaves"])] for name, runs in data["committed"].items()
         for r in runs], "lrrrr")


def catch_up_table(data):
    rows = []
    for name, c in data["catch_up"].items():
        first = {r["seed"]: r for r in data["committed"][name]}
        rows += [[f"`{name}`", seed,
                  f"{steps_text(first[seed]['maml_leaves'])}; {steps_text(leaves)}",
                  f"{report.number(first[seed]['k5']['10'])}; {report.number(at_70k['10'])}",
                  report.number(at_140k["10"])]
                 for seed, leaves, at_70k, at_140k in zip(c["seeds"], c["leaves_plateau"],
                                                          c["at_70k"], c["at_140k"])]
    return program.table(
        ["setting", "seed", "leaves the plateau at step (twenty-run result; again)",
         "K = 5, 10 steps, after 70,000 steps (twenty-run result; again)",
         "after 140,000 steps"], rows, "lrrrr")


def spread_text(values):
    v = np.array(values)
    return (f"{report.number(v.mean())}, median {report.number(np.median(v))} "
            f"[{report.number(v.min())}, {report.number(v.max())}]")


def grid_table(data):
    rows = [[cell["init"], f"{cell['alpha']:g}", len(cell["seeds"]),
             f"{sum(is_slow(s) for s in cell['leaves_plateau'])} of {len(cell['seeds'])}",
             *(spread_text([m[n] for m in cell["k5"]]) for n in ("1", "5", "10"))]
            for cell in data["grid"]]
    return program.table(["initialisation", "inner step", "runs", "slow runs",
                          "K = 5 after 1 step", "5 steps", "10 steps"], rows, "lrrrrrr")


def render(data):
    """figures/plateau.md, from the data alone."""
    return "\n".join(
        [f"A run leaves the plateau at the first step whose {data['window']}-step mean training "
         f"loss is below half that of its first {data['window']} steps; a run is slow if that "
         f"comes after step {data['slow_after']:,}, or never. Made by `{data['command']}`.", "",
         "**The 2 x 2: initialisation by inner step size** (MAML's K = 5 held-out MSE: mean over "
         "runs, median [lowest, highest])", "", grid_table(data),
         "**The slow runs, given twice the steps**", "", catch_up_table(data),
         "**Every run**", "", runs_table(data)])


def parse_args(argv=None):
    ap = program.figures_parser("plateau", __doc__.splitlines()[0],
                                "plateau.json and plateau.md")
    ap.add_argument("--quick", action="store_true", help="300 steps, 2 runs a cell, 50 tasks")
    args = program.parse(ap, argv)
    program.check_saved(ap, args, ("code", "paper"), ("results.json",))
    args.steps = 300 if args.quick else None  # None: each setup's own
    args.grid_runs = 2 if args.quick else 10
    args.eval_tasks = 50 if args.quick else 600
    return args


def main(argv=None):
    args = parse_args(argv)
    load_before = program.load()
    measured = measure(args)
    data = report.plain(dict(program.record("studies.plateau", args.argv,
                                            program.jax_device(), [load_before]), **measured))
    print(program.write(args.out, "plateau", data, render), end="")


if __name__ == "__main__":
    main()
