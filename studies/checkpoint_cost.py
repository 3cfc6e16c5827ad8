"""What saving a checkpoint after every chunk costs a run of experiment.py: its time per meta-step
with and without, the median of interleaved rounds (on a shared machine only their ratio, measured
side by side, means much), and the checkpoint's size at the end of training.

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


def measure(seeds, steps, rounds, every):
    """One point: each round's time per step with and without checkpoints, the file's size, and
    the median of 15 saves of a default run's whole checkpoint (both models, 70,000 losses each):
    set against a default chunk (3,500 steps), the overhead's bound, less noisy than the ratio."""
    setup = dict(experiment.SETUPS["code"], steps=steps)
    keys = experiment.run_keys(0, seeds)
    init = vmap(experiment.code_init)(keys[0])
    compiled = experiment.compile_training(maml.step, tree_map(lambda a: a[0], init), setup,
                                           seeds)
    fresh = vmap(maml.opt_init)(init)  # every training's start (train copies, never mutates)

    def timed(folder):  # s per meta-step as train reports it; checkpoints into folder, if any
        at_chunk = folder and checkpoint.saver(
            SimpleNamespace(out=folder, argv=[], checkpoint_every=every), {"run": "timing"}, {},
            "MAML", checkpoint.Stopper(), steps)
        return experiment.train(compiled, fresh, keys[1], setup, "MAML", log=str,
                                at_chunk=at_chunk)[2]
    times, saves = {"without": [], "with": []}, []
    with tempfile.TemporaryDirectory() as folder:
        for r in range(rounds):  # interleaved, the order alternating from round to round
            for way in (("without", "with") if r % 2 == 0 else ("with", "without")):
                times[way].append(timed(folder if way == "with" else None))
        size = os.path.getsize(os.path.join(folder, checkpoint.NAME))
        whole = (fresh, 70_000, np.zeros((70_000, seeds), np.float32))
        for _ in range(15):
            t0 = time.perf_counter()
            checkpoint.save(folder, {"run": "timing"}, {"MAML": whole, "pretrained": whole})
            saves.append(time.perf_counter() - t0)
    ms = {way: 1e3 * statistics.median(t) for way, t in times.items()}
    return dict(seeds=seeds, steps=steps, every_s=every, chunks=len(experiment.chunks(steps)),
                bytes=size, ms_rounds={w: [1e3 * t for t in ts] for w, ts in times.items()},
                ms=ms, ratio=ms["with"] / ms["without"], save_ms=1e3 * statistics.median(saves),
                default_chunk_ms=1e3 * 70_000 / 20 * statistics.median(times["without"]))


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
