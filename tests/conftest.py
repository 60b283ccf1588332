import pytest
import torch

torch.set_num_threads(2)

# A run that groks in a few hundred steps on a laptop CPU (measured: memorizes at ~150, groks at ~300).
TINY = {
    "task": {"modulus": 23, "train_frac": 0.7},
    "model": {"layers": 1, "width": 64, "heads": 4},
    "optim": {"lr": 1e-2, "weight_decay": 1.0},
    "train": {"steps": 800, "eval_every": 50, "stop": {"after_grok": 1}},
}

# Smaller still, for equivalence tests that need many short runs.
MICRO = {
    "task": {"modulus": 23, "train_frac": 0.7},
    "model": {"layers": 1, "width": 32, "heads": 4},
    "train": {"steps": 120, "eval_every": 20, "batch_size": 64},
}


@pytest.fixture
def tiny():
    import copy

    return copy.deepcopy(TINY)


@pytest.fixture
def micro():
    import copy

    return copy.deepcopy(MICRO)
