"""What stops experiment.py before it starts, within seconds and before anything is
written, in one line naming the flag (exit 2): a bad value, an --out that cannot be
written, a run too big for memory (XLA's count of the compiled programs).
"""
import math
import os
import sys

from machinery import program
from machinery.program import checked


def add_flags(ap, setups, default):
    """experiment.py's flags on `ap`, each with its check and default (a setup's value
    where the setup sets it)."""
    count = checked(int, lambda v: v >= 1, "a whole number >= 1")
    positive = checked(float, lambda v: 0 < v < math.inf, "a finite number > 0")
    ap.add_argument("--setup", choices=setups, default=default, help="the paper's "
                    f"text, the authors' released code, or the 2019 blog ({default})")
    for flag, kind, metavar, what in (
            ("steps", count, "N", "meta-training steps, and the baseline's"),
            ("tasks", count, "N", "tasks per meta-batch"),
            ("k", count, "K", "support and query points per task"),
            ("alpha", positive, "A", "inner step size")):
        values = ", ".join(f"{s} {setups[s][flag]:,}" for s in setups)  # paper 25, ...
        ap.add_argument(f"--{flag}", type=kind, metavar=metavar,
                        help=f"{what} ({values})")
    seed = checked(int, lambda v: 0 <= v < 2**32, "a whole number in [0, 2**32)")
    ap.add_argument("--seed", default=0, metavar="S", type=seed,
                    help="seed of run 0; run r uses seed S + r (0)")
    ap.add_argument("--seeds", type=count, default=1, metavar="N",
                    help="independent runs, trained together as one computation (1)")
    two = checked(int, lambda v: v >= 2, "a whole number >= 2")
    ap.add_argument("--eval-tasks", type=two, default=600, metavar="N",
                    help="held-out tasks to evaluate on (600)")
    ap.add_argument("--out", metavar="DIR", help="folder for the figures, "
                    "results.json, results.txt and params.npz, created when missing "
                    "(runs/SETUP-seedS, which git ignores; the committed results are "
                    "remade with --out figures/...)")
    seconds = checked(float, lambda v: v >= 0, "a number >= 0")
    ap.add_argument("--checkpoint-every", type=seconds, default=10.0, metavar="S",
                    help="seconds between checkpoints, at chunk boundaries; one is "
                    "always saved at a stop and at a model's end (10)")
    ap.add_argument("--resume", action="store_true", help="go on from the checkpoint "
                    "in --out of a run with the same flags, if there is one; start if "
                    "there is none")


def parse_args(argv, setups, default):
    """experiment.py's flags, and the setup they choose (`default` without --setup) with
    the values they override. A bad value stops here in one line (exit 2)."""
    ap = program.parser("experiment.py",
                        "MAML on the sinusoid regression of Finn et al. 2017.")
    add_flags(ap, setups, default)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    args.argv = [word for word in argv if word != "--resume"]  # the results' command
    args.out = args.out or os.path.join("runs", f"{args.setup}-seed{args.seed}")
    if args.seed + args.seeds > 2**32:  # what no single flag's type can check
        ap.error(f"argument --seeds: run r uses seed {args.seed} + r, which must stay "
                 f"below 2**32; expected at most {2**32 - args.seed:,}, got "
                 f"{args.seeds:,}")
    program.check_out(ap.error, args.out)  # now, not after training
    setup, args.defaults = dict(setups[args.setup]), setups[args.setup]
    setup.update({name: getattr(args, name) for name in ("steps", "tasks", "k", "alpha")
                  if getattr(args, name) is not None})
    return args, setup, ap


def available():
    """Bytes the default device can still take: the accelerator's count, or on the CPU
    the system's MemAvailable (free memory and the caches it can drop)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    try:
        with open("/proc/meminfo") as f:
            line = next(ln for ln in f if ln.startswith("MemAvailable:"))
            return 1024 * int(line.split()[1])
    except (OSError, StopIteration):  # not Linux: the free pages
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# -8<- [start:memory]
def needs(compiled):
    """The bytes one call of a compiled computation holds at its peak, by XLA's own
    account: its arguments, its outputs and its temporaries."""
    m = compiled.memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes


def readable(n_bytes):
    """1536 -> '1.5 KiB'."""
    unit = max(u for u in range(5) if n_bytes >= 1024 ** u or u == 0)
    return f"{n_bytes / 1024 ** unit:.1f} {['B', 'KiB', 'MiB', 'GiB', 'TiB'][unit]}"


def refuse_if_over(error, flags, what, need, counted, lower_bound=False):
    """error (one line) if the `need` bytes of `what` (as `counted`) exceed what is
    available. flags: {flag: (value, default)}, that the need grows with in proportion:
    the line names the one furthest above its default, and the largest value to fit."""
    free = available()
    if need > free:
        flag, (value, default) = max(flags.items(), key=lambda f: f[1][0] / f[1][1])
        error(f"argument {flag}: {what} needs {'at least ' * lower_bound}"
              f"{readable(need)} ({counted}), more than the {readable(free)} available;"
              f" expected {flag} at most about {max(1, int(value * free / need)):,}, "
              f"got {value:,}")


def refuse_training(error, args, setup, need, counted, lower_bound=False):
    """refuse_if_over for training, naming the flags its memory grows with."""
    flags = {"--tasks": (setup["tasks"], args.defaults["tasks"]),
             "--k": (setup["k"], args.defaults["k"]), "--seeds": (args.seeds, 1)}
    what = (f"training {args.seeds:,} run(s) of {setup['steps']:,} steps of "
            f"{setup['tasks']:,} tasks with K = {setup['k']:,}")
    refuse_if_over(error, flags, what, need, counted, lower_bound)
# -8<- [end:memory]


# -8<- [start:check_compiled]
def check_tasks(error, args, setup, longest_chunk):
    """Stop (exit 2) if a training chunk's tasks alone exceed the memory: a lower bound
    counted before compiling (jax 0.4.29's XLA crashes compiling loops over ~1e13
    elements)."""
    # x1, y1, x2, y2 of every task of every run, K numbers each, 4 bytes a float32
    need = longest_chunk * args.seeds * setup["tasks"] * 4 * setup["k"] * 4
    refuse_training(error, args, setup, need, "a chunk's tasks alone", lower_bound=True)


def check_compiled(error, args, setup, train_loops, evaluation):
    """Stop (exit 2) before anything runs if training or evaluation cannot fit: XLA's
    count of the largest training loop plus the host's keys and losses, and of all the
    evaluation's programs at once."""
    runs = args.seeds
    host = runs * setup["steps"] * (8 + 2 * 4)  # a step's key and two losses, per run
    need = max(map(needs, train_loops)) + host
    refuse_training(error, args, setup, need, "XLA's count")
    flags = {"--eval-tasks": (args.eval_tasks, 600), "--seeds": (runs, 1)}
    refuse_if_over(error, flags, f"evaluating {runs:,} run(s) on {args.eval_tasks:,} "
                   "held-out tasks", sum(needs(c) for c in evaluation), "XLA's count")
# -8<- [end:check_compiled]
