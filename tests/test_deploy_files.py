"""Docker images, compose file and shell scripts: linted here (no Docker daemon to build them)."""

import glob
import os
import re
import subprocess
import sys

import yaml

from tests.conftest import ROOT

BIN = os.path.dirname(sys.executable)


def test_dockerfile_passes_hadolint():
    r = subprocess.run([os.path.join(BIN, "hadolint"), "docker/Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_shell_scripts_pass_shellcheck():
    scripts = glob.glob(os.path.join(ROOT, "scripts", "*.sh")) + glob.glob(os.path.join(ROOT, "conf", "*.sh"))
    r = subprocess.run([os.path.join(BIN, "shellcheck"), *scripts, os.path.join(ROOT, ".ci", "run")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_builds_targets_the_dockerfile_has():
    dockerfile = open(os.path.join(ROOT, "docker", "Dockerfile")).read()
    targets = set(re.findall(r"^FROM \S+ AS (\w+)$", dockerfile, re.M))
    assert {"cpu", "cuda", "airflow"} <= targets
    for src in re.findall(r"^COPY (?:--\S+ )?(\S+)", dockerfile, re.M):  # every COPY source exists
        assert os.path.exists(os.path.join(ROOT, src)), src
    compose = yaml.safe_load(open(os.path.join(ROOT, "docker", "compose.yaml")))
    services = compose["services"]
    assert {"spark-master", "spark-worker-1", "spark-worker-2", "airflow"} <= set(services)
    for name, svc in services.items():
        build = svc.get("build") or compose["x-sparkgan"]["build"]
        assert build["target"] in targets and build["dockerfile"] == "docker/Dockerfile", name
        assert "data:/data" in svc["volumes"], name
    workers = [s for n, s in services.items() if n.startswith("spark-worker")]
    assert all("spark://spark-master:7077" in s["command"] for s in workers)
    assert services["spark-worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
