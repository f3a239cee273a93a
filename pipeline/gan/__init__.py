"""Generative models trained on workers through Spark's TorchDistributor: DCGAN and SRGAN.

Worker side (no pyspark): `models` (nn.Modules), `config` (a run's settings), `data` (per-rank
Parquet streaming, prefetched), `train` (the loop each process runs: DDP, AMP, checkpoints),
`checkpoints` (the checkpoint folder's layout), `sr` (batched, tiled SR inference).
Driver side: `job` (the `train_gan` job), `upscale` (the `upscale` job).
"""
