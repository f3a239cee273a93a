"""sparkgan: distributed image ingest, featurization and (GAN) training on Apache Spark."""

__version__ = "0.1.0"
