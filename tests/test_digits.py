import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from pipeline import images as im
from pipeline.digits.data import shifted, to_input
from pipeline.session import bigdl_missing
from tests.conftest import ROOT, kill_tree, needs_bigdl

ENGINES = [pytest.param("bigdl", marks=needs_bigdl), "torch"]


def test_to_input_normalises_gray_and_colour():
    gray = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    x = to_input(*im.array_to_row(gray)[:3], im.array_to_row(gray)[4])
    assert x.shape == (1, 28, 28) and x.dtype == np.float32
    assert np.isclose(x[0, 0, 1], (1 / 255 - 0.1307) / 0.3081)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    h, w, c, _, data = im.array_to_row(rgb)
    assert np.allclose(to_input(h, w, c, data), x, atol=1e-6)
    assert to_input(*im.array_to_row(np.zeros((56, 40), np.uint8))[:3], bytes(56 * 40)).shape == (1, 28, 28)
    s = shifted(x, 2, -1)
    assert np.array_equal(s[0, 2:, :-1], x[0, :-2, 1:]) and np.all(s[0, :2] == x.min())


def test_torch_lenet5_matches_the_bigdl_architecture():
    import torch

    from pipeline.digits.torch_engine import LeNet5

    net = LeNet5(10)
    assert sum(p.numel() for p in net.parameters()) == 61706  # LeNet-5 with 5x5 convs, 120-84-10
    out = net(torch.zeros(3, 1, 28, 28))
    assert out.shape == (3, 10) and torch.allclose(out.exp().sum(1), torch.ones(3))


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_lenet5_trains_to_97_percent_and_resumes(spark, cli, mnist, tmp_path, caplog, engine):
    caplog.set_level("INFO", logger="pipeline")
    out = tmp_path / "digits"
    code, stdout, err = cli("train_digits", "--engine", engine, "--input", mnist, "--output", out)  # 6 epochs
    assert code == 0, err
    model_file = {"bigdl": "lenet5.bigdl", "torch": "lenet5.pt"}[engine]
    for name in (f"model/{model_file}", "confusion_matrix.png", "training_curves.png"):
        assert (out / name).stat().st_size > 0
    preds = spark.read.parquet(str(out / "predictions"))
    assert set(preds.columns) == {"path", "label", "label_index", "prediction", "probability", "split"}
    test = preds.where("split = 'test'").toPandas()
    acc6 = float((test.prediction == test.label_index).mean())
    assert acc6 >= 0.97, acc6  # the bar on the held-out split
    assert np.allclose([sum(p) for p in test.probability[:20]], 1, atol=1e-4)
    metrics = spark.read.parquet(str(out / "metrics")).toPandas()
    assert set(metrics.name) >= {"train_loss", "val_loss", "val_top1", "samples_per_s", "test_top1"}
    assert sorted(metrics[metrics.name == "val_top1"].step) == [1, 2, 3, 4, 5, 6]
    assert float(metrics[metrics.name == "test_top1"].value.iloc[0]) == pytest.approx(acc6, abs=1e-9)

    # One more epoch from the epoch-6 checkpoint: it continues, it does not start over. The torch
    # engine resumes on two DDP processes: the checkpoint does not depend on the layout.
    caplog.clear()
    more = ["--num-processes", 2] if engine == "torch" else []
    code, stdout, err = cli("train_digits", "--engine", engine, "--input", mnist, "--output", out, "--epochs", 7,
                            "--resume", "--mode", "overwrite", *more)
    assert code == 0, err
    assert "resuming from" in caplog.text and "epoch-0006" in caplog.text
    if engine == "bigdl":  # its epochs are logged by the driver; the torch ranks log in their own processes
        assert "epoch 7/7" in caplog.text and "epoch 1/7" not in caplog.text
    first = metrics[metrics.name == "val_top1"].sort_values("step").value.tolist()
    metrics = spark.read.parquet(str(out / "metrics")).toPandas()
    # the history goes on from the checkpoint's: epochs 1-6 are the first run's rows, epoch 7 is new
    resumed = metrics[metrics.name == "val_top1"].sort_values("step")
    assert resumed.step.tolist() == [1, 2, 3, 4, 5, 6, 7] and resumed.value.tolist()[:6] == first
    top1 = float(metrics[metrics.name == "test_top1"].value.iloc[0])
    # a lower bar after one more epoch: a resumed last epoch has swung by up to 0.7 % (977 images)
    assert top1 >= 0.96, top1
    runs = spark.read.parquet(str(tmp_path / "runs")).where("job = 'train_digits'").orderBy("started_at").collect()
    assert [r.status for r in runs] == ["succeeded", "succeeded"]
    assert json.loads(runs[-1].config)["resume"] == "on" and json.loads(runs[-1].config)["engine"] == engine
    assert dict(runs[-1].metrics)["resumed_from_epoch"] == 6

    code, _, err = cli("predict_digits", "--model", out / "model", "--input", mnist, "--output", tmp_path / "p")
    assert code == 0, err
    again = spark.read.parquet(str(tmp_path / "p")).where("split = 'test'").toPandas()
    assert float((again.prediction == again.label_index).mean()) == pytest.approx(top1, abs=1e-9)


def test_bad_digit_options(cli, mnist, tmp_path):
    if bigdl_missing() is None:
        code, _, err = cli("train_digits", "--engine", "bigdl", "--input", mnist, "--output", tmp_path / "o",
                           "--batch-size", 33)
        assert code == 2 and "--batch-size 33 is not a multiple of the 2 cores" in err and "use e.g. 32 or 34" in err
    else:  # Spark 4: the BigDL engine stops at once, in one line naming the way out
        code, _, err = cli("train_digits", "--engine", "bigdl", "--input", mnist, "--output", tmp_path / "o")
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert "BigDL needs Spark 3.5" in err and "--engine torch" in err
    code, _, err = cli("train_digits", "--engine", "torch", "--input", mnist, "--output", tmp_path / "o",
                       "--batch-size", 33, "--num-processes", 2)
    assert code == 2 and "--batch-size 33 does not split evenly over --num-processes 2" in err
    code, _, err = cli("train_digits", "--input", tmp_path / "none", "--output", tmp_path / "o")
    assert code == 2 and "no such images table" in err
    code, _, err = cli("train_digits", "--input", mnist, "--output", tmp_path / "o", "--resume")
    assert code == 2 and "--resume: no checkpoint in" in err
    code, _, err = cli("predict_digits", "--model", tmp_path, "--input", mnist, "--output", tmp_path / "p")
    assert code == 2 and "no saved model there" in err
    assert not os.path.exists(tmp_path / "o") and not os.path.exists(tmp_path / "p")


@pytest.mark.slow
@pytest.mark.default_stack  # process kills and file checks; on Spark 4 the GAN's killed-try test covers the path
def test_a_killed_try_is_retried_with_resume_auto_from_its_checkpoint(spark, mnist, tmp_path):
    """What an Airflow retry does: the same command again. The first try dies part-way (the whole
    process tree, like a lost machine); the retry continues from the newest complete epoch.
    (No augmentation: the promise is about epochs, and un-augmented ones take ~3 s here.)"""
    import pyarrow.parquet as pq

    out, runs = tmp_path / "digits", tmp_path / "runs"
    args = [sys.executable, "-m", "pipeline", "train_digits", "--engine", "torch", "--input", mnist, "--augment", "0",
            "--output", str(out), "--epochs", "5", "--resume", "auto", "--mode", "overwrite", "--runs-table", str(runs)]
    first = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    done = tmp_path / "digits.checkpoints" / "epoch-0002" / "DONE"
    for _ in range(900):
        if done.exists() or first.poll() is not None:
            break
        time.sleep(0.2)
    kill_tree(first)
    assert done.exists() and not out.exists()
    killed_at = max(int(d.name[6:]) for d in done.parent.parent.glob("epoch-*") if (d / "DONE").exists())
    assert 2 <= killed_at < 5

    retry = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert retry.returncode == 0, retry.stderr[-3000:]
    assert f"resuming from {done.parent.parent / f'epoch-{killed_at:04d}'}" in retry.stderr
    metrics = pq.read_table(out / "metrics").to_pandas()
    # the killed try's epochs and the retry's, each once: no gap, no duplicate across the kill
    assert sorted(metrics[metrics.name == "val_top1"].step) == [1, 2, 3, 4, 5]
    last = pq.read_table(runs).to_pandas().sort_values("started_at").iloc[-1]
    assert last.status == "succeeded" and dict(last.metrics)["resumed_from_epoch"] == killed_at

    # Another configuration (batch 64): its checkpoint is never used, the run says so and starts over.
    r = subprocess.run(args + ["--batch-size", "64", "--epochs", "1"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "starting fresh: the checkpoint" in r.stderr and "batch_size 32 → 64" in r.stderr
    metrics = pq.read_table(out / "metrics").to_pandas()
    assert sorted(metrics[metrics.name == "val_top1"].step) == [1]
    code = subprocess.run([*args, "--resume", "on"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert code.returncode == 2 and "is of another configuration (batch_size 64 → 32)" in code.stderr


# ---------------------------------------------------------------- the torch engine alone, no Spark


def test_torch_digits_resume_equals_an_uninterrupted_run(tmp_path):
    """Three epochs straight, or killed after the second and resumed: the same weights, bit for bit
    (the optimizer's moments and the schedule come back from the checkpoint, not from zero)."""
    import shutil

    import torch

    from pipeline.digits.torch_engine import STATE_FILE, TrainConfig, train_worker
    from tests.conftest import digits_table

    table = digits_table(tmp_path / "digits", n_train=400, n_test=100)

    def cfg(folder, resume_from=None):
        return TrainConfig(input=table, checkpoint_dir=str(folder), epochs=3, batch_size=32, learning_rate=1e-3,
                           optimizer="adam", augment=0, classes=10, n_train=400, resume_from=resume_from, threads=1)

    train_worker(cfg(tmp_path / "straight"))
    # the killed try: what it left is its epoch-2 checkpoint
    shutil.copytree(tmp_path / "straight" / "epoch-0002", tmp_path / "killed" / "epoch-0002")
    history = train_worker(cfg(tmp_path / "killed", resume_from=str(tmp_path / "killed" / "epoch-0002")))
    assert [e for e, name, _ in history if name == "val_top1"] == [3]
    a, b = (torch.load(tmp_path / d / "epoch-0003" / STATE_FILE, weights_only=False) for d in ("straight", "killed"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 3 * (400 // 32)
    moments = [(a["optimizer"]["state"][i], b["optimizer"]["state"][i]) for i in a["optimizer"]["state"]]
    assert all(torch.equal(x["exp_avg_sq"], y["exp_avg_sq"]) and x["step"] == y["step"] for x, y in moments)


@pytest.mark.parametrize("world", [2, 3])
def test_torch_ranks_split_a_table_of_several_files_once_each(tmp_path, world):
    """Each DDP rank reads its own rows of a table written as several files: together every
    labelled row of the split once, in shards whose sizes differ by at most one."""
    import shutil

    import torch

    from pipeline.digits.torch_engine import read_split
    from tests.conftest import digits_table

    for part, offset in enumerate((0, 30, 70)):  # three appends: three files per split
        digits_table(tmp_path / f"part{part}", 25 + part * 5, 4, offset=offset)
        for split in ("train", "test"):
            (tmp_path / "t" / f"split={split}").mkdir(parents=True, exist_ok=True)
            for f in (tmp_path / f"part{part}" / f"split={split}").iterdir():
                shutil.move(f, tmp_path / "t" / f"split={split}" / f"{part}-{f.name}")
    shards = [read_split(str(tmp_path / "t"), "train", rank, world) for rank in range(world)]
    assert len(list((tmp_path / "t" / "split=train").iterdir())) == 3
    x = torch.cat([s[0] for s in shards])
    assert len(x) == 25 + 30 + 35 and max(len(s[0]) for s in shards) - min(len(s[0]) for s in shards) <= 1
    assert len({row.numpy().tobytes() for row in x}) == len(x)  # no row twice (these digits are distinct)
    whole, labels = read_split(str(tmp_path / "t"), "train", 0, 1)
    assert sorted(r.numpy().tobytes() for r in x) == sorted(r.numpy().tobytes() for r in whole)
    assert sorted(torch.cat([s[1] for s in shards]).tolist()) == sorted(labels.tolist())


def test_every_engine_has_the_interface_train_digits_calls():
    """pipeline/digits/engines.py's list, checked on each engine module (importing one needs neither
    BigDL nor Spark: their imports live inside the functions)."""
    import inspect

    from pipeline.digits import engines

    calls = {"check": 1, "trusted": 1, "check_model_file": 1, "train": 3, "load_checkpoint": 1, "predict": 4,
             "save": 2, "load": 1}
    for name in engines.ENGINES:
        engine = engines.engine(name)
        assert isinstance(engine.MODEL_FILE, str) and isinstance(engine.needs_bigdl, bool), name
        for fn, arity in calls.items():
            assert len(inspect.signature(getattr(engine, fn)).parameters) == arity, (name, fn)
    assert {engines.engine(n).MODEL_FILE for n in engines.ENGINES} == {"lenet5.bigdl", "lenet5.pt"}
