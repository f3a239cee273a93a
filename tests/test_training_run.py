"""pipeline/training_run.py: the checkpoint folder both trainers share, and a resume whose input changed."""

import json
import os
import shutil

import pyarrow.parquet as pq
import pytest

from pipeline.errors import PipelineError
from pipeline.training_run import CheckpointFolder, MetricLog, data_version
from tests.conftest import digits_table


def _checkpoint(folder: CheckpointFolder, done: int, seal: bool = True) -> str:
    path = folder.new(done)
    with open(os.path.join(path, "state.pt"), "w") as fh:
        fh.write(str(done))
    if seal:
        folder.seal(path)
    return path


def test_latest_is_the_newest_sealed_checkpoint_and_two_are_kept(tmp_path):
    folder = CheckpointFolder(str(tmp_path), "step")
    assert folder.latest() is None
    for done in (10, 20, 30):
        _checkpoint(folder, done)
    _checkpoint(folder, 40, seal=False)  # a kill between writing and sealing: ignored
    latest = folder.latest()
    assert latest.done == 30 and latest.folder == str(tmp_path / "step-000030")
    assert sorted(os.listdir(tmp_path)) == ["step-000020", "step-000030", "step-000040"]
    epochs = CheckpointFolder(str(tmp_path / "e"), "epoch")
    os.makedirs(epochs.path)
    _checkpoint(epochs, 3)
    assert os.path.basename(epochs.latest().folder) == "epoch-0003" and epochs.latest().done == 3
    with pytest.raises(ValueError, match="unit 'batch'"):
        CheckpointFolder(str(tmp_path), "batch")


def test_decide_continues_only_a_checkpoint_of_this_configuration(tmp_path):
    folder = CheckpointFolder(str(tmp_path / "ck"), "epoch")
    folder.start_fresh({"lr": 0.1, "data": "a"}, "train_digits", "run-1")
    assert json.loads((tmp_path / "ck" / "fingerprint.json").read_text()) == {"data": "a", "lr": 0.1}
    assert (tmp_path / "ck" / "_sparkgan.json").exists()  # ours: a later fresh start may replace it
    assert folder.decide("auto", {"lr": 0.1, "data": "a"}).checkpoint is None  # nothing to continue yet
    _checkpoint(folder, 2)
    same = folder.decide("auto", {"lr": 0.1, "data": "a"})
    assert same.done == 2 and same.why == f"resuming from {tmp_path}/ck/epoch-0002 (epoch 2 done)"
    assert folder.decide("off", {"lr": 0.1, "data": "a"}).checkpoint is None
    other = folder.decide("auto", {"lr": 0.1, "data": "b"})
    assert other.checkpoint is None and other.done == 0 and "data 'a' → 'b'" in other.why
    with pytest.raises(PipelineError, match="another configuration \\(data 'a' → 'b'\\)"):
        folder.decide("on", {"lr": 0.1, "data": "b"})
    folder.start_fresh({"lr": 0.2}, "train_digits", "run-2")  # replaces our folder, checkpoints and all
    assert folder.latest() is None


def test_metric_log_is_cut_at_the_step_it_resumes_from(tmp_path):
    log = MetricLog(str(tmp_path), 0)
    for step in (1, 2, 3, 4):
        log.add(step, loss=1.0 / step)
    MetricLog(str(tmp_path), 2).add(3, loss=9.0)  # resumed from step 2: steps 3 and 4 were the killed try's
    assert CheckpointFolder(str(tmp_path), "step").metrics() == [(1, "loss", 1.0), (2, "loss", 0.5), (3, "loss", 9.0)]
    MetricLog(str(tmp_path), 0)  # a fresh start keeps nothing
    assert CheckpointFolder(str(tmp_path), "step").metrics() == []


def test_data_version_changes_when_the_table_does(tmp_path):
    table = digits_table(tmp_path / "t", 20, 5)
    before = data_version(table)
    assert data_version(table) == before and len(before) == 16
    extra = pq.read_table(os.path.join(table, "split=train")).slice(0, 3)
    pq.write_table(extra.drop_columns([c for c in extra.column_names if c == "split"]),
                   os.path.join(table, "split=train", "appended.parquet"))
    assert data_version(table) != before
    assert data_version(str(tmp_path / "missing")) == data_version(str(tmp_path / "missing2"))  # no files: one value


@pytest.mark.slow
@pytest.mark.default_stack  # the decision reads files and fingerprints, whatever Spark carried the jobs
def test_resume_auto_starts_fresh_when_the_input_table_changed(cli, tmp_path):
    """A retry that finds the same path holding other data (rewritten, or appended to) must not
    continue the old checkpoint: both trainers say so and start over."""
    table = digits_table(tmp_path / "digits", 64, 16)
    digits = ("train_digits", "--engine", "torch", "--input", table, "--output", tmp_path / "lenet", "--epochs", 1,
              "--num-processes", 1, "--local-mode", "on", "--augment", 0, "--resume", "auto", "--mode", "overwrite")
    gan = ("train_gan", "--input", table, "--output", tmp_path / "dc", "--steps", 2, "--checkpoint-every", 2,
           "--batch-size", 8, "--width", 8, "--num-processes", 1, "--local-mode", "on", "--resume", "auto",
           "--mode", "overwrite")
    for job in (digits, gan):
        code, _, err = cli(*job)
        assert code == 0, err
    shutil.rmtree(table)
    digits_table(table, 64, 16, offset=100)  # the same path and row count, other images
    code, _, err = cli(*digits, "--epochs", 2)
    assert code == 0, err
    code2, _, err2 = cli(*gan, "--steps", 4)
    assert code2 == 0, err2
    runs = pq.read_table(tmp_path / "runs").to_pandas().sort_values("started_at")
    last = {job: dict(runs[runs.job == job].iloc[-1].metrics) for job in ("train_digits", "train_gan")}
    assert last["train_digits"]["resumed_from_epoch"] == 0 and last["train_gan"]["resumed_from_step"] == 0
    # unchanged data: the same commands continue
    code, _, err = cli(*digits, "--epochs", 3)
    code2, _, err2 = cli(*gan, "--steps", 6)
    assert code == code2 == 0, err + err2
    runs = pq.read_table(tmp_path / "runs").to_pandas().sort_values("started_at")
    assert dict(runs[runs.job == "train_digits"].iloc[-1].metrics)["resumed_from_epoch"] == 2
    assert dict(runs[runs.job == "train_gan"].iloc[-1].metrics)["resumed_from_step"] == 4
