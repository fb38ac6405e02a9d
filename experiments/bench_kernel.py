r"""Times the kernel implementations and block sizes side by side, in one run.

  python -m experiments.bench_kernel [--n=500] [--out=workdirs/bench_kernel.json]

On the default model (ResNet-8, pretrained weights not needed: timing does not
depend on the values) and a random batch of 28×28 images, computes
k_train_train [N, N, C, C] with each implementation and prints seconds and the
ratio to the fastest; checks that all agree. Absolute times are noisy on a
shared machine; the ratios are what the default in ntk_time/ntk.py rests on.
"""

import json
import os
import time

from absl import app
from absl import flags
import jax
import numpy as np

from ntk_time import models
from ntk_time import ntk

_N = flags.DEFINE_integer('n', 500, 'training samples')
_C = flags.DEFINE_integer('classes', 5, 'classes (head width)')
_OUT = flags.DEFINE_string('out', 'workdirs/bench_kernel.json', 'JSON results')

CASES = (('direct', 50), ('direct', 100), ('direct', 250), ('direct', 500),
         ('nt_jacobian_contraction', 100), ('nt_jacobian_contraction', 500))
# 'nt_ntvp' is left out: with one block of 500 it asked for 455 GB, and with blocks
# of 100 it had not finished when a 10-minute limit on the whole run ended it here
# (tests/test_ntk.py checks it against J Jᵀ on a small net).


def main(_):
  model = models.create_model('ResNet8', _C.value)
  variables = models.init_variables(model, jax.random.key(0), (28, 28, 1))
  apply_fn = models.make_apply_fn(model, variables['batch_stats'])
  x = np.asarray(jax.random.normal(jax.random.key(1), (_N.value, 28, 28, 1)))
  results, ref = [], None
  for impl, block in CASES:
    if block > _N.value:
      continue
    t0 = time.perf_counter()
    k, _ = ntk.empirical_ntk(apply_fn, variables['params'], x, implementation=impl,
                             block_size=block)
    secs = time.perf_counter() - t0
    ref = k if ref is None else ref
    err = float(np.abs(k - ref).max() / np.abs(ref).max())
    results.append({'implementation': impl, 'block_size': block, 'seconds': secs,
                    'max_rel_diff_to_first': err})
    print(f'{impl:26s} block {block:4d}: {secs:7.1f} s  (max rel. diff {err:.1e})', flush=True)
  best = min(r['seconds'] for r in results)
  for r in results:
    r['ratio_to_fastest'] = r['seconds'] / best
    print(f"{r['implementation']:26s} block {r['block_size']:4d}: {r['ratio_to_fastest']:.2f}× the fastest")
  os.makedirs(os.path.dirname(_OUT.value) or '.', exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump({'n': _N.value, 'classes': _C.value, 'num_params': models.num_params(
        variables['params']), 'results': results}, f, indent=1)
  print('wrote', _OUT.value)


if __name__ == '__main__':
  app.run(main)
