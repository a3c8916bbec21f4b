"""Tiny stand-ins with the TransGAN models' interface, for trainer tests.

ToyG: `latent_dim`, `forward(z) -> (B, 3, R, R)`, `set_progress(p)`, `reconstruct(x)`.
ToyD: `forward(x, augment=None) -> (B,)`, applying `augment` first, like the real D.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ToyG(nn.Module):
    def __init__(self, latent_dim=16, resolution=8, ch=8):
        super().__init__()
        self.latent_dim, self.res, self.ch = latent_dim, resolution, ch
        self.fc = nn.Linear(latent_dim, ch * (resolution // 2) ** 2)
        self.conv = nn.Conv2d(ch, 3, 3, padding=1)
        self.progress = 0.0

    def set_progress(self, progress):
        self.progress = float(progress)

    def _decode(self, h):
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        return self.conv(F.gelu(h))

    def forward(self, z):
        h = self.fc(z).view(-1, self.ch, self.res // 2, self.res // 2)  # (B, ch, R/2, R/2)
        return self._decode(h)

    def reconstruct(self, x):
        low = F.avg_pool2d(x, 2)  # (B, 3, R/2, R/2)
        return F.interpolate(low, scale_factor=2, mode="nearest") + self.conv.bias.view(1, 3, 1, 1)


class ToyD(nn.Module):
    def __init__(self, resolution=8, ch=8):
        super().__init__()
        self.conv = nn.Conv2d(3, ch, 3, padding=1)
        self.fc = nn.Linear(ch * resolution * resolution, 1)

    def forward(self, x, augment=None):
        if augment is not None:
            x = augment(x)
        return self.fc(F.gelu(self.conv(x)).flatten(1)).squeeze(1)
