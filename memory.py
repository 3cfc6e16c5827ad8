"""Will it fit? XLA's own count of a compiled computation's memory, against what the device has.

experiment.py asks before it trains, so a run too large for the machine stops within seconds with
one line naming the flags, instead of failing (or swapping) an hour in.
"""
import os


def available():
    """Bytes the default device can still take: what the accelerator reports, or on the CPU the
    operating system's count of available memory (free memory plus caches it can drop)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    try:
        with open("/proc/meminfo") as f:
            return 1024 * int(next(ln for ln in f if ln.startswith("MemAvailable:")).split()[1])
    except (OSError, StopIteration):  # not Linux: the free pages
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def needs(compiled):
    """The bytes one call of a compiled computation holds at its peak, by XLA's own account:
    its arguments, its outputs and its temporaries."""
    m = compiled.memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes


def readable(n_bytes):
    """1536 -> '1.5 KiB'."""
    unit = max(u for u in range(5) if n_bytes >= 1024 ** u or u == 0)
    return f"{n_bytes / 1024 ** unit:.1f} {['B', 'KiB', 'MiB', 'GiB', 'TiB'][unit]}"


def refuse_if_over(error, flags, what, need, counted, lower_bound=False):
    """Call error (argparse's: one line, exit 2) if `need` bytes exceed what is available now.
    `what` says what needs them, `counted` how they were counted; a lower bound says "at least"."""
    free = available()
    if need > free:
        error(f"argument {flags}: {what} needs {'at least ' * lower_bound}{readable(need)} "
              f"({counted}), more than the {readable(free)} available")


TRAINING_FLAGS = "--tasks/--k/--steps/--seeds"


def training(runs, steps, tasks, k):
    return f"training {runs:,} run(s) of {steps:,} steps of {tasks:,} tasks with K = {k:,}"


def check_tasks(error, runs, steps, tasks, k, longest_chunk):
    """Stop now (exit 2) if one training chunk's tasks alone, which its loop must hold, exceed the
    available memory. A lower bound, counted before compiling: XLA is not asked to compile shapes
    that cannot fit (jax 0.4.29's XLA crashes compiling loops over ~1e13 elements)."""
    # x1, y1, x2, y2 of every task of every run, K numbers each, 4 bytes a float32
    need = longest_chunk * runs * tasks * 4 * k * 4
    refuse_if_over(error, TRAINING_FLAGS, training(runs, steps, tasks, k), need,
                   "a chunk's tasks alone", lower_bound=True)


def check_compiled(error, runs, steps, tasks, k, eval_tasks, train_loops, evaluation):
    """Stop now (exit 2, one line naming the flags) if training or evaluation cannot fit: XLA's
    count of every compiled training loop (the largest) and of the evaluation's programs (all at
    once), and the host's arrays of keys and losses. Nothing has run yet."""
    host = runs * steps * (8 + 2 * 4)  # each step's key, and two losses, per run
    refuse_if_over(error, TRAINING_FLAGS, training(runs, steps, tasks, k),
                   max(needs(c) for c in train_loops) + host, "XLA's count")
    refuse_if_over(error, "--eval-tasks/--seeds", f"evaluating {runs:,} run(s) on {eval_tasks:,} "
                   "held-out tasks", sum(needs(c) for c in evaluation), "XLA's count")
