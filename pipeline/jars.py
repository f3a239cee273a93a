"""`python -m pipeline.jars`: the BigDL jars, comma-separated, for spark-submit's --jars."""

from pipeline.session import bigdl_jars

if __name__ == "__main__":
    print(",".join(bigdl_jars()))
