"""Atomic outputs and the row balance, made to fail on purpose: what is left afterwards; the path
helpers and the output check, no Spark (`make mutation` runs those against each mutant of io.py)."""

import os

import pytest

from pipeline.errors import PipelineError
from pipeline.io import Run, absolute, arrow_uri, atomic_output, check_writable, is_local, local_path


def _leftovers(folder):
    return sorted(p for p in os.listdir(folder) if "__tmp_" in p or "__old_" in p)


def _write(spark, path, n=3):
    spark.range(n).write.mode("append").parquet(path)  # the temporary output exists: it holds the marker


def _yesterdays(spark, out, n=5):
    """An output an earlier run of ours committed (it holds the project's marker)."""
    from pipeline.safety import write_marker

    _write(spark, out, n)
    write_marker(out, "t", "t-20260101T000000-abcdef")


def test_a_block_that_fails_after_writing_commits_nothing(spark, tmp_path):
    out = str(tmp_path / "out")
    record = Run(job="t", config={})
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(spark, out, record) as tmp:
            _write(spark, f"{tmp}/rows")
            assert os.path.isdir(f"{tmp}/rows")
            raise RuntimeError("boom")
    assert not os.path.exists(out) and _leftovers(tmp_path) == []


def test_unbalanced_rows_refuse_to_commit_and_keep_the_old_output(spark, tmp_path):
    out = str(tmp_path / "out")
    _yesterdays(spark, out)
    record = Run(job="t", config={})
    with pytest.raises(PipelineError, match="row accounting failed: read 10, wrote 7, rejected 2; nothing was committed"):
        with atomic_output(spark, out, record, mode="overwrite") as tmp:
            _write(spark, tmp)
            record.rows_in, record.rows_out, record.rows_rejected = 10, 7, 2
    assert spark.read.parquet(out).count() == 5 and _leftovers(tmp_path) == []


def test_balanced_rows_replace_the_output(spark, tmp_path):
    out = str(tmp_path / "out")
    _yesterdays(spark, out)
    record = Run(job="t", config={})
    with atomic_output(spark, out, record, mode="overwrite") as tmp:
        _write(spark, tmp, 3)
        record.rows_in, record.rows_out, record.rows_rejected = 3, 2, 1
    assert spark.read.parquet(out).count() == 3 and _leftovers(tmp_path) == []
    with pytest.raises(PipelineError, match="already exists"):
        with atomic_output(spark, out, Run(job="t", config={})):
            pass


def test_a_trained_model_records_inputs_only():
    record = Run(job="t", config={}, rows_in=12)
    record.check_counts()  # outputs that are not input rows: nothing to balance
    record.rows_out = 11
    with pytest.raises(PipelineError, match="read 12, wrote 11, rejected None"):
        record.check_counts()


def test_a_decoder_that_loses_rows_stops_ingest_before_the_commit(spark, cli, tmp_path, monkeypatch):
    """A plausible bug (a decoder that silently drops a row) is caught by the count check."""
    from pipeline import ingest

    real = ingest.decode_bundled

    def lossy(name, split, resize):
        decode = real(name, split, resize)

        def drop_first(batches):
            for batch in decode(batches):
                yield batch.slice(1)
        return drop_first

    monkeypatch.setattr(ingest, "decode_bundled", lossy)
    code, _, err = cli("ingest", "--source", "digits", "--output", tmp_path / "ds", "--partitions", 2)
    assert code == 2 and "row accounting failed: read 1797" in err and "nothing was committed" in err
    assert not (tmp_path / "ds").exists() and _leftovers(tmp_path) == []
    runs = spark.read.parquet(str(tmp_path / "runs")).collect()
    assert [r.status for r in runs] == ["failed"] and "row accounting failed" in runs[0].error


def test_runs_rows_written_from_the_driver_read_as_one_table_with_spark_written_ones(spark, tmp_path, capsys):
    import datetime as dt

    import pyarrow.parquet as pq

    from pipeline import runs
    from pipeline.io import recorded_run

    table = str(tmp_path / "runs")
    # a row as earlier versions wrote it: through Spark (INT96 timestamps, Spark's own footer)
    old = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    spark.createDataFrame(
        [("old-1", "ingest", "succeeded", old, old, 1.5, "abc", "h", "local", "app", "{}", "{}", 10, 9, 1,
          {"rows_train": 9.0}, None)],
        "run_id string, job string, status string, started_at timestamp, ended_at timestamp, duration_s double, "
        "git_rev string, host string, spark_master string, app_id string, config string, outputs string, "
        "rows_in long, rows_out long, rows_rejected long, metrics map<string,double>, error string",
    ).coalesce(1).write.parquet(table)
    with recorded_run(spark, table, "train_digits", {"epochs": 1}) as run:
        run.rows_in = 42
        run.metrics = {"test_top1": 0.97}
    assert not [n for n in os.listdir(table) if n.endswith(".inprogress")]
    rows = {r.run_id: r for r in spark.read.parquet(table).collect()}
    assert set(rows) == {"old-1", run.run_id}
    new = rows[run.run_id]
    assert (new.rows_in, new.rows_out, new.metrics) == (42, None, {"test_top1": 0.97})
    assert rows["old-1"].started_at < new.started_at  # both instants read right, whoever wrote them
    assert abs(new.started_at.timestamp() - run.started_at.timestamp()) < 1e-3
    assert pq.read_table(table).num_rows == 2
    assert runs.main([table]) == 0
    printed = capsys.readouterr().out.splitlines()
    # run id, start time, job, status, duration, counts (pipeline.runs' line)
    assert printed[0].split()[:5] == ["old-1", "2026-01-02", "03:04:05", "ingest", "succeeded"]
    assert printed[0].endswith("in 10, out 9, rejected 1")
    assert printed[1].split()[0] == run.run_id and printed[1].split()[3:5] == ["train_digits", "succeeded"]
    assert printed[1].endswith("in 42")
    assert "'test_top1': 0.97" in printed[2]


# ---------------------------------------------------------------- paths and outputs, no Spark


def test_absolute_and_arrow_uri(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert absolute("out/x") == str(tmp_path / "out" / "x")
    for uri in ("s3a://bucket/x", "hdfs://nn:8020/x", "file:/x", "gs://b/x"):
        assert absolute(uri) == uri
    assert arrow_uri("s3a://bucket/t") == "s3://bucket/t" and arrow_uri("s3n://bucket/t") == "s3://bucket/t"
    assert arrow_uri("s3://bucket/t") == "s3://bucket/t" and arrow_uri("hdfs://nn/t") == "hdfs://nn/t"
    assert arrow_uri("gs://b/s3a://x") == "gs://b/s3a://x"
    assert arrow_uri("t") == str(tmp_path / "t")


def test_is_local_and_local_path():
    for path in ("/data/x", "data/x", "file:/data/x", "file:///data/x"):
        assert is_local(path)
    for path in ("hdfs://nn/x", "s3a://b/x"):
        assert not is_local(path)
    assert local_path("file:/data/x") == "/data/x" and local_path("file:///data/x") == "/data/x"
    assert local_path("/data/file:/x") == "/data/file:/x" and local_path("data/x") == "data/x"


def test_check_writable(tmp_path, monkeypatch):
    out = tmp_path / "a" / "b" / "out"
    check_writable(str(out), "error")
    assert (tmp_path / "a" / "b").is_dir() and not out.exists()  # the parent is made, not the output
    out.mkdir()
    with pytest.raises(PipelineError) as exc:
        check_writable(str(out), "error")
    assert str(exc.value) == f"--output {out} already exists (use --mode overwrite to replace it)"
    with pytest.raises(PipelineError, match="already exists"):
        check_writable(f"file://{out}", "error")
    check_writable(str(out), "overwrite")
    (tmp_path / "f").write_text("a file")
    with pytest.raises(PipelineError) as exc:
        check_writable(str(tmp_path / "f" / "sub" / "out"), "error")
    assert str(exc.value) == (f"--output {tmp_path / 'f' / 'sub' / 'out'}: cannot create {tmp_path / 'f' / 'sub'} "
                              "(Not a directory)")
    check_writable("hdfs://nn/never/checked", "error")  # remote: Hadoop decides at commit time
    monkeypatch.setattr(os, "access", lambda path, mode: mode != os.W_OK)
    with pytest.raises(PipelineError) as exc:
        check_writable(str(tmp_path / "c" / "out"), "error")
    assert str(exc.value) == f"--output {tmp_path / 'c' / 'out'}: {tmp_path / 'c'} is not writable"


def test_row_accounting_balances_written_and_rejected_rows():
    for rows_in, out, rejected in ((3, 2, 1), (2, None, 2), (2, 0, 2), (4, 4, None), (4, 4, 0), (0, 0, 0)):
        Run(job="t", config={}, rows_in=rows_in, rows_out=out, rows_rejected=rejected).check_counts()
    Run(job="t", config={}).check_counts()  # nothing recorded: nothing to balance
    for rows_in, out, rejected in ((5, 3, 1), (1, None, 2), (3, 4, None), (None, 1, 0)):
        with pytest.raises(PipelineError) as exc:
            Run(job="t", config={}, rows_in=rows_in, rows_out=out, rows_rejected=rejected).check_counts()
        assert str(exc.value) == (f"row accounting failed: read {rows_in}, wrote {out}, rejected {rejected}; "
                                  "nothing was committed")
