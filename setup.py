"""sparkgan: distributed image ingest, featurization and GAN training on Apache Spark."""

import re
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent


def pins(name: str) -> list[str]:
    lines = (HERE / name).read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


version = re.search(r'__version__ = "(.+)"', (HERE / "pipeline" / "__init__.py").read_text()).group(1)
core = [p for p in pins("requirements.txt") if not p.startswith(("torch", "tensorflow", "keras"))]
setup(
    name="sparkgan",
    version=version,
    description=__doc__,
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=["pipeline", "pipeline.gan", "pipeline.conf"],
    # conf/ ships inside the wheel as pipeline/conf, so an installed package finds its profiles.
    package_dir={"pipeline.conf": "conf"},
    package_data={"pipeline.conf": ["*.yaml", "*.properties", "*.conf", "*.sh"]},
    install_requires=core,
    extras_require={
        "torch": [p for p in pins("requirements.txt") if p.startswith("torch")],
        "tf": [p for p in pins("requirements.txt") if p.startswith(("tensorflow", "keras"))],
        # BigDL's metadata pins an old pyspark; install it with --no-deps (see the Makefile).
        "bigdl": pins("requirements-bigdl.txt"),
    },
    entry_points={"console_scripts": ["sparkgan = pipeline.cli:submit_main"]},
)
