"""The unchanged `maml.step` with its task axis sharded over devices, and split over processes.

Both tests run the scripts that docs/scaling.md shows, studies/sharding.py and
studies/distributed.py, as `python -m studies.NAME` from the repository root, in fresh Python
processes: the number of CPU devices and jax.distributed are fixed when JAX starts, so this pytest
process cannot change them.

Tolerance, in both: rtol 1e-5, atol 1e-6. A sharded step adds the same float32 numbers in another
order (each device sums its own tasks, an all-reduce sums the devices), which moves results by a
few units in the last place (float32: ~1e-7 relative); 1e-5 is ~100 of those, and atol 1e-6 covers
entries near zero where the terms cancel. Splitting the tasks wrongly moves the loss by ~1e-1.
"""
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from studies.conftest import HANG_S, ROOT, cpu_env

RTOL, ATOL = 1e-5, 1e-6


@pytest.mark.slow
def test_one_step_with_tasks_sharded_over_4_devices_matches_one_device():
    """studies/sharding.py on 4 CPU devices: the meta-batch's 28 tasks split 7 per device, the
    optimizer state replicated. The script itself asserts that one `maml.step` gives the same loss
    and optimizer state (parameters and Adam's moments) as on one device, within rtol 1e-5 and
    atol 1e-6 (float32 sums in another order), and that every input array lies on all 4 devices,
    7 tasks on each. Here: it exits 0 and its summary says 4 devices and an all-reduce."""
    run = subprocess.run([sys.executable, "-m", "studies.sharding"], cwd=ROOT, capture_output=True,
                         text=True, timeout=HANG_S,
                         env=cpu_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert run.returncode == 0, run.stdout + run.stderr[-4000:]
    summary = run.stdout.strip().splitlines()[-1]
    assert summary.startswith("sharding.py: 4 devices (cpu), 28 tasks, 7 per device;"), summary
    assert "all-reduce" in re.search(r"collectives: (.*)$", summary).group(1).split(", "), summary


def free_port():
    """A TCP port that nothing listens on now: the one the OS picks for port 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(tmp_path, out):
    """studies/distributed.py as processes 0 and 1 of two, writing into `out`: their exit codes
    and the tails of their logs. Both are stopped in all cases: when done, when one fails, or
    after HANG_S seconds."""
    port, procs, logs = free_port(), [], [tmp_path / f"process{p}.log" for p in range(2)]
    deadline = time.monotonic() + HANG_S
    try:
        for p in range(2):
            with open(logs[p], "w") as log:  # a file, not a pipe: a full pipe would stall the process
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "studies.distributed", "--out", str(out),
                     "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                     "--process-id", str(p)],
                    cwd=ROOT, env=cpu_env(), stdout=log, stderr=subprocess.STDOUT))
        # Wait for both, but not past the deadline, nor once one has failed: its partner would
        # only wait for it (up to jax's heartbeat timeout, 100 s) and then fail too.
        while time.monotonic() < deadline and any(proc.poll() is None for proc in procs):
            if any(proc.poll() not in (None, 0) for proc in procs):
                break
            time.sleep(0.2)
    finally:
        hung = [p for p, proc in enumerate(procs) if proc.poll() is None]
        for p in hung:  # whatever happened above, leave no process behind
            procs[p].kill()
            procs[p].wait()
    tails = "\n".join(f"--- process {p} (exit {proc.returncode}):\n{logs[p].read_text()[-3000:]}"
                      for p, proc in enumerate(procs))
    assert not hung or any(proc.returncode > 0 for proc in procs), \
        f"process {hung} did not finish within {HANG_S} s and was stopped\n{tails}"
    return [proc.returncode for proc in procs], tails


def one_process(init_seed, task_seed, steps, n_tasks, k):
    """The reference: this process, one device, every task of the same batches: every step's
    loss and the final parameters. On the CPU, as the two processes: a GPU may round float32
    matmuls differently (TF32), which is not our question."""
    import jax
    from jax import random

    import maml
    with jax.default_device(jax.devices("cpu")[0]):
        _, params = maml.net_init(random.PRNGKey(init_seed), (-1, 1))
        opt_state, losses = maml.opt_init(params), []
        keys = np.asarray(random.split(random.PRNGKey(task_seed), steps))
        for i in range(steps):
            opt_state, loss = maml.step(i, opt_state, *maml.sample_tasks(keys[i], n_tasks, k))
            losses.append(loss)
    return np.array(losses), jax.tree.leaves(maml.get_params(opt_state))


@pytest.mark.slow
def test_two_processes_with_half_the_tasks_each_train_like_one_process(tmp_path):
    """Two processes on 127.0.0.1 join with jax.distributed.initialize (CPU, gloo), one device
    each, and run studies/distributed.py's 5 `maml.step`s, each holding 13 of every meta-batch's 26
    tasks, into an --out folder they make. Both must end with the losses and parameters of this
    process running the same 5 steps on all 26 tasks on one device, within rtol 1e-5 and atol 1e-6
    (float32 sums in another order)."""
    out = tmp_path / "results"  # not there yet: the processes make it
    codes, tails = run_two_processes(tmp_path, out)
    assert codes == [0, 0], tails
    results = [dict(np.load(out / f"process{p}.npz")) for p in range(2)]
    r = results[0]
    n_tasks, k, steps = int(r["n_tasks"]), int(r["k"]), int(r["steps"])
    assert (n_tasks, steps) == (26, 5)
    for p, result in enumerate(results):
        assert (result["process_index"], result["process_count"], result["device_count"]) == \
            (p, 2, 2)
    # Each process held its own half of the tasks, and together all of them.
    np.testing.assert_array_equal(results[0]["rows"], np.arange(0, n_tasks // 2))
    np.testing.assert_array_equal(results[1]["rows"], np.arange(n_tasks // 2, n_tasks))
    losses, want = one_process(int(r["init_seed"]), int(r["task_seed"]), steps, n_tasks, k)
    for p, result in enumerate(results):
        np.testing.assert_allclose(result["losses"], losses, rtol=RTOL, atol=ATOL,
                                   err_msg=f"losses of process {p}")
        for j, w in enumerate(want):
            np.testing.assert_allclose(result[f"param_{j}"], w, rtol=RTOL, atol=ATOL,
                                       err_msg=f"parameter {j} of process {p}")


@pytest.mark.slow
@pytest.mark.parametrize("argv, flag", [
    (["--coordinator", "nonsense"], "--coordinator"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"],
     "--process-id"),
    (["--num-processes", "2", "--process-id", "1"], "--num-processes")])
def test_a_bad_process_flag_stops_in_one_line_before_joining_anything(argv, flag, tmp_path):
    """A coordinator that is not host:port, a process id outside 0..N-1, or several processes
    without a coordinator: one line naming the flag, exit 2, before jax.distributed starts (it
    would end in a traceback, or run alone as if one process were all)."""
    run = subprocess.run([sys.executable, "-m", "studies.distributed", *argv, "--out",
                          str(tmp_path / "out")], cwd=ROOT, env=cpu_env(), capture_output=True,
                         text=True, timeout=HANG_S)
    err = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(err) == 1 and f"argument {flag}:" in err[0], run.stderr
    assert not (tmp_path / "out").exists()
