"""GAN training throughput: TorchDistributor (barrier tasks on local[2]) vs a plain in-process loop.

Same model, same global batch, same data (the bundled MNIST digits for DCGAN, scikit-image's photos
for SRGAN), same loop code (`pipeline.gan.train.train_worker`), same run; and the plain loop
again with its batches made inline, on the step's thread (--prefetch 0). Steps/s is the median of
the logged intervals after the first (warm-up), as the training log reports it; the end-to-end rate
also counts process start, DDP set-up and the launch through Spark.
"""

import argparse
import os
import shutil
import statistics
import time
from dataclasses import replace

from common import DATA, local_spark

from pipeline.gan.config import TrainConfig
from pipeline.gan.train import train_worker
from pipeline.training_run import CheckpointFolder

CASES = {"dcgan": {"source": "mnist", "batch_size": 64, "width": 32, "log_every": 20},
         "srgan": {"source": "photos", "batch_size": 16, "width": 64, "log_every": 2}}


def config(model: str, table: str, folder: str, steps: int, threads: int) -> TrainConfig:
    case = CASES[model]
    return TrainConfig(model=model, input=table, checkpoint_dir=folder, steps=steps, batch_size=case["batch_size"],
                       lr=2e-4, width=case["width"], pretrain_steps=steps // 2, threads=threads,
                       checkpoint_every=steps, log_every=case["log_every"], sample_every=steps)


def steps_per_s(folder: str, batch: int) -> float:
    rates = [v for _, name, v in CheckpointFolder(folder, "step").metrics() if name == "images_per_s"]
    return statistics.median(rates[1:] or rates) / batch


def timed_run(fn, cfg):
    shutil.rmtree(cfg.checkpoint_dir, ignore_errors=True)
    t0 = time.perf_counter()
    fn(cfg)
    wall = time.perf_counter() - t0
    return steps_per_s(cfg.checkpoint_dir, cfg.batch_size), cfg.steps / wall


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", choices=CASES, default="dcgan")
    ap.add_argument("--steps", type=int, help="steps per run (default: 300 DCGAN, 16 SRGAN)")
    args = ap.parse_args()
    steps = args.steps or (300 if args.model == "dcgan" else 16)
    cores = os.cpu_count()

    from pyspark.ml.torch.distributor import TorchDistributor

    from pipeline.cli import main as cli

    spark = local_spark(f"local[{cores}]")
    table = os.path.join(DATA, args.model, "images")
    if not os.path.isdir(table):
        cli(["ingest", "--source", CASES[args.model]["source"], "--output", os.path.dirname(table),
             "--runs-table", os.path.join(DATA, "runs")])
    folder = os.path.join(DATA, f"{args.model}_ckpt")

    results = {}
    results["plain"] = timed_run(train_worker, config(args.model, table, folder, steps, cores))
    # the same loop with its batches made inline, on the step's thread (no prefetch)
    inline_cfg = replace(config(args.model, table, folder, steps, cores), prefetch=0)
    results["inline"] = timed_run(train_worker, inline_cfg)
    for procs in (1, cores):
        def distributed(cfg, procs=procs):
            return TorchDistributor(num_processes=procs, local_mode=False, use_gpu=False).run(train_worker, cfg)
        results[procs] = timed_run(distributed, config(args.model, table, folder, steps, cores // procs))
    spark.stop()
    shutil.rmtree(folder, ignore_errors=True)

    batch = CASES[args.model]["batch_size"]
    plain, _ = results["plain"]
    print(f"{args.model}, global batch {batch}, {steps} steps per run, {cores} cores")
    print(f"plain in-process loop ({cores} torch threads):  {plain:6.2f} steps/s  (end to end {results['plain'][1]:.2f})")
    inline = results["inline"][0]
    print(f"the same, batches made inline (--prefetch 0):   {inline:6.2f} steps/s  ratio prefetch/inline "
          f"{plain / inline:.2f}x")
    for procs in (1, cores):
        rate, e2e = results[procs]
        print(f"TorchDistributor {procs} process(es) x {cores // procs} thread(s): {rate:6.2f} steps/s "
              f"(end to end {e2e:.2f})  ratio {rate / plain:.2f}x")
    print(f"ratio TorchDistributor/plain (best layout): {max(results[p][0] for p in (1, cores)) / plain:.2f}x "
          f"(target >= 0.95)")


if __name__ == "__main__":
    main()
