"""The fed training loop, without Spark: prefetched batches, pyarrow-listed shards, the worker's imports."""

import os
import pickle
import subprocess
import sys
import threading
from dataclasses import FrozenInstanceError, replace

import numpy as np
import pytest

from pipeline.gan import checkpoints, data
from pipeline.gan.config import TrainConfig
from pipeline.gan.train import train_worker
from pipeline.io import arrow_uri
from pipeline.training_run import CheckpointFolder
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    rng = np.random.default_rng(0)
    data.write_table(str(root / "digits"), [rng.integers(0, 255, (28, 28, 1), dtype=np.uint8) for _ in range(40)])
    data.write_table(str(root / "photos"), [rng.integers(0, 255, (60, 90, 3), dtype=np.uint8) for _ in range(5)])
    return root


def _small(model: str, tables, folder, **kw) -> TrainConfig:
    sizes = ({"input": str(tables / "digits"), "batch_size": 8, "width": 8} if model == "dcgan" else
             {"input": str(tables / "photos"), "batch_size": 4, "width": 8, "blocks": 1, "crop": 32,
              "pretrain_steps": 2})
    return TrainConfig(model=model, checkpoint_dir=str(folder), lr=2e-4, log_every=1, sample_every=2, threads=1,
                       **{"steps": 4, **sizes, **kw})


def _checkpoint(folder) -> str:
    return os.path.join(CheckpointFolder(str(folder), "step").latest().folder, checkpoints.CHECKPOINT)


def _losses(folder) -> list:
    return [row for row in CheckpointFolder(str(folder), "step").metrics() if row[1] != "images_per_s"]


@pytest.mark.parametrize("model", ["dcgan", "srgan"])
def test_prefetched_batches_train_exactly_like_inline_ones(model, tables, tmp_path):
    train_worker(_small(model, tables, tmp_path / "inline", prefetch=0))
    train_worker(_small(model, tables, tmp_path / "ahead", prefetch=3))
    inline, ahead = _losses(tmp_path / "inline"), _losses(tmp_path / "ahead")
    assert len(inline) >= 8 and inline == ahead  # same seed, same batches, same losses to the last bit
    if model == "dcgan":
        assert [s for s, _ in checkpoints.samples(str(tmp_path / "ahead"))] == [2, 4]


def test_resume_continues_from_the_checkpoint(tables, tmp_path):
    train_worker(_small("dcgan", tables, tmp_path, steps=2))
    assert train_worker(_small("dcgan", tables, tmp_path, resume=True)) == {"steps": 4, "resumed_from": 2}
    assert sorted({s for s, _, _ in _losses(tmp_path)}) == [1, 2, 3, 4]


@pytest.mark.parametrize("model", ["dcgan", "srgan"])
def test_a_resumed_run_continues_both_optimizers(model, tables, tmp_path):
    """Resumed at step 2, one more step: Adam has then taken 3 steps for every parameter of G and D
    (1 if the optimizers had come back empty) and its moments moved on from the checkpoint's."""
    import torch

    train_worker(_small(model, tables, tmp_path, steps=2, pretrain_steps=0))
    saved = torch.load(_checkpoint(tmp_path), weights_only=False)
    train_worker(_small(model, tables, tmp_path, steps=3, pretrain_steps=0, resume=True, checkpoint_every=1))
    state = torch.load(_checkpoint(tmp_path), weights_only=False)
    assert state["step"] == 3
    for opt in ("opt_g", "opt_d"):
        steps = {float(s["step"]) for s in state[opt]["state"].values()}
        assert steps == {3.0}, (opt, steps)
        before, after = saved[opt]["state"][0]["exp_avg_sq"], state[opt]["state"][0]["exp_avg_sq"]
        assert not torch.equal(before, after) and torch.all(after > 0)


def test_prefetch_keeps_order_raises_errors_and_stops_its_thread():
    assert list(data.prefetch(iter(range(50)), 4, lambda x: x * 2)) == list(range(0, 100, 2))

    def failing():
        yield 1
        raise ValueError("bad row")
    stream = data.prefetch(failing(), 2)
    assert next(stream) == 1
    with pytest.raises(ValueError, match="bad row"):
        next(stream)

    endless = data.prefetch(iter(int, 1), 2)  # never ends, like the training batches
    next(endless)
    endless.close()
    for t in threading.enumerate():
        if t.name == "batch-prefetch":
            t.join(timeout=5)
            assert not t.is_alive()


def test_shards_are_listed_through_pyarrow_for_paths_and_uris(tables, tmp_path):
    table = str(tables / "digits")
    for location in (table, f"file://{table}", f"file:{table}", os.path.relpath(table)):
        fs, files, by_row = data.shard_files(location, "train", 0, 1)
        assert [os.path.basename(f) for f in files] == ["part-00000.parquet"] and not by_row
    assert data.shard_files(table, "train", 1, 2)[2]  # more ranks than files: split by row
    first = next(data.iter_images(f"file://{table}", "train", 0, 1, seed=0))
    assert first.shape == (28, 28, 1) and first.dtype == np.uint8
    assert arrow_uri("s3a://bucket/images") == "s3://bucket/images"
    assert arrow_uri("hdfs://nn:8020/images") == "hdfs://nn:8020/images"
    assert arrow_uri("rel/images") == os.path.abspath("rel/images")
    with pytest.raises(FileNotFoundError, match="no Parquet files in split=test"):
        data.shard_files(table, "test", 0, 1)


def test_train_config_is_frozen_and_pickles_to_workers(tmp_path):
    cfg = TrainConfig(model="srgan", input="hdfs://nn/images", checkpoint_dir=str(tmp_path), steps=3, batch_size=4,
                      lr=1e-4, width=8)
    assert pickle.loads(pickle.dumps(cfg)) == cfg and replace(cfg, steps=5).steps == 5
    with pytest.raises(FrozenInstanceError):
        cfg.steps = 5
    assert cfg.generator_meta() == {"model": "srgan", "width": 8, "blocks": 16, "nz": 100, "bicubic_skip": True}


def test_worker_code_imports_no_pyspark_and_jobs_import_no_torch():
    code = ("import sys; import pipeline.ddp, pipeline.gan.train, pipeline.gan.sr, pipeline.gan.data; "
            "assert not [m for m in sys.modules if m.startswith('pyspark')], 'pyspark imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    listing = ("import sys; import pipeline.gan.job, pipeline.gan.upscale; "
               "assert 'torch' not in sys.modules, 'torch imported by a job module'")
    subprocess.run([sys.executable, "-c", listing], cwd=ROOT, check=True)


def _multi_file_table(root, sizes) -> tuple[str, int]:
    """An images table of len(sizes) Parquet files in split=train; image k has value k at its first pixel."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline import images as im

    os.makedirs(root / "split=train")
    k = 0
    for f, n in enumerate(sizes):
        rows = []
        for _ in range(n):
            arr = np.zeros((4, 4), np.uint8)
            arr[0, 0] = k
            h, w, c, mode, d = im.array_to_row(arr)
            rows.append({"path": f"p{k:03d}", "height": h, "width": w, "nChannels": c, "mode": mode, "data": d})
            k += 1
        pq.write_table(pa.Table.from_pylist(rows), root / "split=train" / f"part-{f:05d}.parquet")
    return str(root), k


def _first_pass(stream) -> list[int]:
    """The ids one rank sees before its shard repeats (every pass yields each of its rows once)."""
    seen = []
    for arr in stream:
        if int(arr[0, 0, 0] if arr.ndim == 3 else arr[0, 0]) in seen:
            return seen
        seen.append(int(arr[0, 0, 0] if arr.ndim == 3 else arr[0, 0]))


@pytest.mark.parametrize("world", [2, 3, 7])
def test_several_files_shard_over_several_ranks_once_each(tmp_path, world):
    """Every row reaches exactly one rank: whole files per rank with at least as many files as
    ranks, rows by index with fewer (7 ranks, 5 files)."""
    table, n = _multi_file_table(tmp_path / "t", [7, 3, 11, 5, 6])
    shards = [_first_pass(data.iter_images(table, "train", rank, world, seed=1)) for rank in range(world)]
    assert sorted(sum(shards, [])) == list(range(n))  # all rows, none twice
    assert all(shards)  # no rank idle
    if world <= 5:  # whole files: a rank's rows are the files [rank::world]
        sizes = [7, 3, 11, 5, 6]
        assert [len(s) for s in shards] == [sum(sizes[rank::world]) for rank in range(world)]
