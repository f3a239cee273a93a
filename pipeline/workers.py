"""Set-up our Python workers do once, in whichever of our functions a worker runs first."""

from __future__ import annotations

import sys


def _keep(self) -> None:
    """zipimporter.invalidate_caches, for archives that do not change under a running worker."""


def skip_zip_rereads() -> None:
    """Spark 3.5's worker calls importlib.invalidate_caches() before every task, and CPython 3.10
    and 3.11 then re-read the directory of every zip archive on sys.path (pyspark.zip, py4j's,
    Spark's jars): ~0.1 s per task here (python/cpython#103200, made lazy in 3.12; Spark 4.2 calls
    it only when sys.path changed, SPARK-54744). Those archives do not change under a running
    worker, and an archive newly put on sys.path gets a new importer, so the rereads buy nothing."""
    if sys.version_info < (3, 12):
        import zipimport

        zipimport.zipimporter.invalidate_caches = _keep
