"""Where torch work runs under Spark: the device Spark gave a task or rank, DDP, the launch.

Everything but `launch` runs in the workers and imports no pyspark at module level, so the same
code runs under TorchDistributor, in a Spark task, in a plain process and on a GPU machine
without Spark. `launch` is the driver side: a barrier stage of `num_processes` tasks.

Which GPU is whose:
* a training rank (TorchDistributor) sees only the GPUs Spark assigned to its task: the
  distributor narrows CUDA_VISIBLE_DEVICES to them before it starts the rank, and LOCAL_RANK
  indexes that narrowed list;
* an inference task (predict_batch_udf, mapInPandas) is told its GPU by the scheduler in
  `TaskContext.resources()["gpu"].addresses`, and nothing narrows CUDA_VISIBLE_DEVICES for it:
  without reading the address, every task on a multi-GPU worker would land on GPU 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Rank:
    rank: int
    world: int
    device: torch.device
    cuda: bool


def cuda_index(address: str) -> int:
    """Spark's GPU address → torch's device index in this process.

    The discovery script (conf/getGpusResources.sh) reports positions among the GPUs this
    process can see (under CUDA_VISIBLE_DEVICES, positions in it, as TorchDistributor reads
    them back), which is how torch numbers them too: 0..n-1.
    """
    index = int(address)
    if index >= torch.cuda.device_count():
        raise RuntimeError(f"Spark assigned GPU {address!r}, but this process sees {torch.cuda.device_count()} "
                           f"GPU(s) (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}) on "
                           f"{socket.gethostname()}: the worker's discovery script and its environment disagree")
    return index


def task_device(context=None) -> torch.device:
    """The device of an inference task: the first GPU Spark assigned to it, else CPU.

    `context` is a TaskContext (by default the running task's; none outside Spark). With CUDA but
    no GPU assigned (local mode, a cluster without GPU scheduling) the current CUDA device is
    used, as a plain torch program would.
    """
    if not torch.cuda.is_available():
        return CPU
    if context is None:
        with contextlib.suppress(ImportError):  # a plain process without pyspark is no Spark task
            from pyspark import TaskContext

            context = TaskContext.get()
    gpus = context.resources().get("gpu") if context is not None else None
    if gpus is None or not gpus.addresses:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cuda", cuda_index(gpus.addresses[0]))


def rank_device(use_gpu: bool) -> torch.device:
    """The device of a training rank: GPU LOCAL_RANK among the ones this process sees, or CPU."""
    if not use_gpu:
        return CPU
    if not torch.cuda.is_available():
        # hours of silent CPU training would be worse than stopping here
        raise RuntimeError(f"--use-gpu on, but PyTorch sees no CUDA device on {socket.gethostname()} "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, torch "
                           f"{torch.__version__}): a CPU build of torch, or no GPU given to this task")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if local_rank >= torch.cuda.device_count():
        raise RuntimeError(f"rank with LOCAL_RANK {local_rank} sees {torch.cuda.device_count()} GPU(s) "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}): more "
                           f"processes per node than GPUs given to them")
    return torch.device("cuda", local_rank)


def bf16_native(device: torch.device) -> bool:
    """Whether the device computes in bf16 natively: NVIDIA GPUs from Ampere (compute capability 8) on."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on a GPU that has bf16; otherwise fp32 (a no-op context).

    Older GPUs would only emulate bf16, slowly. CPUs stay in fp32: bf16 is slower than fp32 on
    most of them and would change the results the CPU tests check.
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and bf16_native(device))


def setup(use_gpu: bool, threads: int, seed: int) -> Rank:
    """This process's rank, world size and device; starts the process group when world > 1.

    Under TorchDistributor (torchrun) RANK, WORLD_SIZE and LOCAL_RANK are set.
    """
    if not logging.getLogger().handlers:  # a fresh worker process: make the progress lines visible
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = rank_device(use_gpu)
    if use_gpu:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # training batches keep one shape: time cuDNN's kernels once
    else:
        torch.set_num_threads(threads)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if use_gpu else "gloo")
    torch.manual_seed(seed + rank)
    return Rank(rank, world, device, use_gpu)


def wrap(model: nn.Module, r: Rank) -> nn.Module:
    """On the rank's device (channels_last on CUDA), in DDP when there is more than one rank."""
    model = model.to(r.device)
    if r.cuda:
        model = model.to(memory_format=torch.channels_last)
    if r.world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[r.device.index] if r.cuda else None)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def barrier(r: Rank) -> None:
    if r.world > 1:
        torch.distributed.barrier()


def teardown(r: Rank) -> None:
    if r.world > 1:
        torch.distributed.destroy_process_group()


def save_atomic(state, path: str) -> None:
    """torch.save to a temporary file, then rename: a reader sees the whole file or none."""
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def launch(spark, fn, cfg, num_processes: int, local_mode: bool, use_gpu: bool):
    """Run fn(cfg) in `num_processes` DDP processes through Spark's TorchDistributor; rank 0's result."""
    from pyspark.ml.torch.distributor import TorchDistributor

    from pipeline.errors import PipelineError

    from pipeline.session import parallelism, setting

    slots = parallelism(spark)
    if not local_mode and not use_gpu and num_processes > slots:
        # A barrier stage waits for all its slots at once; without them it would hang silently.
        raise PipelineError(f"--num-processes {num_processes} needs {num_processes} task slots, the cluster "
                            f"has {slots}: lower it or add executors")
    if use_gpu and not local_mode:
        amount = setting(spark, "spark.task.resource.gpu.amount", "0")
        if not amount.isdigit() or int(amount) < 1:
            # TorchDistributor gives each rank the GPUs of its task: it needs whole ones
            raise PipelineError(f"--use-gpu on needs spark.task.resource.gpu.amount of 1 or more (one GPU per "
                                f"training process), this application has {amount!r}: see conf/gpu.yaml")
    started = time.perf_counter()
    from pipeline.tracking import for_ranks

    # torchrun gives each of several processes on one node OMP_NUM_THREADS=1 unless it is set, with a
    # banner on stdout; barrier tasks inherit the 1 from Spark's Python workers (spark.task.cpus).
    # The ranks set their torch threads themselves (setup).
    quiet_omp = local_mode and num_processes > 1 and "OMP_NUM_THREADS" not in os.environ
    if quiet_omp:
        os.environ["OMP_NUM_THREADS"] = "1"
    try:
        result = TorchDistributor(num_processes=num_processes, local_mode=local_mode, use_gpu=use_gpu).run(
            for_ranks(fn), cfg)
    finally:
        if quiet_omp:
            del os.environ["OMP_NUM_THREADS"]
    # the whole launch, torchrun's start and exit barrier included: a launch that ends minutes after
    # its last training line shows here (the ranks' own timings do not include it)
    log.info("%d training process(es) (local mode %s) ran for %.1f s", num_processes,
             "on" if local_mode else "off", time.perf_counter() - started)
    return result
