"""What a TorchDistributor launch costs before and after the training itself, by mode, on a local master:
barrier tasks (`--local-mode off`) against processes on the driver (`on`, what `auto` picks for CPU
training on `local[...]`). Each launch runs a function that returns at once, so the time is the
launch's own: a Spark stage and a Python worker (off only), torchrun, the ranks' start (import torch)
and torchrun's exit. Launches are interleaved (off, on, off, ...) in one warm session, and the ratio
of the medians is printed.

    python bench/ddp_launch.py [--processes 2] [--repeats 5]
"""

import argparse
import statistics

from common import local_spark, timed


def noop(_):
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    from pyspark.ml.torch.distributor import TorchDistributor

    spark = local_spark()
    times = {False: [], True: []}
    for i in range(args.repeats + 1):
        for local in (False, True):
            seconds, _ = timed(TorchDistributor(num_processes=args.processes, local_mode=local, use_gpu=False).run,
                               noop, None)
            if i:  # the first round warms both paths' imports and is not counted
                times[local].append(seconds)
                print(f"launch {i}: local mode {'on ' if local else 'off'} {seconds:5.1f} s", flush=True)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(f"{args.processes} process(es), medians: barrier tasks {off:.1f} s, on the driver {on:.1f} s; "
          f"on/off {on / off:.2f}x")
    spark.stop()


if __name__ == "__main__":
    main()
