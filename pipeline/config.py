"""Profiles: `conf/*.yaml` (Spark settings + per-job defaults) merged with CLI overrides.

A profile looks like::

    master: local[*]             # ignored under spark-submit, whose --master wins
    spark_defaults: spark-defaults.local.conf   # Spark's own format, also usable as
                                                # spark-submit --properties-file
    spark: {spark.driver.memory: 4g, ...}       # on top of spark_defaults
    runs_table: out/runs         # where every job appends its `runs` row
    jobs:
      ingest: {partitions: 8}    # defaults for `sparkgan ingest` options
      upscale:
        spark: {spark.task.resource.gpu.amount: 0.25}   # Spark settings of this job's runs only

Precedence, lowest first: the option's built-in default, the profile's `jobs.<job>` value,
the command line. Spark settings: the `spark_defaults` file, then `spark:`, then the job's
`jobs.<job>.spark:`, then `--conf key=value`, the way spark-submit layers --properties-file and
--conf.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.errors import PipelineError

TOP_LEVEL_KEYS = {"master", "spark_defaults", "spark", "runs_table", "jobs", "tracking"}


def conf_dir() -> Path:
    """The profiles folder: $SPARKGAN_CONF_DIR, the checkout's conf/, the copy inside the wheel,
    or the conf/ beside the submitted jobs/ folder (when the package comes from a --py-files zip)."""
    if os.environ.get("SPARKGAN_CONF_DIR"):
        return Path(os.environ["SPARKGAN_CONF_DIR"])
    here = Path(__file__).resolve().parent
    script = Path(sys.argv[0]).resolve().parent if sys.argv and sys.argv[0] else here
    for candidate in (here.parent / "conf", here / "conf", script.parent / "conf"):
        if (candidate / "local.yaml").is_file():
            return candidate
    raise PipelineError("cannot find the conf/ folder; set SPARKGAN_CONF_DIR")


@dataclass
class Profile:
    path: str
    master: str = "local[*]"
    spark: dict[str, str] = field(default_factory=dict)
    runs_table: str = "out/runs"
    jobs: dict[str, dict] = field(default_factory=dict)
    tracking: dict = field(default_factory=dict)  # MLflow: uri, experiment, on_error, tags (docs/tracking.md)


def load_profile(path: str | None, overrides: list[str] | None = None, job: str | None = None) -> Profile:
    """The profile at `path` (default conf/local.yaml) with the Spark settings of `job`'s runs."""
    path = str(path or conf_dir() / "local.yaml")
    try:
        with open(path) as fh:
            raw = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise PipelineError(f"--conf-file {path}: no such file") from None
    except yaml.YAMLError as exc:
        raise PipelineError(f"--conf-file {path}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise PipelineError(f"--conf-file {path}: expected a mapping at the top level")
    unknown = set(raw) - TOP_LEVEL_KEYS
    if unknown:
        raise PipelineError(f"--conf-file {path}: unknown key(s) {', '.join(sorted(unknown))} "
                            f"(expected {', '.join(sorted(TOP_LEVEL_KEYS))})")
    for key in ("spark", "jobs"):
        if not isinstance(raw.get(key, {}) or {}, dict):
            raise PipelineError(f"--conf-file {path}: '{key}' must be a mapping")
    spark = {}
    if raw.get("spark_defaults"):
        spark.update(read_spark_defaults(os.path.join(os.path.dirname(path), str(raw["spark_defaults"]))))
    spark.update({str(k): _spark_value(v) for k, v in (raw.get("spark") or {}).items()})
    jobs = raw.get("jobs") or {}
    for name, section in jobs.items():  # a job's own Spark settings are no job option: take them out
        job_spark = section.pop("spark", None) if isinstance(section, dict) else None
        if job_spark is not None and not isinstance(job_spark, dict):
            raise PipelineError(f"--conf-file {path}: 'jobs.{name}.spark' must be a mapping")
        if name == job:
            spark.update({str(k): _spark_value(v) for k, v in (job_spark or {}).items()})
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("spark."):
            raise PipelineError(f"--conf {item!r}: expected spark.<key>=<value>")
        spark[key.strip()] = value.strip()
    return Profile(path=path, master=str(raw.get("master", "local[*]")), spark=spark,
                   runs_table=str(raw.get("runs_table", "out/runs")), jobs=jobs,
                   tracking=raw.get("tracking") or {})


def read_spark_defaults(path: str) -> dict[str, str]:
    """A spark-defaults.conf file: `key value` (or `key=value`) lines, `#` comments."""
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()
    except OSError:
        raise PipelineError(f"spark_defaults {path}: no such file") from None
    settings = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"([^\s=]+)\s*[=\s]\s*(\S.*)$", line)  # Java properties: `k v`, `k=v`, `k = v`
        if not match or not match.group(1).startswith("spark."):
            raise PipelineError(f"{path}:{number}: expected 'spark.<key> <value>', got {line!r}")
        settings[match.group(1)] = match.group(2).strip()
    return settings


def _spark_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def resolve_options(args: argparse.Namespace, parser: argparse.ArgumentParser,
                    defaults: dict, profile: Profile, job: str) -> argparse.Namespace:
    """Fill options not given on the command line from the profile, then from built-in defaults.

    Profile values go through the option's own argparse `type`, so a bad value in YAML gets the
    same check (and the same kind of message) as a bad value on the command line.
    """
    section = profile.jobs.get(job) or {}
    if not isinstance(section, dict):
        raise PipelineError(f"{profile.path}: jobs.{job} must be a mapping")
    actions = {a.dest: a for a in parser._actions if a.dest in defaults}
    unknown = {k for k in section if k.replace("-", "_") not in actions}
    if unknown:
        raise PipelineError(f"{profile.path}: unknown option(s) jobs.{job}.{', '.join(sorted(unknown))} "
                            f"(expected one of {', '.join(sorted(actions))})")
    for key, value in section.items():
        dest = key.replace("-", "_")
        if getattr(args, dest) is not None:
            continue
        action = actions[dest]
        try:
            if action.type is not None and value is not None:
                value = action.type(str(value))
            if action.choices is not None and value not in action.choices:
                raise ValueError(f"expected one of {', '.join(map(str, action.choices))}")
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise PipelineError(f"{profile.path}: jobs.{job}.{key}={value!r}: {exc}") from None
        setattr(args, dest, value)
    for dest, default in defaults.items():
        if getattr(args, dest) is None:
            setattr(args, dest, default)
    return args
