"""Generative models trained on workers through Spark's TorchDistributor: DCGAN and SRGAN.

`models` (nn.Modules), `data` (per-rank Parquet streaming), `train` (the loop each process
runs: DDP, AMP, checkpoints), `job` (the `train_gan` job), `upscale` (batch super-resolution).
"""
