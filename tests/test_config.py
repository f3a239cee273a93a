import json
import os
import shutil
import subprocess

import pytest

from pipeline.config import conf_dir, load_profile, read_spark_defaults
from pipeline.errors import PipelineError


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
