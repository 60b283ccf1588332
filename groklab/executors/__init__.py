"""Executors beyond the local loop in groklab.sweep: Ray (optional extra `groklab[ray]`)."""
