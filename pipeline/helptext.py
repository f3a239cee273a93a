"""`--help` that shows each option's effective default: the profile's value when the profile
sets one (conf/local.yaml unless --conf-file says otherwise), else the built-in one.

The parsers keep None as every job option's argparse default (so config.resolve_options can tell
"not given" from "given"); the defaults a user gets are only known once a profile is read, so
they are written into the help texts here, before argparse prints them.
"""

from __future__ import annotations

import argparse
import importlib
import os

from pipeline.config import load_profile
from pipeline.errors import PipelineError


def render(value) -> str:
    """A default the way it is typed on the command line."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, dict):
        value = tuple(value.items())
    if isinstance(value, (tuple, list)):
        if all(isinstance(v, tuple) and len(v) == 2 for v in value):  # e.g. a split
            return ",".join(f"{k}={render(v)}" for k, v in value)
        return ",".join(map(render, value))
    return str(value)


def per_choice(module, dest: str) -> str | None:
    """Defaults that depend on another option (the digits engine, the GAN model): the module's
    `*DEFAULTS` tables of {choice: {option: value}}, rendered as `bigdl: 128, torch: 32`."""
    for name in dir(module):
        table = getattr(module, name)
        if not (name.endswith("DEFAULTS") and isinstance(table, dict) and table):
            continue
        if all(isinstance(v, dict) for v in table.values()):
            values = {choice: row[dest] for choice, row in table.items() if dest in row}
            if values:
                return ", ".join(f"{choice}: {render(v)}" for choice, v in values.items())
    return None


def profile_from(argv: list[str]):
    """The profile a command line names (--conf-file), or None when it cannot be read: the job's
    own run reports that error; --help still shows the built-in defaults."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--conf-file")
    known, _ = pre.parse_known_args(argv)
    try:
        return load_profile(known.conf_file)
    except PipelineError:
        return None


def shown_path(path: str) -> str:
    """A profile's path relative to the project (conf/local.yaml) when it is inside it."""
    from pipeline.config import conf_dir

    rel = os.path.relpath(os.path.abspath(path), conf_dir().resolve().parent)
    return path if rel.startswith("..") else rel


def effective(job: str, dest: str, builtin, module, profile) -> str:
    section = (profile.jobs.get(job) or {}) if profile else {}
    for key in (dest, dest.replace("_", "-")):
        if isinstance(section, dict) and key in section:
            return f"{render(section[key])} from {shown_path(profile.path)}"
    if builtin is None:
        return per_choice(module, dest) or "none"
    return render(builtin)


def annotate(parsers: dict, defaults: dict, modules: dict[str, str], argv: list[str]) -> None:
    """Append `(default: VALUE[ from PROFILE])` to every job option's help, unless its help
    already says what the default is."""
    if not any(a in ("-h", "--help") for a in argv):
        return  # nothing is printed: skip reading the profile
    profile = profile_from(argv)
    for job, parser in parsers.items():
        for action in parser._actions:
            if action.dest not in defaults[job] or action.help in (None, argparse.SUPPRESS):
                continue
            if "default" in action.help:
                continue
            value = effective(job, action.dest, defaults[job][action.dest],
                              importlib.import_module(modules[job]), profile)
            # argparse %-formats help texts: a literal % must be doubled
            action.help = f"{action.help} (default: {value.replace('%', '%%')})"
