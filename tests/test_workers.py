"""pipeline.workers, the Python workers' start-up patches, run in this process (no Spark)."""

import sys


def test_workers_stop_zip_importers_rereading_archives_that_do_not_change(tmp_path, monkeypatch):
    """Spark 3.5's worker invalidates import caches before every task; on Python 3.11 each zip
    importer then re-reads its archive's directory (pyspark.zip, Spark's jars: ~0.1 s a task)."""
    import zipfile
    import zipimport

    from pipeline import workers

    archive = tmp_path / "lib.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("zipped_for_test.py", "X = 1\n")
    # restored after the test (tests that run worker functions in this process patch it too)
    monkeypatch.setattr(zipimport.zipimporter, "invalidate_caches", zipimport.zipimporter.invalidate_caches)
    real, reads = zipimport._read_directory, []
    monkeypatch.setattr(zipimport, "_read_directory", lambda path: reads.append(path) or real(path))
    importer = zipimport.zipimporter(str(archive))
    before = len(reads)
    workers.skip_zip_rereads()
    importer.invalidate_caches()
    assert len(reads) == before
    if sys.version_info < (3, 12):
        assert zipimport.zipimporter.invalidate_caches is workers._keep
    assert importer.find_spec("zipped_for_test") is not None
