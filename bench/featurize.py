"""Featurization throughput: DeepImageFeaturizer on Spark local[2] vs plain model.predict.

Same MobileNetV2 (224x224, seeded random weights: no ImageNet file is needed to time it), same
images (crops of scikit-image's photographs), same run. The model build is excluded from both
(Spark caches it per Python worker; the timed Spark pass is the second one).
"""

import argparse
import os
import time

import numpy as np
from common import local_spark

from pipeline import images as im
from pipeline.featurize import DeepImageFeaturizer, build_model, set_tf_threads, to_model_input
from pipeline.ingest import DECODED_SCHEMA, load_bundled


def crops(n: int, size: int = 256):
    photos = [p for p in load_bundled("photos")[0] if p.ndim == 3 and p.shape[2] == 3 and min(p.shape[:2]) > size]
    rng = np.random.default_rng(0)
    for i in range(n):
        p = photos[i % len(photos)]
        y, x = rng.integers(0, p.shape[0] - size), rng.integers(0, p.shape[1] - size)
        yield p[y:y + size, x:x + size]


def scale(sizes: list[int], batch: int) -> None:
    """images/s of the featurizer at each size; the crops are made on the executors (the driver
    never holds them), one TF thread per task, each size a full pass after a warm-up pass."""
    import pyarrow as pa

    def make(batches):
        photos = None
        for b in batches:
            if photos is None:
                photos = [p for p in load_bundled("photos")[0] if p.ndim == 3 and p.shape[2] == 3 and min(p.shape[:2]) > 256]
            rows = []
            for i in b.column("id").to_pylist():
                p = photos[i % len(photos)]
                rng = np.random.default_rng(i)
                y, x = rng.integers(0, p.shape[0] - 256), rng.integers(0, p.shape[1] - 256)
                rows.append((f"img{i}", f"img{i}", None, None, *im.array_to_row(p[y:y + 256, x:x + 256]), "test"))
            schema = pa.schema([f for f in DECODED_SCHEMA if f.name != "reason"])
            yield pa.RecordBatch.from_arrays([pa.array(c, f.type) for c, f in zip(zip(*rows), schema)], schema=schema)

    spark = local_spark(**{"spark.sql.execution.arrow.maxRecordsPerBatch": str(batch * 2)})
    f = DeepImageFeaturizer(modelName="MobileNetV2", weights="random", batchSize=batch, threads=1)
    images = lambda n: spark.range(n, numPartitions=2).mapInArrow(make, im.IMAGE_DDL)  # noqa: E731
    f.transform(images(64)).write.format("noop").mode("overwrite").save()  # TF import, model build
    print(f"{'images':>7} {'images/s':>9}")
    rates = []
    for n in sizes:
        t0 = time.perf_counter()
        f.transform(images(n)).write.format("noop").mode("overwrite").save()
        rates.append(n / (time.perf_counter() - t0))
        print(f"{n:>7,} {rates[-1]:9.1f}")
    print(f"from {sizes[0]:,} to {sizes[-1]:,} images: images/s x{rates[-1] / rates[0]:.2f} (flat: about 1)")
    spark.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--scale", action="store_true", help="images/s at 1,000 and 10,000 images")
    ap.add_argument("--scale-sizes", default="1000,10000")
    args = ap.parse_args()
    if args.scale:
        return scale([int(n) for n in args.scale_sizes.split(",")], args.batch_size)
    arrays = list(crops(args.images))
    rows = [(f"img{i}", f"img{i}", None, None, *im.array_to_row(a), "test") for i, a in enumerate(arrays)]

    spark = local_spark(**{"spark.sql.execution.arrow.maxRecordsPerBatch": str(args.batch_size * 2)})
    df = spark.createDataFrame(rows, im.IMAGE_DDL).repartition(2).cache()
    df.count()
    f = DeepImageFeaturizer(modelName="MobileNetV2", weights="random", batchSize=args.batch_size, threads=1)
    timings = []
    for _ in range(2):
        t0 = time.perf_counter()
        f.transform(df).write.format("noop").mode("overwrite").save()
        timings.append(time.perf_counter() - t0)
    spark.stop()

    set_tf_threads(os.cpu_count())
    model, shape, preprocess = build_model("MobileNetV2", None, None, None)
    x = np.stack([to_model_input(*im.array_to_row(a)[:3], im.array_to_row(a)[4], shape) for a in arrays[:8]])
    model.predict(preprocess(x), verbose=0)  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(arrays), args.batch_size):
        batch = [im.array_to_row(a) for a in arrays[i:i + args.batch_size]]
        x = np.stack([to_model_input(h, w, c, d, shape) for h, w, c, _, d in batch])
        model.predict(preprocess(x), batch_size=args.batch_size, verbose=0)
    plain = time.perf_counter() - t0
    n = len(arrays)
    print(f"plain model.predict ({os.cpu_count()} TF threads): {n / plain:6.1f} images/s")
    print(f"spark local[2], 1 TF thread per task: {n / timings[1]:6.1f} images/s "
          f"(first pass, incl. TF import + model build per worker: {n / timings[0]:.1f} images/s)")
    print(f"ratio spark/plain: {plain / timings[1]:.2f}x (target >= 0.9)")


if __name__ == "__main__":
    main()
