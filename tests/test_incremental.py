"""Incremental ingest: every file of a growing folder in images or rejected exactly once, also
through a run killed part-way, and readers (Spark and pyarrow) see committed rows only."""

import os
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import tablelog
from pipeline.ingest import parse_split, split_of
from tests.conftest import ROOT, kill_tree

RNG = np.random.default_rng(11)
SPLIT = parse_split("train=0.8,test=0.2")


def grow(root, start: int, n: int, broken: bool = True) -> None:
    """n new 8x8 PNGs in three class folders; with `broken`, one undecodable and one empty file."""
    for i in range(start, start + n):
        folder = root / f"c{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(RNG.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    if broken:
        (root / "c0" / f"bad{start}.png").write_bytes(b"not a png")
        (root / "c1" / f"empty{start}.png").write_bytes(b"")


def files_under(root) -> set[str]:
    return {f"file:{os.path.join(d, f)}" for d, _, fs in os.walk(root) for f in fs}


def committed_paths(spark, out):
    images = spark.read.parquet(f"{out}/images")
    rejected = spark.read.parquet(f"{out}/rejected")
    return [r.path for r in images.select("path").collect()], [r.path for r in rejected.select("path").collect()]


def last_run(runs):
    return pq.read_table(runs).to_pandas().sort_values("started_at").iloc[-1]


def assert_exactly_once(spark, root, out):
    images, rejected = committed_paths(spark, out)
    assert len(images) == len(set(images)) and len(rejected) == len(set(rejected))
    assert not set(images) & set(rejected)
    assert set(images) | set(rejected) == files_under(root)
    assert {p for p in rejected if "bad" in p or "empty" in p} == set(rejected)


def test_log_reader_matches_spark_through_compaction(spark, tmp_path):
    """pyarrow readers (the torch engine, the GAN data) read the commit log as Spark does,
    past Spark's compaction of every 10th entry, and skip files no entry lists."""
    table = tmp_path / "t"
    df = spark.range(40).selectExpr("id", "if(id % 4 = 0, 'test', 'train') as split")
    df.write.partitionBy("split").parquet(str(table))
    log = tablelog.TableLog(spark, str(table))
    log.start()  # a table written in one go: its files become entry 0
    for i in range(12):
        stage = tmp_path / f"stage{i}"
        spark.range(100 + i, 101 + i).selectExpr("id", "'train' as split").write.partitionBy("split").parquet(str(stage))
        (new,) = [f for f in (stage / "split=train").iterdir() if f.suffix == ".parquet"]
        dest = table / "split=train" / f"{i}-{new.name}"
        new.rename(dest)
        log.add([f"file:{dest}"])
    assert (table / "_spark_metadata" / "9.compact").exists()
    spark.range(999, 1000).selectExpr("id", "'train' as split").write.mode("append").partitionBy("split").parquet(
        str(table))  # files no entry lists: invisible to both readers
    seen = spark.read.parquet(str(table))
    assert seen.count() == 52 and seen.where("id = 999").count() == 0
    files = tablelog.committed_files(str(table))
    assert sorted(f"file://{f}" for f in files) == sorted(seen.inputFiles())
    assert sum(pq.read_metadata(f).num_rows for f in files) == 52
    plain = tmp_path / "plain"  # no log: every visible file counts (not _SUCCESS, not the .crc files)
    spark.range(10).selectExpr("id", "'train' as split").repartition(2).write.partitionBy("split").parquet(str(plain))
    parts = sorted(str(f) for f in plain.rglob("part-*.parquet"))
    assert len(parts) == 2 and tablelog.committed_files(str(plain)) == parts
    assert tablelog.committed_files(str(tmp_path / "nowhere")) == []


@pytest.mark.slow
def test_grows_over_three_runs_exactly_once_through_a_killed_run(spark, cli, tmp_path):
    root, out, runs = tmp_path / "src", tmp_path / "ds", tmp_path / "runs"
    args = ["ingest", "--source", root, "--output", out, "--incremental", "--partitions", 2]
    grow(root, 0, 30)
    code, _, err = cli(*args)
    assert code == 0, err
    assert_exactly_once(spark, root, out)
    assert (last_run(runs).rows_in, last_run(runs).rows_out, last_run(runs).rows_rejected) == (32, 30, 2)

    # Run 2 over 600 new files, killed (driver, JVM and Python workers at once) while it writes.
    grow(root, 1000, 600)
    before = committed_paths(spark, out)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *map(str, args), "--runs-table", str(runs)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not list(out.glob("images/_staging-*/_temporary")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    kill_tree(proc)
    assert proc.returncode == -9 and list(out.glob("images/_staging-*"))
    assert committed_paths(spark, out) == before  # readers see only what run 1 committed

    # Run 3, with more files again: the killed run's files are still new; its leftovers go.
    grow(root, 5000, 40)
    code, _, err = cli(*args)
    assert code == 0, err
    assert_exactly_once(spark, root, out)
    row = last_run(runs)
    assert (row.rows_in, row.rows_out, row.rows_rejected) == (644, 640, 4)
    assert not list(out.glob("*/_staging-*"))
    on_disk = {f"file://{p}" for p in map(str, out.glob("images/split=*/*.parquet"))}
    assert on_disk == set(spark.read.parquet(f"{out}/images").inputFiles())

    # the same splits by path hash as a one-go ingest, and the same rows for pyarrow readers
    images = spark.read.parquet(f"{out}/images").select("path", "split").collect()
    prefix = f"file:{root}/"
    assert all(r.split == split_of(r.path[len(prefix):], SPLIT) for r in images)
    from pipeline.digits.torch_engine import read_split
    x, _ = read_split(f"{out}/images", "train", 0, 1)
    assert len(x) == sum(r.split == "train" for r in images)

    code, _, err = cli(*args)  # nothing new: nothing read, nothing written
    assert code == 0, err
    assert (last_run(runs).rows_in, last_run(runs).rows_out, last_run(runs).rows_rejected) == (0, 0, 0)
    assert_exactly_once(spark, root, out)


def test_a_crash_between_commits_is_redone_exactly_once(spark, cli, tmp_path, monkeypatch):
    """Files moved into a table but never committed stay invisible and are deleted by the next run;
    images committed but rejected not: the next run rejects exactly those again."""
    root, out = tmp_path / "src", tmp_path / "ds"
    args = ["ingest", "--source", root, "--output", out, "--incremental", "--partitions", 2]
    grow(root, 0, 12)
    assert cli(*args)[0] == 0
    grow(root, 100, 12)
    add = tablelog.TableLog.add

    def crash_on(table_name):
        def fake(self, files):
            if self.table.endswith(table_name):
                raise OSError("disk went away")
            return add(self, files)
        return fake

    monkeypatch.setattr(tablelog.TableLog, "add", crash_on("/images"))
    assert cli(*args)[0] == 1
    assert len(list(out.glob("images/split=*/*.parquet"))) > len(spark.read.parquet(f"{out}/images").inputFiles())
    assert len(committed_paths(spark, out)[0]) == 12  # moved but not committed: invisible

    monkeypatch.setattr(tablelog.TableLog, "add", crash_on("/rejected"))
    assert cli(*args)[0] == 1
    images, rejected = committed_paths(spark, out)
    assert len(images) == 24 and len(rejected) == 2  # images committed, rejected not

    monkeypatch.setattr(tablelog.TableLog, "add", add)
    assert cli(*args)[0] == 0
    assert_exactly_once(spark, root, out)
    row = last_run(tmp_path / "runs")
    assert (row.rows_in, row.rows_out, row.rows_rejected) == (2, 0, 2)
    assert len(list(out.glob("images/split=*/*.parquet"))) == len(spark.read.parquet(f"{out}/images").inputFiles())


def test_incremental_refuses_overwrite_and_other_settings(cli, tmp_path):
    grow(tmp_path / "src", 0, 3, broken=False)
    args = ["ingest", "--source", tmp_path / "src", "--output", tmp_path / "ds", "--incremental"]
    code, _, err = cli(*args, "--mode", "overwrite")
    assert code == 2 and "--incremental adds to --output" in err and not (tmp_path / "ds").exists()
    assert cli(*args)[0] == 0
    before = sorted((tmp_path / "ds").rglob("*"))
    grow(tmp_path / "src", 10, 3, broken=False)
    code, _, err = cli(*args, "--split", "train=0.5,test=0.5", "--resize", "4")
    assert code == 2 and "split train=0.8,test=0.2 → train=0.5,test=0.5; resize None → 4x4" in err
    assert sorted((tmp_path / "ds").rglob("*")) == before  # nothing written


def test_an_append_that_loses_rows_commits_nothing(spark, cli, tmp_path, monkeypatch):
    """The count check guards appends as it guards new outputs: a decoder that drops a row stops
    the run before anything is moved into the tables."""
    from pipeline import ingest

    root, out = tmp_path / "src", tmp_path / "ds"
    args = ["ingest", "--source", root, "--output", out, "--incremental", "--partitions", 2]
    grow(root, 0, 6, broken=False)
    assert cli(*args)[0] == 0
    before = committed_paths(spark, out)
    grow(root, 100, 6, broken=False)
    real = ingest.decode_files

    def lossy(*a):
        decode = real(*a)
        return lambda batches: (b.slice(1) for b in decode(batches))

    monkeypatch.setattr(ingest, "decode_files", lossy)
    code, _, err = cli(*args)
    assert code == 2 and "row accounting failed: read 6" in err and "nothing was committed" in err
    assert committed_paths(spark, out) == before
    assert not list(out.glob("*/_staging-*"))
    assert sorted(f"file://{p}" for p in out.glob("images/split=*/*.parquet")) == sorted(
        spark.read.parquet(f"{out}/images").inputFiles())
