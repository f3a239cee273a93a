"""Handwritten-digit recognition: LeNet-5 on an images table, trained by one of two engines.

`data` (pixels → LeNet input, augmentation, the splits, checkpoints), `bigdl_engine` (BigDL's
DistriOptimizer, Spark 3.5 only), `torch_engine` (DDP through TorchDistributor, any stack), `job`
(the `train_digits` job: engine choice and the outputs both share), `predict` (`predict_digits`).
"""
