"""What differs between the pinned jax (0.5.3, for neural-tangents) and current jax."""

import jax

try:
  enable_x64 = jax.enable_x64  # jax >= 0.6 (jax.experimental's was removed later)
except AttributeError:
  from jax.experimental import enable_x64  # noqa: F401  pylint: disable=g-import-not-at-top
