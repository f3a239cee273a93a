"""LeNet-5 training throughput: BigDL on local[2] vs a single-process PyTorch CPU loop.

Same architecture (LeNet-5, ReLU), same 4,000-odd real MNIST training images, same batch size
and optimizer (Adam), in the same run. Prints samples/s for each and the ratio BigDL/PyTorch.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from common import local_spark

from pipeline.cli import main as cli


def torch_lenet5():
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10), nn.LogSoftmax(dim=1))


def torch_samples_per_s(x: np.ndarray, y: np.ndarray, epochs: int, batch: int) -> float:
    import torch

    torch.manual_seed(0)
    model, xs, ys = torch_lenet5(), torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.NLLLoss()
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(xs))
        for i in range(0, len(xs), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss_fn(model(xs[idx]), ys[idx]).backward()
            opt.step()
    return epochs * len(xs) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-digits-")
    spark = local_spark(bigdl=True)
    runs = ["--runs-table", f"{work}/runs"]
    assert cli(["ingest", "--source", "mnist", "--output", f"{work}/mnist", *runs]) == 0
    train = spark.read.parquet(f"{work}/mnist/images").where("split = 'train'").toPandas()
    from pipeline.digits import to_input
    x = np.stack([to_input(r.height, r.width, r.nChannels, r.data) for r in train.itertuples()])
    y = train.label_index.to_numpy().astype(np.int64)

    assert cli(["train_digits", "--input", f"{work}/mnist/images", "--output", f"{work}/digits", "--epochs",
                str(args.epochs), "--batch-size", str(args.batch_size), "--augment", "0", *runs]) == 0
    m = spark.read.parquet(f"{work}/digits/metrics").where("name = 'samples_per_s' AND step > 1").toPandas()
    bigdl = float(m.value.mean())  # epoch 1 includes caching the data set and JIT warm-up
    import torch
    torch.set_num_threads(1)  # one process, one core: the plain baseline
    torch_1 = torch_samples_per_s(x, y, args.epochs, args.batch_size)
    torch.set_num_threads(2)
    torch_2 = torch_samples_per_s(x, y, args.epochs, args.batch_size)
    spark.stop()
    print(f"BigDL local[2]           : {bigdl:7.0f} samples/s (epochs 2..{args.epochs}, batch {args.batch_size})")
    print(f"PyTorch 1 process, 1 thr : {torch_1:7.0f} samples/s")
    print(f"PyTorch 1 process, 2 thr : {torch_2:7.0f} samples/s")
    print(f"ratio BigDL/PyTorch(1 thread): {bigdl / torch_1:.2f}x, BigDL/PyTorch(2 threads): {bigdl / torch_2:.2f}x "
          "(target >= 1.0)")
    os.system(f"rm -rf {work}")


if __name__ == "__main__":
    main()
