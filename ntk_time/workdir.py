"""Workdir files: atomic JSON / JSONL / npz writes and config hashes.

Every stage writes what it produced into its workdir so that plots, notebooks
and later stages read files instead of recomputing. Writes go to a temporary
file in the same folder and are then renamed, so an interrupted run leaves the
old file or the new one, never half a file.
"""

import hashlib
import json
import os
import shutil
import tempfile
from typing import Any

import numpy as np


def _atomic_write(path: str, write) -> None:
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp-', suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, 'wb') as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _to_jsonable(obj: Any) -> Any:
  if isinstance(obj, dict):
    return {str(k): _to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_to_jsonable(v) for v in obj]
  if isinstance(obj, (np.ndarray, np.generic)) or hasattr(obj, '__array__'):
    arr = np.asarray(obj)
    return arr.tolist() if arr.ndim else arr.item()
  if isinstance(obj, float) and not np.isfinite(obj):
    return None  # JSON has no NaN; a missing value is stated as null.
  return obj


def as_json(obj: Any) -> Any:
  """`obj` as it reads back from a JSON file (tuples as lists, NaN as None)."""
  return json.loads(json.dumps(_to_jsonable(obj)))


def write_bytes(path: str, data: bytes) -> None:
  _atomic_write(path, lambda f: f.write(data))


def write_json(path: str, obj: Any) -> None:
  data = json.dumps(_to_jsonable(obj), indent=1, sort_keys=False).encode()
  write_bytes(path, data)


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def write_npz(path: str, **arrays) -> None:
  _atomic_write(path, lambda f: np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()}))


def read_npz(path: str) -> dict[str, np.ndarray]:
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def write_jsonl(path: str, rows: list[dict]) -> None:
  data = ''.join(json.dumps(_to_jsonable(r)) + '\n' for r in rows).encode()
  write_bytes(path, data)


def config_hash(obj: Any) -> str:
  """A short, stable hash of a JSON-able object (a config or part of one)."""
  if hasattr(obj, 'to_dict'):
    obj = obj.to_dict()
  text = json.dumps(_to_jsonable(obj), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def digest(*arrays) -> str:
  """A short hash of the bytes, shapes and dtypes of arrays (data, weights, orders)."""
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(np.asarray(a))
    h.update(f'{a.dtype}{a.shape}'.encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def load_if_hash(path: str, expected_hash: str) -> dict[str, np.ndarray] | None:
  """The arrays of `path` if it exists and was written for `expected_hash`."""
  if not os.path.exists(path):
    return None
  arrays = read_npz(path)
  if str(arrays.get('config_hash', '')) != expected_hash:
    return None
  return arrays


def claim(workdir: str, config: dict, overwrite: bool = False, free: tuple[str, ...] = ()
          ) -> None:
  """Makes `workdir` the workdir of `config`, refusing one made with another config.

  `free`: dotted paths of config blocks that may differ (their stages key their caches
  by their own hash, e.g. 'predict'); config.json is then rewritten with `config`.

  Raises:
    ValueError: `workdir/config.json` holds another config outside `free` (the first
      differences are named) and `overwrite` is False; with `overwrite` the workdir is
      deleted.
  """
  path = os.path.join(workdir, 'config.json')
  if os.path.exists(path):
    old, new = (_without(as_json(c), free) for c in (read_json(path), config))
    if config_hash(old) != config_hash(new):
      if not overwrite:
        diff = _differences(old, new)
        raise ValueError(f'{workdir} holds a run of another config ({"; ".join(diff[:5])}); '
                         'use another workdir, or --overwrite to delete it and start afresh')
      shutil.rmtree(workdir)
  os.makedirs(workdir, exist_ok=True)
  write_json(path, config)


def _without(config: dict, paths: tuple[str, ...]) -> dict:
  """`config` (a fresh as_json copy, changed in place) less the dotted `paths`."""
  for p in paths:
    *parents, last = p.split('.')
    d = config
    for k in parents:
      d = d.get(k, {})
    d.pop(last, None)
  return config


def _differences(old: dict, new: dict, prefix: str = '') -> list[str]:
  out = []
  for k in sorted(set(old) | set(new)):
    a, b = old.get(k), new.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _differences(a, b, f'{prefix}{k}.')
    elif a != b:
      out.append(f'{prefix}{k}: {a!r} there, {b!r} here')
  return out
