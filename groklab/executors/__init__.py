"""Executors: where packs train. `base` holds what they share (leases, checkpoints, the pack loop);
`local` trains in this process, `pool` in local worker processes, `ray_backend` as Ray tasks."""
