"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes): no download.

The Omnigrok setting (Liu et al., 2023) for grokking on real images: a small train subset
(`task.train_size`), an MLP, often MSE loss and a large `model.init_scale`.
"""

from __future__ import annotations

import torch

from groklab.config import ConfigError
from groklab.tasks import Task


def make() -> Task:
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError("task.name: 'digits' needs scikit-learn; pip install 'groklab[digits]'") from None
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0  # pixel values 0..16 -> [0, 1]
    y = torch.tensor(data.target, dtype=torch.long)
    return Task(inputs=x, labels=y, vocab_size=0, n_classes=10, image_shape=(1, 8, 8))
