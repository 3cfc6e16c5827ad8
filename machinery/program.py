"""What a script's result records of how it was made, and how it is written.

A result is data first: each script writes its numbers as JSON, then the table a page shows,
rendered from that JSON alone. The JSON says how to remake it (the command, path-free: a
committed result must not name the machine it ran on), on what (the processor and the package
versions) and when (with the load average, since the machine may be shared).
"""
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shlex

from machinery import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # every script runs here


def command(module, argv, hide=None, env=None):
    """The command line `python -m MODULE ARGV` that remade a result, without this machine's paths.

    `hide` maps a flag to the words that stand for its value (an interpreter of this machine, say);
    `env` maps an environment variable that the run read to such words, written in front. Any
    other absolute path becomes relative to the repository, or "<a path>" outside it."""
    hide = hide or {}
    words = [f"{name}={text}" for name, text in (env or {}).items()] + ["python", "-m", module]
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
    """A word of a command line, quoted for the shell; an absolute path made relative to the
    repository, or "<a path>" outside it."""
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


BASE = ("cpu", "cores", "system", "python", "jax", "jaxlib", "numpy")


def machine(**extra):
    """The processor, its cores, the system and the versions that a measurement ran with. It reads
    the versions from the installed packages and starts no JAX backend: on a GPU, a driver that
    held the device would take memory from the processes it measures."""
    versions = {p: importlib.metadata.version(p) for p in ("jax", "jaxlib", "numpy")}
    return dict(cpu=cpu(), cores=os.cpu_count(), system=platform.system(),
                python=platform.python_version(), **versions, **extra)


def machine_text(m):
    """The machine, in one phrase."""
    extra = "".join(f", {name} {m[name] or '(not run)'}" for name in m if name not in BASE)
    return (f"{m['cpu']}, {m['cores']} cores, {m['system']}, Python {m['python']}, "
            f"jax {m['jax']}, jaxlib {m['jaxlib']}, numpy {m['numpy']}{extra}")


def now():
    return f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"


def load():
    """The load average over 1, 5 and 15 minutes: how busy the machine was."""
    return [round(x, 2) for x in os.getloadavg()]


def text_path(json_path, suffix):
    """Where the table rendered from a JSON result goes: beside it, with its own suffix."""
    return os.path.splitext(json_path)[0] + suffix


def dumps(x, indent=""):
    """JSON with one key or record per line, but a list of numbers, or a record of them, on one
    line: readable, and thousands of numbers stay a short file. No NaN or infinity: they are not
    JSON."""
    inner = indent + " "
    if isinstance(x, dict) and any(isinstance(v, (dict, list)) for v in x.values()):
        items = [f"{inner}{json.dumps(k)}: {dumps(v, inner)}" for k, v in x.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(x, list) and any(isinstance(v, (dict, list)) for v in x):
        return "[\n" + ",\n".join(inner + dumps(v, inner) for v in x) + "\n" + indent + "]"
    return json.dumps(x, allow_nan=False)


def write(json_path, data, render, suffix):
    """The JSON, then the table rendered from what was written (read back: the table can show
    nothing that the JSON does not hold), each whole or not at all. Returns the table."""
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    report.write_whole(json_path, lambda f: f.write((dumps(data) + "\n").encode()))
    text = render(report.read_json(json_path))
    report.write_whole(text_path(json_path, suffix), lambda f: f.write(text.encode()))
    return text
