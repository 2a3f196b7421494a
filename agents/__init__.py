"""Training recipes: algorithm registry, config loading, callbacks, GPU trainer."""
