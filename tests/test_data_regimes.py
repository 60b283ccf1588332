"""Data regimes: gradual exposure, K-fold cross-validation, augmentation of image batches, local image files."""

import gzip
import io
import struct

import numpy as np
import pytest
import torch

from groklab.cli import main
from groklab.config import ConfigError, TaskConfig, make_config, pack_key
from groklab.engine import Interrupted, Pack, run_generator, train
from groklab.metrics import EVAL_METRICS
from groklab.tasks import augment, make_task, split

SMALL = {"task": {"modulus": 11, "train_frac": 0.6}, "model": {"kind": "mlp", "layers": 1, "width": 16},
         "train": {"steps": 12, "eval_every": 2, "batch_size": 8, "checkpoint_every": 0, "save_weights": False}}
DIGITS_CNN = {"task": {"name": "digits", "train_size": 64}, "model": {"kind": "cnn", "channels": [3]},
              "train": {"steps": 6, "eval_every": 2, "batch_size": 16, "checkpoint_every": 0, "save_weights": False}}


def _scheduled(n: int, start_frac: float, steps: int, shape: str, t: int) -> int:
    """The exposure schedule, written out independently of groklab's."""
    n0 = max(1, round(start_frac * n))
    f = min(t / steps, 1.0)
    return round(n0 + (n - n0) * f) if shape == "linear" else round(n0 * (n / n0) ** f)


# ---- gradual exposure ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", ["linear", "geometric"])
def test_gradual_exposure_logs_exactly_the_scheduled_train_sizes(shape):
    cfg = make_config(SMALL, {"train.exposure": {"kind": "gradual", "start_frac": 0.2, "steps": 7, "shape": shape}})
    (r,) = train([cfg])
    n = round(0.6 * 121)
    assert r.curves["train_size"] == [_scheduled(n, 0.2, 7, shape, t) for t in r.curves["step"]]
    assert r.curves["train_size"][0] == round(0.2 * n) and r.curves["train_size"][-1] == n
    (abrupt,) = train([make_config(SMALL)])
    assert set(abrupt.curves["train_size"]) == {n}


def test_exposed_examples_are_a_growing_prefix_of_a_seeded_order_and_batches_come_from_them():
    raw = {**SMALL, "train": {**SMALL["train"], "exposure": {"kind": "gradual", "start_frac": 0.1, "steps": 10}}}
    cfg = make_config(raw)
    pack = Pack([cfg])
    full_train, full_val = split(pack.task, cfg.task, run_generator(0, 0))
    assert torch.equal(pack.val_idx[0], full_val)  # validation is the abrupt run's
    assert sorted(pack.split_idx[0].tolist()) == full_train.tolist()  # the whole split, in the exposure order
    drawn = []
    next_positions = pack.sampler.next

    def spy(b):
        positions = next_positions(b)
        drawn.append((pack.train_idx.shape[1], int(positions.max())))
        return positions

    pack.sampler.next = spy
    seen = pack.train_idx[0].clone()
    for _ in range(12):
        pack.train_step()
        pack._expose()
        now = pack.train_idx[0]
        assert torch.equal(now[: len(seen)], seen) and len(now) >= len(seen)
        seen = now.clone()
    assert len(seen) == len(full_train)
    assert all(p < m for m, p in drawn)  # every batch position lies in the exposed prefix
    same, other = Pack([cfg]), Pack([make_config(raw, {"train.seed": 1})])
    assert torch.equal(same.split_idx, pack.split_idx) and not torch.equal(other.split_idx, pack.split_idx)


def test_train_accuracy_under_exposure_is_measured_on_the_exposed_examples():
    cfg = make_config(SMALL, {"train.exposure": {"kind": "gradual", "start_frac": 0.25, "steps": 100}})
    pack = Pack([cfg])
    ev = pack.evaluate()
    m = round(0.25 * pack.split_idx.shape[1])
    assert pack.train_idx.shape[1] == m
    logits, labels = pack.forward(pack.split_idx[:, :m])
    assert float(ev["train_acc"][0]) == pytest.approx(float((logits.argmax(-1) == labels).all(-1).float().mean()))
    logits, labels = pack.forward(pack.split_idx)
    assert float(ev["train_acc"][0]) != pytest.approx(float((logits.argmax(-1) == labels).all(-1).float().mean()))


def test_exposure_is_a_pack_key_and_abrupt_keeps_the_run_id():
    gradual = make_config(SMALL, {"train.exposure.kind": "gradual"})
    assert pack_key(gradual) != pack_key(make_config(SMALL))
    assert make_config(SMALL, {"train.exposure.kind": "abrupt"}).run_id == make_config(SMALL).run_id
    assert "exposure" not in make_config(SMALL).resolved()["train"]
    with pytest.raises(ConfigError, match="train.exposure.steps: applies only to kind gradual"):
        make_config(SMALL, {"train.exposure.steps": 5})


def test_a_checkpoint_mid_exposure_with_augmentation_continues_exactly():
    raw = {**DIGITS_CNN, "task": {**DIGITS_CNN["task"], "augment": {"shift": 1, "noise": 0.1}},
           "train": {**DIGITS_CNN["train"], "steps": 9, "batch_size": 8, "exposure": {"kind": "gradual",
                                                                                    "start_frac": 0.2, "steps": 7}}}
    cfg = make_config(raw)
    (whole,) = train([cfg])
    first, saved = Pack([cfg]), {}

    def save(p):
        buf = io.BytesIO()
        torch.save(p.state_dict(), buf)
        saved["sd"] = buf.getvalue()

    with pytest.raises(Interrupted):
        first.run(checkpoint=save, should_stop=lambda: first.step >= 3)
    fresh = Pack([cfg])
    fresh.load_state_dict(torch.load(io.BytesIO(saved["sd"]), weights_only=False))
    (resumed,) = fresh.run(resumed=True)
    for k in (*EVAL_METRICS, "train_size", "samples"):
        assert resumed.curves[k] == whole.curves[k], k


# ---- K-fold cross-validation ---------------------------------------------------------------------------
@pytest.mark.parametrize("k", [2, 5, 7])
def test_folds_partition_the_examples_and_fold_i_is_the_val_set(k):
    task = make_task(TaskConfig(modulus=23))
    n = len(task)
    vals, trains = [], []
    for i in range(k):
        tr, va = split(task, TaskConfig(modulus=23, folds=k, fold=i), run_generator(0, 0))
        assert len(tr) + len(va) == n and set(tr.tolist()).isdisjoint(va.tolist())
        assert len(tr) == task.n_train(TaskConfig(modulus=23, folds=k, fold=i))
        vals.append(va)
        trains.append(set(tr.tolist()))
    assert sorted(torch.cat(vals).tolist()) == list(range(n))  # disjoint and covering
    assert max(map(len, vals)) - min(map(len, vals)) <= 1
    for i in range(k):  # fold i's train set is every other fold
        assert trains[i] == set(torch.cat([v for j, v in enumerate(vals) if j != i]).tolist())
    again, _ = split(task, TaskConfig(modulus=23, folds=k, fold=0), run_generator(0, 0))
    other, _ = split(task, TaskConfig(modulus=23, folds=k, fold=0), run_generator(1, 0))
    assert torch.equal(again, trains_tensor := torch.tensor(sorted(trains[0]))) and not torch.equal(other, trains_tensor)


def test_fold_is_a_sweepable_key_and_replaces_train_frac_and_train_size():
    base = {**SMALL, "task": {"modulus": 11, "folds": 4}}
    runs = [make_config(base, {"task.fold": i}) for i in range(4)]
    assert len({c.run_id for c in runs}) == 4 and "train_frac" not in runs[0].resolved()["task"]
    packs = [Pack([c]) for c in runs]
    assert sorted(torch.cat([p.val_idx[0] for p in packs]).tolist()) == list(range(121))
    for overrides, message in [({"task.train_frac": 0.3}, "task.train_frac: applies only without task.train_size "
                                "or task.folds"), ({"task.train_size": 10}, "task.train_size: applies only without "
                                "task.folds"), ({"task.fold": 4}, "task.fold: 4 is not a fold of task.folds=4")]:
        with pytest.raises(ConfigError, match=message):
            make_config(base, overrides)
    with pytest.raises(ConfigError, match="task.fold: applies only with task.folds"):
        make_config(SMALL, {"task.fold": 1})


# ---- augmentation --------------------------------------------------------------------------------------
def test_shift_translates_with_zero_fill_and_noise_is_gaussian():
    img = torch.zeros(3, 1, 5, 5)
    img[:, 0, 2, 2] = 1.0
    out = augment.shift(img, torch.tensor([[1, -2], [0, 0], [-2, 2]]))
    for (dy, dx), o in zip([(1, -2), (0, 0), (-2, 2)], out):
        assert o.sum() == 1 and o[0, 2 + dy, 2 + dx] == 1
    edge = torch.ones(1, 1, 4, 4)
    assert augment.shift(edge, torch.tensor([[1, 1]]))[0, 0].sum() == 9  # a row and a column of zeros came in
    x = torch.full((1, 4000, 4), 0.5)
    noisy = augment.augment(x, (1, 2, 2), [0], [0.1], [torch.Generator().manual_seed(0)])
    assert abs(float((noisy - x).std()) - 0.1) < 0.005 and abs(float((noisy - x).mean())) < 0.005


def test_augmentation_is_reproducible_from_the_seed():
    x = torch.rand(2, 16, 64)

    def draw(seeds, shifts=(2, 0), noise=(0.0, 0.1)):
        return augment.augment(x, (1, 8, 8), list(shifts), list(noise), [run_generator(s, 6) for s in seeds])

    a, b, c = draw([0, 1]), draw([0, 1]), draw([2, 3])
    assert torch.equal(a, b) and not torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])
    assert torch.equal(draw([0, 1], (0, 0), (0.0, 0.0)), x)  # nothing on: the batch as it is
    # a run's draws do not depend on its neighbour's settings (pack ≡ solo)
    assert torch.equal(draw([0, 1], (2, 3), (0.0, 0.5))[0], a[0])


def test_augmented_runs_packed_equal_solo_and_evaluation_is_not_augmented():
    cfgs = [make_config(DIGITS_CNN, {"task.augment": aug, "train.seed": s, "optim.lr": 1e-2})
            for aug, s in [({"shift": 1, "noise": 0.1}, 0), ({"shift": 2}, 1), ({}, 0)]]
    assert len({pack_key(c) for c in cfgs}) == 1  # augment is per run: one pack
    packed = {r.run_id: r for r in train(cfgs)}
    for c in cfgs:
        (solo,) = train([c])
        for k in EVAL_METRICS:
            assert packed[c.run_id].curves[k] == solo.curves[k], k
    aug, plain = packed[cfgs[0].run_id], packed[cfgs[2].run_id]  # same seed, so the same init and split
    assert aug.curves["train_loss"][0] == plain.curves["train_loss"][0]  # step 0: the same unaugmented images
    assert aug.curves["train_loss"][-1] != plain.curves["train_loss"][-1]  # the training batches differed


def test_augmentation_is_refused_on_non_image_tasks():
    with pytest.raises(ConfigError, match="task.augment: applies only to image tasks"):
        make_config(SMALL, {"task.augment.noise": 0.1})
    assert "augment" not in make_config(DIGITS_CNN).resolved()["task"]


# ---- local image files ---------------------------------------------------------------------------------
def _idx(data: np.ndarray, magic: int) -> bytes:
    return struct.pack(f">i{data.ndim}i", magic, *data.shape) + data.astype(np.uint8).tobytes()


def _digits_like(n=60, side=8, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.integers(0, 40, (n, side, side))
    for i, label in enumerate(y):  # a learnable picture: a bright row per class
        x[i, 2 * label] = 255
    return x.astype(np.uint8), y


def _write_idx(folder, prefix="train", gz=False, n=60):
    x, y = _digits_like(n)
    folder.mkdir(parents=True, exist_ok=True)
    suffix, opener = (".gz", gzip.open) if gz else ("", open)
    with opener(folder / f"{prefix}-images-idx3-ubyte{suffix}", "wb") as f:
        f.write(_idx(x, 2051))
    with opener(folder / f"{prefix}-labels-idx1-ubyte{suffix}", "wb") as f:
        f.write(_idx(y, 2049))
    return folder / f"{prefix}-images-idx3-ubyte{suffix}", x, y


RUN = {"train": {"steps": 4, "eval_every": 2, "batch_size": 16, "checkpoint_every": 0, "save_weights": False}}


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_a_local_npz_trains_a_cnn_and_an_mlp(tmp_path, kind):
    x, y = _digits_like()
    np.savez(tmp_path / "pics.npz", x=x, y=y)
    model = {"kind": "cnn", "channels": [4]} if kind == "cnn" else {"kind": "mlp", "layers": 1, "width": 16}
    cfg = make_config({"task": {"name": "images", "path": str(tmp_path / "pics.npz"), "train_size": 40},
                       "model": model, **RUN})
    task = make_task(cfg.task)
    assert task.image_shape == (1, 8, 8) and task.n_classes == int(y.max()) + 1 and len(task) == 60
    assert torch.equal(task.inputs, torch.tensor(x.reshape(60, -1), dtype=torch.float32) / 255)
    assert float(task.inputs.min()) >= 0 and float(task.inputs.max()) == 1.0
    (r,) = train([cfg])
    assert r.curves["train_size"][-1] == 40 and r.curves["train_loss"][-1] < r.curves["train_loss"][0]


def test_npz_layouts_channels_and_flat_images(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "rgb.npz", x=rng.random((10, 3, 4, 6)).astype(np.float32), y=np.arange(10) % 2)
    np.savez(tmp_path / "flat.npz", x=rng.random((10, 24)), y=np.arange(10) % 2, image_shape=np.array([2, 3, 4]))
    assert make_task(TaskConfig(name="images", path=str(tmp_path / "rgb.npz"))).image_shape == (3, 4, 6)
    assert make_task(TaskConfig(name="images", path=str(tmp_path / "flat.npz"))).image_shape == (2, 3, 4)
    cfg = make_config({"task": {"name": "images", "path": str(tmp_path / "rgb.npz"), "augment": {"shift": 1}},
                       "model": {"kind": "cnn", "channels": [2, 2]}, **RUN})
    assert train([cfg])[0].status in ("memorized", "grokked", "budget", "failed_to_fit")
    np.savez(tmp_path / "rgb.npz", x=rng.integers(0, 256, (12, 5, 5)), y=np.arange(12) % 3)  # rewritten: read again
    assert (len(make_task(TaskConfig(name="images", path=str(tmp_path / "rgb.npz")))), TaskConfig(
        name="images", path=str(tmp_path / "rgb.npz")).image_shape) == (12, (1, 5, 5))


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files_train_a_cnn(tmp_path, gz):
    images, x, y = _write_idx(tmp_path / "mnist", gz=gz)
    for path in (images, tmp_path / "mnist"):  # the images file, or the folder holding the train pair
        cfg = make_config({"task": {"name": "images", "path": str(path), "train_size": 30},
                           "model": {"kind": "cnn", "channels": [4]}, **RUN})
        task = make_task(cfg.task)
        assert torch.equal(task.labels, torch.tensor(y)) and task.image_shape == (1, 8, 8)
        assert torch.equal(task.inputs, torch.tensor(x.reshape(60, -1), dtype=torch.float32) / 255)
        (r,) = train([cfg])
        assert r.steps_run == 4
    t10k, _, _ = _write_idx(tmp_path / "mnist", prefix="t10k", n=20)  # any images file: its own labels beside it
    assert len(make_task(TaskConfig(name="images", path=str(t10k)))) == 20


def _refused(path, expected, capsys):
    with pytest.raises(ConfigError) as e:
        make_config({"task": {"name": "images", "path": str(path)}, "model": {"kind": "mlp"}})
    assert str(e.value).startswith("task.path:") and expected in str(e.value), str(e.value)
    assert main(["run", "task.name=images", f"task.path={path}", "model.kind=mlp", "train.steps=1", "--no-store",
                 "-q"]) == 2
    assert "task.path" in capsys.readouterr().err


def test_missing_and_malformed_files_are_refused_naming_task_path(tmp_path, capsys):
    _refused(tmp_path / "nothing.npz", "no such file", capsys)
    _refused(tmp_path, "a folder without train-images-idx3-ubyte", capsys)
    np.savez(tmp_path / "no_y.npz", x=np.zeros((5, 4, 4)))
    _refused(tmp_path / "no_y.npz", "not x and y", capsys)
    np.savez(tmp_path / "bad_y.npz", x=np.zeros((5, 4, 4)), y=np.zeros(4, dtype=int))
    _refused(tmp_path / "bad_y.npz", "y must be [N] = [5]", capsys)
    np.savez(tmp_path / "range.npz", x=np.full((5, 4, 4), 3.0), y=np.zeros(5, dtype=int))
    _refused(tmp_path / "range.npz", "outside [0, 1]", capsys)
    np.savez(tmp_path / "flat.npz", x=np.zeros((5, 10)), y=np.zeros(5, dtype=int))
    _refused(tmp_path / "flat.npz", "image_shape", capsys)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    _refused(tmp_path / "junk.npz", "not a readable .npz", capsys)
    images, _, _ = _write_idx(tmp_path / "m")
    images.write_bytes(images.read_bytes()[:-7])  # truncated
    _refused(images, "its header says", capsys)
    images.write_bytes(_idx(np.zeros((2, 3, 3)), 2049))  # a labels magic in the images file
    _refused(images, "magic 2051", capsys)
    (tmp_path / "m" / "train-labels-idx1-ubyte").unlink()
    _refused(images, "no labels file train-labels-idx1-ubyte", capsys)
    _refused(tmp_path / "other.bin", "no such file", capsys)
    (tmp_path / "other.bin").write_bytes(b"x")
    _refused(tmp_path / "other.bin", "not an IDX images file", capsys)
    with pytest.raises(ConfigError, match="task.path: task.name=images needs a local image file"):
        make_config({"task": {"name": "images"}, "model": {"kind": "mlp"}})
    with pytest.raises(ConfigError, match="task.path: applies only to task.name=images"):
        make_config({"task": {"path": "x.npz"}})
