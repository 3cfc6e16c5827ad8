"""What every program of the project shares, each job done here once: its command line
(with one-line errors), its --out folder, how a result is written (the JSON, then the
text rendered from what was written), the command a result records, the environment it
records, and markdown tables.

A result is data first: the JSON says how to remake it (the command, path-free: a
committed result must not name the machine it ran on), on what (the processor, the
package versions) and when (with the load average, since the machine may be shared).
Standard library only.
"""
import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shlex
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # programs run here


# -8<- [start:checked]
def checked(convert, ok, allowed):
    """An argparse type: convert the text, then accept it only if ok(value)."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}")
        return value
    return parse


def one_line_error(ap):
    """argparse's error, as one line without the usage (exit 2)."""
    def error(message):
        ap.exit(2, f"{ap.prog}: error: {message}\n")
    return error
# -8<- [end:checked]


def parser(prog, description, out=None, what="its results"):
    """A program's ArgumentParser: one-line errors, no abbreviated flags, and, with
    `out` (the default folder), --out DIR. Parsing writes nothing; `parse` checks --out
    can be written."""
    ap = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    ap.error = one_line_error(ap)
    if out is not None:
        ap.add_argument("--out", default=out, metavar="DIR",
                        help=f"folder for {what}, created when missing ({out})")
    return ap


def parse(ap, argv=None):
    """The flags, with args.argv (the words given, for the recorded command). Stops in
    one line (exit 2) if --out could not be written, without creating anything."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    args.argv = argv
    if getattr(args, "out", None) is not None:
        check_out(ap.error, args.out)
    return args


CLOSED_PIPE = 141  # what a shell reports for a program stopped by SIGPIPE (128 + 13)


@contextlib.contextmanager
def closed_pipe_exits():
    """A reader that goes away (`python experiment.py | head`) ends the program quietly
    with exit 141, the shell's code for a closed pipe, instead of a BrokenPipeError
    traceback and exit 1 (which the programs use for a diverged run)."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit, into the same pipe: point it at devnull.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(CLOSED_PIPE)


def check_out(error, folder):
    """Stop (error: one line) unless `folder` is a folder, or can be made one, that this
    process can write into. Nothing is created: a refusal, or a run stopped later,
    leaves no empty folder."""
    path = os.path.abspath(folder)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        error(f"argument --out: cannot write to {folder!r} ({path} is a file, not a "
              "folder)")
    if not os.access(path, os.W_OK | os.X_OK):
        error(f"argument --out: cannot write to {folder!r} (no permission to write in "
              f"{path})")


def command(program, argv, hide=None, env=None):
    """The command line that remade a result, without this machine's paths: `python
    PROGRAM ARGV` for a file (experiment.py), `python -m PROGRAM ARGV` for a module
    (studies.bench).

    `hide` maps a flag to the words that stand for its value (an interpreter of this
    machine, say); `env` maps an environment variable that the run read to such words,
    written in front. Any other absolute path becomes relative to the repository, or
    "<a path>" outside it."""
    hide = hide or {}
    run = ["python", program] if program.endswith(".py") else ["python", "-m", program]
    words = [f"{name}={text}" for name, text in (env or {}).items()] + run
    for before, word in zip([None, *argv], argv):
        flag, eq, _ = word.partition("=")
        if before in hide:
            words.append(hide[before])
        elif eq and flag in hide:
            words.append(f"{flag}={hide[flag]}")
        else:
            words.append(portable(word))
    return " ".join(words)


def portable(word):
    """A word of a command line, quoted for the shell; an absolute path made relative to
    the repository, or "<a path>" outside it."""
    flag, eq, value = word.partition("=") if word.startswith("--") else ("", "", word)
    if not os.path.isabs(value):
        return shlex.quote(word)
    inside = os.path.relpath(value, ROOT)
    if inside.startswith(".."):
        return f"{flag}{eq}<a path>"
    return shlex.quote(f"{flag}{eq}{inside}")


def cpu():
    """The processor's model name, where the system tells it."""
    try:
        with open("/proc/cpuinfo") as f:
            return re.search(r"^model name\s*:\s*(.*)$", f.read(), re.M)[1]
    except (OSError, TypeError):
        return platform.processor() or platform.machine()


BASE = ("cpu", "cores", "system", "python", "jax", "jaxlib", "numpy", "device")


def environment(device=None, **extra):
    """The one environment record: the processor, its cores, the system, the package
    versions, the device (given by a program that has started JAX; "(not started)"
    otherwise: on a GPU, a driver that held the device would take memory from the
    processes a benchmark measures), and whatever else a program measured with (torch,
    say)."""
    versions = {p: importlib.metadata.version(p) for p in ("jax", "jaxlib", "numpy")}
    return dict(cpu=cpu(), cores=os.cpu_count(), system=platform.system(),
                python=platform.python_version(), **versions,
                device=device or "(not started)", **extra)


def jax_device():
    """The default JAX device, as the environment record names it: 'cpu (cpu)', say."""
    import jax

    d = jax.devices()[0]
    return f"{d.platform} ({d.device_kind})" + (f" x{jax.device_count()}"
                                                 if jax.device_count() > 1 else "")


def environment_text(m):
    """The environment record in one phrase."""
    extra = "".join(f", {name} {m[name] or '(not run)'}"
                    for name in m if name not in BASE)
    return (f"{m['cpu']}, {m['cores']} cores, {m['system']}, Python {m['python']}, "
            f"jax {m['jax']}, jaxlib {m['jaxlib']}, numpy {m['numpy']}, device "
            f"{m.get('device', '(not recorded)')}{extra}")


def now():
    return f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"


def load():
    """The load average over 1, 5 and 15 minutes: how busy the machine was."""
    return [round(x, 2) for x in os.getloadavg()]


def table(header, rows, align=None):
    """A markdown table: a header, its separator (`align`: a string of 'l' and 'r', one
    a column; left by default) and one line per row; cells are turned into text with
    str."""
    align = align or "l" * len(header)
    rule = ["---:" if a == "r" else "---" for a in align]
    return "".join("| " + " | ".join(map(str, row)) + " |\n"
                   for row in [header, rule, *rows])


def dumps(x, indent=""):
    """JSON with one key or record per line, but a list of numbers, or a record of them,
    on one line: readable, and thousands of numbers stay a short file. No NaN or
    infinity: they are not JSON."""
    inner = indent + " "
    if isinstance(x, dict) and any(isinstance(v, (dict, list)) for v in x.values()):
        items = [f"{inner}{json.dumps(k)}: {dumps(v, inner)}" for k, v in x.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(x, list) and any(isinstance(v, (dict, list)) for v in x):
        items = [inner + dumps(v, inner) for v in x]
        return "[\n" + ",\n".join(items) + "\n" + indent + "]"
    return json.dumps(x, allow_nan=False)


# -8<- [start:write_whole]
def write_whole(path, write):
    """Write a file whole or not at all: into a temporary file beside it, then an atomic
    rename. The folder is made here, when the first file is written, and not before."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.part"
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
# -8<- [end:write_whole]


def write_text(path, text):
    write_whole(path, lambda f: f.write(text.encode()))


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write(out, name, data, render, suffix=".md"):
    """A result in folder `out`: NAME.json, then NAME + suffix rendered from what was
    written (read back: the text can show nothing the JSON does not hold), each whole or
    not at all. Returns the text."""
    path = os.path.join(out, name + ".json")
    write_text(path, dumps(data) + "\n")
    text = render(read_json(path))
    write_text(os.path.join(out, name + suffix), text)
    return text
