"""The claims of machinery/checkpoint.py: a run killed at any instant and resumed ends bit for bit
where an uninterrupted run ends; a foreign, truncated or corrupt checkpoint, and a folder a live
run holds, are refused in one line (exit 2); Ctrl-C and SIGTERM stop at a chunk boundary with the
checkpoint saved (exit 130, 143).

"Bit for bit" is exact equality: the resumed run computes the same float32 operations on the same
inputs, so no tolerance is allowed. Fields that record time or the machine (ms_per_step, the
environment, and the command's --out, which names the folder) are the only ones left out.
"""
import json
import os
import random as py_random
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from jax import random, vmap
from jax.tree_util import tree_leaves, tree_map, tree_structure

import experiment
import maml
from machinery import checkpoint
from studies.conftest import HANG_S, ROOT, experiment_env

MARK = {"seed": 0, "steps": 60}


def small_progress(runs=2, done=40):
    """A progress record as experiment.py saves it: Adam's state of `runs` runs after `done`
    steps, made distinct per leaf (so a swapped leaf would show), and `done` losses per run."""
    params = vmap(experiment.code_init)(random.split(random.PRNGKey(0), runs))
    state = vmap(maml.opt_init)(params)
    state = tree_map(lambda a: a + np.float32(0.25) * np.arange(a.size).reshape(a.shape), state)
    losses = np.random.default_rng(0).random((done, runs), np.float32)
    return {"MAML": (state, done, losses)}, tree_structure(state)


def test_save_then_load_gives_back_every_array_exactly(tmp_path):
    progress, structure = small_progress()
    checkpoint.save(tmp_path, MARK, progress)
    back = checkpoint.load(tmp_path, MARK, structure)
    state, done, losses = back["MAML"]
    assert done == 40 and losses.dtype == np.float32
    np.testing.assert_array_equal(losses, progress["MAML"][2])
    for a, b in zip(tree_leaves(state), tree_leaves(progress["MAML"][0])):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    assert os.listdir(tmp_path) == [checkpoint.NAME]  # no temporary file left beside it


@pytest.mark.parametrize("damage", ["truncate", "flip a byte"])
def test_a_truncated_or_corrupt_checkpoint_is_refused(tmp_path, damage):
    """Half the file, or one byte changed in the middle (where the arrays are): load refuses it
    with a one-line reason rather than resuming from damaged numbers."""
    progress, structure = small_progress()
    checkpoint.save(tmp_path, MARK, progress)
    path = tmp_path / checkpoint.NAME
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[:len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(checkpoint.Refused) as refused:
        checkpoint.load(tmp_path, MARK, structure)
    assert "corrupt" in str(refused.value) and "\n" not in str(refused.value)


def test_a_checkpoint_of_other_flags_is_refused_naming_the_difference(tmp_path):
    progress, structure = small_progress()
    checkpoint.save(tmp_path, MARK, progress)
    with pytest.raises(checkpoint.Refused) as refused:
        checkpoint.load(tmp_path, dict(MARK, seed=1), structure)
    assert "its seed is 0, this run's 1" in str(refused.value)


def test_another_version_of_the_codes_setups_changes_the_fingerprint():
    """The fingerprint hashes the setups' data and the source of the functions given: a changed
    step size in one setup, or another function, gives another fingerprint."""
    args = type("Args", (), dict(setup="code", seed=0, seeds=1, eval_tasks=600))
    setup = experiment.SETUPS["code"]
    mark = checkpoint.fingerprint(args, setup, experiment.CODE)
    assert mark == checkpoint.fingerprint(args, setup, experiment.CODE)
    other = [dict(experiment.SETUPS, code=dict(setup, alpha=0.002)), *experiment.CODE[1:]]
    assert checkpoint.fingerprint(args, setup, other)["setups"] != mark["setups"]
    swapped = [*experiment.CODE[:3], experiment.stax_init, *experiment.CODE[4:]]
    assert checkpoint.fingerprint(args, setup, swapped)["setups"] != mark["setups"]


def test_a_write_that_dies_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    """The new checkpoint is written beside the old one and renamed over it only when whole: a
    write that fails halfway (as a SIGKILL or a full disk would stop it) leaves the old one,
    readable, and no temporary file."""
    progress, structure = small_progress(done=20)
    checkpoint.save(tmp_path, MARK, progress)

    def dies_midway(f, **arrays):
        f.write(b"PK\x03\x04 half a zip file")
        raise OSError("killed")
    monkeypatch.setattr(np, "savez", dies_midway)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path, MARK, small_progress(done=40)[0])
    assert os.listdir(tmp_path) == [checkpoint.NAME]
    assert checkpoint.load(tmp_path, MARK, structure)["MAML"][1] == 20


def test_a_run_removes_the_half_written_files_a_killed_run_left_and_nothing_else(tmp_path):
    """SIGKILL during a save leaves write_whole's temporary file (NAME.PID.part) beside the last
    whole checkpoint: the next run into the folder removes it once it holds the folder, and
    leaves every other file, a .part of someone else's included."""
    for name in ("checkpoint.npz.4242.part", "results.json.7.part", checkpoint.NAME,
                 "notes.part", "results.txt"):
        (tmp_path / name).write_text("x")
    checkpoint.begin(pytest.fail, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted([checkpoint.NAME, "notes.part", "results.txt"])


def test_the_stop_line_names_the_command_to_paste_with_its_real_folder():
    """The command that goes on is the one typed, with --resume: its --out is this machine's
    folder, quoted, not the '<a path>' a recorded command writes for a path outside the repo."""
    args = experiment.parse_args(["--out", "/tmp/a run", "--steps", "400"])[0]
    line = checkpoint.stopped(args, "at MAML's step 20")
    typed = shlex.split(line.split("To go on: ", 1)[1])
    assert typed == ["python", "experiment.py", "--out", "/tmp/a run", "--steps", "400", "--resume"]


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
    whole, whole_losses, _ = experiment.train(compiled, fresh, keys[1], setup, "MAML", log=str)
    whole = maml.get_params(whole)
    structure = tree_structure(fresh)

    def stop_after_chunk_7(opt_state, done, losses):
        checkpoint.save(tmp_path, MARK, {"MAML": (opt_state, done, losses)})
        if done == 21:
            raise Killed
    with pytest.raises(Killed):
        experiment.train(compiled, fresh, keys[1], setup, "MAML", log=str,
                         at_chunk=stop_after_chunk_7)
    state, done, losses = checkpoint.load(tmp_path, MARK, structure)["MAML"]
    assert done == 21 and losses.shape == (21, 3)

    def resumed(opt_state, offset):
        s, l, _ = experiment.train(compiled, opt_state, keys[1], setup, "MAML", log=str,
                                   resume=(offset, losses))
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
def test_a_busy_folder_and_a_torn_checkpoint_are_refused_in_one_line(compile_cache, tmp_path, capsys):
    """A second run into the folder of a live one is refused (exit 2, one line); once the first
    is killed, a truncated checkpoint is refused too, and so is a checkpoint resumed without
    --resume or with other flags; nothing in the folder is lost. The first run is a program of
    its own; the refused ones are experiment.main in this process, whose refusals are main's."""
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
    assert "add --resume" in refusal(*long)
    assert "its steps is 200000, this run's 400" in refusal(*RUN, "--resume")
    path = out / checkpoint.NAME
    path.write_bytes(path.read_bytes()[:100])
    assert "truncated or corrupt" in refusal(*long, "--resume")
    assert os.listdir(out) == [checkpoint.NAME]
