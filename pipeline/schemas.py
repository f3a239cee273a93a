"""Every table the project writes, declared once: a pyarrow schema, with its Spark DDL derived from it.

Writers that run in Python tasks (ingest's decoders, the ranks) use the pyarrow schema; Spark-side
writers and readers use `ddl(...)`. A new column is one edit here.
"""

from __future__ import annotations

import pyarrow as pa

_UTC = pa.timestamp("us", tz="UTC")

# the images contract (README, Data contracts); `split` is the partition column of an images table
IMAGE_SCHEMA = pa.schema([("path", pa.string()), ("origin", pa.string()), ("label", pa.string()),
                          ("label_index", pa.int32()), ("height", pa.int32()), ("width", pa.int32()),
                          ("nChannels", pa.int32()), ("mode", pa.int32()), ("data", pa.binary()),
                          ("split", pa.string())])
IMAGE_FILE_SCHEMA = pa.schema([f for f in IMAGE_SCHEMA if f.name != "split"])  # in a split=... folder
REJECTED_SCHEMA = pa.schema([(name, pa.string()) for name in ("path", "reason", "stage", "run_id")])
METRICS_SCHEMA = pa.schema([("run_id", pa.string()), ("step", pa.int64()), ("name", pa.string()),
                            ("value", pa.float64())])
PREDICTIONS_SCHEMA = pa.schema([("path", pa.string()), ("label", pa.string()), ("label_index", pa.int32()),
                                ("prediction", pa.int32()), ("probability", pa.list_(pa.float32())),
                                ("split", pa.string())])
RUNS_SCHEMA = pa.schema([("run_id", pa.string()), ("job", pa.string()), ("status", pa.string()),
                         ("started_at", _UTC), ("ended_at", _UTC), ("duration_s", pa.float64()),
                         ("git_rev", pa.string()), ("host", pa.string()), ("spark_master", pa.string()),
                         ("app_id", pa.string()), ("config", pa.string()), ("outputs", pa.string()),
                         ("rows_in", pa.int64()), ("rows_out", pa.int64()), ("rows_rejected", pa.int64()),
                         ("metrics", pa.map_(pa.string(), pa.float64())), ("error", pa.string()),
                         ("mlflow_run_id", pa.string())])  # null when the run was not tracked
# what each ingest task reports of the files it wrote (pipeline/taskwrite.py)
MANIFEST_SCHEMA = pa.schema([("table", pa.string()), ("staged", pa.string()), ("file", pa.string()),
                             ("rows", pa.int64())])

_SPARK = {pa.string(): "string", pa.int32(): "int", pa.int64(): "long", pa.binary(): "binary",
          pa.float32(): "float", pa.float64(): "double", _UTC: "timestamp"}


def _spark_type(t: pa.DataType) -> str:
    if pa.types.is_list(t):
        return f"array<{_spark_type(t.value_type)}>"
    if pa.types.is_map(t):
        return f"map<{_spark_type(t.key_type)},{_spark_type(t.item_type)}>"
    return _SPARK[t]


def ddl(schema: pa.Schema) -> str:
    """The schema as Spark DDL, e.g. 'path string, label_index int, data binary'."""
    return ", ".join(f"{f.name} {_spark_type(f.type)}" for f in schema)
