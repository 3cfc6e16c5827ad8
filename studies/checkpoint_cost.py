"""What saving a checkpoint after every chunk costs a run of experiment.py: the time per
meta-step of experiment.train with and without the checkpoint, as the median of interleaved
rounds (the machine may be shared: only the ratio, measured side by side, means much), and the
size of the checkpoint at the end of training.

    python -m studies.checkpoint_cost                  # 1 and 20 runs: figures/checkpoint_cost.*
    python -m studies.checkpoint_cost --seeds 1 --steps 1400 --rounds 2 --out /tmp/c  # quick
"""
import os
import statistics
import tempfile
import time
from types import SimpleNamespace

import numpy as np

from jax import vmap
from jax.tree_util import tree_map

import experiment
import maml
from machinery import checkpoint, program


def timed(compiled, init, keys, setup, folder, every):
    """Seconds per meta-step of one whole training, from the second chunk on (as train
    reports it), with experiment.py's checkpoints if `folder` is given."""
    at_chunk = None
    if folder:
        args = SimpleNamespace(out=folder, argv=[], checkpoint_every=every)
        at_chunk = checkpoint.saver(args, {"run": "timing"}, {}, "MAML", checkpoint.Stopper(),
                                    setup["steps"])
    start = (vmap(maml.opt_init)(init), 0, [])
    return experiment.train(compiled, None, keys, setup, "MAML", log=str, resume=start,
                            at_chunk=at_chunk)[2]


def measure(seeds, steps, rounds, every):
    """One point: the per-step times of each round, with and without, the file's size, and the
    time one save of a whole default run's checkpoint takes."""
    setup = dict(experiment.SETUPS["code"], steps=steps)
    keys = experiment.run_keys(0, seeds)
    init = vmap(experiment.code_init)(keys[0])
    compiled = experiment.compile_training(maml.step, tree_map(lambda a: a[0], init), setup,
                                           seeds)
    times = {"without": [], "with": []}
    with tempfile.TemporaryDirectory() as folder:
        for r in range(rounds):  # interleaved, the order alternating from round to round
            for way in (("without", "with") if r % 2 == 0 else ("with", "without")):
                times[way].append(timed(compiled, init, keys[1], setup,
                                        folder if way == "with" else None, every))
        size = os.path.getsize(os.path.join(folder, checkpoint.NAME))
        save_ms = one_save(folder, vmap(maml.opt_init)(init), seeds)
    ms = {way: 1e3 * statistics.median(t) for way, t in times.items()}
    return dict(seeds=seeds, steps=steps, every_s=every, chunks=len(experiment.chunks(steps)),
                bytes=size, ms_rounds={w: [1e3 * t for t in ts] for w, ts in times.items()},
                ms=ms, ratio=ms["with"] / ms["without"], save_ms=save_ms,
                default_chunk_ms=1e3 * 70_000 / 20 * statistics.median(times["without"]))


def one_save(folder, opt_state, seeds, repeats=15):
    """Milliseconds one checkpoint of a whole default run takes to write (median): both models'
    state and 70,000 losses each, the largest it gets. Less noisy than the ratio on a shared
    machine: set against a default chunk (3,500 steps), it is the overhead bound."""
    losses = np.zeros((70_000, seeds), np.float32)
    progress = {name: (opt_state, 70_000, losses) for name in ("MAML", "pretrained")}
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        checkpoint.save(folder, {"run": "timing"}, progress)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def render(data):
    rows = [[p["seeds"], f"{p['steps']:,}", f"{p['every_s']:g} s",
             f"{p['ms']['without']:.3f}", f"{p['ms']['with']:.3f}", f"{p['ratio']:.3f}",
             f"{p['bytes'] / 2**20:.2f} MiB", f"{p['save_ms']:.1f} ms",
             f"{100 * p['save_ms'] / p['default_chunk_ms']:.2f}%"] for p in data["points"]]
    return (f"Measured on {program.environment_text(data['environment'])}; {data['when']}; "
            f"load average {data['load'][0]} before, {data['load_after'][0]} after; median of "
            f"{data['rounds']} interleaved rounds. Command: `{data['command']}`\n\n" +
            program.table(["runs", "steps", "--checkpoint-every", "ms/step without",
                           "ms/step with", "with / without", "size", "one save, 70,000 steps",
                           "a save / a default chunk"], rows, "rrrrrrrrr"))


def main(argv=None):
    ap = program.parser("python -m studies.checkpoint_cost", __doc__.split("\n\n")[0],
                        out="figures", what="checkpoint_cost.json and .md")
    ap.add_argument("--seeds", default="1,20", help="run counts to measure (1,20)")
    ap.add_argument("--steps", type=int, default=14_000, help="steps per training (14000)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    ap.add_argument("--every", default="0,10", help="--checkpoint-every values: 0 saves at "
                    "every chunk, 10 is experiment.py's default (0,10)")
    args = program.parse(ap, argv)
    load = program.load()
    points = [measure(int(s), args.steps, args.rounds, e) for s in args.seeds.split(",")
              for e in (float(e) for e in args.every.split(","))]
    data = dict(command=program.command("studies.checkpoint_cost", args.argv), when=program.now(),
                environment=program.environment(program.jax_device()), load=load,
                load_after=program.load(), rounds=args.rounds, points=points)
    print(program.write(args.out, "checkpoint_cost", data, render), end="")


if __name__ == "__main__":
    main()
