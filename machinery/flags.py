"""experiment.py's flags, each with its check and default, and the one-line refusal of a
flag whose value is found not to work after parsing (a run too big for memory, a folder
another run holds): `Refused`, which the run's seam prints as argparse does, exit 2.
"""
import math
import os
import shlex
import sys

from machinery import program
from machinery.program import checked

PROG = "experiment.py"


class Refused(Exception):
    """A flag whose value cannot work: 'argument FLAG: why', in one line."""

    def __init__(self, flag, why):
        super().__init__(f"argument {flag}: {why}")


def exit_refused(refusal):
    """Stop as argparse stops for a bad flag: one line on stderr, exit 2."""
    print(f"{PROG}: error: {refusal}", file=sys.stderr)
    sys.exit(2)


def add_flags(ap, setups, default):
    """experiment.py's flags on `ap`, each with its check and default (a setup's value
    where the setup sets it)."""
    count = program.at_least(1)
    positive = checked(float, lambda v: 0 < v < math.inf, "a finite number > 0")
    ap.add_argument("--setup", choices=setups, default=default, help="the paper's "
                    f"text, the authors' released code, or the 2019 blog ({default})")
    for flag, kind, metavar, what in (
            ("steps", count, "N", "meta-training steps, and the baseline's"),
            ("tasks", count, "N", "tasks per meta-batch"),
            ("k", count, "K", "support and query points per task"),
            ("alpha", positive, "A", "inner step size")):
        values = ", ".join(f"{s} {setups[s][flag]:,}" for s in setups)  # paper 25, ...
        ap.add_argument(f"--{flag}", type=kind, metavar=metavar,
                        help=f"{what} ({values})")
    seed = checked(int, lambda v: 0 <= v < 2**32, "a whole number in [0, 2**32)")
    ap.add_argument("--seed", default=0, metavar="S", type=seed,
                    help="seed of run 0; run r uses seed S + r (0)")
    ap.add_argument("--seeds", type=count, default=1, metavar="N",
                    help="independent runs, trained together as one computation (1)")
    ap.add_argument("--eval-tasks", type=program.at_least(2), default=600, metavar="N",
                    help="held-out tasks to evaluate on (600)")
    ap.add_argument("--out", metavar="DIR", type=checked(str, bool, "a folder's path"),
                    help="folder for the figures, results.json, results.txt and "
                    "params.npz, created when missing (runs/SETUP-seedS, which git "
                    "ignores; the committed results are remade with --out figures/...)")
    seconds = checked(float, lambda v: v >= 0, "a number >= 0")
    ap.add_argument("--checkpoint-every", type=seconds, default=10.0, metavar="S",
                    help="seconds between checkpoints, at chunk boundaries; one is "
                    "always saved at a stop and at a model's end (10)")
    ap.add_argument("--resume", action="store_true", help="go on from the checkpoint "
                    "in --out of a run with the same flags, if there is one; start if "
                    "there is none")


# -8<- [start:parse]
def parse(argv, setups, default):
    """experiment.py's flags, and the setup they choose (`default` without --setup) with
    the values they override. A bad value stops here in one line (exit 2)."""
    ap = program.parser(PROG, "MAML on the sinusoid regression of Finn et al. 2017.")
    add_flags(ap, setups, default)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    args.argv = [word for word in argv if word != "--resume"]  # the results' command
    if args.out is None:
        args.out = os.path.join("runs", f"{args.setup}-seed{args.seed}")
    if args.seed + args.seeds > 2**32:  # what no single flag's type can check
        ap.error(f"argument --seeds: run r uses seed {args.seed} + r, which must stay "
                 f"below 2**32; expected at most {2**32 - args.seed:,}, got "
                 f"{args.seeds:,}")
    program.check_out(ap.error, args.out)  # now, not after training
    args.defaults = setups[args.setup]
    setup = dict(args.defaults)
    setup.update({name: getattr(args, name) for name in ("steps", "tasks", "k", "alpha")
                  if getattr(args, name) is not None})
    return args, setup
# -8<- [end:parse]


def typed(args):
    """The command as typed, without --resume: `python experiment.py ...`, to paste here
    (a recorded command hides this machine's paths; this one keeps them)."""
    return shlex.join(["python", PROG, *args.argv])
