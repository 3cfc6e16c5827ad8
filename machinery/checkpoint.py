"""A run's folder, where experiment.py meets its lock, checkpoint, resume and Ctrl-C:
one context manager, `opened`. Each piece against what it protects: the checkpoint (each
model's Adam state and losses, at chunk ends), a killed run's lost training; its record,
going on with another run's; write_whole's rename after an fsync, a torn file; flock on
the folder, two live runs in one folder; the handler, a Ctrl-C that loses work.
"""
import concurrent.futures
import contextlib
import json
import os
import signal
import sys
import time
import zipfile

import jax
import numpy as np
from jax.tree_util import tree_leaves, tree_structure, tree_unflatten

from machinery import flags, report
from machinery.flags import PROG, Refused
from machinery.program import remove_torn, write_whole

NAME = "checkpoint.npz"
STOP_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal, as in shells


# -8<- [start:save]
def save(folder, record, progress):
    """Save progress: {model: (its Adam state, the losses of the steps it trained)}. A
    crash at any instant leaves the last checkpoint or this one, whole."""
    arrays = {"record": np.frombuffer(json.dumps(record).encode(), np.uint8)}
    for name, (opt_state, losses) in progress.items():
        leaves = tree_leaves(opt_state)
        arrays |= {f"{name}/{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
        arrays[f"{name}/losses"] = np.asarray(losses, np.float32)

    def dump(f):
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint
    write_whole(os.path.join(folder, NAME), dump)
# -8<- [end:save]


def load(path):
    """The record and the progress {model: (its state's leaves, losses)} saved at path;
    Refused if it cannot be read (zip's CRC of each array finds a changed byte)."""
    try:
        with np.load(path) as f:
            arrays = {name: f[name] for name in f.files}
        record = json.loads(arrays.pop("record").tobytes())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise Refused("--out", f"{path} cannot be read ({type(e).__name__}); delete it "
                      "to start again") from None
    progress = {}
    for name in sorted({key.split("/")[0] for key in arrays}):
        leaves = [arrays[f"{name}/{i}"] for i in range(len(arrays))
                  if f"{name}/{i}" in arrays]
        progress[name] = (leaves, arrays[f"{name}/losses"])
    return record, progress


def record(args, setup):
    """What a resumed run must share with the checkpoint's to end bit for bit: the
    setup's values, the seeds, and jax's version (another draws other bits)."""
    import jax
    import jaxlib

    mark = dict(setup, seed=args.seed, seeds=args.seeds, jax=jax.__version__,
                jaxlib=jaxlib.__version__)
    return json.loads(json.dumps(mark))  # as a saved one reads back: tuples as lists


def lock(folder, hold=True):
    """Hold `folder` until this process exits (hold=False: only probe); False if a live
    run holds it. The kernel's flock dies with a killed run, so no stale lock blocks a
    resume. Without fcntl (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:
        return True
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    if not hold:
        os.close(fd)  # a probe: free again at once
    return True  # else fd stays open, and the lock held, until the process ends


def busy(folder):
    """The refusal of a folder that a live run holds."""
    return Refused("--out", f"another run is writing to {folder!r} (a live process "
                   "holds it); wait for it to end, or choose another --out")


def remove(folder):
    """A finished run leaves no checkpoint behind: its results are the record."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(folder, NAME))


def computed(fn, *args):
    """fn(*args), computed to the end by XLA in a thread while this one waits in Python,
    where a signal's handler runs at once: inside XLA Python runs none (and up to jax
    0.4.30 a CPU computation holds even the call that starts it)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: jax.block_until_ready(fn(*args))).result()


# -8<- [start:opened]
@contextlib.contextmanager
def opened(args, setup):
    """The run of these flags in its folder (a Run), for the with block. A refusal
    (flags.Refused) stops it in one line, exit 2; a diverged run (exit 1) leaves no
    checkpoint or emptied folder, since it would diverge again; a stopped one (130,
    143) keeps its checkpoint; a finished one removes it, its results the record."""
    before = {s: signal.getsignal(s) for s in STOP_CODES}
    try:
        yield Run(args, setup)
    except Refused as refusal:
        flags.exit_refused(refusal)
    except SystemExit as stop:
        if stop.code not in (*STOP_CODES.values(), 0, 2, None):
            remove(args.out)
            with contextlib.suppress(OSError):
                os.rmdir(args.out)  # only if now empty
        raise
    else:
        remove(args.out)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
# -8<- [end:opened]


# -8<- [start:stopping]
class Run:
    """A run in its folder: what it resumes, the wait before training, train's hook."""

    def __init__(self, args, setup):
        self.signal = None  # the signal that asked to stop, once one has
        for s in STOP_CODES:
            signal.signal(s, self.ask)
        self.folder = args.out
        self.every = args.checkpoint_every
        self.record = record(args, setup)
        self.command = flags.typed(args)
        self.last_save = time.monotonic()
        self.saved = self.leftover(args.resume)  # {model: (opt_state, losses)}

    def ask(self, signum, frame):
        """The first Ctrl-C or SIGTERM asks to stop at the next chunk boundary, after
        its save; a second stops at once (the default handler), leaving the last."""
        self.signal = signum
        signal.signal(signum, signal.SIG_DFL)

    def stop_if_asked(self, where):
        """If a signal asked: exit 130 or 143, in one line with the command to go on."""
        if self.signal is not None:
            print(f"{PROG}: stopped {where}; the checkpoint in {self.folder}/ holds "
                  f"it. To go on: {self.command} --resume", file=sys.stderr)
            sys.exit(STOP_CODES[self.signal])

    def before_training(self, prepare, *args):
        """prepare(*args) (compiling, the memory check: seconds to minutes) in a thread,
        waited for here, where a signal's handler runs at once (inside XLA's compiler
        Python runs none): a Ctrl-C ends the run at once, nothing written. Then the
        folder is made and held, and a killed run's half-written files removed."""
        pool = concurrent.futures.ThreadPoolExecutor(1)
        future = pool.submit(prepare, *args)
        pool.shutdown(wait=False)  # its thread ends with prepare
        while self.signal is None and not future.done():
            concurrent.futures.wait([future], timeout=0.1)
        if self.signal is not None:  # a compiler cannot be interrupted: end the process
            print(f"{PROG}: stopped before training; nothing was written",
                  file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(STOP_CODES[self.signal])
        prepared = future.result()
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as e:
            raise Refused("--out", f"cannot make the folder {self.folder!r} "
                          f"({e.strerror})") from None
        if not lock(self.folder):
            raise busy(self.folder)
        remove_torn(self.folder)  # no live run writes here now
        return prepared
    # -8<- [end:stopping]

    def leftover(self, resume):
        """Before compiling: the progress to resume, {} to start. Refused if a live run
        holds the folder, or for a checkpoint that cannot be read, is another run's,
        or was not asked for (a checkpoint is never overwritten)."""
        if os.path.isdir(self.folder) and not lock(self.folder, hold=False):
            raise busy(self.folder)
        path = os.path.join(self.folder, NAME)
        if not os.path.exists(path):
            return {}
        saved, progress = load(path)
        command = saved.pop("command", None)
        differs = [key for key in sorted({*saved, *self.record})
                   if saved.get(key) != self.record.get(key)]
        if resume and not differs:
            return progress
        done = ", ".join(f"{name} {len(losses):,} steps"
                         for name, (_, losses) in progress.items())
        why = "".join(f"its {key} is {saved.get(key)!r}, this run's "
                      f"{self.record.get(key)!r}; " for key in differs[:1])
        raise Refused("--resume" if resume else "--out",
                      f"{path} holds the unfinished run ({done} done) of `{command}`; "
                      f"{why}to go on with it: {command} --resume; to start anew: "
                      f"delete {path}")

    def resumed(self, name, fresh):
        """Model `name`'s Adam state and losses as the checkpoint left them; `fresh` (a
        new run's state, whose tree the saved leaves fill) and none if it holds none."""
        if name not in self.saved:
            return fresh, ()
        leaves, losses = self.saved[name]
        return tree_unflatten(tree_structure(fresh), leaves), losses

    def at_chunk(self, name):
        """train's hook for model `name`: its progress line, as its steps pass each
        twentieth of the run; a save of every model's progress, at most one every
        --checkpoint-every seconds (a save and its fsync may outlast a small run's
        chunk) but always at its end and at a stop; then the stop, if a signal asked."""
        n_steps = self.record["steps"]
        done = len(self.saved.get(name, ((), ()))[1])
        first = done
        t0 = time.perf_counter()

        def hook(opt_state, losses):
            nonlocal done
            step = len(losses)
            if step * 20 // n_steps > done * 20 // n_steps or step == n_steps:
                per_s = (step - first) / (time.perf_counter() - t0)
                print(report.progress(name, (step, n_steps), losses[done:], per_s))
            done = step
            self.saved[name] = (opt_state, losses)
            recent = time.monotonic() - self.last_save < self.every
            if self.signal is None and done < n_steps and recent:
                return
            save(self.folder, dict(self.record, command=self.command), self.saved)
            self.last_save = time.monotonic()
            self.stop_if_asked(f"at {name}'s step {done:,}")
        return hook
