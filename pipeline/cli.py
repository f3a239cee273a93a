"""`sparkgan JOB ...`, `python -m pipeline JOB ...` and `spark-submit jobs/JOB.py ...` all land here."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import re
import sys
import traceback
from dataclasses import dataclass

from pipeline.config import load_profile, resolve_options
from pipeline.errors import PipelineError

log = logging.getLogger("sparkgan")


@dataclass(frozen=True)
class JobSpec:
    module: str
    help: str


# Job modules keep heavy imports (torch, tensorflow, bigdl) inside functions, so listing is cheap.
JOBS = {
    "ingest": JobSpec("pipeline.ingest", "image folders / IDX files / bundled sets → images Parquet"),
    "train_digits": JobSpec("pipeline.digits.job", "LeNet-5 digit recognition (BigDL or torch engine)"),
    "predict_digits": JobSpec("pipeline.digits.predict", "batch inference with a saved LeNet-5"),
    "featurize": JobSpec("pipeline.featurize", "images → features with a pretrained Keras model"),
    "transfer": JobSpec("pipeline.transfer", "features → Spark ML LogisticRegression (transfer learning)"),
    "transfer_demo": JobSpec("pipeline.demos.transfer", "offline transfer-learning demo on MNIST digits"),
    "train_gan": JobSpec("pipeline.gan.job", "DCGAN / SRGAN training on workers via TorchDistributor"),
    "upscale": JobSpec("pipeline.gan.upscale", "batch 4x super-resolution with a trained SRResNet"),
    "export": JobSpec("pipeline.export", "images table → WebDataset tar shards + Parquet index (local or s3://)"),
}

COMMON = ("job", "conf_file", "conf", "runs_table", "verbose", "remote", "tracking_uri", "experiment", "tracking_tag",
          "register_as")
# the options that name a model to load, which may be a registry URI (pipeline/tracking.py)
MODEL_OPTIONS = {"predict_digits": "model", "upscale": "generator", "featurize": "model_file"}


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the usage block: it is what a scheduler's log shows
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> tuple[argparse.ArgumentParser, dict, dict]:
    parser = Parser(prog="sparkgan", description="Distributed image pipelines on Spark.")
    sub = parser.add_subparsers(dest="job", required=True, metavar="JOB")
    parsers, defaults = {}, {}
    for name, spec in JOBS.items():
        mod = importlib.import_module(spec.module)
        sp = sub.add_parser(name, help=spec.help, description=(mod.__doc__ or "").split("\n")[0])
        defaults[name] = mod.add_arguments(sp)
        sp.add_argument("--conf-file", help="profile YAML (default: conf/local.yaml)")
        sp.add_argument("--conf", action="append", default=[], metavar="spark.KEY=VALUE",
                        help="Spark setting overriding the profile (repeatable)")
        sp.add_argument("--runs-table", help="Parquet table that gets this run's row (default: profile's)")
        sp.add_argument("--remote", metavar="sc://HOST:PORT",
                        help="run on a Spark Connect server (also: SPARK_REMOTE, or spark.api.mode=connect for one "
                             "started in the driver); default: a classic session")
        sp.add_argument("--tracking-uri", metavar="URI",
                        help="log this run to MLflow: http://HOST:PORT of an `mlflow server` (also: the profile's "
                             "tracking.uri, MLFLOW_TRACKING_URI); default: no tracking (docs/tracking.md)")
        sp.add_argument("--experiment", help="MLflow experiment (default: the profile's tracking.experiment, "
                                             "else sparkgan-JOB)")
        sp.add_argument("--tracking-tag", action="append", default=[], metavar="KEY=VALUE",
                        help="a tag on the MLflow run (repeatable)")
        sp.add_argument("--register-as", metavar="NAME",
                        help="register the trained model as a new version of NAME in the MLflow registry")
        sp.add_argument("--verbose", action="store_true",
                        help="also print Spark's INFO log, BigDL's and TensorFlow's start-up output "
                             "(default: only the job's progress, Spark's progress bar and warnings)")
        # None marks "not given", so the profile can fill it (see config.resolve_options).
        sp.set_defaults(**{dest: None for dest in defaults[name]})
        parsers[name] = sp
    return parser, parsers, defaults


@dataclass
class Progress:
    """What the job is doing, for the one line an unexpected failure prints."""

    doing: str = "reading its options"
    record: object = None  # the run's record once the runs table is known
    runs_table: str | None = None

    def now(self) -> str:
        return getattr(self.record, "doing", None) or self.doing


def run_job(name: str, opts: argparse.Namespace, profile, progress: Progress) -> dict:
    from pipeline import safety, tracking
    from pipeline.io import Run, absolute, is_local, local_path, mark_abandoned, recorded_run
    from pipeline.session import get_session, scoped_conf

    mod = importlib.import_module(JOBS[name].module)
    progress.doing = "checking its options"
    # the tracking server answers before any work, or the job stops here (pipeline/tracking.py)
    track = tracking.check(tracking.settings(name, opts.tracking_uri, profile.tracking, opts.register_as,
                                             opts.experiment, opts.tracking_tag))
    if (option := MODEL_OPTIONS.get(name)) and tracking.is_model_uri(getattr(opts, option)):
        progress.doing = "downloading its model from the registry"
        setattr(opts, option, tracking.resolve_model(getattr(opts, option), "--" + option.replace("_", "-"),
                                                     opts.tracking_uri or profile.tracking.get("uri")))
    prepared = mod.validate(opts)  # every check that needs no Spark, before a JVM starts
    uses_bigdl = getattr(mod, "uses_bigdl", lambda _: False)
    progress.runs_table = absolute(opts.runs_table or profile.runs_table)
    inputs, outputs = safety.job_paths(opts)
    safety.check_paths(inputs, {**outputs, "--runs-table": progress.runs_table})
    safety.check_replaceable(outputs, getattr(opts, "mode", "error"))
    config = {k: v for k, v in vars(opts).items() if k not in COMMON}
    run = Run(job=name, config=config)
    with leases(run, outputs) as held:
        progress.doing = "starting Spark"
        spark = get_session(profile, f"sparkgan-{name}", bigdl=uses_bigdl(opts))
        run.outputs = {"lease": held[0].path} if held else {}
        with tracking.job_run(track, name, opts, run, config, spark, progress.runs_table), \
                recorded_run(spark, progress.runs_table, name, config, run) as record:
            progress.record = record
            dead = set()
            for option, path in outputs.items():
                if is_local(path):
                    dead |= safety.recover(local_path(path), option)
            for lease in held:
                if lease.taken_from is not None:
                    dead.add(lease.taken_from.run_id)
            if dead:
                mark_abandoned(progress.runs_table, dead, record.run_id)
            with scoped_conf(spark):  # the job's own Spark settings end with it (pipeline.session.set_conf)
                summary = mod.run(spark, opts, record, prepared)
    return {"run_id": record.run_id, **summary, "runs_table": progress.runs_table}


@contextlib.contextmanager
def leases(run, outputs: dict[str, str]):
    """The lease on every local path the job writes, for as long as it runs (pipeline/safety.py)."""
    from pipeline import safety
    from pipeline.io import is_local, local_path

    held = []
    try:
        for option, path in outputs.items():
            if is_local(path):
                held.append(safety.Lease(local_path(path), run.run_id, option).acquire())
            else:
                log.info("%s %s: not a local path, so no lease is taken (one writer per output is the "
                         "scheduler's to ensure)", option, path)
        yield held
    finally:
        for lease in held:
            lease.release()


def cause(exc: BaseException) -> str:
    """The root cause of an exception in one line: the last `Caused by` of a Java trace, the last
    line of a Python worker's traceback, or the exception's own first line."""
    text = str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    java = [line.removeprefix("Caused by:").removeprefix(":").strip() for line in lines
            if line.startswith(("Caused by:", ": ")) or re.match(r"^[\w.$]+(Exception|Error)(: |$)", line)]
    if "Traceback (most recent call last)" in text:  # a Python worker's error, as Spark relays it
        python = [line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b:?", line)
                  and not line.startswith(("org.", "java.", "py4j."))]
        if python:
            return python[-1]
    if java:
        return java[-1]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def trace_file(progress: Progress, job: str) -> str | None:
    """Write the whole trace beside the runs table (logs/RUN_ID.log); its path, or None."""
    from pipeline.io import is_local, local_path

    if not progress.runs_table or not is_local(progress.runs_table):
        return None
    run_id = getattr(progress.record, "run_id", None) or f"{job}-not-started"
    path = os.path.join(os.path.dirname(local_path(progress.runs_table)), "logs", f"{run_id}.log")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write(traceback.format_exc())
    except OSError:
        return None
    return path


def main(argv: list[str] | None = None) -> int:
    from pipeline import helptext, quiet

    argv = sys.argv[1:] if argv is None else argv
    quiet.configure("--verbose" in argv)  # before anything logs, Spark's JVM included
    parser, parsers, defaults = build_parser()
    helptext.annotate(parsers, defaults, {name: spec.module for name, spec in JOBS.items()}, argv)
    args = parser.parse_args(argv)
    progress = Progress()
    try:
        profile = load_profile(args.conf_file, args.conf, args.job)
        if args.remote:
            profile.spark["spark.remote"] = args.remote
        opts = resolve_options(args, parsers[args.job], defaults[args.job], profile, args.job)
        summary = run_job(args.job, opts, profile, progress)
    except PipelineError as exc:
        print(f"sparkgan {args.job}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # Spark's own "path does not exist" and friends are user errors too: one line, not a trace.
        from pyspark.errors import AnalysisException
        if isinstance(exc, AnalysisException):
            print(f"sparkgan {args.job}: error: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 2
        # Anything else is ours or the cluster's: one line for the scheduler's log, the whole
        # trace in the runs row and the log file.
        where = trace_file(progress, args.job)
        print(f"sparkgan {args.job}: failed while {progress.now()}: {cause(exc)}"
              + (f" (trace: {where})" if where else ""), file=sys.stderr)
        return 1
    width = max(map(len, summary))
    print(f"sparkgan {args.job}: done")
    for key, value in summary.items():
        print(f"  {key:<{width}}  {value}")
    return 0


def submit_main(argv: list[str] | None = None) -> int:
    """Entry point of `jobs/*.py`, `python -m pipeline` and `sparkgan`: main(), then stop Spark.

    Under spark-submit the driver JVM outlives this process and exits only when its non-daemon
    threads end. After a barrier stage (TorchDistributor) Spark 3.4/3.5 leave two timer threads
    that even SparkContext.stop() does not end (SPARK-49479), so the application would never
    finish; there we end the JVM ourselves, with our exit status, once Spark is stopped.
    """
    code = 1
    try:
        code = main(argv)
        return code
    finally:
        from pipeline.session import stop_connect

        stop_connect()  # first: its exit hook would call a server that is gone, for minutes
        _stop_classic(code)


def _stop_classic(code: int) -> None:
    try:
        from pyspark import SparkContext
    except ImportError:  # the thin Connect client (pyspark-client) has no JVM side at all
        return
    sc = SparkContext._active_spark_context
    if sc is not None:
        gateway = sc._gateway
        sc.stop()
        if "PYSPARK_GATEWAY_PORT" in os.environ:  # spark-submit's JVM, not one we launched
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                gateway.jvm.System.exit(code)
            except Exception:  # the JVM went away mid-call, as asked
                pass
