import argparse
import json
import os
import shutil
import subprocess
import sys

import pytest

from pipeline import config as cfg
from pipeline import options
from pipeline.config import conf_dir, load_profile, read_spark_defaults
from pipeline.errors import PipelineError
from pipeline.ingest import parse_split


def test_shipped_profiles_layer_spark_defaults_yaml_and_conf_flags():
    for name in ("local", "cluster", "gpu"):
        profile = load_profile(str(conf_dir() / f"{name}.yaml"), ["spark.sql.shuffle.partitions=3"])
        assert profile.spark["spark.sql.shuffle.partitions"] == "3"  # --conf beats the file
    gpu = load_profile(str(conf_dir() / "gpu.yaml")).spark
    assert gpu["spark.task.resource.gpu.amount"] == "1" and gpu["spark.executor.resource.gpu.amount"] == "1"
    assert gpu["spark.executor.resource.gpu.discoveryScript"].endswith("conf/getGpusResources.sh")
    # inference shares each GPU between tasks; training keeps whole GPUs (TorchDistributor needs them)
    upscale = load_profile(str(conf_dir() / "gpu.yaml"), job="upscale")
    assert upscale.spark["spark.task.resource.gpu.amount"] == "0.25" and "spark" not in upscale.jobs["upscale"]
    assert load_profile(str(conf_dir() / "gpu.yaml"), job="train_gan").spark["spark.task.resource.gpu.amount"] == "1"
    assert load_profile(str(conf_dir() / "gpu.yaml"), ["spark.task.resource.gpu.amount=0.5"],
                        job="upscale").spark["spark.task.resource.gpu.amount"] == "0.5"  # --conf wins
    cluster = load_profile(str(conf_dir() / "cluster.yaml")).spark
    assert cluster["spark.executor.cores"] == "1" and cluster["spark.cores.max"] == "2"


def test_spark_defaults_formats_and_precedence(tmp_path):
    (tmp_path / "d.conf").write_text("# comment\n\nspark.a 1\nspark.b=2\nspark.c = x y\nspark.d\t4g\n")
    assert read_spark_defaults(str(tmp_path / "d.conf")) == {"spark.a": "1", "spark.b": "2", "spark.c": "x y",
                                                           "spark.d": "4g"}
    (tmp_path / "p.yaml").write_text("spark_defaults: d.conf\nspark:\n  spark.a: 10\n  spark.e: true\n")
    spark = load_profile(str(tmp_path / "p.yaml"), ["spark.b=20"]).spark
    assert spark == {"spark.a": "10", "spark.b": "20", "spark.c": "x y", "spark.d": "4g", "spark.e": "true"}


def test_bad_spark_defaults_name_the_file_and_line(cli, tmp_path):
    (tmp_path / "d.conf").write_text("spark.a 1\nexecutor.memory 2g\n")
    (tmp_path / "p.yaml").write_text("spark_defaults: d.conf\n")
    with pytest.raises(PipelineError, match=r"d.conf:2: expected 'spark.<key> <value>'"):
        load_profile(str(tmp_path / "p.yaml"))
    (tmp_path / "q.yaml").write_text("spark_defaults: missing.conf\n")
    code, _, err = cli("ingest", "--source", "mnist", "--output", tmp_path / "o", "--conf-file", tmp_path / "q.yaml")
    assert code == 2 and "spark_defaults" in err and "missing.conf: no such file" in err
    assert not (tmp_path / "o").exists()


def test_gpu_discovery_script_prints_spark_resource_json(tmp_path):
    script = str(conf_dir() / "getGpusResources.sh")
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\nprintf '0\\n1\\n'\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    out = subprocess.run([script], env=env, capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == {"name": "gpu", "addresses": ["0", "1"]}
    # with CUDA_VISIBLE_DEVICES the addresses are positions in it, as TorchDistributor reads them back
    out = subprocess.run([script], env={**env, "CUDA_VISIBLE_DEVICES": "3,5"}, capture_output=True, text=True).stdout
    assert json.loads(out)["addresses"] == ["0", "1"]
    if not shutil.which("nvidia-smi", path="/usr/bin:/bin"):  # a node without GPUs says so and offers none
        r = subprocess.run([script], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
        assert r.returncode == 0 and json.loads(r.stdout)["addresses"] == [] and "no GPUs" in r.stderr
    assert os.access(script, os.X_OK)


# ---------------------------------------------------------------- profiles and options, no Spark
# (`make mutation` runs these against each mutant of config.py: setup.cfg [mutmut])


def test_conf_dir_order(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARKGAN_CONF_DIR", str(tmp_path / "env"))
    assert cfg.conf_dir() == tmp_path / "env"
    monkeypatch.delenv("SPARKGAN_CONF_DIR")
    # the installed wheel: <site-packages>/pipeline/conf
    (tmp_path / "pkg" / "pipeline" / "conf").mkdir(parents=True)
    (tmp_path / "pkg" / "pipeline" / "conf" / "local.yaml").write_text("{}")
    monkeypatch.setattr(cfg, "__file__", str(tmp_path / "pkg" / "pipeline" / "config.py"))
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "elsewhere" / "x.py")])
    assert cfg.conf_dir() == tmp_path / "pkg" / "pipeline" / "conf"
    # the package from a --py-files zip: conf/ beside the submitted jobs/ folder
    monkeypatch.setattr(cfg, "__file__", str(tmp_path / "zip" / "pipeline" / "config.py"))
    (tmp_path / "sub" / "conf").mkdir(parents=True)
    (tmp_path / "sub" / "conf" / "local.yaml").write_text("{}")
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "sub" / "jobs" / "ingest.py"), "--x"])
    assert cfg.conf_dir() == tmp_path / "sub" / "conf"
    for argv in ([], [""], [str(tmp_path / "elsewhere" / "x.py")]):
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(PipelineError) as exc:
            cfg.conf_dir()
        assert str(exc.value) == "cannot find the conf/ folder; set SPARKGAN_CONF_DIR"


def test_load_profile_defaults_and_values(tmp_path, monkeypatch):
    (tmp_path / "local.yaml").write_text("")
    monkeypatch.setenv("SPARKGAN_CONF_DIR", str(tmp_path))
    profile = cfg.load_profile(None)
    assert (profile.path, profile.master, profile.runs_table, profile.spark, profile.jobs) == \
        (str(tmp_path / "local.yaml"), "local[*]", "out/runs", {}, {})
    (tmp_path / "p.yaml").write_text("master: yarn\nruns_table: 5\nspark: {spark.a: false, spark.b: true, "
                                     "spark.c: 2}\njobs: {ingest: 5, upscale: {partitions: 2}}\n")
    profile = cfg.load_profile(str(tmp_path / "p.yaml"), ["spark.x.opts=-Da=b", "spark.y = 1 "], job="ingest")
    assert (profile.path, profile.master, profile.runs_table) == (str(tmp_path / "p.yaml"), "yarn", "5")
    assert profile.spark == {"spark.a": "false", "spark.b": "true", "spark.c": "2", "spark.x.opts": "-Da=b",
                             "spark.y": "1"}
    assert profile.jobs == {"ingest": 5, "upscale": {"partitions": 2}}


def test_load_profile_refuses_with_the_reason(tmp_path):
    def refused(text, *overrides):
        (tmp_path / "p.yaml").write_text(text)
        with pytest.raises(PipelineError) as exc:
            cfg.load_profile(str(tmp_path / "p.yaml"), list(overrides))
        return str(exc.value)

    path = tmp_path / "p.yaml"
    assert refused("a: [") == f"--conf-file {path}: not valid YAML (ParserError)"
    assert refused("- 1\n- 2\n") == f"--conf-file {path}: expected a mapping at the top level"
    assert refused("master: x\nworkers: 2\nextra: 1\n") == \
        f"--conf-file {path}: unknown key(s) extra, workers (expected jobs, master, runs_table, spark, spark_defaults, tracking)"
    assert refused("spark: [1, 2]\n") == f"--conf-file {path}: 'spark' must be a mapping"
    assert refused("jobs: 3\n") == f"--conf-file {path}: 'jobs' must be a mapping"
    assert refused("jobs: {ingest: {spark: 3}}\n") == f"--conf-file {path}: 'jobs.ingest.spark' must be a mapping"
    for bad in ("spark.a", "a=1", "=1"):
        assert refused("{}", "spark.ok=1", bad) == f"--conf {bad!r}: expected spark.<key>=<value>"
    with pytest.raises(PipelineError) as exc:
        cfg.load_profile(str(tmp_path / "missing.yaml"))
    assert str(exc.value) == f"--conf-file {tmp_path / 'missing.yaml'}: no such file"


def test_read_spark_defaults_names_file_and_line(tmp_path):
    conf = tmp_path / "d.conf"
    for text, line in (("spark.a 1\n# c\nexecutor.memory 2g\n", "'executor.memory 2g'"),
                       ("spark.a 1\n\nspark.b\n", "'spark.b'")):
        conf.write_text(text)
        with pytest.raises(PipelineError) as exc:
            cfg.read_spark_defaults(str(conf))
        assert str(exc.value) == f"{conf}:3: expected 'spark.<key> <value>', got {line}"
    with pytest.raises(PipelineError) as exc:
        cfg.read_spark_defaults(str(tmp_path / "none.conf"))
    assert str(exc.value) == f"spark_defaults {tmp_path / 'none.conf'}: no such file"


def _parser():
    p = argparse.ArgumentParser()
    defaults = options.add_output(p, "where")
    p.add_argument("--partitions", type=int)
    p.add_argument("--batch-rows", type=int)
    p.add_argument("--split", type=parse_split)
    return p, {**defaults, "partitions": 4, "batch_rows": 256, "split": (("train", 1.0),)}


def _profile(jobs):
    return cfg.Profile(path="conf/p.yaml", jobs=jobs)


def test_resolve_options_layers_default_profile_and_command_line():
    p, defaults = _parser()
    args = cfg.resolve_options(p.parse_args(["--output", "o"]), p, defaults, _profile({}), "ingest")
    assert (args.mode, args.partitions, args.batch_rows, args.split) == ("error", 4, 256, (("train", 1.0),))
    job = {"partitions": "8", "batch-rows": 16, "mode": "overwrite", "split": "train=0.5,test=0.5"}
    args = cfg.resolve_options(p.parse_args(["--output", "o", "--partitions", "2"]), p, defaults,
                               _profile({"ingest": job, "other": {"partitions": 99}}), "ingest")
    assert (args.mode, args.partitions, args.batch_rows, args.split) == \
        ("overwrite", 2, 16, (("train", 0.5), ("test", 0.5)))
    args = cfg.resolve_options(p.parse_args(["--output", "o"]), p, defaults, _profile({"ingest": {"partitions": None}}),
                               "ingest")
    assert args.partitions == 4  # an empty YAML value leaves the built-in default


def test_resolve_options_checks_profile_values_as_the_command_line_does():
    p, defaults = _parser()

    def refused(section, job="ingest"):
        with pytest.raises(PipelineError) as exc:
            cfg.resolve_options(p.parse_args(["--output", "o"]), p, defaults, _profile({job: section}), job)
        return str(exc.value)

    assert refused(3) == "conf/p.yaml: jobs.ingest must be a mapping"
    assert refused({"partitions": 2, "workers": 1, "output2": 1}) == \
        ("conf/p.yaml: unknown option(s) jobs.ingest.output2, workers "
         "(expected one of batch_rows, mode, partitions, split)")
    assert refused({"partitions": "many"}) == \
        "conf/p.yaml: jobs.ingest.partitions='many': invalid literal for int() with base 10: 'many'"
    assert refused({"mode": "sideways"}) == "conf/p.yaml: jobs.ingest.mode='sideways': expected one of error, overwrite"
    assert refused({"split": "train=2"}).startswith("conf/p.yaml: jobs.ingest.split='train=2': bad split 'train=2'")
