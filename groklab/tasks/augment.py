"""Augmentation of image training batches (`task.augment`), per run from each run's own generator.

A run's draws depend only on its own settings and the batch shape (shared by a pack), never on the other
runs of its pack, so an augmented run gives the same curves packed and solo. A run that does not augment
draws nothing. Evaluation never augments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def shift(images: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """images [N, C, H, W] translated by offsets [N, 2] (dy, dx) integer pixels, zero fill: out[i, j] =
    in[i - dy, j - dx] where that lies inside the image. Pure copies (gathers), so exact."""
    n, c, h, w = images.shape
    s = int(offsets.abs().max()) if offsets.numel() else 0
    if s == 0:
        return images
    padded = F.pad(images, (s, s, s, s))  # [N, C, H+2s, W+2s]
    rows = torch.arange(h, device=images.device) + s - offsets[:, :1]  # [N, H]
    cols = torch.arange(w, device=images.device) + s - offsets[:, 1:]  # [N, W]
    out = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w + 2 * s))
    return out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


def augment(inputs: torch.Tensor, image_shape: tuple[int, int, int], shifts: list[int], noise: list[float],
            generators: list[torch.Generator]) -> torch.Tensor:
    """Augmented training inputs [R, B, C·H·W]: run r's images shifted by up to shifts[r] pixels per axis (drawn
    per image), then Gaussian noise of std noise[r] added, both drawn from generators[r]."""
    r, b, d = inputs.shape
    out = []
    for x, s, std, g in zip(inputs, shifts, noise, generators):
        if s > 0:
            offsets = torch.randint(-s, s + 1, (b, 2), generator=g).to(x.device)
            x = shift(x.view(b, *image_shape), offsets).reshape(b, d)
        if std > 0:
            x = x + std * torch.randn(b, d, generator=g).to(x.device, x.dtype)
        out.append(x)
    return torch.stack(out)
