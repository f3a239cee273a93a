"""MLflow tracking and the model registry, opt-in: the one module that imports mlflow.

Tracking is on when a URI is set: `--tracking-uri`, the profile's `tracking: {uri: ...}`, or
MLFLOW_TRACKING_URI. Without one nothing here imports mlflow, so the core runs without it installed.
With one, the server is asked before Spark starts (`check`): a job never works for an hour and then
loses its record. Each job run is one MLflow run (`job_run`) under the experiment named by the job;
a `--resume` of a training run continues the MLflow run of the run it resumes. Training ranks log their
per-epoch/per-step metrics from rank 0 through `log_metrics`, which reads the run from the environment
the driver hands them (`for_ranks`).
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

ENV_URI = "MLFLOW_TRACKING_URI"
ENV_RUN = "SPARKGAN_MLFLOW_RUN_ID"  # the run a training rank logs into; set by the driver only
MODELS_URI = re.compile(r"^models:/[^/@]+(/[^/]+|@[^/]+)$")
ON_ERROR = ("fail", "continue")
# the models each job logs: job -> (what its output folder holds, the model's flavor in pipeline/mlflow_model.py)
MODEL_JOBS = ("train_digits", "train_gan", "transfer")


@dataclass
class Settings:
    uri: str
    experiment: str
    on_error: str = "fail"
    register_as: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


def settings(job: str, cli_uri: str | None, profile_section: dict | None, register_as: str | None = None,
             experiment: str | None = None, tags: list[str] | None = None) -> Settings | None:
    """The job's tracking settings, or None when no tracking URI is set anywhere (tracking off)."""
    section = profile_section or {}
    if not isinstance(section, dict):
        raise PipelineError("tracking: expected a mapping (uri, experiment, on_error, tags) in the profile")
    unknown = set(section) - {"uri", "experiment", "on_error", "tags"}
    if unknown:
        raise PipelineError(f"tracking: unknown key(s) {', '.join(sorted(unknown))} in the profile "
                            "(expected uri, experiment, on_error, tags)")
    uri = cli_uri or section.get("uri") or os.environ.get(ENV_URI)
    if not uri:
        if register_as:
            raise PipelineError(f"--register-as {register_as}: needs a tracking server (--tracking-uri, the "
                                f"profile's tracking.uri or {ENV_URI})")
        return None
    on_error = str(section.get("on_error", "fail"))
    if on_error not in ON_ERROR:
        raise PipelineError(f"tracking.on_error {on_error!r}: expected fail or continue")
    if register_as and job not in MODEL_JOBS:
        raise PipelineError(f"--register-as {register_as}: {job} trains no model "
                            f"(models come from {', '.join(MODEL_JOBS)})")
    all_tags = {str(k): str(v) for k, v in (section.get("tags") or {}).items()}
    for item in tags or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PipelineError(f"--tracking-tag {item!r}: expected KEY=VALUE")
        all_tags[key.strip()] = value.strip()
    name = experiment or section.get("experiment") or "sparkgan-{job}"
    return Settings(uri=str(uri), experiment=str(name).format(job=job), on_error=on_error,
                    register_as=register_as, tags=all_tags)


def check(s: Settings | None) -> Settings | None:
    """Fail now, before Spark starts, when the tracking server does not answer; with on_error
    continue, say so and go on without tracking."""
    if s is None:
        return None
    problem = _unreachable(s.uri)
    if problem is None:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            problem = "mlflow is not installed (pip install 'sparkgan[mlflow]')"
    if problem is None:
        return s
    if s.on_error == "continue":
        log.warning("tracking off for this run: %s: %s (tracking.on_error is continue)", s.uri, problem)
        return None
    raise PipelineError(f"--tracking-uri {s.uri}: {problem} (set tracking.on_error: continue in the profile "
                        "to run without tracking)")


def _unreachable(uri: str) -> str | None:
    """Why the tracking store cannot be used, or None."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as resp:
                return None if resp.status == 200 else f"its /health answered {resp.status}"
        except urllib.error.HTTPError as exc:
            return f"its /health answered {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return f"the tracking server does not answer ({getattr(exc, 'reason', exc)})"
    if uri.startswith("sqlite:///"):
        folder = os.path.dirname(os.path.abspath(uri[len("sqlite:///"):])) or "."
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            return f"{folder} is not a writable folder for the SQLite store"
        return None
    if uri.startswith("databricks"):
        return None
    return "expected http(s)://HOST:PORT of an `mlflow server`, sqlite:///FILE or databricks"


# ---------------------------------------------------------------- one MLflow run per job run

def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _resumed_run(client, experiment_id: str, opts) -> str | None:
    """The MLflow run a `--resume` continues: the newest run of this checkpoint folder, if the folder
    still has a checkpoint to resume (otherwise the job starts afresh, and so does its MLflow run)."""
    folder = getattr(opts, "checkpoint_dir", None)
    if not folder or getattr(opts, "resume", "off") == "off":
        return None
    if not glob.glob(os.path.join(folder, "*-*", "DONE")):  # a complete checkpoint (pipeline/training_run.py)
        return None
    found = client.search_runs([experiment_id], filter_string=f"tags.`sparkgan.checkpoint_dir` = '{folder}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    return found[0].info.run_id if found else None


class Tracker:
    """The MLflow run of one job run, driven by cli.run_job."""

    def __init__(self, s: Settings, job: str):
        self.s, self.job, self.client, self.run_id, self.resumed = s, job, _client(s.uri), None, False

    def start(self, run, opts, config: dict, spark, runs_table: str) -> None:
        from pipeline.io import git_rev
        from pipeline.session import setting

        exp = self.client.get_experiment_by_name(self.s.experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(self.s.experiment)
        self.run_id = _resumed_run(self.client, exp_id, opts)
        params = {k: _param(v) for k, v in sorted(config.items())}
        if self.run_id:
            self.resumed = True
            self.client.update_run(self.run_id, status="RUNNING")
            old = self.client.get_run(self.run_id)
            # an MLflow param cannot change: a resume's new values (more epochs) become tags
            changed = {k: v for k, v in params.items() if k in old.data.params and old.data.params[k] != v}
            params = {k: v for k, v in params.items() if k not in old.data.params}
            tries = old.data.tags.get("sparkgan.run_ids", "")
            tags = {f"sparkgan.resumed_with.{k}": v for k, v in changed.items()}
            tags["sparkgan.run_ids"] = f"{tries},{run.run_id}" if tries else run.run_id
            log.info("tracking: %s continues MLflow run %s (%s)", run.run_id, self.run_id, self.s.uri)
        else:
            created = self.client.create_run(exp_id, run_name=run.run_id)
            self.run_id = created.info.run_id
            tags = {"sparkgan.run_ids": run.run_id}
            log.info("tracking: MLflow run %s in experiment %s (%s)", self.run_id, self.s.experiment, self.s.uri)
        tags.update({"sparkgan.run_id": run.run_id, "sparkgan.job": self.job, "sparkgan.runs_table": runs_table,
                     "sparkgan.spark_app_id": setting(spark, "spark.app.id") or "",
                     "sparkgan.spark_master": setting(spark, "spark.master") or "",
                     "mlflow.source.git.commit": git_rev(), "mlflow.source.name": f"sparkgan {self.job}",
                     "mlflow.source.type": "JOB", **self.s.tags})
        for key in ("output", "input", "checkpoint_dir"):
            if getattr(opts, key, None):
                tags[f"sparkgan.{key}"] = str(getattr(opts, key))
        self._batch(params=params, tags=tags)
        run.mlflow_run_id = self.run_id
        os.environ[ENV_RUN] = self.run_id  # for this process's log_metrics and the ranks it starts
        os.environ[ENV_URI] = self.s.uri

    def _batch(self, params=None, tags=None, metrics=None) -> None:
        from mlflow.entities import Param, RunTag

        params = [Param(k, v) for k, v in (params or {}).items()]
        tags = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        metrics = metrics or []
        # the REST API takes at most 100 params and 1000 entries per call
        for i in range(0, max(len(params), len(tags), len(metrics), 1), 100):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 100], params=params[i:i + 100],
                                  tags=tags[i:i + 100])

    def finish(self, run, opts) -> None:
        """The run's row counts, final metrics, figures and model; the run ends FINISHED."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = {k: float(v) for k, v in run.metrics.items() if isinstance(v, (int, float))}
        for key in ("rows_in", "rows_out", "rows_rejected"):
            if getattr(run, key) is not None:
                values[key] = float(getattr(run, key))
        step = int(max(values.get("epochs", 0), values.get("steps", 0), getattr(opts, "steps", 0) or 0,
                       getattr(opts, "epochs", 0) or 0))
        # final values not already logged at this step by the ranks (a key's history keeps one value per step)
        logged = {k for k in values if any(m.step == step for m in self.client.get_metric_history(self.run_id, k))}
        self._batch(metrics=[Metric(k, v, now, step) for k, v in values.items() if k not in logged],
                    tags={"sparkgan.outputs": json.dumps(run.outputs, sort_keys=True)[:5000]})
        output = getattr(opts, "output", None)
        if output and os.path.isdir(output):
            for png in sorted(glob.glob(os.path.join(output, "**", "*.png"), recursive=True)):
                sub = os.path.relpath(os.path.dirname(png), output)
                self.client.log_artifact(self.run_id, png, "figures" if sub == "." else f"figures/{sub}")
        if self.job in MODEL_JOBS and output:
            self.log_model(opts)
        self.client.set_terminated(self.run_id, "FINISHED")

    def log_model(self, opts) -> None:
        from pipeline import mlflow_models

        uri = mlflow_models.log(self.job, opts, self.s.uri, self.run_id)
        if uri and self.s.register_as:
            import mlflow

            mlflow.set_tracking_uri(self.s.uri)
            version = mlflow.register_model(uri, self.s.register_as)
            self._batch(tags={"sparkgan.registered": f"models:/{self.s.register_as}/{version.version}"})
            log.info("tracking: registered models:/%s/%s", self.s.register_as, version.version)

    def failed(self) -> None:
        self.client.set_terminated(self.run_id, "FAILED")


def _param(value) -> str:
    return (json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value))[:6000]


@contextlib.contextmanager
def job_run(s: Settings | None, job: str, opts, run, config: dict, spark, runs_table: str):
    """The job's MLflow run around its body (nothing when tracking is off). A tracking failure with
    on_error fail stops the job in one line; with continue it is a warning and the job goes on."""
    if s is None:
        yield None
        return
    tracker = Tracker(s, job)
    before = os.environ.get(ENV_URI)
    ok = False
    try:
        try:
            tracker.start(run, opts, config, spark, runs_table)
        except Exception as exc:
            _tracking_failed(s, "could not start the MLflow run", exc)
            yield None
            return
        yield tracker
        ok = True
    finally:
        # the next job in this process (a test session, a notebook) decides about tracking afresh
        os.environ.pop(ENV_RUN, None)
        if before is None:
            os.environ.pop(ENV_URI, None)
        else:
            os.environ[ENV_URI] = before
        with contextlib.suppress(Exception):
            if not ok and tracker.run_id:
                tracker.failed()
    try:
        tracker.finish(run, opts)
    except Exception as exc:
        _tracking_failed(s, f"the job's outputs are written, but logging them to MLflow run {tracker.run_id} "
                            "failed", exc)


def _tracking_failed(s: Settings, what: str, exc: Exception) -> None:
    line = f"tracking {s.uri}: {what}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if s.on_error == "continue":
        log.warning("%s (tracking.on_error is continue)", line)
        return
    raise PipelineError(line) from exc


# ---------------------------------------------------------------- the ranks' metrics

_CLIENTS: dict = {}
_LAST_STEP: dict = {}
_WARNED = []


def log_metrics(values: dict, step: int) -> None:
    """Log a training step's or epoch's metrics into the job's MLflow run, if there is one (rank 0 and
    the driver call this; it costs nothing when tracking is off). A step a resumed run already logged
    is skipped, so a key's history has no duplicate steps. A failed call is a warning, once: training
    goes on."""
    run_id = os.environ.get(ENV_RUN)
    if not run_id:
        return
    try:
        import time

        from mlflow.entities import Metric

        uri = os.environ[ENV_URI]
        client = _CLIENTS.get(uri) or _CLIENTS.setdefault(uri, _client(uri))
        now, metrics = int(time.time() * 1000), []
        for key, value in values.items():
            if (run_id, key) not in _LAST_STEP:
                history = client.get_metric_history(run_id, key)
                _LAST_STEP[run_id, key] = max((m.step for m in history), default=-1)
            if step > _LAST_STEP[run_id, key]:
                metrics.append(Metric(key, float(value), now, int(step)))
                _LAST_STEP[run_id, key] = step
        if metrics:
            client.log_batch(run_id, metrics=metrics)
    except Exception as exc:  # a tracking hiccup must not stop hours of training
        if not _WARNED:
            _WARNED.append(True)
            log.warning("tracking: could not log step %s metrics to MLflow run %s: %s", step, run_id, exc)


def for_ranks(fn):
    """fn, run with the driver's MLflow run in its environment: TorchDistributor's ranks on executors
    do not inherit the driver's."""
    env = {k: os.environ[k] for k in (ENV_RUN, ENV_URI) if os.environ.get(ENV_RUN) and k in os.environ}
    if not env:
        return fn

    def with_tracking(*args, **kwargs):
        os.environ.update(env)
        return fn(*args, **kwargs)
    return with_tracking


# ---------------------------------------------------------------- models:/ URIs

def is_model_uri(value: str | None) -> bool:
    return bool(value) and value.startswith("models:/")


def resolve_model(value: str, option: str, uri: str | None = None) -> str:
    """A `models:/NAME/VERSION` or `models:/NAME@alias` URI → the local folder of the job's own model
    files, downloaded from the registry (which the job's safe loaders then check as they check a
    path); anything else is returned as it is."""
    if not is_model_uri(value):
        return value
    if not MODELS_URI.match(value):
        raise PipelineError(f"{option} {value}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    uri = uri or os.environ.get(ENV_URI)
    if not uri:
        raise PipelineError(f"{option} {value}: a registry URI needs a tracking server (--tracking-uri, the "
                            f"profile's tracking.uri or {ENV_URI})")
    problem = _unreachable(uri)
    if problem:
        raise PipelineError(f"{option} {value}: {uri}: {problem}")
    try:
        import mlflow
    except ImportError:
        raise PipelineError(f"{option} {value}: mlflow is not installed (pip install 'sparkgan[mlflow]')") from None
    from mlflow.exceptions import MlflowException

    try:
        # the URIs passed, not set: mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI, which the
        # next job in this process (a test session, a notebook) would take as an order to track
        folder = mlflow.artifacts.download_artifacts(artifact_uri=value, tracking_uri=uri, registry_uri=uri)
    except MlflowException as exc:
        raise PipelineError(f"{option} {value}: {str(exc).splitlines()[0]}") from None
    if option == "--model-file":  # a Keras model file, as mlflow.tensorflow logs one (data/model.keras) or ours
        found = sorted(glob.glob(os.path.join(folder, "**", "*.keras"), recursive=True)
                       + glob.glob(os.path.join(folder, "**", "*.h5"), recursive=True))
        if len(found) != 1:
            raise PipelineError(f"{option} {value}: expected one .keras or .h5 file in the model, found {len(found)}")
        return found[0]
    files = os.path.join(folder, "artifacts", "model")
    if not os.path.isdir(files):
        raise PipelineError(f"{option} {value}: not a sparkgan model (no artifacts/model in it)")
    log.info("%s %s: the registry's copy is %s", option, value, files)
    return files
