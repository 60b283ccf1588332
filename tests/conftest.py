import os

import pytest
import torch  # noqa: F401

from groklab import threads

os.environ.setdefault("GROKLAB_THREADS", "2")  # no load-dependent thread count in tests

threads.configure(2)  # also flushes denormals before torch starts its threads, as the CLI does

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


# Hypothesis profiles: `ci` (default) replays a fixed set of examples so CI is repeatable and short;
# `long` draws many new ones: python -m pytest tests/test_properties.py --hypothesis-profile=long
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=400, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _same_threads_for_every_test():
    """A test that sets --threads must not change the thread count (and so the float rounding) of the next."""
    from groklab import threads

    before, chosen = torch.get_num_threads(), threads._chosen
    yield
    torch.set_num_threads(before)
    threads._chosen = chosen
