"""groklab.measures.fourier against hand computations on logits built from known Fourier terms (Nanda et al.
2023 progress measures; /work/shared/research/measures.md §1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from groklab.measures import fourier as fo

P = 23
KEYS = (3, 7)
ALPHA = {3: 2.0, 7: 1.5}
BETA = {1: 0.1, 5: -0.08, 10: 0.05}  # small terms at other frequencies
F64 = torch.float64


def w(k: int) -> float:
    return 2 * math.pi * k / P


def grid() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    a = torch.arange(P, dtype=F64)[:, None, None]
    b = torch.arange(P, dtype=F64)[None, :, None]
    c = torch.arange(P, dtype=F64)[None, None, :]
    return a, b, c


def constructed(scale: float = 1.0, seed: int = 0) -> dict[str, torch.Tensor]:
    """Logits [p, p, p] = key terms α_k cos(w_k(a+b−c)) + small terms β_k cos(w_k(a+b−c)) at other frequencies
    + terms with NO (a+b) component (functions of a alone, of a−b) + a per-class bias."""
    a, b, c = grid()
    g = torch.Generator().manual_seed(seed)
    key = sum(scale * ALPHA[k] * torch.cos(w(k) * (a + b - c)) for k in KEYS)
    other = sum(v * torch.cos(w(k) * (a + b - c)) for k, v in BETA.items())
    non_sum = 0.3 * torch.cos(w(2) * a) * torch.sin(w(2) * c) + 0.2 * torch.cos(w(4) * (a - b)) * torch.cos(w(9) * c)
    bias = torch.randn(1, 1, P, generator=g, dtype=F64)
    logits = key + other + non_sum + bias
    return {"logits": logits, "key": key, "bias": bias.expand(P, P, P)}


def labels() -> torch.Tensor:
    a = torch.arange(P)
    return (a[:, None] + a[None, :]) % P


def split(seed: int, frac: float = 0.4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(P, P, generator=g) < frac)


def ce(logits: torch.Tensor, mask: torch.Tensor) -> float:
    """Cross-entropy by hand over the masked pairs, one example at a time."""
    lab, total, n = labels(), 0.0, 0
    for x in range(P):
        for y in range(P):
            if mask[x, y]:
                z = logits[x, y].numpy()
                total += -(z[lab[x, y]] - (z.max() + np.log(np.exp(z - z.max()).sum())))
                n += 1
    return total / n


def test_basis_is_orthonormal_and_matches_definition():
    for p in (5, 23, 113):
        F = fo.fourier_basis(p)
        assert F.dtype == F64 and F.shape == (p, p)
        torch.testing.assert_close(F @ F.T, torch.eye(p, dtype=F64), atol=1e-10, rtol=0)
    F, x = fo.fourier_basis(P), torch.arange(P, dtype=F64)
    torch.testing.assert_close(F[0], torch.full((P,), 1 / math.sqrt(P), dtype=F64))
    torch.testing.assert_close(F[2 * 3 - 1], torch.cos(w(3) * x) * math.sqrt(2 / P))
    torch.testing.assert_close(F[2 * 3], torch.sin(w(3) * x) * math.sqrt(2 / P))


def test_sum_directions_are_unit_cos_sin_of_a_plus_b():
    a, b, _ = grid()
    d = fo.sum_directions(P)
    assert d.shape == (P // 2 + 1, 2, P, P)
    for k in (1, 3, 11):
        torch.testing.assert_close(d[k, 0], torch.cos(w(k) * (a + b))[..., 0] * math.sqrt(2) / P)
        torch.testing.assert_close(d[k, 1], torch.sin(w(k) * (a + b))[..., 0] * math.sqrt(2) / P)
    flat = d.reshape(-1, P * P)[[i for i in range(2 * d.shape[0]) if i != 1]]  # drop the zero sin slot of k=0
    torch.testing.assert_close(flat @ flat.T, torch.eye(flat.shape[0], dtype=F64), atol=1e-12, rtol=0)


def test_sum_components_recover_the_alphas():
    m = constructed()
    comp = fo.sum_components(m["logits"][None])[0]  # [K+1, 2, C]
    c = torch.arange(P, dtype=F64)
    coeffs = {**ALPHA, **BETA}
    for k in range(1, P // 2 + 1):
        alpha = coeffs.get(k, 0.0)
        # cos(w(a+b−c)) = cos(w(a+b))cos(wc) + sin(w(a+b))sin(wc); the unit direction is cos(w(a+b))·√2/p
        torch.testing.assert_close(comp[k, 0], alpha * P / math.sqrt(2) * torch.cos(w(k) * c), atol=1e-10, rtol=0)
        torch.testing.assert_close(comp[k, 1], alpha * P / math.sqrt(2) * torch.sin(w(k) * c), atol=1e-10, rtol=0)
    torch.testing.assert_close(comp[0, 0], m["bias"][0, 0] * P, atol=1e-10, rtol=0)  # constant: Σ/p
    norms = fo.sum_norms(m["logits"][None])[0]
    for k, alpha in ALPHA.items():
        assert norms[k].item() == pytest.approx(abs(alpha) * P ** 1.5 / math.sqrt(2), rel=1e-10)


def reference_projection(logits: torch.Tensor, keys: tuple[int, ...]) -> torch.Tensor:
    """The original code's loop, transcribed: logits flattened to [(x y), c], directions from outer products of
    Fourier rows (`helpers.py: get_component_cos_xpy / _sin_xpy`)."""
    F = fo.fourier_basis(P)
    flat = logits.reshape(P * P, -1)
    term = lambda i, j: (F[i][:, None] * F[j][None, :]).flatten()
    out = torch.zeros_like(flat)
    for k in keys:
        cos_dir = (term(2 * k - 1, 2 * k - 1) - term(2 * k, 2 * k)) / math.sqrt(2)
        sin_dir = (term(2 * k, 2 * k - 1) + term(2 * k - 1, 2 * k)) / math.sqrt(2)
        for d in (cos_dir, sin_dir):
            out += d[:, None] @ (d[None, :] @ flat)
    return out.reshape(logits.shape)


def test_restricted_and_excluded_logits_equal_the_key_terms():
    m = constructed()
    keys = fo.freq_mask(P, KEYS)
    L = m["logits"][None]
    restricted = fo.restricted_logits(L, keys)[0]
    torch.testing.assert_close(restricted, m["key"] + m["bias"], atol=1e-10, rtol=0)
    torch.testing.assert_close(fo.excluded_logits(L, keys)[0], m["logits"] - m["key"], atol=1e-10, rtol=0)
    # the same as the original code's projection, on arbitrary logits too
    rand = torch.randn(P, P, P, generator=torch.Generator().manual_seed(3), dtype=F64)
    torch.testing.assert_close(fo.key_projection(rand[None], keys)[0], reference_projection(rand, KEYS))
    bias_corrected = reference_projection(rand, KEYS)
    bias_corrected = bias_corrected + rand.mean((0, 1)) - bias_corrected.mean((0, 1))
    torch.testing.assert_close(fo.restricted_logits(rand[None], keys)[0], bias_corrected)
    # index 0 of a key mask (the constant) changes nothing
    with_const = keys.clone()
    with_const[0] = True
    torch.testing.assert_close(fo.excluded_logits(L, with_const), fo.excluded_logits(L, keys))
    torch.testing.assert_close(fo.restricted_logits(L, with_const), fo.restricted_logits(L, keys))


def test_losses_equal_hand_cross_entropy():
    m = constructed(scale=4.0)
    keys = fo.freq_mask(P, KEYS)
    train = split(1)
    test = ~train
    L = m["logits"][None]
    restricted = fo.restricted_loss(L, labels(), keys, test[None])
    excluded = fo.excluded_loss(L, labels(), keys, train[None])
    assert restricted.dtype == F64 and restricted.shape == (1,)
    assert restricted.item() == pytest.approx(ce(m["key"] + m["bias"], test), abs=1e-9)
    assert excluded.item() == pytest.approx(ce(m["logits"] - m["key"], train), abs=1e-9)
    assert fo.cross_entropy(L, labels(), train).item() == pytest.approx(ce(m["logits"], train), abs=1e-9)
    # the circuit is what solves the task: keeping it beats removing it
    assert restricted.item() < excluded.item()


def test_key_frequencies_from_logits_and_embedding():
    m = constructed()
    found = fo.key_frequencies(fo.sum_norms(m["logits"][None]))
    assert found.shape == (1, P // 2 + 1) and found.dtype == torch.bool
    assert set(found[0].nonzero().flatten().tolist()) == set(KEYS)
    # an embedding with its energy at 3 and 7, a little everywhere else, and a large constant row
    g = torch.Generator().manual_seed(5)
    x = torch.arange(P, dtype=F64)[:, None]
    u = torch.randn(4, 16, generator=g, dtype=F64)
    W_E = (torch.cos(w(3) * x) * u[0] + torch.sin(w(3) * x) * u[1] + 0.7 * torch.cos(w(7) * x) * u[2]
           + 0.7 * torch.sin(w(7) * x) * u[3] + 0.05 * torch.randn(P, 16, generator=g, dtype=F64) + 5.0)
    norms = fo.embedding_norms(W_E[None])
    assert norms.shape == (1, P // 2 + 1)
    rows = fo.fourier_norms(W_E[None])[0]
    torch.testing.assert_close(norms[0, 3], (rows[5] ** 2 + rows[6] ** 2).sqrt())
    torch.testing.assert_close(norms[0].pow(2).sum(), W_E.pow(2).sum())  # Parseval
    assert set(fo.key_frequencies(norms)[0].nonzero().flatten().tolist()) == set(KEYS)


def test_gini():
    assert fo.gini(torch.full((7,), 3.0)).item() == pytest.approx(0.0, abs=1e-15)
    for n in (2, 5, 56):
        assert fo.gini(torch.eye(n)[0]).item() == pytest.approx((n - 1) / n, abs=1e-15)
    # by hand: x = (1, 2, 3, 6): Σ_{i,j}|x_i − x_j| = 2·(1+2+5+1+4+3) = 32, mean 2, mean(x) = 3 → 2/6
    assert fo.gini(torch.tensor([1.0, 2.0, 3.0, 6.0])).item() == pytest.approx(1 / 3, abs=1e-15)
    batched = fo.gini(torch.tensor([[1.0, 2.0, 3.0, 6.0], [1.0, 1.0, 1.0, 1.0]]))
    torch.testing.assert_close(batched, torch.tensor([1 / 3, 0.0], dtype=F64))


def run_inputs(seed: int) -> dict[str, torch.Tensor]:
    """One run's inputs: constructed logits with its own keys, noise, an embedding and a train split."""
    g = torch.Generator().manual_seed(seed)
    a, b, c = grid()
    keys = (2, 9) if seed % 2 else KEYS
    logits = sum(3.0 * torch.cos(w(k) * (a + b - c)) for k in keys) + 0.3 * torch.randn(P, P, P, generator=g,
                                                                                         dtype=F64)
    return {"logits": logits.float(), "W_E": torch.randn(P, 12, generator=g), "train": split(seed + 10)}


def test_progress_measures_and_pack_equals_solo():
    runs = [run_inputs(0), run_inputs(1)]
    solo = [fo.progress_measures(r["logits"][None], labels(), r["W_E"][None], r["train"][None]) for r in runs]
    packed = fo.progress_measures(torch.stack([r["logits"] for r in runs]), labels(),
                                  torch.stack([r["W_E"] for r in runs]), torch.stack([r["train"] for r in runs]))
    assert set(packed) == {"fourier.restricted_loss", "fourier.excluded_loss", "fourier.gini_embed",
                           "fourier.key_freqs", "fourier.top_freq"}
    for name, v in packed.items():
        assert v.shape == (2,) and v.dtype == F64
        for r in range(2):
            torch.testing.assert_close(v[r], solo[r][name][0], atol=1e-12, rtol=1e-12)
    assert packed["fourier.key_freqs"].tolist() == [2.0, 2.0]
    assert packed["fourier.top_freq"][0].item() in KEYS and packed["fourier.top_freq"][1].item() in (2, 9)
    # the pieces: restricted on the test split, excluded on train, gini of embedding norms over k ≥ 1
    r0 = runs[0]
    keys = fo.freq_mask(P, KEYS)
    L = r0["logits"][None]
    assert packed["fourier.restricted_loss"][0].item() == pytest.approx(
        fo.restricted_loss(L, labels(), keys, ~r0["train"]).item(), abs=1e-12)
    assert packed["fourier.excluded_loss"][0].item() == pytest.approx(
        fo.excluded_loss(L, labels(), keys, r0["train"]).item(), abs=1e-12)
    assert packed["fourier.gini_embed"][0].item() == pytest.approx(
        fo.gini(fo.embedding_norms(r0["W_E"][None])[0, 1:]).item(), abs=1e-12)
    # fixed keys and the other options
    fixed = fo.progress_measures(L, labels(), r0["W_E"][None], r0["train"][None], keys=fo.freq_mask(P, [3]),
                                 restricted_split="all")
    assert fixed["fourier.key_freqs"].item() == 1 and fixed["fourier.top_freq"].item() == 3
    assert fixed["fourier.restricted_loss"].item() == pytest.approx(
        fo.restricted_loss(L, labels(), fo.freq_mask(P, [3]), torch.ones(P, P, dtype=torch.bool)).item(), abs=1e-12)
    embed = fo.progress_measures(L, labels(), r0["W_E"][None], r0["train"][None], key_source="embed")
    assert embed["fourier.key_freqs"].item() >= 1
    with pytest.raises(ValueError):
        fo.progress_measures(L, labels(), None, r0["train"][None], key_source="embed")


def test_freq_mask():
    m = fo.freq_mask(113, [14, 35, 41, 42, 52])
    assert m.shape == (57,) and m.sum().item() == 5 and m[14] and not m[0]
    per_run = fo.freq_mask(P, [[3], [7, 11]])
    assert per_run.shape == (2, 12) and per_run[1, 11] and not per_run[0, 7]
    with pytest.raises(ValueError):
        fo.freq_mask(P, [12])
