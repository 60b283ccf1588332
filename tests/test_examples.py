"""Every shipped example is a valid sweep (so the README's commands work)."""

from pathlib import Path

import pytest

from groklab.sweep import expand, group, load_spec

EXAMPLES = sorted(Path(__file__).parent.parent.joinpath("examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_expands_and_packs(path):
    runs = expand(load_spec(path))
    assert runs and group(runs)
