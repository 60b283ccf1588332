"""Fourier progress measures for modular addition (Nanda et al. 2023, "Progress measures for grokking via
mechanistic interpretability", arXiv 2301.05217; definitions in /work/shared/research/measures.md §1).

A grokked network computes (a+b) mod p with a few "key" frequencies w_k = 2πk/p: its logits are close to
Σ_k α_k cos(w_k(a+b−c)). The measures here watch that circuit form during training:

- **restricted loss**: keep only the cos(w_k(a+b)) and sin(w_k(a+b)) components of the logits for the key
  frequencies (plus the constant, via the bias correction) and measure the loss. It falls once the circuit
  exists, before the test loss does (paper §5.1).
- **excluded loss**: remove exactly those components and measure the loss on the TRAIN pairs. It rises during
  circuit formation, when the train set is fitted by the circuit rather than by memorization.
- **Gini of the embedding's Fourier norms**: sparsity in frequency; it jumps during cleanup.

Layout. Everything is batched over a leading run axis R and computed in float64. Logits are given on the full
p×p grid: `logits[r, a, b, c]` is run r's logit of class c on the input (a, b), class c meaning the number c
(groklab's modular tasks have `n_classes = p`). Evaluate the model on EVERY pair, including pairs that are in
neither split (the x/y task has no b = 0 pairs): the projections are fitted on all p² logits, as in the
original code (measures.md: "the projection is fitted on all p² logits (train+test)"). The embedding `W_E`
[R, p, d] is the rows of the token table that embed the numbers 0..p−1, in that order: in groklab's modular
tasks these are rows 0..p−1 of the `tok` parameter (row p is the operator token, row p+1 the `=` token), so
the caller passes `tok[:, :p]`. The original setup (`=` is token 113, d_vocab 114) also has the numbers first.

Fourier basis (`transformers.py: make_fourier_basis`): rows F₀ = 1/√p, F_{2k−1} = cos(w_k x)/‖·‖,
F_{2k} = sin(w_k x)/‖·‖ for k = 1..K, K = (p−1)/2 (p an odd prime). Frequency-indexed tensors here have
K+1 entries, index k = frequency k, index 0 = the constant. The unit directions of the "sum" terms over the
(a, b) grid (`helpers.py: get_component_cos_xpy / _sin_xpy`, with F_i⊗F_j [a, b] = F_i[a]·F_j[b]):
    cos(w_k(a+b)) ≙ (F_{2k−1}⊗F_{2k−1} − F_{2k}⊗F_{2k})/√2,
    sin(w_k(a+b)) ≙ (F_{2k}⊗F_{2k−1} + F_{2k−1}⊗F_{2k})/√2.
Index 0 of `sum_directions` holds the constant direction F₀⊗F₀ (= cos(0·(a+b))) in the cos slot and zero
in the sin slot, so that every tensor indexed by frequency lines up with the key masks.

Key frequencies. measures.md lists the rules in use, none with a published threshold: (1) the paper §4.1 reads
them off the W_E Fourier norms; (2) paper App. C.2: "DFT on the neuron-logit map W_L = W_U W_out, then take
the frequencies with nontrivial coefficients"; (3) the original code (`calculate_key_freqs`) takes, per MLP
neuron, the frequency explaining most of its activation variance and keeps every frequency any neuron picks
(its loop `range(1, p//2)` never considers k = (p−1)/2, and every neuron, even an unexplained one, votes);
(4) current TransformerLens (`Grokking_Demo`) keeps the frequencies whose W_E Fourier norm exceeds max/4.
Rule (3) needs an MLP with a known activation site and votes in noise neurons; rule (2) needs W_U W_out. Here
`key_frequencies(norms, frac)` applies TransformerLens' relative threshold, norm_k > frac · max_{k≥1} norm_k
(frac = 1/4 by default; the constant k = 0 is never a candidate and does not set the max), to per-frequency
norms taken from either source, which any groklab model has:
- `sum_norms(logits)` (the default in `progress_measures`, `key_source="logits"`): the norm of the logits'
  cos(w_k(a+b)) and sin(w_k(a+b)) components over all classes. This is rule (2) moved to the model's output:
  the logits are W_L applied to the neurons, so the frequencies W_L carries are exactly the ones whose
  (a+b)-components the logits carry, and it needs no access to internals (MLP models, transformers, any
  architecture). It also selects exactly the directions the restricted/excluded losses keep or remove, so
  "key" means "the frequencies the output actually uses" — the paper notes W_E has a sixth frequency with
  nonnegligible norm that the later circuit does not use; the logit rule leaves such a frequency out.
- `embedding_norms(W_E)` (`key_source="embed"`): rule (1)/(4), TransformerLens' rule exactly.
Keys are recomputed per run from the current model at every evaluation, like the original training-time
`Trainer.take_metrics` (the analysis notebook instead reuses the final checkpoint's keys for all checkpoints:
pass `keys=` to `progress_measures` to do that). Early in training no frequency stands out and the rule keeps
many; the count `fourier.key_freqs` falling to a handful is itself a sign of the circuit.

Splits. Excluded loss: TRAIN pairs (paper §5.1: "We measure this on the training data"; code: `mode='train'`).
Restricted loss: the paper does not say; the original training-time code uses all p² pairs (`mode='all'`),
the TransformerLens demo the TEST split. `progress_measures` uses the test split by default
(`restricted_split="test"`): that makes it directly comparable to the test loss, which is what the measure is
meant to anticipate. The loss functions themselves take the mask, so a caller can choose any split.

Quirks of the original code not reproduced: `helpers.py: cross_entropy_high_precision` casts to float32 despite
its comment (here: float64, as the Colab version does); the key-frequency loop skipping k = (p−1)/2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch

Tensor = torch.Tensor
F64 = torch.float64


def fourier_basis(p: int, device: torch.device | str | None = None) -> Tensor:
    """The orthonormal Fourier basis [p, p] in float64 (rows: constant, then cos/sin of each frequency k =
    1..(p−1)/2), exactly `make_fourier_basis` of the original code (measures.md §1)."""
    x = torch.arange(p, dtype=F64, device=device)
    rows = [torch.ones_like(x)]
    for k in range(1, (p - 1) // 2 + 1):
        rows += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
    basis = torch.stack(rows)
    return basis / basis.norm(dim=1, keepdim=True)


def n_freqs(p: int) -> int:
    """K + 1 = (p−1)/2 + 1: the length of every frequency-indexed tensor here (index 0 = the constant)."""
    return (p - 1) // 2 + 1


def freq_mask(p: int, freqs: Sequence[int] | Sequence[Sequence[int]], runs: int | None = None) -> Tensor:
    """A key mask [R, K+1] (or [K+1] when `runs` is None and `freqs` is flat) from frequency lists: one list for
    all runs, or one list per run. E.g. the paper's mainline keys `freq_mask(113, [14, 35, 41, 42, 52])`."""
    k1 = n_freqs(p)
    nested = len(freqs) > 0 and isinstance(freqs[0], Sequence)
    lists = list(freqs) if nested else [freqs] * (runs or 1)
    mask = torch.zeros(len(lists), k1, dtype=torch.bool)
    for r, fs in enumerate(lists):
        for f in fs:
            if not 1 <= int(f) < k1:
                raise ValueError(f"frequency {f} is not in 1..{k1 - 1} for p={p}")
            mask[r, int(f)] = True
    return mask[0] if runs is None and not nested else mask


def fourier_norms(W: Tensor) -> Tensor:
    """Per Fourier row [R, p]: the norm over the last axis of F·W for W [R, p, d] (the paper's "norm over
    d_model of W_E·Fᵀ", one value per basis row: constant, cos k, sin k, ...)."""
    basis = fourier_basis(W.shape[-2], W.device)
    return torch.einsum("fx,rxd->rfd", basis, W.to(F64)).norm(dim=-1)


def embedding_norms(W_E: Tensor) -> Tensor:
    """Per frequency [R, K+1]: the norm of the embedding's Fourier components, the cos and sin rows of frequency
    k together (index 0: the constant row). W_E [R, p, d] holds the p NUMBER-token rows only, number x at row x
    (groklab: `tok[:, :p]`; see the module docstring)."""
    rows = fourier_norms(W_E).pow(2)  # [R, p]
    per_k = torch.cat([rows[:, :1], rows[:, 1::2] + rows[:, 2::2]], dim=1)
    return per_k.sqrt()


def sum_directions(p: int, device: torch.device | str | None = None) -> Tensor:
    """The unit directions [K+1, 2, p, p] of cos(w_k(a+b)) (slot 0) and sin(w_k(a+b)) (slot 1) over the (a, b)
    grid, built from the Fourier basis as `helpers.py: get_component_cos_xpy / _sin_xpy` (measures.md §1).
    Index 0: the constant direction F₀⊗F₀ in the cos slot, zeros in the sin slot. Cached per (p, device):
    do not modify the result in place."""
    return _sum_directions(p, torch.device(device) if device is not None else torch.device("cpu"))


@lru_cache(maxsize=8)
def _sum_directions(p: int, device: torch.device) -> Tensor:
    basis = fourier_basis(p, device)
    c, s = basis[1::2], basis[2::2]  # [K, p] each: cos and sin rows of frequency 1..K
    outer = lambda u, v: u[:, :, None] * v[:, None, :]
    cos_dir = (outer(c, c) - outer(s, s)) / math.sqrt(2)
    sin_dir = (outer(s, c) + outer(c, s)) / math.sqrt(2)
    const = torch.stack([outer(basis[:1], basis[:1])[0], torch.zeros(p, p, dtype=F64, device=device)])
    return torch.cat([const[None], torch.stack([cos_dir, sin_dir], dim=1)], dim=0)


def sum_components(logits: Tensor) -> Tensor:
    """The coefficients [R, K+1, 2, C] of the logit cube [R, p, p, C] on the unit directions of cos(w_k(a+b))
    (slot 0) and sin(w_k(a+b)) (slot 1), per class c; index 0, slot 0: the constant component. For logits
    α cos(w_k(a+b−c)) the coefficients are α·(p/√2)·(cos w_k c, sin w_k c)."""
    dirs = sum_directions(logits.shape[1], logits.device)
    return torch.einsum("ksab,rabc->rksc", dirs, logits.to(F64))


def sum_norms(logits: Tensor) -> Tensor:
    """Per frequency [R, K+1]: the norm, over both directions and all classes, of the logits' cos(w_k(a+b)) and
    sin(w_k(a+b)) components: how much of the output the frequency-k addition term carries. The source of the
    default key-frequency rule (module docstring)."""
    return sum_components(logits).pow(2).sum((-2, -1)).sqrt()


def key_frequencies(norms: Tensor, frac: float = 0.25) -> Tensor:
    """The key frequencies of each run as a mask [R, K+1] (index 0, the constant, always False): the k ≥ 1 with
    norms[r, k] > frac · max_{k≥1} norms[r, k] (TransformerLens' rule, frac 1/4). `norms` [R, K+1] comes from
    `sum_norms(logits)` or `embedding_norms(W_E)`; why and the alternatives: module docstring."""
    top = norms[:, 1:].amax(dim=1, keepdim=True)
    mask = norms > frac * top
    mask[:, 0] = False
    return mask


def _key_weights(keys: Tensor, runs: int) -> Tensor:
    """The key mask as float64 weights [R, K+1] with the constant dropped (it is never a key: the restricted
    logits keep it through the bias correction, the excluded logits never remove it)."""
    w = keys.to(F64).expand(runs, keys.shape[-1]).clone()
    w[:, 0] = 0
    return w


def key_projection(logits: Tensor, keys: Tensor) -> Tensor:
    """Σ over each run's key frequencies of the logits' projections on the cos(w_k(a+b)) and sin(w_k(a+b))
    directions [R, p, p, C] (float64), fitted on all p² inputs. `keys`: a mask [R, K+1] or [K+1]."""
    dirs = sum_directions(logits.shape[1], logits.device)
    coef = sum_components(logits) * _key_weights(keys, logits.shape[0]).to(logits.device)[:, :, None, None]
    return torch.einsum("rksc,ksab->rabc", coef, dirs)


def restricted_logits(logits: Tensor, keys: Tensor) -> Tensor:
    """L_r [R, p, p, C] (float64): only the cos/sin(w_k(a+b)) components of the key frequencies, then the bias
    correction L_r += mean_batch(L) − mean_batch(L_r), the mean over all p² inputs (`trig_loss` /
    `test_logits(bias_correction=True)` of the original code; measures.md §1)."""
    L = logits.to(F64)
    Lr = key_projection(L, keys)
    return Lr + L.mean(dim=(1, 2), keepdim=True) - Lr.mean(dim=(1, 2), keepdim=True)


def excluded_logits(logits: Tensor, keys: Tensor) -> Tensor:
    """L_e = L − (key frequencies' cos/sin(w_k(a+b)) components) [R, p, p, C] (float64), no bias correction
    (`calculate_excluded_loss`; measures.md §1)."""
    return logits.to(F64) - key_projection(logits, keys)


def cross_entropy(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Mean cross-entropy per run [R] in float64 over the inputs where `mask` [R, p, p] (or [p, p]) is True;
    labels [p, p] or [R, p, p]. NaN for a run whose mask is empty."""
    logp = torch.log_softmax(logits.to(F64), dim=-1)
    lab = labels.to(device=logits.device, dtype=torch.long).expand(logp.shape[:-1])
    nll = -logp.gather(-1, lab[..., None])[..., 0]
    m = mask.to(logits.device, torch.bool).expand(nll.shape)
    return torch.where(m, nll, 0.0).sum(dim=(1, 2)) / m.sum(dim=(1, 2))


def restricted_loss(logits: Tensor, labels: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
    """Restricted loss [R]: cross-entropy of `restricted_logits` over `mask` (the split is the caller's: the
    paper leaves it unstated, TransformerLens uses test, the original code all; module docstring)."""
    return cross_entropy(restricted_logits(logits, keys), labels, mask)


def excluded_loss(logits: Tensor, labels: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
    """Excluded loss [R]: cross-entropy of `excluded_logits` over `mask`, which should be the TRAIN split as in the
    paper ("We measure this on the training data")."""
    return cross_entropy(excluded_logits(logits, keys), labels, mask)


def gini(x: Tensor) -> Tensor:
    """Gini coefficient over the last axis [...]: G(x) = mean_{i,j}|x_i − x_j| / (2·mean(x)), for x ≥ 0
    (the formula measures.md names, d-doshi `calculate_gini`; equal to Hurley & Rickard's Gini that the paper
    cites). 0 for a constant vector, (n−1)/n for a one-hot one; NaN if x is all zero."""
    x = x.to(F64)
    diffs = (x[..., :, None] - x[..., None, :]).abs().mean(dim=(-2, -1))
    return diffs / (2 * x.mean(dim=-1))


def progress_measures(logits: Tensor, labels: Tensor, W_E: Tensor | None, train_mask: Tensor,
                      test_mask: Tensor | None = None, keys: Tensor | None = None, key_source: str = "logits",
                      frac: float = 0.25, restricted_split: str = "test") -> dict[str, Tensor]:
    """Everything a run records at an evaluation, each a float64 tensor [R]:

    - `fourier.restricted_loss`: `restricted_loss` on `restricted_split` ("test": `test_mask`, by default the
      complement of `train_mask`; "train"; "all": train ∪ test).
    - `fourier.excluded_loss`: `excluded_loss` on the train split.
    - `fourier.gini_embed`: `gini` of the embedding's per-frequency Fourier norms over k ≥ 1 (`embedding_norms`,
      cos and sin combined; NaN if W_E is None).
    - `fourier.key_freqs`: how many key frequencies the run has.
    - `fourier.top_freq`: its strongest key frequency k (largest norm in the key source), NaN if it has none.

    logits [R, p, p, C] on the full grid, labels [p, p], W_E [R, p, d] (number-token rows), masks [R, p, p].
    Keys come from `key_frequencies` on `sum_norms(logits)` ("logits") or `embedding_norms(W_E)` ("embed"),
    per run; pass `keys` [R, K+1] or [K+1] to use fixed ones (e.g. the final checkpoint's)."""
    logits = logits.detach().to(F64)
    runs, dev = logits.shape[0], logits.device
    embed_norms = embedding_norms(W_E.detach().to(dev)) if W_E is not None else None
    if key_source == "logits":
        norms = sum_norms(logits)
    elif key_source == "embed":
        if embed_norms is None:
            raise ValueError("key_source='embed' needs W_E")
        norms = embed_norms
    else:
        raise ValueError(f"key_source must be 'logits' or 'embed', not {key_source!r}")
    if keys is None:
        keys = key_frequencies(norms, frac)
    keys = keys.to(dev, torch.bool).expand(runs, norms.shape[1]).clone()
    keys[:, 0] = False
    train = train_mask.to(dev, torch.bool).expand(logits.shape[:3])
    test = (~train if test_mask is None else test_mask.to(dev, torch.bool).expand(logits.shape[:3]))
    split = {"test": test, "train": train, "all": train | test}
    if restricted_split not in split:
        raise ValueError(f"restricted_split must be one of {sorted(split)}, not {restricted_split!r}")
    ranked = torch.where(keys, norms, -math.inf)
    top = torch.where(keys.any(dim=1), ranked.argmax(dim=1).to(F64), math.nan)
    nan = torch.full((runs,), math.nan, dtype=F64, device=dev)
    return {
        "fourier.restricted_loss": restricted_loss(logits, labels, keys, split[restricted_split]),
        "fourier.excluded_loss": excluded_loss(logits, labels, keys, train),
        "fourier.gini_embed": gini(embed_norms[:, 1:]) if embed_norms is not None else nan,
        "fourier.key_freqs": keys.sum(dim=1).to(F64),
        "fourier.top_freq": top,
    }
