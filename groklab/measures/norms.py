"""Weight norms per parameter group, so the "weight decay keeps weights small" mechanism and the
Omnigrok picture (loss against weight norm) can be drawn per layer, not only for the whole model."""

from __future__ import annotations

import torch


def group_of(name: str) -> str:
    """The group a parameter belongs to: embeddings, each block's attention / MLP / norms, the final norm,
    the last layer. Names are the model's (`0.qkv.w`, `tok`, `unembed.b`, `1.fc1.w`, `2.norm.g`, ...)."""
    head, _, rest = name.partition(".")
    if name in ("tok", "pos"):
        return "embed"
    if head in ("unembed", "out"):
        return "last"
    if head in ("ln_f", "final", "in"):
        return head if head != "ln_f" else "final_norm"
    if head.isdigit():
        part = rest.split(".")[0]
        kind = {"qkv": "attn", "out": "attn", "fc1": "mlp", "fc2": "mlp", "ln1": "norm", "ln2": "norm",
                "norm": "norm"}.get(part, "mlp")  # an MLP layer `i.w` / `i.b`
        return f"block{head}.{kind}"
    return head


def groups(names: list[str]) -> dict[str, list[str]]:
    """Parameter names per group, in the order the groups first appear."""
    out: dict[str, list[str]] = {}
    for n in names:
        out.setdefault(group_of(n), []).append(n)
    return out


def group_norms(flat: torch.Tensor, spans: dict[str, tuple[int, int]]) -> dict[str, torch.Tensor]:
    """`norm.<group>`: the L2 norm [R] of each group's parameters, from the flat parameters [R, P] and each
    parameter's span in it."""
    out = {}
    for g, names in groups(list(spans)).items():
        sq = sum(flat[:, spans[n][0] : spans[n][1]].pow(2).sum(1) for n in names)
        out[f"norm.{g}"] = sq.sqrt()
    return out
