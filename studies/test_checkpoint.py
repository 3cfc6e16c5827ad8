"""The claims of machinery/checkpoint.py: a run killed at any instant and resumed ends bit for bit
where an uninterrupted run ends; a foreign, unasked-for or unreadable checkpoint, and a folder a
live run holds, are refused in one line (exit 2) that says what to do; Ctrl-C and SIGTERM stop at
a chunk boundary with the checkpoint saved (exit 130, 143), or at once while XLA compiles, and a
second Ctrl-C stops at once.

"Bit for bit" is exact equality: the resumed run computes the same float32 operations on the same
inputs, so no tolerance is allowed. Fields that record time or the machine (ms_per_step, the
environment, and the command's --out, which names the folder) are the only ones left out.
"""
import json
import os
import random as py_random
import re
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from jax import random, vmap
from jax.tree_util import tree_leaves, tree_map, tree_structure, tree_unflatten

import experiment
import maml
from machinery import checkpoint, flags
from studies.conftest import HANG_S, ROOT, experiment_env

MARK = {"seed": 0, "steps": 60, "command": "python experiment.py --steps 60"}


def small_progress(runs=2, done=40):
    """A progress record as experiment.py saves it: Adam's state of `runs` runs after `done`
    steps, made distinct per leaf (so a swapped leaf would show), and `done` losses per run."""
    params = vmap(experiment.code_init)(random.split(random.PRNGKey(0), runs))
    state = vmap(maml.opt_init)(params)
    state = tree_map(lambda a: a + np.float32(0.25) * np.arange(a.size).reshape(a.shape), state)
    losses = np.random.default_rng(0).random((done, runs), np.float32)
    return {"MAML": (state, losses)}


def parsed(*argv):
    return flags.parse(argv, experiment.SETUPS, experiment.DEFAULT)


def test_save_then_load_gives_back_every_array_exactly(tmp_path):
    progress = small_progress()
    checkpoint.save(tmp_path, MARK, progress)
    record, back = checkpoint.load(tmp_path / checkpoint.NAME)
    leaves, losses = back["MAML"]
    assert record == MARK and len(losses) == 40 and losses.dtype == np.float32
    np.testing.assert_array_equal(losses, progress["MAML"][1])
    assert len(leaves) == len(tree_leaves(progress["MAML"][0]))
    for a, b in zip(leaves, tree_leaves(progress["MAML"][0])):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    assert os.listdir(tmp_path) == [checkpoint.NAME]  # no temporary file left beside it


@pytest.mark.parametrize("damage", ["truncate", "flip a byte"])
def test_a_truncated_or_corrupt_checkpoint_is_refused(tmp_path, damage):
    """Half the file, or one byte changed in the middle (where the arrays are): the rename makes
    neither happen to a checkpoint this program writes, yet a disk can; load refuses it with a
    one-line reason rather than resuming from damaged numbers (zip's CRC-32 of each array finds the
    changed byte)."""
    checkpoint.save(tmp_path, MARK, small_progress())
    path = tmp_path / checkpoint.NAME
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[:len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(flags.Refused) as refused:
        checkpoint.load(path)
    assert "cannot be read" in str(refused.value) and "\n" not in str(refused.value)


def leftover_refusal(tmp_path, capsys, *argv):
    """The one line (exit 2) with which a run of argv into tmp_path refuses its checkpoint."""
    args, setup = parsed(*argv, "--out", str(tmp_path))
    with pytest.raises(SystemExit) as stop:
        with checkpoint.opened(args, setup):
            pytest.fail("the run went on")
    printed, err = capsys.readouterr()
    assert stop.value.code == 2 and printed == "" and len(err.splitlines()) == 1, err
    return err


def test_a_leftover_checkpoint_is_refused_naming_what_differs_its_command_and_the_ways_on(
        tmp_path, capsys):
    """A checkpoint left by a killed run of --steps 400, and a run into its folder: refused before
    anything compiles (when the seam opens), in one line naming the flag typed (--out without
    --resume: not --resume, which nobody typed), what differs from this run, the command that
    made it, and the two ways on: that command with --resume, or deleting the file, by its path.
    Resumed with the same flags, it goes on."""
    args, setup = parsed("--steps", "400", "--out", str(tmp_path))
    checkpoint.save(tmp_path, dict(checkpoint.record(args, setup), command=flags.typed(args)),
                    small_progress(1, 20))
    path = tmp_path / checkpoint.NAME
    made = f"python experiment.py --steps 400 --out {tmp_path}"
    ways = f"to go on with it: {made} --resume; to start anew: delete {path}\n"
    err = leftover_refusal(tmp_path, capsys, "--steps", "500")
    assert err == (f"experiment.py: error: argument --out: {path} holds the unfinished run (MAML "
                   f"20 steps done) of `{made}`; its steps is 400, this run's 500; {ways}")
    err = leftover_refusal(tmp_path, capsys, "--steps", "500", "--resume")
    assert err.startswith("experiment.py: error: argument --resume: ") and err.endswith(ways)
    err = leftover_refusal(tmp_path, capsys, "--steps", "400")  # the same run, no --resume
    assert "done) of `" + made + "`; to go on with it" in err
    args, setup = parsed("--steps", "400", "--out", str(tmp_path), "--resume")
    with checkpoint.opened(args, setup) as run:
        state, losses = run.resumed("MAML", small_progress(1, 0)["MAML"][0])
        assert len(losses) == 20
        run.stop_if_asked("nowhere")  # nothing asked: goes on
    assert not path.exists()  # a run that ends removes its checkpoint


def test_the_record_holds_what_the_training_depends_on_and_jaxs_version():
    """The record a resume must match: the setup's values after the flags, the seeds, jax's and
    jaxlib's versions (another version draws other bits), JSON as saved; not --eval-tasks or
    --checkpoint-every, which do not change the training."""
    import jax

    args, setup = parsed("--steps", "400", "--eval-tasks", "20")
    mark = checkpoint.record(args, setup)
    assert mark == dict(experiment.SETUPS["code"], steps=400, amp_range=[0.1, 5.0], seed=0, seeds=1,
                        jax=jax.__version__, jaxlib=mark["jaxlib"])
    assert checkpoint.record(*parsed("--steps", "400", "--checkpoint-every", "0")) == mark


def test_a_write_that_dies_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    """The new checkpoint is written beside the old one and renamed over it only when whole: a
    write that fails halfway (as a SIGKILL or a full disk would stop it) leaves the old one,
    readable, and no temporary file."""
    checkpoint.save(tmp_path, MARK, small_progress(done=20))

    def dies_midway(f, **arrays):
        f.write(b"PK\x03\x04 half a zip file")
        raise OSError("killed")
    monkeypatch.setattr(np, "savez", dies_midway)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path, MARK, small_progress(done=40))
    assert os.listdir(tmp_path) == [checkpoint.NAME]
    assert len(checkpoint.load(tmp_path / checkpoint.NAME)[1]["MAML"][1]) == 20


def test_a_run_removes_the_half_written_files_a_killed_run_left_and_nothing_else(tmp_path):
    """SIGKILL during a save leaves write_whole's temporary file (NAME.PID.part) beside the last
    whole checkpoint: the next run into the folder removes it once it holds the folder, before
    training, and leaves every other file, a .part of someone else's included."""
    for name in ("checkpoint.npz.4242.part", "results.json.7.part", "notes.part", "results.txt"):
        (tmp_path / name).write_text("x")
    with checkpoint.opened(*parsed("--out", str(tmp_path))) as run:
        assert run.before_training(lambda: "compiled") == "compiled"
        assert sorted(os.listdir(tmp_path)) == ["notes.part", "results.txt"]


def test_the_stop_line_names_the_command_to_paste_with_its_real_folder(tmp_path, capsys):
    """The command that goes on is the one typed, with --resume: its --out is this machine's
    folder, quoted, not the '<a path>' a recorded command writes for a path outside the repo."""
    out = tmp_path / "a run"
    with pytest.raises(SystemExit) as stop:
        with checkpoint.opened(*parsed("--out", str(out), "--steps", "400")) as run:
            run.signal = signal.SIGTERM  # as its handler records a SIGTERM
            run.stop_if_asked("at MAML's step 20")
    line = capsys.readouterr().err
    assert stop.value.code == 143 and line.startswith("experiment.py: stopped at MAML's step 20;")
    typed = shlex.split(line.split("To go on: ", 1)[1])
    assert typed == ["python", "experiment.py", "--out", str(out), "--steps", "400", "--resume"]


class Killed(Exception):
    pass


def test_resume_ends_bit_for_bit_and_would_not_with_adams_step_count_restarted(tmp_path):
    """In this process: 3 runs of 60 steps (20 chunks of 3), stopped after chunk 7 with its
    checkpoint saved, then resumed from the file: the parameters and every loss equal the
    uninterrupted run's exactly. The check can fail: resuming with Adam's step count restarted
    at 0 (its bias corrections then differ), or with its moments reset, ends elsewhere."""
    setup = dict(experiment.SETUPS["paper"], steps=60)
    keys = experiment.run_keys(5, 3)
    init = vmap(experiment.stax_init)(keys[0])
    compiled = experiment.compile_training(maml.step, tree_map(lambda a: a[0], init), setup, 3)
    fresh = vmap(maml.opt_init)(init)
    whole, whole_losses, _ = experiment.train(compiled, fresh, keys[1], setup, "MAML")
    whole = maml.get_params(whole)

    def stop_after_chunk_7(opt_state, losses):
        checkpoint.save(tmp_path, MARK, {"MAML": (opt_state, losses)})
        if len(losses) == 21:
            raise Killed
    with pytest.raises(Killed):
        experiment.train(compiled, fresh, keys[1], setup, "MAML", at_chunk=stop_after_chunk_7)
    leaves, losses = checkpoint.load(tmp_path / checkpoint.NAME)[1]["MAML"]
    state = tree_unflatten(tree_structure(fresh), leaves)
    done = len(losses)
    assert done == 21 and losses.shape == (21, 3)

    def resumed(opt_state, offset):
        s, l, _ = experiment.train(compiled, opt_state, keys[1], setup, "MAML",
                                   start=(offset, losses))
        return tree_leaves(maml.get_params(s)), l
    params, all_losses = resumed(state, 0)
    np.testing.assert_array_equal(all_losses, whole_losses)
    for a, b in zip(params, tree_leaves(whole)):
        np.testing.assert_array_equal(a, b)
    restarted, _ = resumed(state, -done)  # steps numbered 0, 1, ... again after the resume
    reset, _ = resumed(maml.opt_init(maml.get_params(state)), 0)  # moments zeroed
    for wrong in (restarted, reset):
        assert any(not np.array_equal(a, b) for a, b in zip(wrong, tree_leaves(whole)))


def test_a_folder_a_live_process_holds_is_busy_until_that_process_dies(tmp_path):
    """Another process holds the folder: lock refuses. Killed with SIGKILL (no chance to clean
    up), it leaves no stale lock: the kernel frees it, and lock succeeds."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from machinery import checkpoint\n"
                               f"assert checkpoint.lock({str(tmp_path)!r})\n"
                               "print('held', flush=True); time.sleep(600)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert not checkpoint.lock(tmp_path, hold=False)
    finally:
        holder.kill()
        holder.wait()
    assert checkpoint.lock(tmp_path, hold=False)


# ---- the command line: kill it, resume it, compare --------------------------------------------

# 20 chunks of 20 steps, a checkpoint after each (a small run's chunks are far under 10 s apart)
RUN = ("--setup", "paper", "--steps", "400", "--eval-tasks", "20", "--checkpoint-every", "0")


def start(cache, out, *extra):
    log = open(out.parent / f"{out.name}.log", "a")
    return subprocess.Popen([sys.executable, "experiment.py", *RUN, *extra, "--out", str(out)],
                            cwd=ROOT, env=experiment_env(cache), stdout=log, stderr=log)


def wait_for(out, text, process, timeout=HANG_S):
    """Wait until the run's log holds `text` (or the run ends)."""
    path, end = out.parent / f"{out.name}.log", time.monotonic() + timeout
    while text not in path.read_text() and process.poll() is None:
        assert time.monotonic() < end, path.read_text()
        time.sleep(0.05)


def same_results(a, b):
    """The two results.json, every field but those of time and machine, and the command's --out."""
    skip = {"ms_per_step", "environment", "command"}
    ra, rb = (json.loads((f / "results.json").read_text()) for f in (a, b))
    assert ra["command"].rsplit(" --out ", 1)[0] == rb["command"].rsplit(" --out ", 1)[0]
    assert {k: v for k, v in ra.items() if k not in skip} == \
        {k: v for k, v in rb.items() if k not in skip}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, compile_cache):
    """The reference runs, one of one seed and one of three, never stopped."""
    out = {}
    for seeds in ("1", "3"):
        out[seeds] = tmp_path_factory.mktemp("whole") / f"seeds{seeds}"
        assert start(compile_cache, out[seeds], "--seeds", seeds).wait(timeout=HANG_S) == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("seeds,how", [("1", "SIGKILL"), ("3", "SIGKILL"), ("1", "SIGINT"),
                                       ("1", "SIGTERM")])  # (three runs cost jax 0.4.29 30 s)
def test_a_run_killed_at_a_random_chunk_and_resumed_gives_the_same_results(
        seeds, how, uninterrupted, compile_cache, tmp_path):
    """Stopped once the log shows a random chunk of MAML's or the baseline's training done
    (SIGKILL lands wherever the run is, a checkpoint write included), then resumed with the same
    command and --resume: results.json equals the uninterrupted run's. SIGINT and SIGTERM stop
    at the next boundary with exit 130 or 143 and one line naming the command that goes on; the
    finished run leaves no checkpoint."""
    seed = py_random.randrange(2**16)
    chunk = py_random.Random(seed).randrange(1, 40)
    name, step = ("MAML", chunk * 20) if chunk < 20 else ("pretrained", (chunk - 19) * 20)
    out = tmp_path / "run"
    run = start(compile_cache, out, "--seeds", seeds)
    wait_for(out, f"{name}: step {step:>7,}/400", run)
    run.send_signal(getattr(signal, how))
    code = run.wait(timeout=HANG_S)
    log = (tmp_path / "run.log").read_text()
    if how == "SIGKILL":
        assert code == -signal.SIGKILL, log
    else:
        assert code == {"SIGINT": 130, "SIGTERM": 143}[how], log
        # at the next chunk boundary, or, when the signal lands in the last chunk, once the
        # evaluation that follows it is done (it has no boundary of its own)
        last = log.splitlines()[-1]
        assert last.startswith(("experiment.py: stopped at ", "experiment.py: stopped after "
                                "training")) and last.endswith("--resume"), log
    assert start(compile_cache, out, "--seeds", seeds, "--resume").wait(timeout=HANG_S) == 0, \
        (seed, (tmp_path / "run.log").read_text())
    same_results(out, uninterrupted[seeds])
    assert checkpoint.NAME not in os.listdir(out)
    assert not [f for f in os.listdir(out) if f.endswith(".part")]  # a SIGKILL mid-save's


@pytest.mark.slow
def test_a_busy_folder_and_a_leftover_checkpoint_are_refused_in_one_line(compile_cache, tmp_path, capsys):
    """A second run into the folder of a live one is refused (exit 2, one line); once the first
    is killed, its checkpoint is refused to a run without --resume, of the same flags or others,
    in a line that names --out (not --resume, which was not typed), what differs, the command
    that made it and the two ways on (that command with --resume, or deleting the file); resumed
    with other flags, --resume is named; a truncated one cannot be read. Nothing in the folder is
    lost. The first run is a program of its own; the refused ones are experiment.main in this
    process, whose refusals are main's."""
    out = tmp_path / "run"
    first = start(compile_cache, out, "--steps", "200000")  # long: alive while the second starts

    def refusal(*flags):
        with pytest.raises(SystemExit) as stop:
            experiment.main([*flags, "--out", str(out)])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, err
        return err
    try:
        wait_for(out, "MAML: step", first)
        assert first.poll() is None and "another run is writing to" in refusal(*RUN)
    finally:
        first.kill()
        first.wait()
    long = (*RUN[:3], "200000", *RUN[4:])
    path = out / checkpoint.NAME
    made = shlex.join(["python", "experiment.py", *RUN, "--steps", "200000", "--out", str(out)])
    ways = f"to go on with it: {made} --resume; to start anew: delete {path}\n"
    err = refusal(*long)  # no --resume: a checkpoint is never overwritten
    assert err.startswith(f"experiment.py: error: argument --out: {path} holds the unfinished run")
    assert err.endswith(f" done) of `{made}`; {ways}"), err
    err = refusal(*RUN)  # a plain run of other flags: --out is named, not --resume
    assert err.startswith("experiment.py: error: argument --out:") and err.endswith(
        f"of `{made}`; its steps is 200000, this run's 400; {ways}"), err
    assert refusal(*RUN, "--resume").startswith("experiment.py: error: argument --resume:")
    path.write_bytes(path.read_bytes()[:100])
    assert "cannot be read" in refusal(*long, "--resume")
    # nothing lost, nothing added (but the half-written file of a SIGKILL that landed mid-save)
    assert [f for f in os.listdir(out) if not f.endswith(".part")] == [checkpoint.NAME]


# ---- Ctrl-C while XLA works --------------------------------------------------------------------

@pytest.mark.slow
def test_a_ctrl_c_while_xla_compiles_stops_the_run_at_once(tmp_path):
    """SIGINT as soon as the run prints its first line, while XLA compiles its programs (with an
    empty compilation cache: seconds on a fast machine, minutes at load). The compiler holds off
    Python's signal handlers, so the program compiles in a thread and waits where they run: the
    run ends with exit 130 and one line before its 'compiled in' line, and writes nothing. Before,
    the stop waited for the whole compilation."""
    out = tmp_path / "run"
    run = start(str(tmp_path / "empty-cache"), out, "--steps", "20000")
    wait_for(out, "MAML, paper setup", run)
    run.send_signal(signal.SIGINT)
    asked = time.monotonic()
    code = run.wait(timeout=HANG_S)
    log = (tmp_path / "run.log").read_text()
    assert code == 130 and "compiled in" not in log, (code, log, time.monotonic() - asked)
    assert log.splitlines()[-1] == "experiment.py: stopped before training; nothing was written"
    assert not out.exists()


def caught(pid):
    """The signals a process catches (a handler of its own), as /proc shows them: a bit mask."""
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", f.read(), re.M)[1], 16)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads a process's handlers in /proc")
def test_a_second_ctrl_c_stops_at_once_while_a_chunk_runs(compile_cache, tmp_path):
    """Chunks of 2,000 steps of 1,000 tasks: seconds on a fast machine, a minute or more here. 3 s
    after the run says it has compiled (its keys and initial weights take well under that when
    idle) it is inside a chunk; a first SIGINT is seen at once (its handler, which puts the
    default one back, has run: /proc shows SIGINT no longer caught), within the chunk (no new
    progress line), and asks to stop at the chunk's end; a second then stops the run at once:
    killed by SIGINT, with no 'stopped at' line. Before, Python ran no handler while it waited
    for XLA's chunk: the first was seen only at the chunk's end, with its progress line."""
    out = tmp_path / "run"
    run = start(compile_cache, out, "--steps", "40000", "--tasks", "1000")
    wait_for(out, "compiled in", run)
    time.sleep(3)

    def log():
        return (tmp_path / "run.log").read_text()
    lines = log().count("MAML: step")
    run.send_signal(signal.SIGINT)
    end = time.monotonic() + 600  # a bound for a stuck test only: the handler runs in ms
    while caught(run.pid) & 1 << signal.SIGINT - 1:
        assert time.monotonic() < end and run.poll() is None
        time.sleep(0.01)
    assert log().count("MAML: step") == lines  # seen within the chunk it landed in
    run.send_signal(signal.SIGINT)
    code = run.wait(timeout=HANG_S)
    assert code == -signal.SIGINT and "stopped" not in log(), (code, log())
