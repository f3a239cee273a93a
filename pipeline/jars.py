"""`python -m pipeline.jars`: the BigDL jars, comma-separated, for spark-submit's --jars."""

import sys

from pipeline.errors import PipelineError
from pipeline.session import bigdl_jars, bigdl_missing


def main() -> int:
    try:
        if reason := bigdl_missing():  # Spark 4, or no BigDL: one line, not an ImportError's trace
            raise PipelineError(reason)
        print(",".join(bigdl_jars()))
    except PipelineError as exc:
        print(f"python -m pipeline.jars: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
