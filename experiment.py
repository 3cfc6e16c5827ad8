"""The sinusoid regression experiment of the MAML paper (section 5.1, appendix C), on maml.py:
`python experiment.py` meta-trains MAML and a pretrained baseline, evaluates both on 600 held-out
tasks beside the paper's table, and writes figures/. In order: the setups, the baseline, the
training loop, the evaluation, and main; report.py (statistics, results.json, table, figures) and
preflight.py (bad flags, an unwritable folder, a run too big for memory) hold the machinery."""
import math
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import jit, lax, random, vmap
from jax.tree_util import tree_leaves, tree_map, tree_structure

from machinery import checkpoint, preflight, program, report
from maml import (get_params, inner_update, loss, net_init, opt_init, opt_update, sample_sinusoids,
                  sample_tasks, step)

# -8<- [start:setups]
# The MAML paper's text; the authors' released code (github.com/cbfinn/maml), which differs from
# the text in its inner step size and its initialisation; and the 2019 blog post.
SETUPS = {
    "paper": dict(amp_range=(0.1, 5.0), k=10, alpha=0.01, tasks=25, steps=70_000, init="stax"),
    "code": dict(amp_range=(0.1, 5.0), k=10, alpha=0.001, tasks=25, steps=70_000, init="code"),
    "blog": dict(amp_range=(0.1, 0.5), k=20, alpha=0.1, tasks=4, steps=20_000, init="stax"),
}
# Appendix C, table 2 of the paper: MSE for K = 5 after 1, 5 and 10 gradient steps.
PAPER_MSE_K5 = {"MAML": {1: 0.67, 5: 0.38, 10: 0.35}, "pretrained": {1: 2.41, 5: 2.23, 10: 2.19}}
EVAL_KS = (5, 10)  # support points per held-out task at meta-test time, as in the paper's figures
EVAL_STEPS = (0, 1, 5, 10)  # gradient steps after which the held-out MSE is reported
DEFAULT = "code"  # twenty runs of each: the released code's settings give the paper's table
# -8<- [end:setups]


# -8<- [start:inits]
def code_init(key):
    """The released code's construct_fc_weights: weights from a normal of standard deviation
    0.01 truncated at two of them, zero biases; net_init's layout: (W, b) per Dense, () per Relu."""
    shapes = [(1, 40), (40, 40), (40, 1)]
    keys = random.split(key, len(shapes))
    w = [0.01 * random.truncated_normal(k, -2.0, 2.0, s) for k, s in zip(keys, shapes)]
    dense = [(wi, jnp.zeros(s[1])) for wi, s in zip(w, shapes)]
    return [dense[0], (), dense[1], (), dense[2]]


def stax_init(key):
    """stax's own initialisation (Glorot-normal weights, small normal biases): the paper's text."""
    return net_init(key, (-1, 1))[1]


INITS = {"stax": stax_init, "code": code_init}
# -8<- [end:inits]


# -8<- [start:pretrain]
def pretrain_loss(params, x1, y1, x2, y2, alpha=None):
    """The paper's baseline: plain regression on every point of every task in the batch."""
    return loss(params, jnp.concatenate([x1, x2], axis=1), jnp.concatenate([y1, y2], axis=1))


@jit
def pretrain_step(i, opt_state, x1, y1, x2, y2, alpha=None):
    """One Adam step of the baseline (on a task stream of its own, from MAML's distribution)."""
    value, grads = jax.value_and_grad(pretrain_loss)(get_params(opt_state), x1, y1, x2, y2)
    return opt_update(i, grads, opt_state), value
# -8<- [end:pretrain]


# -8<- [start:train_chunk]
@partial(jit, static_argnames=("step_fn", "n_tasks", "k"))
def train_chunk(opt_state, keys, steps, amp_range, alpha, *, step_fn, n_tasks, k):
    """step_fn once for each step number in `steps`, for all runs at once, in one compiled loop:
    the state and losses (len(steps), runs). Every leaf of opt_state has a leading run axis; run r
    at step i trains on sample_tasks(keys[i, r]), as the plain Python loop would. Dispatching one
    small jitted call per meta-step costs more than its maths on a CPU, so the loop runs inside
    XLA (lax.scan), and the chunk's tasks are drawn up front in one vectorised call."""
    one = keys.shape[1] == 1  # one run: the program without a run axis, 10% faster on a CPU

    def sample(key):
        return sample_tasks(key, n_tasks, k, amp_range)
    batches = vmap(sample)(keys[:, 0]) if one else vmap(vmap(sample))(keys)
    run_step = step_fn if one else vmap(step_fn, in_axes=(None, 0, 0, 0, 0, 0, None))

    def body(opt_state, step_and_batch):
        i, batch = step_and_batch
        return run_step(i, opt_state, *batch, alpha)
    if one:
        opt_state, losses = lax.scan(body, tree_map(lambda a: a[0], opt_state), (steps, batches))
        return tree_map(lambda a: a[None], opt_state), losses[:, None]
    return lax.scan(body, opt_state, (steps, batches))
# -8<- [end:train_chunk]


# -8<- [start:chunks]
def chunks(n_steps, n_chunks=20, longest=5_000):
    """(start, stop) of each chunk: about n_chunks of them, none longer than `longest` steps (the
    chunk's tasks are drawn up front, so its length sets the memory a long run needs)."""
    size = min(-(-n_steps // n_chunks), longest)
    return [(a, min(a + size, n_steps)) for a in range(0, n_steps, size)]


def step_keys(keys, n_steps):
    """Each run's key split once into one key per step, on the host: shape (n_steps, runs, 2)."""
    return np.stack([np.asarray(random.split(key, n_steps)) for key in keys], axis=1)


def compile_training(step_fn, params, setup, runs):
    """train_chunk compiled for every chunk length of the run, before anything runs: XLA's own
    account of the memory each needs is then known (memory_analysis), and the timer of `train`
    sees only training. params are one run's; the compiled loops take `runs` of them."""
    state = jax.eval_shape(vmap(opt_init), tree_map(
        lambda a: jax.ShapeDtypeStruct((runs, *a.shape), a.dtype), params))
    static = dict(step_fn=step_fn, n_tasks=setup["tasks"], k=setup["k"])
    return {n: train_chunk.lower(state, jax.ShapeDtypeStruct((n, runs, 2), jnp.uint32),
                                 jax.ShapeDtypeStruct((n,), jnp.int32), setup["amp_range"],
                                 setup["alpha"], **static).compile()
            for n in {b - a for a, b in chunks(setup["steps"])}}
# -8<- [end:chunks]


# -8<- [start:train]
def train(compiled, params, keys, setup, name, log=print, resume=None, at_chunk=None):
    """Train params (a leading run axis on every leaf) for setup["steps"] steps, run r on the task
    stream of keys[r], showing progress: the trained params, every step's loss (steps, runs), and
    the steady seconds per step of all runs. Stops (exit 1) when a loss is not a finite number.
    resume=(opt_state, offset, losses) goes on from an optimizer state, its steps numbered from
    offset (studies.plateau trains a second block), after the first len(losses) steps of this
    stream (a checkpoint's); it then gives back the optimizer state in place of the params.
    at_chunk(opt_state, done, losses) is called after every chunk: the checkpoint."""
    n_steps, spans = setup["steps"], chunks(setup["steps"])
    all_keys = step_keys(keys, n_steps)  # run r, step i: sample_tasks(all_keys[i, r], ...)
    opt_state, offset, losses = (vmap(opt_init)(params), 0, []) if resume is None else resume
    losses = [np.asarray(losses)] if len(losses) else []
    done = first = len(losses[0]) if losses else 0
    t0 = t_steady = time.perf_counter()
    for c, (a, b) in enumerate((a, b) for a, b in spans if b > done):
        if c == 1:  # the first chunk warms up the runtime; time the steady state after it
            t_steady, first = time.perf_counter(), a
        opt_state, chunk_losses = compiled[b - a](opt_state, all_keys[a:b], np.arange(
            offset + a, offset + b, dtype=np.int32), setup["amp_range"], setup["alpha"])
        losses.append(np.asarray(chunk_losses))  # waits for the chunk: the progress line is honest
        stop_if_diverged(losses[-1], name, offset + a, len(keys))
        progress(log, name, b, n_steps, losses[-1], (b - done) / (time.perf_counter() - t0),
                 (c + 1) % -(-len(spans) // 20) == 0)  # a line every 1/20 of the run
        if at_chunk is not None:
            at_chunk(opt_state, b, np.concatenate(losses))
    steady = (time.perf_counter() - t_steady) / (n_steps - first) if first > done else math.nan
    return (get_params(opt_state) if resume is None else opt_state), np.concatenate(losses), steady


def stop_if_diverged(losses, name, first_step, runs):
    """Exit 1, in one line, if a loss of the chunk (steps, runs) is not a finite number."""
    if not np.all(np.isfinite(losses)):
        bad, run = np.argwhere(~np.isfinite(losses))[0]
        which = f"{name} (run {run})" if runs > 1 else name
        sys.exit(f"experiment.py: {which} diverged at step {first_step + bad} (loss is "
                 f"{losses[bad, run]}); nothing was written. Try a smaller --alpha.")


def progress(log, name, step, n_steps, losses, per_s, due):
    """The progress line, when it is due and at the end."""
    if due or step == n_steps:
        log(f"{name}: step {step:>7,}/{n_steps:,}  loss {losses.mean():8.4f}  "
            f"{per_s:8,.0f} steps/s  {(n_steps - step) / per_s:5.1f} s left")
# -8<- [end:train]


# -8<- [start:eval_tasks]
def eval_tasks(key, n_tasks, k, amp_range, n_test=100):
    """Held-out tasks: K support points each, and the true function at n_test points on [-5, 5]."""
    sinusoid, x1 = sample_sinusoids(key, n_tasks, k, amp_range)
    x_test = jnp.linspace(-5.0, 5.0, n_test)[:, None]
    return x1, sinusoid(x1), x_test, sinusoid(x_test)


def inner_steps(params, x1, y1, alpha, n_steps, update=inner_update, checkpoint=False,
                track=None):
    """n_steps of `update` on one task's support set as one lax.scan (traced once, so the program
    stays the same size for any n_steps): the adapted params, and track(params) before each step.
    With checkpoint, reverse mode keeps only each step's input and recomputes the step on the way
    back (less memory, one more forward pass). Every "n inner steps" of the project is this one."""
    def body(p, _):
        return update(p, x1, y1, alpha), None if track is None else track(p)
    if checkpoint:  # scan already keeps XLA from merging the recomputation away: prevent_cse off
        body = jax.checkpoint(body, prevent_cse=False)
    return lax.scan(body, params, length=n_steps)


@partial(jit, static_argnames=("n_steps", "update"))
def adaptation_curves(params, x1, y1, x_test, y_test, alpha, n_steps, update=inner_update):
    """Test MSE of every task after 0, 1, ..., n_steps steps of `update` on its own support set,
    shape (n_tasks, n_steps + 1). A variant with its own inner update (Meta-SGD) passes it."""
    def one_task(x1, y1, y_test):
        def test_mse(p):
            return loss(p, x_test, y_test)
        adapted, mses = inner_steps(params, x1, y1, alpha, n_steps, update, track=test_mse)
        return jnp.append(mses, test_mse(adapted))
    return vmap(one_task)(x1, y1, y_test)
# -8<- [end:eval_tasks]


# -8<- [start:run_curves]
def run_curves(params, tasks, k, alphas, n_steps=max(EVAL_STEPS), update=inner_update):
    """adaptation_curves of every run on the same held-out tasks, run r with step size alphas[r]:
    an array of shape (runs, n_tasks, n_steps + 1)."""
    x1, y1, x_test, y_test = tasks
    curves = vmap(partial(adaptation_curves, n_steps=n_steps, update=update),
                  in_axes=(0, None, None, None, None, 0))
    return np.asarray(curves(params, x1[:, :k], y1[:, :k], x_test, y_test, alphas))


def tune_step_size(params, tasks, k, candidates=(1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2)):
    """Each run's fine-tuning step size for the baseline: the candidate with the lowest mean
    validation MSE after 1, 5 and 10 steps (a step size that diverges counts as infinitely bad)."""
    runs = len(tree_leaves(params)[0])
    scores = []
    for a in candidates:
        c = run_curves(params, tasks, k, np.full(runs, a, np.float32))[:, :, [1, 5, 10]]
        scores.append(np.where(np.isfinite(c).all(axis=(1, 2)), c.mean(axis=(1, 2)), np.inf))
    return np.asarray(candidates)[np.argmin(scores, axis=0)]
# -8<- [end:run_curves]


# -8<- [start:evaluate]
def evaluate(params, setup, args, keys):
    """Held-out MSE curves of both models for every K, on run 0's validation and test tasks:
    MAML adapts with its own alpha, the baseline with a step size tuned on the validation tasks.
    Stops the program (exit 1) if adaptation diverges on most tasks of a run: a mean of the few
    survivors would be garbage."""
    val, test = (eval_tasks(key, args.eval_tasks, max(EVAL_KS), setup["amp_range"]) for key in keys)
    curves, step_sizes = {}, {}
    for k in EVAL_KS:
        for name in params:
            step_sizes[name, k] = np.full(args.seeds, setup["alpha"], np.float32) \
                if name == "MAML" else tune_step_size(params[name], val, k)
            curves[name, k] = run_curves(params[name], test, k, step_sizes[name, k])
    for (name, k), r, diverged in report.most_diverged(curves):
        sys.exit(f"experiment.py: {name} adaptation (run {r}, step size "
                 f"{step_sizes[name, k][r]:g}) diverged on {diverged} of {args.eval_tasks} "
                 f"held-out tasks (K = {k}); nothing was written. Try a smaller --alpha.")
    return test, curves, step_sizes
# -8<- [end:evaluate]


# -8<- [start:parse_args]
def parse_args(argv=None):
    """The flags and the setup they choose; preflight.py defines them and stops a bad value."""
    return preflight.parse_args(argv, SETUPS, DEFAULT)


def run_keys(seed, runs):
    """The five keys of every run: initial parameters, MAML's task stream, the baseline's, the
    validation tasks and the test tasks, each an array of shape (runs, 2). Run r derives its keys
    from seed + r, so run 0 is the single run of the same seed."""
    return np.stack([np.asarray(random.split(random.PRNGKey(seed + r), 5)) for r in range(runs)], 1)
# -8<- [end:parse_args]


# The code a checkpoint's numbers depend on beyond the flags: another version refuses to resume.
CODE = [SETUPS, EVAL_KS, EVAL_STEPS, code_init, stax_init, pretrain_loss]


# -8<- [start:compile_evaluation]
def compile_evaluation(setup, args):
    """The evaluation's programs (drawing the held-out tasks, adapting every run to them),
    compiled for their shapes, so that XLA's count of their memory is known before they run."""
    key, runs = random.PRNGKey(0), args.seeds
    draw = partial(eval_tasks, n_tasks=args.eval_tasks, k=max(EVAL_KS),
                   amp_range=setup["amp_range"])
    params = tree_map(lambda a: jax.ShapeDtypeStruct((runs, *a.shape), a.dtype),
                      INITS[setup["init"]](key))
    curves = vmap(partial(adaptation_curves, n_steps=max(EVAL_STEPS)),
                  in_axes=(0, None, None, None, None, 0))
    return [jit(draw).lower(key).compile(), jit(curves).lower(
        params, *jax.eval_shape(draw, key), jax.ShapeDtypeStruct((runs,), jnp.float32)).compile()]
# -8<- [end:compile_evaluation]


# -8<- [start:train_both]
def train_both(ap, args, setup, init, streams, stopper):
    """Compile both training loops and the evaluation, stop if they cannot fit in memory, then
    train MAML and the baseline, each on its own task stream (streams: their keys per run), from
    the checkpoint in --out if --resume finds one, saving one after every chunk."""
    t0, mark = time.perf_counter(), checkpoint.fingerprint(args, setup, CODE)
    states = jax.eval_shape(vmap(opt_init), init)
    saved = checkpoint.open_run(ap.error, args.out, mark, {name: tree_structure(states) for name in
                                                           ("MAML", "pretrained")}, args.resume)
    preflight.check_tasks(ap.error, args, setup, max(b - a for a, b in chunks(setup["steps"])))
    compiled = {name: compile_training(fn, tree_map(lambda a: a[0], init), setup, args.seeds)
                for name, fn in (("MAML", step), ("pretrained", pretrain_step))}
    preflight.check_compiled(ap.error, args, setup, [
        c for loops in compiled.values() for c in loops.values()], compile_evaluation(setup, args))
    print(f"compiled in {time.perf_counter() - t0:.1f} s; memory checked")
    stopper.stop_if_asked("experiment.py: stopped before training; nothing was written")
    checkpoint.begin(ap.error, args.out)
    params, losses, per_step = {}, {}, {}
    for name, keys in zip(compiled, streams):
        opt_state, _, done = saved.get(name, (vmap(opt_init)(init), 0, []))
        opt_state, losses[name], per_step[name] = train(
            compiled[name], None, keys, setup, name, resume=(opt_state, 0, done),
            at_chunk=checkpoint.saver(args, mark, saved, name, stopper, setup["steps"]))
        params[name] = get_params(opt_state)
    ms = 1e3 * per_step["MAML"]
    print("meta-training: " + ("resumed, not timed" if math.isnan(ms) else f"{ms:.3f} ms per "
          "meta-step" + (f" of {args.seeds} runs, {ms / args.seeds:.3f} ms per run-step"
                         if args.seeds > 1 else "") + " (steady state: compile, first chunk out)"))
    return params, losses, ms


# -8<- [end:train_both]


# -8<- [start:main]
def main(argv=None):
    with checkpoint.Stopper() as stopper:
        run(*parse_args(argv), stopper)


def run(args, setup, ap, stopper):
    runs = f"{args.seeds} runs (seeds {args.seed}-{args.seed + args.seeds - 1})" \
        if args.seeds > 1 else f"seed {args.seed}"
    print(f"MAML, {args.setup} setup: {setup['steps']:,} steps of {setup['tasks']:,} tasks, "
          f"K = {setup['k']:,}, alpha = {setup['alpha']:g}, amplitude U{list(setup['amp_range'])}; "
          f"{runs}; {jax.devices()[0].platform}")
    k_init, k_maml, k_base, k_val, k_test = run_keys(args.seed, args.seeds)
    with checkpoint.removed_on_failure(args.out):
        params, losses, ms = train_both(ap, args, setup, vmap(INITS[setup["init"]])(k_init),
                                        (k_maml, k_base), stopper)
        test, curves, step_sizes = evaluate(params, setup, args, (k_val[0], k_test[0]))
    paper = setup["amp_range"] == SETUPS["paper"]["amp_range"]  # the paper's tasks, its numbers
    results = report.results_data(
        command=program.command("experiment.py", args.argv),
        setup_name=args.setup, setup=setup, eval_tasks=args.eval_tasks, eval_steps=EVAL_STEPS,
        seeds=list(range(args.seed, args.seed + args.seeds)),
        paper=PAPER_MSE_K5 if paper else None,
        curves=curves, step_sizes=step_sizes, losses=losses, ms_per_step=ms)
    table = report.write_run(args.out, params, test, results, losses, jit(
        inner_steps, static_argnames="n_steps"))
    print("\n" + table.split("\n", 1)[1], end="")
    print(f"figures, params.npz, results.json and results.txt written to {args.out}/")
    checkpoint.remove(args.out)  # finished: the results are the record
    print(*report.plateau_note(results), sep="", end="")


if __name__ == "__main__":
    with program.closed_pipe_exits():
        main()
# -8<- [end:main]
