"""DCGAN (Radford et al., 2016; pytorch/examples style) and SRGAN (Ledig et al., 2017) networks."""

import torch
from torch import nn
from torch.nn import functional as F


def dcgan_init(m: nn.Module) -> None:
    """N(0, 0.02) convolutions, N(1, 0.02) batch-norm scales: the DCGAN paper's initialisation."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """z (nz x 1 x 1) → 32x32 image in [-1, 1]."""

    def __init__(self, nz: int = 100, ngf: int = 64, channels: int = 1):
        super().__init__()
        self.nz = nz
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 4, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),  # 4x4
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),  # 8x8
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),  # 16x16
            nn.ConvTranspose2d(ngf, channels, 4, 2, 1, bias=False), nn.Tanh())  # 32x32

    def forward(self, z):
        return self.main(z)


class DCGANDiscriminator(nn.Module):
    """32x32 image → one logit (real vs fake)."""

    def __init__(self, ndf: int = 64, channels: int = 1):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(channels, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True),  # 16x16
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, True),  # 8x8
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 4, 1, 4, 1, 0, bias=False))  # 4x4 → 1x1

    def forward(self, x):
        return self.main(x).flatten()


class ResidualBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(ch, ch, 3, 1, 1), nn.BatchNorm2d(ch), nn.PReLU(),
                                  nn.Conv2d(ch, ch, 3, 1, 1), nn.BatchNorm2d(ch))

    def forward(self, x):
        return x + self.body(x)


class SRResNet(nn.Module):
    """The SRGAN generator: 9x9 conv, B residual blocks, a long skip, two x2 pixel-shuffle stages.

    Inputs and outputs are RGB in [0, 1]. With `bicubic_skip` the network predicts the residual
    over a bicubic upscale (as VDSR does), so training starts at bicubic quality instead of from
    zero; set it off for the paper's exact form.
    """

    def __init__(self, blocks: int = 16, ch: int = 64, scale: int = 4, bicubic_skip: bool = True):
        super().__init__()
        self.scale, self.bicubic_skip = scale, bicubic_skip
        self.head = nn.Sequential(nn.Conv2d(3, ch, 9, 1, 4), nn.PReLU())
        self.body = nn.Sequential(*[ResidualBlock(ch) for _ in range(blocks)],
                                  nn.Conv2d(ch, ch, 3, 1, 1), nn.BatchNorm2d(ch))
        ups = []
        for _ in range(scale // 2):
            ups += [nn.Conv2d(ch, ch * 4, 3, 1, 1), nn.PixelShuffle(2), nn.PReLU()]
        self.upsample = nn.Sequential(*ups)
        self.tail = nn.Conv2d(ch, 3, 9, 1, 4)
        if bicubic_skip:  # start as the identity over bicubic
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    def forward(self, lr):
        h = self.head(lr)
        out = self.tail(self.upsample(h + self.body(h)))
        if self.bicubic_skip:
            out = out + F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return out


class SRDiscriminator(nn.Module):
    """The SRGAN paper's discriminator: 8 conv layers (64→512, strides 1/2), dense 1024, one logit."""

    def __init__(self, ch: int = 64):
        super().__init__()
        layers, c_in = [nn.Conv2d(3, ch, 3, 1, 1), nn.LeakyReLU(0.2, True)], ch
        for c_out, stride in ((ch, 2), (ch * 2, 1), (ch * 2, 2), (ch * 4, 1), (ch * 4, 2), (ch * 8, 1), (ch * 8, 2)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, True)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(6), nn.Flatten(), nn.Linear(c_in * 36, 1024),
                                  nn.LeakyReLU(0.2, True), nn.Linear(1024, 1))

    def forward(self, x):
        return self.head(self.features(x)).flatten()


# VGG19's convolutional part, in torchvision's layout so its state dict ("features.N.weight") loads.
VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


class VGG19Features(nn.Module):
    """VGG19 up to relu5_4 (the SRGAN paper's VGG54 loss), frozen, from a local weights file."""

    def __init__(self, weights_file: str, upto: int = 36):
        super().__init__()
        layers, c_in = [], 3
        for v in VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU(inplace=True)]
                c_in = v
        self.features = nn.Sequential(*layers[:upto])
        try:
            state = torch.load(weights_file, map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if k.startswith("features.") and int(k.split(".")[1]) < upto}
            self.load_state_dict(state)
        except Exception as exc:  # a wrong file fails deep inside torch; say what was expected instead
            raise ValueError(f"--vgg19-weights {weights_file}: not a torchvision VGG19 state dict "
                             f"(keys features.N.weight/bias) ({type(exc).__name__})") from None
        self.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x):  # x: RGB in [0, 1]
        return self.features((x - self.mean) / self.std)
