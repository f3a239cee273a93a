"""LeNet-5 training: the BigDL engine, the torch engine and a plain single-process PyTorch loop.

Same architecture, the same 4,023 real MNIST training digits with the same two shifted copies,
the same global batch, Adam and learning-rate decay, in the same run. Prints steady-state
samples/s for each (epochs after the first) with the ratio to the plain loop, and for each engine
the training time and the job's wall time until its held-out top-1 first reaches 97 %. `--scale`:
the torch engine's samples/s on the bundled set and on 10x it through augmentation.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import numpy as np
from common import local_spark

from pipeline.cli import main as cli
from pipeline.digits.job import ENGINE_DEFAULTS
from pipeline.session import bigdl_missing

PLAIN_BATCH = ENGINE_DEFAULTS["torch"]["batch_size"]  # the plain loop trains as the torch engine does


def plain_samples_per_s(x: np.ndarray, y: np.ndarray, epochs: int, batch: int, threads: int) -> float:
    """What one writes without Spark: one process, the tensors in memory, a loop over batches."""
    import torch

    from pipeline.digits.data import lr_decay
    from pipeline.digits.torch_engine import LeNet5

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, xs, ys = LeNet5(10), torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    decay = lr_decay(epochs, len(x) // 3, 2, batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + decay * t))
    rates = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for idx in torch.randperm(len(xs)).split(batch):
            opt.zero_grad()
            torch.nn.functional.nll_loss(model(xs[idx]), ys[idx]).backward()
            opt.step()
            sched.step()
        rates.append(len(xs) / (time.perf_counter() - t0))
    return float(np.mean(rates[1:]))


def engine_run(spark, work: str, images: str, samples: int, name: str, *args: str):
    """(steady samples/s, training seconds to 97 %, job wall seconds, final top-1) of one job run."""
    out = f"{work}/{name}"
    t0 = time.perf_counter()
    assert cli(["train_digits", "--input", images, "--output", out, "--runs-table", f"{work}/runs", *args]) == 0
    wall = time.perf_counter() - t0
    m = spark.read.parquet(f"{out}/metrics").toPandas().pivot_table(index="step", columns="name", values="value")
    epoch_s = samples / m.samples_per_s.dropna()  # each epoch's training seconds
    reached = m.val_top1.dropna()
    first = reached[reached >= 0.97].index.min()
    to_97 = float(epoch_s.loc[:first].sum()) if first == first else float("nan")  # NaN: never reached
    return float(m.samples_per_s.dropna().iloc[1:].mean()), to_97, wall, float(m.test_top1.dropna().iloc[0])


def scale(args) -> None:
    """The torch engine's steady samples/s on the bundled set (x3 with its shifted copies) and on
    10x that (x30 through augmentation): it should stay flat as the data grows."""
    work = tempfile.mkdtemp(prefix="bench-digits-")
    spark = local_spark()
    assert cli(["ingest", "--source", "mnist", "--output", f"{work}/mnist", "--runs-table", f"{work}/runs"]) == 0
    images = f"{work}/mnist/images"
    n = spark.read.parquet(images).where("split = 'train'").count()
    print(f"{'samples/epoch':>13} {'samples/s':>9}")
    rates = []
    for copies in (2, 29):
        rate, *_ = engine_run(spark, work, images, n * (1 + copies), f"aug{copies}", "--engine", "torch",
                              "--num-processes", "1", "--augment", str(copies), "--epochs", "3",
                              "--batch-size", str(args.batch_size or PLAIN_BATCH))
        rates.append(rate)
        print(f"{n * (1 + copies):>13,} {rate:9.0f}")
    print(f"at 10x the data: samples/s x{rates[1] / rates[0]:.2f} (flat: about 1)")
    spark.stop()
    shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, help="one global batch for every engine and the plain loop "
                                                  f"(default: each engine's own; the plain loop {PLAIN_BATCH})")
    ap.add_argument("--scale", action="store_true", help="torch engine samples/s on the bundled set and 10x it")
    args = ap.parse_args()
    if args.scale:
        return scale(args)
    work = tempfile.mkdtemp(prefix="bench-digits-")
    spark = local_spark(bigdl=bigdl_missing() is None)
    cores = spark.sparkContext.defaultParallelism  # local[2]: what every layout below shares
    runs = ["--runs-table", f"{work}/runs"]
    assert cli(["ingest", "--source", "mnist", "--output", f"{work}/mnist", *runs]) == 0
    images = f"{work}/mnist/images"
    common = ["--epochs", str(args.epochs), *(["--batch-size", str(args.batch_size)] if args.batch_size else [])]
    samples = spark.read.parquet(images).where("split = 'train'").count() * 3  # with the two shifted copies
    results = {}
    if bigdl_missing() is None:
        results["BigDL engine, local[2]"] = engine_run(spark, work, images, samples, "bigdl", "--engine", "bigdl", *common)
    results[f"torch engine, 1 process x {cores} threads"] = engine_run(
        spark, work, images, samples, "torch1", "--engine", "torch", "--num-processes", "1", *common)
    results[f"torch engine, {cores} DDP processes x 1 thread"] = engine_run(
        spark, work, images, samples, "torch2", "--engine", "torch", "--num-processes", str(cores), "--threads", "1", *common)

    from pipeline.digits.data import to_input, with_copies
    train = spark.read.parquet(images).where("split = 'train'").orderBy("path").toPandas()
    xs, ys = [], []
    for r in train.itertuples():
        copies = with_copies(r.path, to_input(r.height, r.width, r.nChannels, r.data), 2)
        xs += copies
        ys += [r.label_index] * len(copies)
    spark.stop()
    batch = args.batch_size or PLAIN_BATCH
    plain = plain_samples_per_s(np.stack(xs), np.array(ys, dtype=np.int64), args.epochs, batch, cores)

    print(f"LeNet-5, {len(train)} training digits x 3 copies, batch {args.batch_size or f'per engine (plain: {PLAIN_BATCH})'}, "
          f"{args.epochs} epochs, "
          f"{cores} cores; steady state = epochs 2..{args.epochs}")
    print(f"{'plain PyTorch loop, 1 process x ' + str(cores) + ' threads':<44} {plain:8.0f} samples/s")
    for name, (rate, to_97, wall, top1) in results.items():
        print(f"{name:<44} {rate:8.0f} samples/s  ratio {rate / plain:4.2f}x   to 97 %: {to_97:5.1f} s training, "
              f"job {wall:5.1f} s in all (final top-1 {top1:.4f})")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
