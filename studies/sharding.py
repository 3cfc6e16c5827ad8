"""One MAML meta-step with the task axis sharded over every device, checked against one device.

Run it from the repository root; on a CPU, make the host look like 4 devices first:

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m studies.sharding

It calls the unchanged `maml.step` twice on the same meta-batch: once on one device, once with the
tasks split over all devices and the optimizer state copied to each. It stops with an error unless
both give the same loss and optimizer state (to float32 rounding) and the tasks really were split;
then it prints one line. docs/scaling.md shows its marked sections; test_scaling.py runs it.
"""
import re

import jax
import numpy as np
from jax import random
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import experiment
import maml
from machinery import program

# No flags but --help; it writes nothing, and only prints its one line.
program.parse(program.parser("python -m studies.sharding", __doc__.splitlines()[0]))

# The sharded step sums each device's share of the tasks, then all-reduces those partial sums: the
# same float32 numbers added in another order. That moves results by a few units in the last place
# (float32 keeps ~7 digits), so we allow a relative 1e-5 (~100 ulp), plus an absolute 1e-6 for the
# entries near zero where terms cancel and a relative error means nothing. A wrong task split or a
# missing reduction would be off by far more: a whole task's share of the loss, ~1e-1.
RTOL, ATOL = 1e-5, 1e-6

# -8<- [start:mesh]
# A one-axis mesh over every device, its axis named after what we split: the tasks.
mesh = Mesh(np.array(jax.devices()), axis_names=("tasks",))
# The leading (task) axis cut into one block per device; a whole copy on every device.
by_task = NamedSharding(mesh, P("tasks"))
replicated = NamedSharding(mesh, P())
# -8<- [end:mesh]

# -8<- [start:batch]
# The paper's 25 tasks, rounded up to a multiple of the device count: a sharded axis is
# cut into equal blocks, so the task count must divide evenly (device_put raises
# otherwise).
n_devices = len(mesh.devices.flat)
n_tasks = -(-experiment.SETUPS["paper"]["tasks"] // n_devices) * n_devices
k = experiment.SETUPS["paper"]["k"]
x1, y1, x2, y2 = maml.sample_tasks(random.PRNGKey(1), n_tasks, k)
_, params = maml.net_init(random.PRNGKey(0), (-1, 1))
opt_state = maml.opt_init(params)
# -8<- [end:batch]

# -8<- [start:step]
# Place the data; maml.step is not touched. jit compiles for the shardings its arguments
# carry: every device runs the step on its own block of tasks, with its own copy of the
# parameters.
sharded_batch = jax.device_put((x1, y1, x2, y2), by_task)
sharded_state = jax.device_put(opt_state, replicated)
new_state, meta_loss = maml.step(0, sharded_state, *sharded_batch)
# -8<- [end:step]

# -8<- [start:check]
# The reference: the same step with everything on one device.
ref_state, ref_loss = maml.step(0, opt_state, x1, y1, x2, y2)
assert len(x1.sharding.device_set) == 1

# The tasks really are spread: each device holds its own block of n_tasks / n_devices of
# them.
per_device = n_tasks // n_devices
for a, whole in zip(sharded_batch, (x1, y1, x2, y2)):
    assert len(a.sharding.device_set) == jax.device_count() == n_devices
    assert len(a.addressable_shards) == n_devices
    shards = a.addressable_shards
    first_tasks = sorted(shard.index[0].indices(n_tasks)[0] for shard in shards)
    # On 4 devices: tasks 0, 7, 14, 21.
    assert first_tasks == list(range(0, n_tasks, per_device))
    for shard in a.addressable_shards:
        assert shard.data.shape[0] == per_device
        np.testing.assert_array_equal(shard.data, whole[shard.index])

# Same loss and same optimizer state. The state holds Adam's moments, i.e. the
# meta-gradient itself: Adam's first update is about step_size * sign(gradient), so
# comparing the parameters alone would hide a gradient that is wrong by a factor.
np.testing.assert_allclose(meta_loss, ref_loss, rtol=RTOL, atol=ATOL)
leaves = zip(jax.tree.leaves(new_state), jax.tree.leaves(ref_state), strict=True)
for got, want in leaves:
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
# -8<- [end:check]

# -8<- [start:hlo]
# What XLA made of it: the collective operations in the compiled sharded step.
hlo = maml.step.lower(0, sharded_state, *sharded_batch).compile().as_text()
kinds = "all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute"
collectives = sorted(set(re.findall(rf"\s({kinds})(?:-start)?\(", hlo)))
# -8<- [end:hlo]
# The partial sums must be combined: on more than one device, an all-reduce.
assert n_devices == 1 or "all-reduce" in collectives, collectives


def max_diff(a, b):
    """The largest absolute difference between two trees of arrays, over all their entries."""
    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


print(f"sharding.py: {n_devices} device{'s' * (n_devices != 1)} ({jax.devices()[0].platform}), "
      f"{n_tasks} tasks, {n_tasks // n_devices} per device; sharded vs one device: "
      f"loss {float(meta_loss):.6f}, max |diff| loss {max_diff(meta_loss, ref_loss):.2e}, "
      f"params {max_diff(maml.get_params(new_state), maml.get_params(ref_state)):.2e}, "
      f"optimizer state {max_diff(new_state, ref_state):.2e}; "
      f"collectives: {', '.join(collectives) or 'none'}")
