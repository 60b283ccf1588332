import torch

from groklab.config import TaskConfig
from groklab.engine import run_generator
from groklab.tasks import make_task, modular, s5, split


def test_modular_ops_are_correct():
    p = 23
    for op, f in {
        "x+y": lambda x, y: (x + y) % p,
        "x-y": lambda x, y: (x - y) % p,
        "x*y": lambda x, y: (x * y) % p,
        "x^2+y^2": lambda x, y: (x * x + y * y) % p,
        "x^2+xy+y^2": lambda x, y: (x * x + x * y + y * y) % p,
        "x^3+xy": lambda x, y: (x**3 + x * y) % p,
    }.items():
        t = modular.make(op, p)
        assert len(t) == p * p and t.n_classes == p and t.vocab_size == p + 2
        x, y = t.inputs[:, 0].tolist(), t.inputs[:, 2].tolist()
        assert t.labels.tolist() == [f(a, b) for a, b in zip(x, y)], op
        assert (t.inputs[:, 1] == p).all() and (t.inputs[:, 3] == p + 1).all()


def test_division_skips_zero_and_inverts():
    p = 31
    t = modular.make("x/y", p)
    assert len(t) == p * (p - 1)
    x, y, z = t.inputs[:, 0], t.inputs[:, 2], t.labels
    assert (y != 0).all()
    assert ((z * y) % p == x).all()  # z = x / y  <=>  z * y = x


def test_s5_composition_is_a_group_table():
    t = s5.make("x*y")
    assert len(t) == 120 * 120 and t.n_classes == 120
    ident = s5.INDEX[(0, 1, 2, 3, 4)]
    table = t.labels.view(120, 120)
    assert (table[ident] == torch.arange(120)).all() and (table[:, ident] == torch.arange(120)).all()
    for row in table:  # Latin square: each element exactly once per row
        assert sorted(row.tolist()) == list(range(120))
    # non-abelian: some x*y != y*x
    assert (table != table.T).any()


def test_split_is_seeded_disjoint_and_sized():
    cfg = TaskConfig(modulus=23, train_frac=0.3)
    t = make_task(cfg)
    tr, va = split(t, cfg, run_generator(0, 0))
    tr2, _ = split(t, cfg, run_generator(0, 0))
    tr3, _ = split(t, cfg, run_generator(1, 0))
    assert torch.equal(tr, tr2) and not torch.equal(tr, tr3)
    assert len(tr) == round(0.3 * 529) and len(tr) + len(va) == 529
    assert set(tr.tolist()).isdisjoint(va.tolist())


def test_image_tasks_give_their_image_shape():
    """(channels, height, width) for the cnn and augmentation, on the task and on its config; None otherwise."""
    assert make_task(TaskConfig(name="digits")).image_shape == (1, 8, 8) == TaskConfig(name="digits").image_shape
    assert make_task(TaskConfig(modulus=5)).image_shape is None and TaskConfig(modulus=5).image_shape is None
