"""The shared job options of pipeline.options (the checks every job's validate runs, threads per
process, the resume decision), no Spark: each pins a message a user reads."""

from types import SimpleNamespace

import pytest

from pipeline import options
from pipeline.errors import PipelineError


def test_positive_checks_every_name():
    opts = SimpleNamespace(num_processes=1, batch_size=0)
    options.positive(opts, "num_processes")
    with pytest.raises(PipelineError) as exc:
        options.positive(opts, "num_processes", "batch_size")
    assert str(exc.value) == "--batch-size 0: expected a positive number"


def test_check_distributor():
    ok = SimpleNamespace(num_processes=2, threads=0, batch_size=64)
    options.check_distributor(ok)
    cases = {(0, 0, 64): "--num-processes 0: expected a positive number",
             (2, -1, 64): "--threads -1: expected 0 (Spark's cores / --num-processes) or more",
             (3, 2, 64): "--batch-size 64 does not split evenly over --num-processes 3"}
    for (n, threads, batch), message in cases.items():
        with pytest.raises(PipelineError) as exc:
            options.check_distributor(SimpleNamespace(num_processes=n, threads=threads, batch_size=batch))
        assert str(exc.value) == message


def test_threads_per_process():
    spark = SimpleNamespace(sparkContext=SimpleNamespace(defaultParallelism=8))
    assert options.threads_per_process(spark, SimpleNamespace(threads=0, num_processes=3)) == 2
    assert options.threads_per_process(spark, SimpleNamespace(threads=5, num_processes=3)) == 5
    assert options.threads_per_process(spark, SimpleNamespace(threads=0, num_processes=9)) == 1


def test_input_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ds").mkdir()
    assert options.input_table("ds") == str(tmp_path / "ds")
    assert options.input_table(f"file:{tmp_path}/ds") == f"file:{tmp_path}/ds"
    assert options.input_table("s3a://bucket/ds") == "s3a://bucket/ds"  # remote: Spark checks it
    with pytest.raises(PipelineError) as exc:
        options.input_table("nope")
    assert str(exc.value) == f"--input {tmp_path / 'nope'}: no such images table"
    with pytest.raises(PipelineError) as exc:
        options.input_table(f"file:{tmp_path}/nope", "--generator", "model", " (train one first)")
    assert str(exc.value) == f"--generator file:{tmp_path}/nope: no such model (train one first)"
    (tmp_path / "f").write_text("a file, not a table")
    with pytest.raises(PipelineError, match="no such images table"):
        options.input_table("f")


def test_output_is_made_absolute_and_checked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opts = SimpleNamespace(output="sub/out", mode="error")
    options.output(opts)
    assert opts.output == str(tmp_path / "sub" / "out") and (tmp_path / "sub").is_dir()
    (tmp_path / "sub" / "out").mkdir()
    with pytest.raises(PipelineError, match="already exists"):
        options.output(SimpleNamespace(output="sub/out", mode="error"))
    options.output(SimpleNamespace(output="sub/out", mode="overwrite"))


def test_resume_decision():
    assert options.resume_decision("off", "ck/epoch-3", {}, {}) == (False, "starting fresh")
    assert options.resume_decision("off", None, {}, {}) == (False, "starting fresh")
    for mode in ("on", "auto"):
        assert options.resume_decision(mode, None, {}, {"lr": 1}) == (False, "starting fresh (no checkpoint yet)")
        assert options.resume_decision(mode, "ck/epoch-3", {"lr": 0.1}, {"lr": 0.1}) == \
            (True, "resuming from ck/epoch-3")
    saved = {"lr": 0.1, "model": "dcgan", "old": 1}
    current = {"lr": 0.2, "model": "dcgan", "batch": 8}
    what = "batch None → 8, lr 0.1 → 0.2, old 1 → None"
    assert options.resume_decision("auto", "ck/epoch-3", saved, current) == \
        (False, f"starting fresh: the checkpoint ck/epoch-3 is of another configuration ({what})")
    with pytest.raises(PipelineError) as exc:
        options.resume_decision("on", "ck/epoch-3", saved, current)
    assert str(exc.value) == (f"--resume: the checkpoint ck/epoch-3 is of another configuration ({what}); "
                              "use --resume auto to start fresh instead")
    assert options.resume_decision("auto", "ck", {"model": "dcgan"}, {"model": "srgan"})[1] == \
        "starting fresh: the checkpoint ck is of another configuration (model 'dcgan' → 'srgan')"
