"""What stops experiment.py before it trains, within seconds and before anything is
written, in one line naming the flag (flags.Refused, exit 2): a run too big for memory,
counted from the flags before anything grows with them, then by XLA's count of the
compiled programs.
"""
import math
import os

from machinery.flags import Refused


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


def refuse_if_over(what, counted, terms, flags, lower_bound=False):
    """Refused if a need exceeds the memory available. terms: the need's parts, (bytes,
    the flags they grow with in proportion); flags: {flag: (value, default)}. The line
    names, of the flags that lowered alone would make the need fit, the one furthest
    above its default, and the largest value that fits; if none would alone, the flags
    of the largest part that are above their defaults, and their product."""
    free = available()
    need = sum(size for size, _ in terms)
    if need <= free:
        return
    fits = {}
    for flag, (value, _) in flags.items():
        grown = sum(size for size, grows in terms if flag in grows)
        fit = int(value * (free - (need - grown)) / grown) if grown else 0
        if fit >= 1:
            fits[flag] = fit
    at_least = "at least " if lower_bound else ""
    line = (f"{what} needs {at_least}{readable(need)} ({counted}), more than the "
            f"{readable(free)} available")
    if fits:
        flag = max(fits, key=lambda f: flags[f][0] / flags[f][1])
        raise Refused(flag, f"{line}; expected {flag} at most about {fits[flag]:,}, "
                            f"got {flags[flag][0]:,}")
    largest = max(terms, key=lambda term: term[0])[1]
    named = [f for f in largest if flags[f][0] > flags[f][1]] or list(largest)
    product = math.prod(flags[f][0] for f in named)
    raise Refused(" x ".join(named), f"{line}; expected a smaller product, got "
                                     f"{product:,}")
# -8<- [end:memory]


# -8<- [start:check]
def check(args, setup, training, evaluating, counted, lower_bound=False):
    """Refused if training or evaluation cannot fit: the parts of what each holds at
    once that grow with the flags, [(bytes, the flags they grow with in proportion)],
    and both models' losses, kept throughout; `counted`: how the parts were counted."""
    flags = {"--steps": (setup["steps"], args.defaults["steps"]),
             "--tasks": (setup["tasks"], args.defaults["tasks"]),
             "--k": (setup["k"], args.defaults["k"]), "--seeds": (args.seeds, 1),
             "--eval-tasks": (args.eval_tasks, 600)}
    losses = (setup["steps"] * args.seeds * 4 * 2, ("--steps", "--seeds"))
    refuse_if_over(f"training {args.seeds:,} run(s) of {setup['steps']:,} steps of "
                   f"{setup['tasks']:,} tasks with K = {setup['k']:,}", counted,
                   [*training, losses], flags, lower_bound)
    refuse_if_over(f"evaluating {args.seeds:,} run(s) on {args.eval_tasks:,} held-out "
                   "tasks", counted, [*evaluating, losses], flags, lower_bound)


def check_sizes(args, setup, longest_chunk, n_params):
    """check, counted from the flags before anything grows with them or compiles: a
    chunk's tasks (x1, y1, x2 and y2, K numbers each, 4 bytes a number), each run's
    parameters with Adam's two moments and the initial ones, and a number per held-out
    task, run, model and K."""
    runs = args.seeds
    params = (runs * n_params * 4 * 4, ("--seeds",))
    tasks = longest_chunk * runs * setup["tasks"] * setup["k"] * 4 * 4
    curves = args.eval_tasks * runs * 4 * 4
    check(args, setup, [(tasks, ("--tasks", "--k", "--seeds")), params],
          [(curves, ("--eval-tasks", "--seeds")), params], "counted before compiling",
          lower_bound=True)


def check_compiled(args, setup, training_loops, evaluation):
    """check by XLA's count of the largest training loop and of the evaluation."""
    loop = max(map(needs, training_loops))
    check(args, setup, [(loop, ("--tasks", "--k", "--seeds"))],
          [(needs(evaluation), ("--eval-tasks", "--seeds"))], "XLA's count")
# -8<- [end:check]
