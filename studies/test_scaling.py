"""The unchanged `maml.step` with its task axis sharded over devices.

The test runs the script that docs/scaling.md shows, studies/sharding.py, as
`python -m studies.sharding` from the repository root, in a fresh Python process: the number of
CPU devices is fixed when JAX starts, so this pytest process cannot change it.

Tolerance: rtol 1e-5, atol 1e-6. A sharded step adds the same float32 numbers in another
order (each device sums its own tasks, an all-reduce sums the devices), which moves results by a
few units in the last place (float32: ~1e-7 relative); 1e-5 is ~100 of those, and atol 1e-6 covers
entries near zero where the terms cancel. Splitting the tasks wrongly moves the loss by ~1e-1.
"""
import re
import subprocess
import sys

import pytest

from studies.conftest import HANG_S, ROOT, cpu_env


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
