"""Pretrained weights in and out.

A checkpoint is one msgpack file holding {'params', 'batch_stats'} and a JSON
`meta` string (the model config and how the weights were made). Pretraining
writes them; a user's own weights (or weights converted from another
framework) load through the same `load`, checked entry by entry against the
model they are meant for.
"""

import json
import os
from typing import Any

import flax
import jax
import numpy as np

from ntk_time import models
from ntk_time import workdir as wd

PyTree = Any


def save(path: str, variables: PyTree, meta: dict | None = None) -> None:
  """Writes {'params', 'batch_stats'} (+ JSON-able meta) atomically to `path`."""
  state = {'params': jax.device_get(variables['params']),
           'batch_stats': jax.device_get(variables.get('batch_stats', {})),
           'meta': json.dumps(meta or {})}
  data = flax.serialization.msgpack_serialize(flax.serialization.to_state_dict(state))
  wd.write_bytes(path, data)


def read(path: str) -> tuple[PyTree, dict]:
  """The raw variables and meta of a checkpoint file, unchecked."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'checkpoint not found: {path}')
  with open(path, 'rb') as f:
    raw = f.read()
  try:
    state = flax.serialization.msgpack_restore(raw)
  except Exception as e:  # msgpack raises several types on corrupt input
    raise ValueError(f'checkpoint {path} is unreadable (truncated or not a ntk_time '
                     f'checkpoint): {e}') from e
  if not isinstance(state, dict) or 'params' not in state:
    raise ValueError(f'checkpoint {path} has no params entry')
  meta = json.loads(state.get('meta') or '{}')
  return {'params': state['params'], 'batch_stats': state.get('batch_stats', {})}, meta


def load(path: str, model: models.ResNet, image_shape: tuple[int, int, int]) -> tuple[PyTree, dict]:
  """Variables for `model` from `path`, checked against the model's own shapes.

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: unreadable file, images with another number of channels than
      the checkpoint was made for, or entries that do not match `model`
      (another architecture, width or number of classes), named in the message.
  """
  variables, meta = read(path)
  made_for = meta.get('image_shape')
  if made_for and made_for[-1] != image_shape[-1]:
    raise ValueError(f'images of shape {tuple(image_shape)} have {image_shape[-1]} channels, but '
                     f'checkpoint {path} was made for {made_for[-1]} (shape {tuple(made_for)})')
  expected = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), image_shape))
  models.check_compatible(expected['params'], variables['params'], f'checkpoint {path}')
  models.check_compatible(expected['batch_stats'], variables['batch_stats'],
                          f'checkpoint {path} (batch statistics)')
  return jax.tree.map(np.asarray, variables), meta
