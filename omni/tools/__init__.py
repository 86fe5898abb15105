"""Developer tools (the `dev` extra): random-weight checkpoints, their presets, test media, and the
transformers reference driven the way parity tests and benchmarks need it. The runtime never
imports this package."""
