"""What `train_digits` and `predict_digits` ask of a LeNet-5 engine, and the engines there are.

An engine is a module (pipeline/digits/bigdl_engine.py, pipeline/digits/torch_engine.py) with:

    MODEL_FILE                                  what `save` writes in OUT/model/ (predict_digits tells engines apart by it)
    needs_bigdl: bool                           whether the session must load BigDL's jars
    check(opts) -> None                         engine-specific option checks, before Spark starts
    trusted(checkpoint: Checkpoint) -> None     refuse a checkpoint that could run code when loaded
    train(spark, plan: Plan, splits: Splits) -> None
                                                train from plan.resume to plan.epochs: a sealed epoch
                                                checkpoint and metric rows (plan.folder) per epoch
    load_checkpoint(checkpoint: Checkpoint)     the model of a checkpoint
    predict(spark, model, df, batch_size)       the predictions contract (pipeline/schemas.py)
    save(model, folder) / load(path)            OUT/model/MODEL_FILE and back

A new engine is a module with these names and a line in ENGINES.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from pipeline.training_run import Checkpoint, CheckpointFolder

ENGINES = {"bigdl": "pipeline.digits.bigdl_engine", "torch": "pipeline.digits.torch_engine"}


@dataclass(frozen=True)
class Splits:
    """The labelled rows of an images table (pipeline.digits.data.load_splits)."""

    train: Any  # DataFrames: pyspark is imported only where Spark runs
    test: Any
    n_train: int
    n_test: int
    classes: int


@dataclass(frozen=True)
class Plan:
    """Everything an engine's `train` needs, the same for every engine."""

    input: str                    # the images table
    folder: CheckpointFolder      # OUT.checkpoints: epoch checkpoints and metrics.jsonl
    epochs: int                   # in total: a resumed run counts the earlier ones
    batch_size: int
    learning_rate: float
    optimizer: str                # "sgd" or "adam"
    augment: int                  # shifted copies of each training image
    classes: int
    n_train: int
    run_id: str
    resume: Checkpoint | None = None
    num_processes: int = 1        # the torch engine's DDP processes (TorchDistributor)
    local_mode: bool = False
    use_gpu: bool = False
    threads: int = 1              # torch threads per CPU process


def engine(name: str):
    """The engine module called `name` (its heavy imports stay inside its functions)."""
    return importlib.import_module(ENGINES[name])
