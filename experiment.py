"""The MAML paper's sinusoid regression (section 5.1): MAML against its baseline.
`python experiment.py` trains both, writes runs/SETUP-seedS/; --help lists the flags."""
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import jit, lax, random, vmap
from jax.extend.random import threefry_2x32
from jax.tree_util import tree_leaves, tree_map

from machinery import checkpoint, flags, preflight, program, report
from maml import (get_params, inner_update, loss, net_init, opt_init, opt_update,
                  sample_sinusoids, sample_tasks, step)

# -8<- [start:setups]
# The paper's text; the authors' released code (github.com/cbfinn/maml); the 2019 blog.
SETUPS = {
    "paper": dict(amp_range=(0.1, 5.0), k=10, alpha=0.01, tasks=25, steps=70_000,
                  init="stax"),
    "code": dict(amp_range=(0.1, 5.0), k=10, alpha=0.001, tasks=25, steps=70_000,
                 init="code"),
    "blog": dict(amp_range=(0.1, 0.5), k=20, alpha=0.1, tasks=4, steps=20_000,
                 init="stax"),
}
# Appendix C, table 2 of the paper: MSE for K = 5 after 1, 5 and 10 gradient steps.
PAPER_MSE_K5 = {"MAML": {1: 0.67, 5: 0.38, 10: 0.35},
                "pretrained": {1: 2.41, 5: 2.23, 10: 2.19}}
EVAL_KS = (5, 10)  # support points per held-out task at meta-test time, as in the paper
EVAL_STEPS = (0, 1, 5, 10)  # gradient steps after which the held-out MSE is reported
DEFAULT = "code"  # in twenty runs, the released code's settings give the paper's table


def code_init(key):
    """The released code's construct_fc_weights, in net_init's layout (() per Relu)."""
    dense = [(0.01 * random.truncated_normal(k, -2.0, 2.0, s), jnp.zeros(s[1]))
             for k, s in zip(random.split(key, 3), [(1, 40), (40, 40), (40, 1)])]
    return [dense[0], (), dense[1], (), dense[2]]


def stax_init(key):
    """stax's init (Glorot-normal weights, small normal biases): the paper's text."""
    return net_init(key, (-1, 1))[1]


INITS = {"stax": stax_init, "code": code_init}
# -8<- [end:setups]


# -8<- [start:pretrain]
def pretrain_loss(params, x1, y1, x2, y2, alpha=None):
    """The paper's baseline: plain regression on every point of the batch's tasks."""
    return loss(params, jnp.concatenate([x1, x2], 1), jnp.concatenate([y1, y2], 1))


@jit
def pretrain_step(i, opt_state, x1, y1, x2, y2, alpha=None):
    """One Adam step of the baseline (its own stream of MAML's tasks)."""
    value, grads = jax.value_and_grad(pretrain_loss)(get_params(opt_state),
                                                     x1, y1, x2, y2)
    return opt_update(i, grads, opt_state), value
# -8<- [end:pretrain]


# -8<- [start:train_chunk]
@partial(jit, static_argnames=("step_fn", "n_tasks", "k"))
def train_chunk(opt_state, keys, steps, amp_range, alpha, *, step_fn, n_tasks, k):
    """step_fn for each step in `steps` and each run (opt_state's leading axis), in one
    lax.scan (a call per step costs a CPU more than a step): state, losses."""
    one = keys.shape[1] == 1  # one run: no run axis, 10% faster on a CPU
    sample = partial(sample_tasks, n_tasks=n_tasks, k=k, amp_range=amp_range)
    batches = vmap(sample)(keys[:, 0]) if one else vmap(vmap(sample))(keys)
    run_step = step_fn if one else vmap(step_fn, in_axes=(None, 0, 0, 0, 0, 0, None))

    def body(opt_state, step_and_batch):
        i, batch = step_and_batch
        return run_step(i, opt_state, *batch, alpha)
    if one:
        opt_state, losses = lax.scan(body, tree_map(lambda a: a[0], opt_state),
                                     (steps, batches))
        return tree_map(lambda a: a[None], opt_state), losses[:, None]
    return lax.scan(body, opt_state, (steps, batches))
# -8<- [end:train_chunk]


# -8<- [start:chunks]
def chunk_size(n_steps):
    """Steps per chunk: about 20 chunks, none over 5,000 steps (a chunk's tasks are
    drawn at once: its length sets the memory); the last chunk holds what is left."""
    return min(-(-n_steps // 20), 5_000)


def step_keys(keys, n_steps, a, b):
    """Steps a to b of each run's stream, (b - a, runs, 2): run r's step i trains on
    random.split(keys[r], n_steps)[i], made for those steps alone from threefry's
    counters, laid out as split lays them (test_experiment checks it against split)."""
    if jax.config.jax_threefry_partitionable:  # jax >= 0.5: key i is block (0, i)
        i = np.arange(a, b)
        return threefry(keys, i >> 32, i).swapaxes(0, 1)
    # before: the 2n words of blocks (j, n + j), j < n, all first words, then all second
    # words; key i is words 2i and 2i + 1
    w = np.arange(2 * a, 2 * b)
    blocks = threefry(keys, w % n_steps, w % n_steps + n_steps)
    words = blocks[:, np.arange(len(w)), w // n_steps]
    return words.reshape(len(keys), b - a, 2).swapaxes(0, 1)


def threefry(keys, x0, x1):
    """Each key's threefry-2x32 blocks at the counters (x0[i], x1[i]): (runs, i, 2)."""
    words = each_key_threefry(keys, np.concatenate([x0, x1]).astype(np.uint32))
    return np.asarray(words).reshape(len(keys), 2, -1).swapaxes(1, 2)


each_key_threefry = jit(vmap(threefry_2x32, (0, None)))


def compile_training(step_fn, params, setup, runs):
    """train_chunk compiled from shapes for each chunk length and `runs` runs of
    parameters shaped like `params` (one run's)."""
    state = jax.eval_shape(vmap(opt_init, None, axis_size=runs), params)
    static = dict(step_fn=step_fn, n_tasks=setup["tasks"], k=setup["k"])
    size = chunk_size(setup["steps"])
    last = (setup["steps"] - 1) % size + 1  # the last chunk's length
    return {n: train_chunk.lower(state, jax.ShapeDtypeStruct((n, runs, 2), jnp.uint32),
                                 jax.ShapeDtypeStruct((n,), jnp.int32),
                                 setup["amp_range"], setup["alpha"], **static).compile()
            for n in {size, last}}
# -8<- [end:chunks]


# -8<- [start:train]
def train(compiled, state, keys, setup, name, start=(0, ()), at_chunk=None):
    """Train Adam's state (run axis first) on keys[r]'s tasks: the state, losses (steps,
    runs), seconds per step. start: the number of step 0, and the losses of the steps
    already trained, to go on after; at_chunk(state, losses so far) after each chunk."""
    n_steps = setup["steps"]
    offset, before = start
    done = len(before)
    losses = np.empty((n_steps, len(keys)), np.float32)
    losses[:done] = np.reshape(before, (done, len(keys)))
    size = chunk_size(n_steps)
    t_steady = None
    for a in range(done, n_steps, size):  # counted, never listed: --steps may be 10**13
        b = min(a + size, n_steps)
        if t_steady is None and a > done:  # the first chunk warms up: time the rest
            t_steady = time.perf_counter()
            timed = n_steps - a
        state, chunk_losses = checkpoint.computed(  # where a Ctrl-C is seen at once
            compiled[b - a], state, step_keys(keys, n_steps, a, b),
            np.arange(offset + a, offset + b, dtype=np.int32), setup["amp_range"],
            setup["alpha"])
        losses[a:b] = chunk_losses  # the chunk is done: honest progress
        report.stop_if_diverged(losses[a:b], name, offset + a, len(keys))
        if at_chunk is not None:
            at_chunk(state, losses[:b])
    steady = np.nan if t_steady is None else (time.perf_counter() - t_steady) / timed
    return state, losses, steady
# -8<- [end:train]


# -8<- [start:eval_tasks]
def eval_tasks(key, n_tasks, k, amp_range, n_test=100):
    """Held-out tasks: K support points each, the true function at n_test points."""
    sinusoid, x1 = sample_sinusoids(key, n_tasks, k, amp_range)
    x_test = jnp.linspace(-5.0, 5.0, n_test)[:, None]
    return x1, sinusoid(x1), x_test, sinusoid(x_test)


def inner_steps(params, x1, y1, alpha, n_steps, update=inner_update, checkpoint=False,
                track=None):
    """n_steps of `update` in one lax.scan: adapted params, track(params) before each
    step. Checkpointed, reverse mode keeps step inputs only and recomputes the rest."""
    def body(p, _):
        return update(p, x1, y1, alpha), None if track is None else track(p)
    if checkpoint:  # scan already keeps XLA from merging the recomputation away: no CSE
        body = jax.checkpoint(body, prevent_cse=False)
    return lax.scan(body, params, length=n_steps)


@partial(jit, static_argnames=("n_steps", "update"))
def adaptation_curves(params, x1, y1, x_test, y_test, alpha, n_steps,
                      update=inner_update):
    """Test MSE of each task after 0, 1, ..., n_steps of `update`: (tasks, n + 1)."""
    def one_task(x1, y1, y_test):
        test_mse = partial(loss, inputs=x_test, targets=y_test)
        adapted, mses = inner_steps(params, x1, y1, alpha, n_steps, update,
                                    track=test_mse)
        return jnp.append(mses, test_mse(adapted))
    return vmap(one_task)(x1, y1, y_test)
# -8<- [end:eval_tasks]


def held_out_tasks(seed, n_tasks, amp_range):
    """The held-out tasks a run of `seed` is evaluated on (drawn from its test key)."""
    return eval_tasks(run_keys(seed, 1)[4, 0], n_tasks, max(EVAL_KS), amp_range)


# -8<- [start:run_curves]
def run_curves(params, tasks, k, alphas, n_steps=max(EVAL_STEPS), update=inner_update):
    """Each run's adaptation_curves, with step size alphas[r]: (runs, tasks, n + 1)."""
    x1, y1, x_test, y_test = tasks
    curves = vmap(partial(adaptation_curves, n_steps=n_steps, update=update),
                  in_axes=(0, None, None, None, None, 0))
    return np.asarray(curves(params, x1[:, :k], y1[:, :k], x_test, y_test, alphas))


def tune_step_size(params, tasks, k,
                   candidates=(1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2)):
    """Each run's step size for the baseline: the candidate of least validation MSE."""
    runs = len(tree_leaves(params)[0])
    scores = []
    for a in candidates:
        c = run_curves(params, tasks, k, np.full(runs, a, np.float32))[:, :, [1, 5, 10]]
        finite = np.isfinite(c).all(axis=(1, 2))
        scores.append(np.where(finite, c.mean(axis=(1, 2)), np.inf))
    return np.asarray(candidates)[np.argmin(scores, axis=0)]
# -8<- [end:run_curves]


# -8<- [start:evaluate]
def evaluate(params, setup, args, keys):
    """Both models' test MSE curves per K; exit 1 if a run diverges on most tasks."""
    val, test = (eval_tasks(key, args.eval_tasks, max(EVAL_KS), setup["amp_range"])
                 for key in keys)
    curves = {}
    step_sizes = {}
    for k in EVAL_KS:
        for name in params:
            step_sizes[name, k] = np.full(args.seeds, setup["alpha"], np.float32) \
                if name == "MAML" else tune_step_size(params[name], val, k)
            curves[name, k] = run_curves(params[name], test, k, step_sizes[name, k])
    for (name, k), r, diverged in report.most_diverged(curves):
        report.stop_diverged(f"{name} adaptation (run {r}, step size "
                             f"{step_sizes[name, k][r]:g}) diverged on {diverged} of "
                             f"{args.eval_tasks} held-out tasks (K = {k})")
    return test, curves, step_sizes
# -8<- [end:evaluate]


# -8<- [start:keys]
def run_keys(seed, runs):
    """Keys (5, runs, 2): init, MAML's tasks, the baseline's, validation, test; run r's
    from seed + r (one program for every run: --seeds may be large)."""
    seeds = np.arange(seed, seed + runs, dtype=np.uint32)
    split = vmap(lambda s: random.split(random.PRNGKey(s), 5), out_axes=1)
    return np.asarray(split(seeds))
# -8<- [end:keys]


MODELS = {"MAML": step, "pretrained": pretrain_step}  # each model's training step


# -8<- [start:compile_all]
def compile_all(args, setup):
    """Both models' training loops, compiled from shapes, once the run is known to fit
    in memory: counted from the flags before compiling, then by XLA's count of these
    loops and of the evaluation's (compiled for that count alone)."""
    one = jax.eval_shape(INITS[setup["init"]], random.PRNGKey(0))  # a run's parameters
    preflight.check_sizes(args, setup, chunk_size(setup["steps"]),
                          sum(leaf.size for leaf in tree_leaves(one)))
    loops = {name: compile_training(fn, one, setup, args.seeds)
             for name, fn in MODELS.items()}
    tasks = jax.eval_shape(partial(eval_tasks, n_tasks=args.eval_tasks, k=max(EVAL_KS),
                                   amp_range=setup["amp_range"]), random.PRNGKey(0))
    params = jax.eval_shape(vmap(INITS[setup["init"]]),
                            jax.ShapeDtypeStruct((args.seeds, 2), jnp.uint32))
    curves = jit(vmap(partial(adaptation_curves, n_steps=max(EVAL_STEPS)),
                      in_axes=(0, None, None, None, None, 0)))
    alphas = jax.ShapeDtypeStruct((args.seeds,), jnp.float32)
    evaluation = curves.lower(params, *tasks, alphas).compile()
    preflight.check_compiled(args, setup, [c for loop in loops.values()
                                           for c in loop.values()], evaluation)
    return loops
# -8<- [end:compile_all]


# -8<- [start:main]
def write_results(args, setup, trained, evaluated):
    """results.json, results.txt (its table printed), the figures and params.npz."""
    test, curves, step_sizes = evaluated
    params = {name: get_params(state) for name, (state, _, _) in trained.items()}
    losses = {name: steps for name, (_, steps, _) in trained.items()}
    ms = 1e3 * trained["MAML"][2]
    print(report.speed_line(ms, args.seeds))
    paper = setup["amp_range"] == SETUPS["paper"]["amp_range"]  # its tasks, its numbers
    results = report.results_data(
        command=program.command("experiment.py", args.argv), setup_name=args.setup,
        setup=setup, eval_tasks=args.eval_tasks, eval_steps=EVAL_STEPS, curves=curves,
        seeds=list(range(args.seed, args.seed + args.seeds)), step_sizes=step_sizes,
        paper=PAPER_MSE_K5 if paper else None, losses=losses, ms_per_step=ms)
    table = report.write_run(args.out, params, test, results, losses, jit(
        inner_steps, static_argnames="n_steps"))
    print("\n" + table.split("\n", 1)[1], end="")
    print(f"figures, params.npz, results.json and results.txt written to {args.out}/")
    return results


def main(argv=None):
    args, setup = flags.parse(argv, SETUPS, DEFAULT)
    with checkpoint.opened(args, setup) as run:  # its folder: lock, resume, Ctrl-C
        print(report.run_line(args, setup, jax.devices()[0].platform))
        t0 = time.perf_counter()
        compiled = run.before_training(compile_all, args, setup)
        print(f"compiled in {time.perf_counter() - t0:.1f} s; memory checked")
        k_init, k_maml, k_base, k_val, k_test = run_keys(args.seed, args.seeds)
        fresh = vmap(opt_init)(vmap(INITS[setup["init"]])(k_init))  # Adam's, at step 0
        trained = {}
        for name, keys in zip(MODELS, (k_maml, k_base)):
            state, before = run.resumed(name, fresh)
            trained[name] = train(compiled[name], state, keys, setup, name, (0, before),
                                  run.at_chunk(name))
        params = {name: get_params(state) for name, (state, _, _) in trained.items()}
        evaluated = evaluate(params, setup, args, (k_val[0], k_test[0]))
        run.stop_if_asked("after training")  # before anything is written
        results = write_results(args, setup, trained, evaluated)
    print(*report.plateau_note(results), sep="", end="")


if __name__ == "__main__":
    with program.closed_pipe_exits():
        main()
# -8<- [end:main]
