"""`sparkgan JOB ...`, `python -m pipeline JOB ...` and `spark-submit jobs/JOB.py ...` all land here."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
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
}

COMMON = ("job", "conf_file", "conf", "runs_table")


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
        # None marks "not given", so the profile can fill it (see config.resolve_options).
        sp.set_defaults(**{dest: None for dest in defaults[name]})
        parsers[name] = sp
    return parser, parsers, defaults


def run_job(name: str, opts: argparse.Namespace, profile) -> dict:
    from pipeline.io import absolute, recorded_run
    from pipeline.session import get_session

    mod = importlib.import_module(JOBS[name].module)
    prepared = mod.validate(opts)  # every check that needs no Spark, before a JVM starts
    uses_bigdl = getattr(mod, "uses_bigdl", lambda _: False)
    spark = get_session(profile, f"sparkgan-{name}", bigdl=uses_bigdl(opts))
    config = {k: v for k, v in vars(opts).items() if k not in COMMON}
    runs_table = absolute(opts.runs_table or profile.runs_table)
    with recorded_run(spark, runs_table, name, config) as run:
        summary = mod.run(spark, opts, run, prepared)
    return {"run_id": run.run_id, **summary, "runs_table": runs_table}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("py4j").setLevel(logging.WARNING)
    parser, parsers, defaults = build_parser()
    args = parser.parse_args(argv)
    try:
        profile = load_profile(args.conf_file, args.conf)
        opts = resolve_options(args, parsers[args.job], defaults[args.job], profile, args.job)
        summary = run_job(args.job, opts, profile)
    except PipelineError as exc:
        print(f"sparkgan {args.job}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # Spark's own "path does not exist" and friends are user errors too: one line, not a trace.
        from pyspark.errors import AnalysisException
        if isinstance(exc, AnalysisException):
            print(f"sparkgan {args.job}: error: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 2
        raise
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
        from pyspark import SparkContext

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
