"""A run that survives being killed: saved whole at chunk boundaries, resumed bit for
bit, stopped by Ctrl-C or SIGTERM at a boundary, one live run per folder. The state is
each model's Adam state, losses and step (tasks come from keys derived from the seed):
an .npz, with a checksum and a JSON record of what made it (flags, setups, versions).
"""
import contextlib
import hashlib
import inspect
import json
import os
import shlex
import signal
import sys
import time
import zipfile

import numpy as np
from jax.tree_util import tree_leaves, tree_structure, tree_unflatten

from machinery.program import remove_torn, write_whole

NAME = "checkpoint.npz"


class Refused(Exception):
    """A checkpoint not to resume (foreign, truncated, corrupt): its one-line reason."""


# -8<- [start:save]
def save(folder, fingerprint, progress):
    """Save progress: each model's (opt_state, done, losses), its state after `done`
    steps and their losses. A crash at any instant leaves the last one or this one."""
    arrays, models = {}, {}
    for name, (opt_state, done, losses) in progress.items():
        leaves = tree_leaves(opt_state)
        arrays |= {f"{name}/{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
        arrays[f"{name}/losses"] = np.asarray(losses, np.float32)
        models[name] = dict(done=int(done), leaves=len(leaves))
    meta = dict(fingerprint=fingerprint, models=models, checksum=checksum(arrays))
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)

    def dump(f):
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint
    write_whole(os.path.join(folder, NAME), dump)
# -8<- [end:save]


def fingerprint(args, setup, code):
    """What a resumed checkpoint must match: the flags and setup, the versions (another
    jax draws other bits), a hash of the code's setups (functions by their source)."""
    import jax
    import jaxlib

    text = json.dumps([inspect.getsource(c) if callable(c) else c for c in code],
                      default=str)
    mark = dict(setup, name=args.setup, seed=args.seed, seeds=args.seeds,
                eval_tasks=args.eval_tasks, jax=jax.__version__,
                jaxlib=jaxlib.__version__,
                setups=hashlib.sha256(text.encode()).hexdigest()[:16])
    return json.loads(json.dumps(mark))  # as a saved one reads back: tuples as lists


def saver(args, mark, saved, name, stopper, steps):
    """train's at_chunk for model `name`: save both models, then stop if asked. A save
    (its fsync: tens of ms) may outlast a small run's chunk: none under
    --checkpoint-every seconds after the last, unless stopping or done."""
    last = [time.monotonic()]

    def at_chunk(opt_state, done, losses):
        saved[name] = (opt_state, done, losses)
        recent = time.monotonic() - last[0] < args.checkpoint_every
        if stopper.signal is None and done < steps and recent:
            return
        save(args.out, mark, saved)
        last[0] = time.monotonic()
        stopper.stop_if_asked(stopped(args, f"at {name}'s step {done:,}"))
    return at_chunk


def stopped(args, where):
    """The line a stopped run ends with: where, and the command that goes on, as typed
    (a recorded command hides this machine's paths; this one is to paste here)."""
    again = shlex.join(["python", "experiment.py", *args.argv, "--resume"])
    return (f"experiment.py: stopped {where}; the checkpoint in {args.out}/ holds it. "
            f"To go on: {again}")


def checksum(arrays):
    """SHA-256 over every array's name, shape, type and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.shape}:{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def load(folder, fingerprint, structure):
    """The progress saved in folder, None without a checkpoint; Refused if it is
    foreign, truncated or corrupt. structure: the tree structure of a model's opt_state
    (every model's: they are the same network)."""
    path = os.path.join(folder, NAME)
    if not os.path.exists(path):
        return None
    try:
        with np.load(path) as f:
            arrays = {name: f[name] for name in f.files}
        meta = json.loads(arrays.pop("meta").tobytes())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise Refused(f"{path} is truncated or corrupt ({type(e).__name__}); delete it "
                      "to start again") from None
    if meta.get("checksum") != checksum(arrays):
        raise Refused(f"{path} is corrupt (its checksum does not match); delete it to "
                      "start again")
    saved = meta["fingerprint"]
    if saved != fingerprint:
        key = next(k for k in sorted({*saved, *fingerprint})
                   if saved.get(k) != fingerprint.get(k))
        raise Refused(f"{path} was made by another run: its {key} is "
                      f"{saved.get(key)!r}, this run's {fingerprint.get(key)!r}; "
                      "resume it with its own command, or choose another --out")
    progress = {}
    for name, m in meta["models"].items():
        leaves = [arrays[f"{name}/{i}"] for i in range(m["leaves"])]
        progress[name] = (tree_unflatten(structure, leaves), m["done"],
                          arrays[f"{name}/losses"])
    return progress


def remove(folder):
    """A finished run leaves no checkpoint behind: its results are the record."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(folder, NAME))


def open_run(error, folder, fingerprint, fresh, resume):
    """Before compiling: the progress to resume (its states shaped like `fresh`, a new
    run's), {} for a fresh start; error (one line) if a live run holds `folder`, or for
    a checkpoint that is torn, foreign or unasked (without --resume: a checkpoint is
    never overwritten)."""
    if os.path.isdir(folder) and not lock(folder, hold=False):
        error(f"argument --out: another run is writing to {folder!r} (a live process "
              "holds it); wait for it to end, or choose another --out")
    try:
        progress = load(folder, fingerprint, tree_structure(fresh)) or {}
    except Refused as e:
        error(f"argument --resume: {e}")
    if progress and not resume:
        done = ", ".join(f"{name} {p[1]:,} steps" for name, p in progress.items())
        error(f"argument --out: {folder!r} holds the checkpoint of an unfinished run "
              f"({done} done): add --resume to go on with it, or choose another --out")
    return progress


def begin(error, folder):
    """Make the folder and hold it, just before training (a refusal leaves none); then
    remove the half-written files (write_whole's NAME.PID.part) of a run killed
    mid-write: no live run writes here now."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        error(f"argument --out: cannot make the folder {folder!r} ({e.strerror})")
    if not lock(folder):
        error(f"argument --out: another run is writing to {folder!r} (a live process "
              "holds it)")
    remove_torn(folder)


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


@contextlib.contextmanager
def removed_on_failure(folder):
    """A run that diverges (exit 1) leaves no checkpoint or emptied folder: it would
    diverge again. A stopped run (130, 143) keeps its checkpoint."""
    try:
        yield
    except SystemExit as e:
        if e.code not in (*STOP_CODES.values(), 0, 2, None):
            remove(folder)
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only if now empty
        raise


# -8<- [start:stopping]
STOP_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal, as in shells


class Stopper:
    """The first Ctrl-C or SIGTERM asks to stop at the next chunk boundary (after its
    checkpoint); a second stops at once, leaving the previous checkpoint."""

    signal = None  # the signal that asked, once one has

    def __enter__(self):
        self.before = {s: signal.signal(s, self.ask) for s in STOP_CODES}
        return self

    def ask(self, signum, frame):
        self.signal = signum
        signal.signal(signum, signal.SIG_DFL)  # the next one stops at once

    def __exit__(self, *exc):
        for s, handler in self.before.items():
            signal.signal(s, handler)

    def stop_if_asked(self, line):
        """At a boundary, after any checkpoint: exit 130 or 143 with one line."""
        if self.signal is not None:
            print(line, file=sys.stderr)
            sys.exit(STOP_CODES[self.signal])
# -8<- [end:stopping]
