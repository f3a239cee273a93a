"""The torch engine: the same LeNet-5, data-parallel (DDP) across executors through TorchDistributor.

Each rank reads the images table itself with pyarrow (any URI pyarrow can open: file:, hdfs://,
s3://), keeps every world-th row of the train and test splits (sorted by path, so the shards are
the same on every run), builds the same shifted copies as the BigDL engine, and trains with the
same optimizer, learning-rate decay, epoch checkpoints and progress line. Nothing is collected on
the driver; the worker side imports no pyspark.
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pipeline import ddp
from pipeline.digits import data
from pipeline.io import arrow_filesystem, local_path
from pipeline.tablelog import committed_files
from pipeline.training_run import Checkpoint, CheckpointFolder, MetricLog
from pipeline.workers import skip_zip_rereads

MODEL_FILE = "lenet5.pt"  # data.MODEL_FILES
STATE_FILE = "state.pt"
needs_bigdl = False


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al., 1998) exactly as the BigDL engine builds it: two 5x5 conv/max-pool
    stages, then 120-84-classes, ReLU, log-softmax."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                                        nn.Linear(84, classes))

    def forward(self, x):
        return F.log_softmax(self.classifier(self.features(x)), dim=1)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a rank needs; pickled to the workers by TorchDistributor."""

    input: str
    checkpoint_dir: str
    epochs: int
    batch_size: int  # global: split evenly over the ranks
    learning_rate: float
    optimizer: str
    augment: int
    classes: int
    n_train: int
    resume_from: str | None = None  # a checkpoint folder (epoch-NNNN)
    seed: int = 0
    threads: int = 1
    use_gpu: bool = False


def read_split(table: str, split: str, rank: int, world: int, copies: int = 0):
    """(inputs Nx1x28x28, 0-based labels) of this rank's shard of one split."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    fs, path = arrow_filesystem(table)
    # the committed files only: an incrementally ingested table may hold some of a failed append
    source = ds.dataset(committed_files(table), filesystem=fs, format="parquet", partitioning="hive",
                        partition_base_dir=path)
    rows = (source.to_table(columns=["path", "label_index", *data.PIXEL_COLUMNS],
                            filter=(pc.field("split") == split) & pc.field("label_index").is_valid())
            .sort_by("path").to_pylist())[rank::world]
    xs, ys = [], []
    for r in rows:
        x = data.to_input(r["height"], r["width"], r["nChannels"], r["data"])
        copies_of = data.with_copies(r["path"], x, copies)
        xs += copies_of
        ys += [r["label_index"]] * len(copies_of)
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.int64)


def _optimizer(cfg: TrainConfig, params):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.learning_rate, momentum=0.9, nesterov=True)
    return torch.optim.Adam(params, lr=cfg.learning_rate)


def _all_sum(values: list[float], r: ddp.Rank) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=r.device)
    if r.world > 1:
        torch.distributed.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def evaluate(model, x, y, r: ddp.Rank, batch: int = 1024) -> tuple[float, float]:
    """(mean NLL loss, top-1) over every rank's shard."""
    model.eval()
    loss = correct = 0.0
    for i in range(0, len(x), batch):
        logp = model(x[i:i + batch].to(r.device))
        target = y[i:i + batch].to(r.device)
        loss += F.nll_loss(logp, target, reduction="sum").item()
        correct += (logp.argmax(1) == target).sum().item()
    loss, correct, n = _all_sum([loss, correct, float(len(x))], r)
    model.train()
    return loss / max(n, 1), correct / max(n, 1)


def train_worker(cfg: TrainConfig):
    """One rank's training; rank 0 checkpoints every epoch and returns [(epoch, name, value)]."""
    r = ddp.setup(cfg.use_gpu, cfg.threads, cfg.seed)
    x, y = read_split(cfg.input, "train", r.rank, r.world, cfg.augment)
    xt, yt = read_split(cfg.input, "test", r.rank, r.world)
    x, y = x.to(r.device), y.to(r.device)
    local_batch = cfg.batch_size // r.world
    # every rank runs the same number of steps (DDP needs it): what the smallest shard allows
    steps = (cfg.n_train // r.world) * (1 + cfg.augment) // local_batch

    model = ddp.wrap(LeNet5(cfg.classes), r)
    opt = _optimizer(cfg, model.parameters())
    # tensors and plain values only: a checkpoint folder other hosts can write must not run code here
    state = (torch.load(os.path.join(cfg.resume_from, STATE_FILE), map_location=r.device, weights_only=True)
             if cfg.resume_from else None)
    # the schedule is the first run's, as BigDL's saved optimizer keeps it: more epochs extend it
    decay = state["decay"] if state else data.lr_decay(cfg.epochs, cfg.n_train, cfg.augment, cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1.0 + decay * t))  # BigDL's decay
    start = 0
    if state:
        ddp.unwrap(model).load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = state["epoch"]

    history = []
    folder = CheckpointFolder(cfg.checkpoint_dir, "epoch")
    metrics = MetricLog(folder.path, start) if r.rank == 0 else None
    for epoch in range(start + 1, cfg.epochs + 1):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed * 10007 + epoch * 101 + r.rank))
        t0, total = time.perf_counter(), 0.0
        for i in range(steps):
            idx = order[i * local_batch:(i + 1) * local_batch].to(r.device)
            loss = F.nll_loss(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        seconds = time.perf_counter() - t0
        train_loss = _all_sum([total / max(steps, 1)], r)[0] / r.world
        val_loss, val_top1 = evaluate(model, xt, yt, r)
        if r.rank == 0:
            values = {"train_loss": train_loss, "val_loss": val_loss, "val_top1": val_top1,
                      "samples_per_s": steps * cfg.batch_size / seconds}
            history += data.log_epoch(epoch, cfg.epochs, values)
            metrics.add(epoch, **values)
            checkpoint = folder.new(epoch)
            ddp.save_atomic({"model": ddp.unwrap(model).state_dict(), "optimizer": opt.state_dict(),
                             "scheduler": sched.state_dict(), "decay": decay, "epoch": epoch,
                             "classes": cfg.classes},
                            os.path.join(checkpoint, STATE_FILE))
            folder.seal(checkpoint)
        ddp.barrier(r)
    ddp.teardown(r)
    return history if r.rank == 0 else None


def check(opts) -> None:
    from pipeline.options import check_distributor

    check_distributor(opts)


def trusted(checkpoint: Checkpoint) -> None:
    """Refuse, on the driver and before any rank starts, a checkpoint that could run code when loaded."""
    from pipeline.safety import load_tensors

    load_tensors(os.path.join(checkpoint.folder, STATE_FILE), "--resume: the checkpoint", mmap=True)


def check_model_file(path: str) -> None:
    from pipeline.safety import load_tensors

    load_tensors(path, "--model")


def train(spark, plan, splits) -> None:
    """DDP ranks through TorchDistributor (pipeline.ddp.launch), each reading its shard of the table."""
    cfg = TrainConfig(
        input=local_path(plan.input), checkpoint_dir=plan.folder.path, epochs=plan.epochs,
        batch_size=plan.batch_size, learning_rate=plan.learning_rate, optimizer=plan.optimizer,
        augment=plan.augment, classes=plan.classes, n_train=plan.n_train,
        resume_from=plan.resume.folder if plan.resume else None, threads=plan.threads, use_gpu=plan.use_gpu)
    ddp.launch(spark, train_worker, cfg, plan.num_processes, plan.local_mode, plan.use_gpu)


def load_checkpoint(checkpoint: Checkpoint) -> LeNet5:
    state = torch.load(os.path.join(checkpoint.folder, STATE_FILE), map_location="cpu", weights_only=True)
    model = LeNet5(state["classes"])
    model.load_state_dict(state["model"])
    return model.eval()


def save(model: LeNet5, folder: str) -> None:
    torch.save(model.state_dict(), os.path.join(folder, MODEL_FILE))
    with open(os.path.join(folder, "lenet5.json"), "w") as fh:
        json.dump({"engine": "torch", "classes": model.classifier[-1].out_features}, fh)


def load(path: str) -> LeNet5:
    with open(os.path.join(os.path.dirname(path), "lenet5.json")) as fh:
        meta = json.load(fh)
    model = LeNet5(meta["classes"])
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def predict(spark, model: LeNet5, df, batch_size: int = 256):
    """Batch inference on executors through predict_batch_udf: the predictions contract."""
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import ArrayType, FloatType, IntegerType, StructField, StructType

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    blob, classes = buf.getvalue(), model.classifier[-1].out_features  # ~250 KB, shipped in the closure

    def make_predict_fn():
        skip_zip_rereads()
        torch.set_num_threads(1)  # one Spark task, one core
        net = LeNet5(classes)
        net.load_state_dict(torch.load(io.BytesIO(blob), weights_only=True))
        net.eval()

        def predict_fn(heights, widths, channels, datas):
            x = np.stack([data.to_input(int(h), int(w), int(c), d) for h, w, c, d in
                          zip(*map(np.atleast_1d, (heights, widths, channels, datas)))])
            with torch.no_grad():
                p = net(torch.from_numpy(x)).exp().numpy()
            return {"prediction": p.argmax(1).astype(np.int32), "probability": p.astype(np.float32)}
        return predict_fn

    udf = predict_batch_udf(make_predict_fn, batch_size=batch_size, return_type=StructType([
        StructField("prediction", IntegerType()), StructField("probability", ArrayType(FloatType()))]))
    return (df.withColumn("__p", udf(*data.PIXEL_COLUMNS))
            .select("path", "label", "label_index", "__p.prediction", "__p.probability", "split"))
