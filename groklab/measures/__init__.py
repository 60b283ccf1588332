"""Measurements a run can record beside loss and accuracy (the `metrics.measures` config): each a module
of plain functions over a pack's flat parameters [R, P] or its logits, batched over runs so a run's
values do not depend on which runs share its pack."""
