"""A job's own Spark settings last as long as the job: the next one in the same session (these
tests' shared session, a notebook, a Connect server) starts from what was there before."""

import numpy as np
import pytest
from PIL import Image

from pipeline import ingest
from pipeline.session import scoped_conf, set_conf

KEYS = ("spark.sql.files.openCostInBytes", "spark.sql.files.minPartitionNum",
        "spark.sql.execution.arrow.maxRecordsPerBatch")


def settings(spark):
    return tuple(spark.conf.get(k, None) for k in KEYS)


def test_scoped_conf_restores_values_and_unsets_new_keys_on_error(spark):
    cost, parts, batch = KEYS
    start = settings(spark)
    with pytest.raises(RuntimeError, match="outside scoped_conf"):
        set_conf(spark, batch, 5)
    assert settings(spark) == start
    with scoped_conf(spark, {batch: 500, cost: 4096}):
        assert spark.conf.get(batch) == "500" and spark.conf.get(cost) == "4096"
        with pytest.raises(ZeroDivisionError):
            with scoped_conf(spark, {batch: 7}):
                set_conf(spark, parts, 3)
                set_conf(spark, parts, 4)  # a second set keeps the value from before the block
                assert (spark.conf.get(parts), spark.conf.get(batch)) == ("4", "7")
                1 / 0
        # the inner block's keys are back to the outer block's values, or unset
        assert settings(spark) == ("4096", start[1], "500")
    assert settings(spark) == start


def test_two_jobs_in_one_session_do_not_share_their_settings(spark, cli, tmp_path, monkeypatch):
    tree = tmp_path / "tree" / "a"
    tree.mkdir(parents=True)
    for i in range(5):
        Image.fromarray(np.full((8, 8), i * 50, np.uint8)).save(tree / f"{i}.png")
    seen = []
    decode_into = ingest.decode_into

    def spy(spark, *args, **kwargs):  # what the session says while the job decodes
        seen.append(settings(spark))
        return decode_into(spark, *args, **kwargs)

    monkeypatch.setattr(ingest, "decode_into", spy)
    start = settings(spark)
    # a local folder: the listing's split settings, and the job's Arrow batch
    code, _, err = cli("ingest", "--source", tmp_path / "tree", "--output", tmp_path / "one", "--partitions", 3,
                       "--batch-rows", 7)
    assert code == 0, err
    assert seen == [("3", "3", "7")]
    assert settings(spark) == start
    # a bundled source sets no split settings: it runs with the session's, not the first job's
    code, _, err = cli("ingest", "--source", "digits", "--output", tmp_path / "two", "--batch-rows", 11)
    assert code == 0, err
    assert seen[1] == (start[0], start[1], "11")
    assert settings(spark) == start
