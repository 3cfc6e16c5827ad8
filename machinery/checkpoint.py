"""A long run that survives being killed: the whole training state saved at chunk
boundaries, whole or not at all; a resume that ends bit for bit where an uninterrupted
run ends; Ctrl-C and SIGTERM that stop at the next boundary; one live run per folder.

The state of a run is a few arrays (each model's parameters, Adam's moments and step
count, the losses so far) and the step it reached: every task batch comes from keys
derived from the seed up front, so nothing else needs saving. The file is an .npz: the
arrays, and a JSON record of what made them (the flags, the setups, the versions) that a
resume must match, with a checksum.
"""
import contextlib
import hashlib
import inspect
import json
import os
import signal
import sys
import time
import zipfile

import numpy as np
from jax.tree_util import tree_flatten, tree_unflatten

from machinery.program import command, write_whole

NAME = "checkpoint.npz"


class Refused(Exception):
    """A checkpoint that must not be resumed: foreign, truncated or corrupt. Its text is
    the one-line reason."""


# -8<- [start:save]
def save(folder, fingerprint, progress):
    """Write the checkpoint of a run: progress maps each model to (opt_state, done,
    losses), the state after `done` steps and their losses (done, runs). Written beside,
    then renamed over the last one: a crash at any instant leaves the previous
    checkpoint or this one, whole."""
    arrays, models = {}, {}
    for name, (opt_state, done, losses) in progress.items():
        leaves, _ = tree_flatten(opt_state)
        arrays.update({f"{name}/{i}": np.asarray(leaf)
                       for i, leaf in enumerate(leaves)})
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
    """What a checkpoint must match to be resumed: the run's flags and setup (every
    value that changes a number), the versions that compute it (another jax draws other
    bits), and a hash of the code's setups (data as JSON, functions by their source)."""
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
    """train's at_chunk for model `name`: at a chunk boundary, the checkpoint of both
    models, then a stop if Ctrl-C or SIGTERM asked for one, with the command that goes
    on. A small run's chunks last a fraction of a second, and a write with its fsync
    tens of milliseconds: so the checkpoint is skipped if the last is under
    --checkpoint-every seconds old (a kill then loses at most that, and a chunk), unless
    a stop was asked or the model is done."""
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
    """The line a stopped run ends with: where, and the command that goes on."""
    again = command("experiment.py", [*args.argv, "--resume"])
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


def load(folder, fingerprint, structures):
    """The progress saved in folder (as save was given it), or None if there is no
    checkpoint. Raises Refused if it was made with other flags or another version of the
    code's setups, or if it is truncated or corrupt. structures: each model's opt_state
    tree structure."""
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
    if meta["fingerprint"] != fingerprint:
        raise Refused(f"{path} was made by another run: "
                      f"{difference(meta['fingerprint'], fingerprint)}; resume it with "
                      "its own command, or choose another --out")
    progress = {}
    for name, m in meta["models"].items():
        leaves = [arrays[f"{name}/{i}"] for i in range(m["leaves"])]
        progress[name] = (tree_unflatten(structures[name], leaves), m["done"],
                          arrays[f"{name}/losses"])
    return progress


def difference(saved, now):
    """The first field in which two fingerprints differ, in words."""
    key = next(k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k))
    return f"its {key} is {saved.get(key)!r}, this run's {now.get(key)!r}"


def remove(folder):
    """A finished run leaves no checkpoint behind: its results are the record."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(folder, NAME))


def open_run(error, folder, fingerprint, structures, resume):
    """Before anything is compiled: hold `folder` if it exists (error, one line, if a
    live run holds it), and the progress to resume from, {} for a fresh start. A
    checkpoint is never overwritten unasked: without --resume one is refused, as is one
    that is foreign or torn."""
    if os.path.isdir(folder) and not lock(folder, hold=False):
        error(f"argument --out: another run is writing to {folder!r} (a live process "
              "holds it); wait for it to end, or choose another --out")
    try:
        progress = load(folder, fingerprint, structures) or {}
    except Refused as e:
        error(f"argument --resume: {e}")
    if progress and not resume:
        done = ", ".join(f"{name} {p[1]:,} steps" for name, p in progress.items())
        error(f"argument --out: {folder!r} holds the checkpoint of an unfinished run "
              f"({done} done): add --resume to go on with it, or choose another --out")
    return progress


def begin(error, folder):
    """Make the folder and hold it, once the run is about to train (a refusal before
    this point leaves no folder behind)."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        error(f"argument --out: cannot make the folder {folder!r} ({e.strerror})")
    if not lock(folder):
        error(f"argument --out: another run is writing to {folder!r} (a live process "
              "holds it)")


def lock(folder, hold=True):
    """Hold `folder` for this process until it exits (hold=False: only ask whether a
    live run holds it): a second run into it is refused. The lock is the kernel's (flock
    on the folder itself), so a run that is killed releases it with its death: a stale
    lock cannot block a resume. Returns False if a live run holds it. Where the system
    has no fcntl (Windows), nothing is locked and this returns True."""
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
    """A run that fails (diverges: exit 1) leaves no checkpoint, and no folder it
    emptied: it would fail again the same way. A stopped run (130, 143) keeps its
    checkpoint."""
    try:
        yield
    except SystemExit as e:
        if e.code not in tuple(STOP_CODES.values()) + (0, 2, None):
            remove(folder)
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only if now empty
        raise


# -8<- [start:stopping]
STOP_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal, as in shells


class Stopper:
    """While training: the first Ctrl-C or SIGTERM asks to stop at the next chunk
    boundary (where the checkpoint is saved); a second one stops at once, as the signal
    would have, leaving the previous checkpoint."""

    def __init__(self):
        self.signal = None

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
