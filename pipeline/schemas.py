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
# train_gan's DCGAN samples (OUT/generated): the images contract plus the step that drew them
GENERATED_SCHEMA = pa.schema([*IMAGE_FILE_SCHEMA, ("step", pa.int32()), ("split", pa.string())])
# upscale's output (OUT/images): the SR images in the images contract, with each one's scores
# (Y-channel PSNR/SSIM of SR and of bicubic against HR; null without --from-hr)
SR_SCORES = ("psnr_sr", "psnr_bicubic", "ssim_sr", "ssim_bicubic")
UPSCALED_SCHEMA = pa.schema([*IMAGE_FILE_SCHEMA, *((k, pa.float64()) for k in SR_SCORES), ("split", pa.string())])
# featurize's output (OUT/features): `features` is a Spark ML vector, which Parquet holds as this struct
VECTOR = pa.struct([pa.field("type", pa.int8(), nullable=False), ("size", pa.int32()),
                    ("indices", pa.list_(pa.field("element", pa.int32(), nullable=False))),
                    ("values", pa.list_(pa.field("element", pa.float64(), nullable=False)))])
FEATURES_SCHEMA = pa.schema([("path", pa.string()), ("label", pa.string()), ("label_index", pa.int32()),
                             ("features", VECTOR), ("model_name", pa.string()), ("model_digest", pa.string()),
                             ("split", pa.string())])
# what each ingest task reports of the files it wrote (pipeline/taskwrite.py)
MANIFEST_SCHEMA = pa.schema([("table", pa.string()), ("staged", pa.string()), ("file", pa.string()),
                             ("rows", pa.int64())])

_SPARK = {pa.string(): "string", pa.int8(): "tinyint", pa.int32(): "int", pa.int64(): "long",
          pa.binary(): "binary", pa.float32(): "float", pa.float64(): "double", _UTC: "timestamp"}


def _spark_type(t: pa.DataType) -> str:
    if pa.types.is_list(t):
        return f"array<{_spark_type(t.value_type)}>"
    if pa.types.is_map(t):
        return f"map<{_spark_type(t.key_type)},{_spark_type(t.item_type)}>"
    return _SPARK[t]


def ddl(schema: pa.Schema) -> str:
    """The schema as Spark DDL, e.g. 'path string, label_index int, data binary'."""
    return ", ".join(f"{f.name} {_spark_type(f.type)}" for f in schema)
