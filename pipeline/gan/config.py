"""What one GAN training run is: the settings the driver (job or benchmark) hands to every rank.

A frozen dataclass, so a run's settings cannot drift while it trains, and it pickles to the
TorchDistributor workers as it is (they import this module from the same package).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pipeline.images import MAX_PIXELS

# SRGAN's generator loss (Ledig et al., 2017): pixel MSE + VGG_LOSS_WEIGHT * VGG54 feature MSE
# (the paper rescales the features by 1/12.75, a weight of 1/12.75**2 ~ 0.006 on their MSE),
# plus ADVERSARIAL_LOSS_WEIGHT * the adversarial term in the GAN stage.
VGG_LOSS_WEIGHT = 0.006
ADVERSARIAL_LOSS_WEIGHT = 1e-3
SCALE = 4  # SRGAN's upscaling factor: the generator, the LR crops and the evaluation all use it
# SR inference tiles (pipeline.gan.sr), in LR pixels: a 128x128 tile is a 512x512 output, a few
# hundred MB of activations per tile in a batch; 16 pixels of context per side make the seams
# invisible (tiled and whole-image outputs differ by at most 1 grey level, tests/test_gpu_sr.py).
DEFAULT_TILE, DEFAULT_OVERLAP = 128, 16


@dataclass(frozen=True)
class TrainConfig:
    model: str                      # "dcgan" or "srgan"
    input: str                      # images table: a local path or a file:, hdfs://, s3:// URI
    checkpoint_dir: str             # checkpoints, metrics.jsonl and samples; every rank sees it
    steps: int                      # total steps, a resumed run's earlier ones included
    batch_size: int                 # global batch, split evenly over the ranks
    lr: float
    width: int                      # DCGAN ngf/ndf, SRResNet channels
    nz: int = 100                   # DCGAN latent size
    blocks: int = 16                # SRResNet residual blocks
    crop: int = 96                  # SRGAN HR crop (LR is crop / SCALE)
    pretrain_steps: int = 0         # SRGAN: content-loss-only steps before the GAN stage
    bicubic_skip: bool = True       # SRResNet predicts the residual over bicubic
    vgg19_weights: str | None = None
    use_gpu: bool = False
    amp: bool = True                # bf16 autocast on GPUs
    threads: int = 1                # torch threads per CPU rank
    seed: int = 0
    resume: bool = False
    checkpoint_every: int = 100
    log_every: int = 50
    sample_every: int = 100         # DCGAN sample grids (the job sets one epoch)
    prefetch: int = 4               # batches prepared ahead on a background thread (0: inline)
    max_pixels: int = MAX_PIXELS    # larger rows are skipped (and recorded as rejected by the job)

    def to_dict(self) -> dict:
        """Plain values, for checkpoints (read back without this class)."""
        return asdict(self)

    def generator_meta(self) -> dict:
        """What a reader needs to rebuild the generator from its state dict (generator.json)."""
        return {k: getattr(self, k) for k in ("model", "width", "blocks", "nz", "bicubic_skip")}
