"""Experiment configs: `ml_collections` files, each with `get_config()`.

They import nothing but ml_collections (and each other), so a config loads
without jax or the library; `ntk_time.checks.check(config)` validates one
before an experiment does any work.
"""
