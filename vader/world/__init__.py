"""The shapes world: a small text-to-video world whose truth we know, so alignment can be
measured offline. `grammar` (prompts and held-out combinations), `render` (prompt, seed ->
frames), `dataset` (a captioned dataset on disk), `judge` (what a video shows, per attribute),
`pretrain` (the shipped world model), `accuracy` (a model's held-out accuracy). Commands:
`python -m vader.world render | pretrain | evaluate` (docs/world.md)."""
