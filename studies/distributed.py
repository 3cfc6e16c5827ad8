"""A few MAML meta-steps with the task axis split across processes (jax.distributed).

Start one copy per process from the repository root, all with the same coordinator (host:port
of process 0) and count:

    python -m studies.distributed --out /tmp/d --coordinator 127.0.0.1:12345 \
        --num-processes 2 --process-id 0 &
    python -m studies.distributed --out /tmp/d --coordinator 127.0.0.1:12345 \
        --num-processes 2 --process-id 1

Without --coordinator it runs alone, on this process's devices. Each process holds only its share
of every meta-batch's tasks; the unchanged `maml.step` averages the meta-gradient over all of them.
Each writes its final parameters, the loss of every step and which task rows it held to
process{N}.npz in the --out folder (N: its process index), for test_scaling.py to compare with one
process training on all the tasks.
"""
import os
import tempfile

import jax
import numpy as np
from jax import random
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import experiment
import maml
from machinery import program


def host_and_port(text):
    """--coordinator: host:port, a port in 1-65535 (None if not)."""
    host, _, port = text.rpartition(":")
    return text if host and port.isdigit() and 0 < int(port) < 65536 else None


ap = program.parser("python -m studies.distributed", __doc__.splitlines()[0],
                    out=os.path.join(tempfile.gettempdir(), "distributed"),
                    what="process{N}.npz, one file per process")
ap.add_argument("--coordinator", type=program.checked(host_and_port, bool,
                                                      "host:port, a port in 1-65535"),
                help="host:port of process 0; leave out to run as a single process")
ap.add_argument("--num-processes", type=program.at_least(1), default=1,
                help="processes in all (1)")
ap.add_argument("--process-id", type=program.at_least(0), default=0,
                help="this one's, from 0 (0)")
ap.add_argument("--steps", type=program.at_least(1), default=5, help="meta-steps to run (5)")
args = program.parse(ap)
if args.process_id >= args.num_processes:  # what no single flag's type can check
    ap.error(f"argument --process-id: expected below --num-processes "
             f"({args.num_processes}), got {args.process_id}")
if args.num_processes > 1 and not args.coordinator:
    ap.error("argument --num-processes: more than one process needs --coordinator host:port")
INIT_SEED = 0  # the parameters' key
TASK_SEED = 1  # the meta-batches' key

# -8<- [start:initialize]
# Before anything touches a device: join the other processes. Afterwards jax.devices()
# lists the devices of every process, jax.local_devices() only this process's own.
if args.coordinator:
    # On the CPU, collectives between processes go over TCP through gloo. It is jax
    # 0.10's default; naming it says what the all-reduce runs on and keeps working if
    # the default changes.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
# -8<- [end:initialize]

# -8<- [start:mesh]
# The same mesh as on one machine, over the global devices: the task axis now spans
# processes.
mesh = Mesh(np.array(jax.devices()), axis_names=("tasks",))
by_task = NamedSharding(mesh, P("tasks"))
replicated = NamedSharding(mesh, P())
n_devices = jax.device_count()
n_tasks = -(-experiment.SETUPS["paper"]["tasks"] // n_devices) * n_devices
k = experiment.SETUPS["paper"]["k"]


def local_rows(sharding, shape):
    """The task rows this process's devices hold, in order: the rows it must supply."""
    indices = sharding.addressable_devices_indices_map(shape).values()
    spans = {index[0].indices(shape[0])[:2] for index in indices}
    return np.concatenate([np.arange(start, stop) for start, stop in sorted(spans)])
# -8<- [end:mesh]

# -8<- [start:train]
# Every process starts from the same parameters (same key) and hands its copy in as the
# replica.
_, params = maml.net_init(random.PRNGKey(INIT_SEED), (-1, 1))
opt_state = jax.tree.map(
    lambda a: jax.make_array_from_process_local_data(replicated, np.asarray(a)),
    maml.opt_init(params))
rows = local_rows(by_task, (n_tasks, k, 1))
losses = []
# One key per step, as experiment.train splits them.
keys = np.asarray(random.split(random.PRNGKey(TASK_SEED), args.steps))
for i in range(args.steps):
    # Each process draws step i's whole meta-batch from the same key (the batch
    # experiment.train draws at step i) and keeps only its own rows. With a real data
    # set, it would load only those.
    batch = maml.sample_tasks(keys[i], n_tasks, k)
    global_batch = [
        jax.make_array_from_process_local_data(by_task, np.asarray(a)[rows], a.shape)
        for a in batch]
    opt_state, loss = maml.step(i, opt_state, *global_batch)
    losses.append(loss)
# -8<- [end:train]

# Each local device got exactly the rows of the whole batch that the sharding gives it.
for full, part in zip(batch, global_batch):
    assert len(part.sharding.device_set) == jax.device_count()
    for shard in part.addressable_shards:
        np.testing.assert_array_equal(shard.data, np.asarray(full)[shard.index])

# The loss and the new state are replicated, so every process holds them whole and np.asarray reads
# its own copy. (On the task arrays it would raise: no process holds all of those.)
final = [np.asarray(p) for p in jax.tree.leaves(maml.get_params(opt_state))]
arrays = dict(losses=np.array([np.asarray(l) for l in losses]), rows=rows, n_tasks=n_tasks, k=k,
              steps=args.steps, init_seed=INIT_SEED, task_seed=TASK_SEED,
              process_index=jax.process_index(), process_count=jax.process_count(),
              device_count=jax.device_count(), **{f"param_{j}": p for j, p in enumerate(final)})
program.write_whole(os.path.join(args.out, f"process{jax.process_index()}.npz"),
                    lambda f: np.savez(f, **arrays))
print(f"distributed.py: process {jax.process_index()} of {jax.process_count()}, "
      f"{jax.local_device_count()} of {jax.device_count()} devices, "
      f"tasks {rows[0]}..{rows[-1]} of {n_tasks}; "
      f"loss {float(losses[0]):.4f} -> {float(losses[-1]):.4f}")
