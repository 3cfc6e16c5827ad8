"""What every program shares, done once: the command line (one-line errors, the flags
several programs take), --out, writing a result (the JSON, then the text rendered from
it), and what a result records: its command (path-free), the environment, the time and
load, with the line that states them under a table. Standard library only.
"""
import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import shlex
import sys
import tempfile
from datetime import datetime, timezone

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


def at_least(n):
    """An argparse type: a whole number >= n."""
    return checked(int, lambda v: v >= n, f"a whole number >= {n}")


def some_of(allowed):
    """An argparse type: some of the names `allowed`, comma-separated (a list)."""
    return checked(lambda text: text.split(","),
                   lambda names: set(names) <= set(allowed),
                   f"some of {','.join(allowed)}, comma-separated")


def parser(prog, description, out=None, what="its results"):
    """A program's ArgumentParser: one-line errors, no abbreviations, --out if `out`."""
    ap = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    ap.error = one_line_error(ap)
    if out is not None:
        ap.add_argument("--out", default=out, metavar="DIR",
                        help=f"folder for {what}, created when missing ({out})")
    return ap


def parse(ap, argv=None):
    """The flags, with args.argv (for the recorded command); --out checked writable."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    args.argv = argv
    if getattr(args, "out", None) is not None:
        check_out(ap.error, args.out)
    return args


@contextlib.contextmanager
def closed_pipe_exits():
    """A reader that goes away (`... | head`) ends the program with exit 141, a shell's
    code for SIGPIPE, not a traceback and exit 1 (which means a diverged run)."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit, into the same pipe: point it at devnull.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + 13)


def check_out(error, folder):
    """Stop (error: one line) unless `folder` is, or can be made, a folder this process
    can write into. Nothing is created, so a refusal leaves no empty folder."""
    path = os.path.abspath(folder)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        error(f"argument --out: cannot write to {folder!r} ({path} is a file, not a "
              "folder)")
    try:  # a real file, not os.access: that says yes to root anywhere, /proc included
        tempfile.TemporaryFile(dir=path).close()  # a file with no name: none is left
    except OSError as e:
        error(f"argument --out: cannot write to {folder!r} (no file can be made in "
              f"{path}: {e.strerror})")


def command(program, argv, hide=None, env=None):
    """The command that remade a result, free of this machine's paths: `python FILE.py
    ARGV` or `python -m MODULE ARGV`. `hide` maps a flag to words standing for its
    value, `env` a variable the run read to such words (written in front)."""
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
    """A word, shell-quoted; an absolute path made relative to the repository."""
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
    """The environment record: processor, cores, system, versions, the device (given by
    a program that started JAX: a benchmark's driver must not hold the GPU), `extra`."""
    versions = {p: importlib.metadata.version(p) for p in ("jax", "jaxlib", "numpy")}
    return dict(cpu=cpu(), cores=os.cpu_count(), system=platform.system(),
                python=platform.python_version(), **versions,
                device=device or "(not started)", **extra)


def jax_device():
    """The default JAX device, as the environment names it: 'cpu (cpu)', say."""
    import jax

    first = jax.devices()[0]
    n = jax.device_count()
    return f"{first.platform} ({first.device_kind})" + (f" x{n}" if n > 1 else "")


def load():
    """The load average over 1, 5 and 15 minutes: how busy the machine was."""
    return [round(x, 2) for x in os.getloadavg()]


def record(program, argv, device=None, loads=(), hide=None, env=None, **extra):
    """What every result records of how it was made: its command (see `command`), the
    environment (see `environment`), the date, and the load averages read while it ran
    (`loads`, read earlier by the program) and now."""
    return dict(command=command(program, argv, hide, env),
                environment=environment(device, **extra),
                when=f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
                load=[*loads, load()])


def conditions(data):
    """The line under a table that says where and when its numbers were measured, from
    what `record` wrote into the data."""
    m = data["environment"]
    extra = "".join(f", {k} {v or '(not run)'}" for k, v in m.items() if k not in BASE)
    minute = " then ".join(f"{reading[0]:.2f}" for reading in data["load"])
    return (f"Measured on {m['cpu']}, {m['cores']} cores, {m['system']}, Python "
            f"{m['python']}, jax {m['jax']}, jaxlib {m['jaxlib']}, numpy {m['numpy']}, "
            f"device {m.get('device', '(not recorded)')}{extra}; {data['when']}; "
            f"load average (1 min) {minute}. Command: `{data['command']}`.")


def table(header, rows, align=None):
    """A markdown table; `align`: 'l' or 'r' for each column (all 'l' by default)."""
    align = align or "l" * len(header)
    rule = ["---:" if a == "r" else "---" for a in align]
    return "".join("| " + " | ".join(map(str, row)) + " |\n"
                   for row in [header, rule, *rows])


def dumps(x, indent=""):
    """JSON, a key or record a line, but a list or record of numbers on one line
    (thousands of numbers stay a short file). No NaN or infinity: they are not JSON."""
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
    """Write a file whole or not at all: a temporary file beside it, then an atomic
    rename. The folder is made here, with the first file, not before."""
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


def remove_torn(folder):
    """Remove what write_whole left half-written in `folder` (NAME.PID.part) when its
    process was killed mid-write: only where no live process writes there."""
    for name in os.listdir(folder):
        if re.fullmatch(r".+\.\d+\.part", name):
            os.unlink(os.path.join(folder, name))


def write_text(path, text):
    write_whole(path, lambda f: f.write(text.encode()))


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write(out, name, data, render, suffix=".md"):
    """NAME.json in `out`, then NAME + suffix rendered from the JSON read back (so the
    text shows nothing the JSON lacks), each whole or not at all. Returns the text."""
    path = os.path.join(out, name + ".json")
    write_text(path, dumps(data) + "\n")
    text = render(read_json(path))
    write_text(os.path.join(out, name + suffix), text)
    return text
