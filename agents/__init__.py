"""Training recipes: the algorithm registry, config presets, the run folder, the SB3 path and the
batched trainers (:mod:`agents.batched`), evaluation and the benchmark."""
