r"""Cost benchmark: ratios measured side by side in one run on this machine (`make bench`).

  python -m experiments.bench [--sizes=250,500,1000,2000,4000] [--parts=1,2,3,5]
                              [--out=workdirs/bench.json]

Prints and writes to JSON, so that commits can be compared:
  1. the kernel against this machine's limit: one batched vmap(jacrev) pass
     over the data plus one J Jᵀ matmul, and the FLOP/s of the kernel's Gram
     product against a plain matmul of the same size (aim: within 1.5×);
  2. random projections, Gaussian and sparse sign side by side: kernel error
     (relative Frobenius) and time for several sketch sizes k, and the error of
     the predicted T_eps and level times against the exact kernel's;
  3. predicting the demo's grid of 8 and a grid of 32 configurations (the demo's
     horizon) against fine-tuning them (aim: ≥ 30× for 8, ≥ 100× for 32), with
     the full, the class-traced and the sparse-sign sketched (k = 4,096) kernel, the
     dense and the low-rank SDE
     (`--rank_tol`); prediction = kernel + SDE + step timing, fine-tuning =
     measured seconds per compiled step × steps, evaluation excluded;
  4. (only with --parts=4: it takes longer than the rest) kernel time and
     memory against N (C = 5; exact up to N = `--exact_max`, sketched beyond)
     and against C (N = 500), at 28×28, and SDE steps per second against N·C;
  5. the low-rank SDE (dynamics.low_rank, `--ranks`) against the dense one on a
     cached kernel (`--kernel`, the demo's by default): simulation speed-up
     with and without XLA compilation (each simulation compiles afresh), curve
     error max|log L̂_k − log L̂_dense| of the mean training-loss curves,
     predicted T_eps difference and the bound β_k (dynamics.truncation_bounds),
     over a grid of 4 at m = 0 (lr 0.003, 0.01 × B 10, 50), 16 paths each;
  6. paper scale (`make paper_scale`, configs/paper_scale.py): the whole
     Fashion-MNIST 5–9 training set fine-tuned for real, predicted from kernels on
     M ≤ 1,000, each method's cost ratio beside its T_eps and loss-level errors and
     the trivial baselines'. It reruns pipeline.run_subset on `--paper_workdir`
     with that workdir's own config: the real runs and kernels come from its cache
     (their seconds as measured when they ran), the predictions are simulated
     again in this run; skipped where the workdir does not exist yet.
Parts 1–5 use this model: the default ResNet-8 with random weights (costs do not depend on the
values) on Fashion-MNIST 5–9 (`--source=digits` where it is not installed), for parts
1–3 on the demo's target size (N = 200 at 14×14) and horizon (1,200 steps).
"""

import dataclasses
import json
import os
import time

from absl import app
from absl import flags
from absl import logging
import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import ml_collections
import numpy as np

from ntk_time import data
from ntk_time import dynamics
from ntk_time import finetune
from ntk_time import models
from ntk_time import ntk
from ntk_time import pipeline
from ntk_time import predict
from ntk_time import sgd
from ntk_time import times
from ntk_time import workdir as wd
from ntk_time.configs import default

_SIZES = flags.DEFINE_list('sizes', ['250', '500', '1000', '2000', '4000'], 'N for the table')
_N = flags.DEFINE_integer('n', default.get_config().target.n_train,
                          "N for parts 1-3 (the demo target's, at its image size)")
_EXACT_MAX = flags.DEFINE_integer('exact_max', 1000,
                                   'part 4: the exact kernel up to N·C = 5 × this, sketched beyond')
_CLASSES = flags.DEFINE_list('class_counts', ['2', '5', '10'], 'part 4: C at N = --n')
_SKETCHES = flags.DEFINE_list('sketches', ['256', '1024', '4096', '16384'], 'sketch sizes k')
_STEPS = flags.DEFINE_integer('steps', default.get_config().finetune.steps,
                              "horizon of the predicted grids (the demo's)")
_RANK_TOL = flags.DEFINE_float('rank_tol', 0.01, 'part 3: the low-rank SDE\'s predict.rank_tol')
_SOURCE = flags.DEFINE_string('source', 'fashion_mnist', "'fashion_mnist' or 'digits'")
_PARTS = flags.DEFINE_list('parts', ['1', '2', '3', '5', '6'],
                           'which parts to run (numbers above)')
_KERNEL = flags.DEFINE_string('kernel', 'workdirs/default/kernel.npz',
                              "part 5: a kernel cache of pipeline.cached_kernel, made on the "
                              "default config's target set")
_RANKS = flags.DEFINE_list('ranks', ['25', '50', '100', '200'], 'part 5: ranks k')
_PAPER = flags.DEFINE_string('paper_workdir', 'workdirs/paper_scale',
                             'part 6: the workdir of `make paper_scale`')
_OUT = flags.DEFINE_string('out', 'workdirs/bench.json', 'JSON results')


def _timed(f, *args):
  t0 = time.perf_counter()
  out = jax.block_until_ready(f(*args))
  return out, time.perf_counter() - t0


def _setup(n, source, num_classes=5, image_size=None):
  """The target task (classes 5–9 by default) and a random-weight ResNet-8 on it;
  image_size None: the source's own (28 for Fashion-MNIST, digits upscaled to 28)."""
  classes = tuple(range(10 - num_classes, 10))
  size = image_size or (28 if source == 'digits' else None)
  src = data.load_source(source, image_size=size)
  task = data.make_task(src, classes, n_train=n, n_test=50, seed=1)
  model = models.create_model('ResNet8', len(classes))
  variables = models.init_variables(model, jax.random.key(0), task.x_train.shape[1:])
  return task, variables['params'], models.make_apply_fn(model, variables['batch_stats'])


def limit(task, params, apply_fn) -> dict:
  """Part 1: the kernel against one Jacobian pass + one matmul, and Gram vs plain matmul."""
  flat, unravel = ravel_pytree(params)
  jac = jax.jit(jax.vmap(jax.jacrev(lambda p, x: apply_fn(unravel(p), x[None])[0]),
                         in_axes=(None, 0)))
  x = jnp.asarray(task.x_train)
  jax.block_until_ready(jac(flat, x[:2]))  # compile on another shape first, then the real one
  j, _ = _timed(jac, flat, x)
  j, t_jac = _timed(jac, flat, x)
  n, c, p = j.shape
  a = j.reshape(n * c, p)
  mm = jax.jit(lambda a: a @ a.T)
  _timed(mm, a)
  _, t_mm = _timed(mm, a)
  flops = 2.0 * (n * c) ** 2 * p
  rand = jax.random.normal(jax.random.key(0), a.shape, a.dtype)
  _, t_plain = _timed(mm, rand)
  ntk.empirical_ntk(apply_fn, params, task.x_train[:8], block_size=8)  # warm the caches
  t0 = time.perf_counter()
  ntk.empirical_ntk(apply_fn, params, task.x_train, block_size=100)
  t_kernel = time.perf_counter() - t0
  return {'n': n, 'c': c, 'p': p, 'jacobian_pass_seconds': t_jac, 'gram_matmul_seconds': t_mm,
          'limit_seconds': t_jac + t_mm, 'kernel_seconds': t_kernel,
          'kernel_over_limit': t_kernel / (t_jac + t_mm),
          'gram_gflops': flops / t_mm / 1e9, 'plain_matmul_gflops': flops / t_plain / 1e9,
          'plain_over_gram_flops': t_mm / t_plain}


def projections(task, params, apply_fn, sketches, steps) -> dict:
  """Part 2: sketched kernels of each kind against the exact one, side by side (relative
  Frobenius error, time, and the predicted T_eps and level times against the exact
  kernel's)."""
  lin = ntk.linearize(apply_fn, params, task.x_train, task.x_test, progress=False)
  exact = ntk.flatten(lin.k_train_train)
  hp = sgd.SGD(lr=0.01, batch_size=25, steps=steps, momentum=0.9)

  def predicted_times(k):  # {definition: steps or None}, None where the SDE diverged
    l2 = ntk.Linearization(k, lin.k_test_train, lin.fx_train_0, lin.fx_test_0, lin.jw0_train,
                           lin.jw0_test)
    [r] = predict.predict(l2, task.y_train, task.y_test, [hp], key=jax.random.key(0),
                          method='sde', loss='cross_entropy', eval_every=20,
                          targets=times.Targets(), num_paths=16)
    return {d: None if r.diverged else t.value for d, t in r.times.items()}

  def time_errors(got, ref):
    return {d: None if got[d] is None or not ref[d] else abs(got[d] - ref[d]) / ref[d]
            for d in ref}

  exact_times = predicted_times(lin.k_train_train)
  out = {'exact_seconds': lin.seconds, 'exact_t_eps': exact_times['t_eps'],
         'exact_times': exact_times, 'sketches': []}
  for kind in ntk.SKETCH_KINDS:
    for k in sketches:
      t0 = time.perf_counter()
      ks, _ = ntk.empirical_ntk(apply_fn, params, task.x_train, block_size=100, sketch_dim=k,
                                sketch_key=jax.random.key(1), sketch_kind=kind)
      secs = time.perf_counter() - t0
      got = predicted_times(ks)
      out['sketches'].append({'kind': kind, 'k': k, 'seconds': secs,
                              'time_ratio': secs / lin.seconds,
                              'rel_frobenius_error': float(np.linalg.norm(ntk.flatten(ks) - exact)
                                                           / np.linalg.norm(exact)),
                              't_eps': got['t_eps'], 'times': got,
                              'time_errors': time_errors(got, exact_times)})
  return out


# Part 3's kernels: exact, class-traced, and the sparse sign sketch (its cost is the Jacobian
# pass's whatever k, part 2).
KERNELS = {'full': {}, 'traced': {'traced': True},
           'sketched': {'sketch_dim': 4096, 'sketch_kind': 'sparse_sign',
                        'sketch_key': jax.random.key(1)}}


def grid_cost(task, params, apply_fn, steps, rank_tol) -> dict:
  """Part 3: predicting the demo's grid of 8 and a grid of 32 vs fine-tuning them, with the
  full, the class-traced and the sketched kernel (KERNELS), the dense SDE and the low-rank
  one (rank_tol).

  Prediction = kernel + SDE + the step timing `pipeline.predicted` does (one compiled
  step per batch size, 5 timed); fine-tuning = measured seconds per compiled step ×
  steps, evaluation excluded.
  """
  ft = default.get_config().finetune
  grids = {8: [dataclasses.replace(hp, steps=steps) for hp in sgd.grid(ft)],
           32: [sgd.SGD(lr=lr, batch_size=b, steps=steps, momentum=m)
                for lr in (0.001, 0.003, 0.01, 0.02) for b in ft.batch_size
                for m in (0.0, 0.5, 0.8, 0.9)]}
  t0 = time.perf_counter()
  sps = {b: finetune.step_cost(apply_fn, params, task, sgd.SGD(lr=1e-3, batch_size=b, steps=1),
                               loss='cross_entropy', key=jax.random.key(b))[0]
         for b in ft.batch_size}
  timing = time.perf_counter() - t0
  # The fine-tuning side from a longer timing of the same steps.
  sps_train = {b: finetune.step_cost(apply_fn, params, task,
                                     sgd.SGD(lr=1e-3, batch_size=b, steps=1), loss='cross_entropy',
                                     key=jax.random.key(b), repeats=50)[0]
               for b in ft.batch_size}
  common = dict(key=jax.random.key(0), method='sde', loss='cross_entropy', eval_every=20,
                targets=times.Targets(), num_paths=16)
  out = {'n': len(task.x_train), 'steps': steps, 'image_shape': list(task.x_train.shape[1:]),
         'seconds_per_step': sps_train, 'step_timing_seconds': timing, 'rank_tol': rank_tol}
  t_eps = {}
  for kernel, kw in KERNELS.items():
    lin = ntk.linearize(apply_fn, params, task.x_train, task.x_test, progress=False, **kw)
    res = out[kernel] = {'kernel_seconds': lin.seconds}
    for size, grid in grids.items():
      train = sum(sps_train[hp.batch_size] * hp.steps for hp in grid)
      for sim_name, low in (('dense', {}), ('low_rank', {'rank_tol': rank_tol})):
        t0 = time.perf_counter()
        preds = predict.predict(lin, task.y_train, task.y_test, grid, **low, **common)
        sim = time.perf_counter() - t0  # with λ_max and, for low_rank, the eigenbasis
        cost = lin.seconds + sim + timing
        res[f'grid_{size}_{sim_name}'] = {
            'simulation_seconds': sim, 'train_seconds': train, 'predict_seconds': cost,
            'ratio': train / cost, 'rank': preds[0].rank,
            'ratio_bound_kernel_only': train / lin.seconds}
        t_eps[kernel, size, sim_name] = [None if p.diverged else p.times['t_eps'].value
                                         for p in preds]

  def differences(key):  # predicted T_eps against the full kernel's dense SDE, grid of 32
    d = [abs(a - b) / b for a, b in zip(t_eps[key], t_eps['full', 32, 'dense'])
         if a is not None and b]
    return {'median_relative_difference': float(np.median(d)) if d else None,
            'max_relative_difference': float(np.max(d)) if d else None, 'compared': len(d)}

  out['t_eps_vs_full_dense'] = {f'{k}_{s}': differences((k, 32, s))
                                for k in KERNELS for s in ('dense', 'low_rank')
                                if (k, s) != ('full', 'dense')}
  return out


def scaling(source, sizes, exact_max, steps, sketch_dim=4096, class_counts=(), n_classes=500
            ) -> dict:
  """Part 4: kernel time and memory against N at C = 5 (sketched to `sketch_dim` beyond
  exact_max) and against C at N = n_classes; SDE steps per second against N·C."""
  rows = []
  for n, c in [(n, 5) for n in sizes] + [(n_classes, c) for c in class_counts if c != 5]:
    task, params, apply_fn = _setup(n, source, c)
    p = models.num_params(params)
    sketch = 0 if n * c <= exact_max * 5 else sketch_dim
    mem = ntk.memory_bytes(n, 0, c, p, implementation='direct', traced=False, block_size=100,
                           sketch_dim=sketch)
    t0 = time.perf_counter()
    k, _ = ntk.empirical_ntk(apply_fn, params, task.x_train, block_size=100, sketch_dim=sketch,
                             sketch_key=jax.random.key(0))
    secs = time.perf_counter() - t0
    hp = sgd.SGD(lr=0.003, batch_size=25, steps=min(steps, 100))
    fx0 = np.zeros((n, c), np.float32)
    t0 = time.perf_counter()
    dynamics.simulate_sde(jax.random.split(jax.random.key(0), 16), sgd.learning_rates(hp),
                          k.astype(np.float32), fx0, task.y_train, batch_size=25,
                          loss='cross_entropy', eval_every=hp.steps)
    sde = time.perf_counter() - t0
    rows.append({'n': n, 'c': c, 'sketch_dim': sketch, 'kernel_seconds': secs,
                 'memory_estimate_gib': mem / 2**30, 'kernel_gib': k.nbytes / 2**30,
                 'sde_steps_per_second_16_paths': hp.steps / sde})
    print(f"N={n:5d} C={c:2d} NC={c * n:6d} {'exact' if not sketch else f'k={sketch}':>7s}: "
          f"kernel {secs:7.1f} s, about {mem / 2**30:5.2f} GiB; SDE {hp.steps / sde:8.1f} "
          'steps/s (16 paths, compile included)', flush=True)
  return {'rows': rows}


def low_rank(path, ranks, steps) -> dict:
  """Part 5: the low-rank SDE against the dense one on the cached kernel at `path`."""
  lin = ntk.Linearization(**{k: v for k, v in wd.read_npz(path).items() if k != 'config_hash'})
  t = default.get_config().target  # the labels of the set the kernel was made on
  src = data.load_source(t.source, t.data_dir or None, t.image_size or None,
                         normalize=t.normalize)
  task = data.make_task(src, t.classes, t.n_train, t.n_test, t.seed)
  if len(task.y_train) != len(lin.fx_train_0):
    raise ValueError(f'{path} has {len(lin.fx_train_0)} training samples, the default config\'s '
                     f'target set {len(task.y_train)}')
  grid = [sgd.SGD(lr=lr, batch_size=b, steps=steps) for lr in (0.003, 0.01) for b in (10, 50)]
  common = dict(key=jax.random.key(0), method='sde', loss='cross_entropy', eval_every=20,
                targets=times.Targets(), num_paths=16)

  # XLA compilation is timed apart (jax.monitoring): every simulate_sde call compiles
  # afresh, and at small k it would dominate what a step costs.
  compiled = [0.0]

  def on_event(event, duration, **_):
    if event == '/jax/core/compile/backend_compile_duration':
      compiled[0] += duration

  jax.monitoring.register_event_duration_secs_listener(on_event)

  def run(rank):
    """predict's Predictions, wall seconds, simulation seconds, and the latter less compilation."""
    t0, c0 = time.perf_counter(), compiled[0]
    preds = predict.predict(lin, task.y_train, task.y_test, grid, rank=rank, **common)
    sim = sum(p.seconds for p in preds)
    return preds, time.perf_counter() - t0, sim, sim - (compiled[0] - c0)

  dense, dense_wall, dense_sim, dense_run = run(0)
  lr_sum = max(float(np.sum(sgd.learning_rates(hp))) for hp in grid)
  top = dynamics.low_rank(lin.k_train_train, max(ranks))
  bounds = dynamics.truncation_bounds(lin.k_train_train, top, lin.fx_train_0, task.y_train,
                                      loss='cross_entropy', lr_sum=lr_sum)
  out = {'n': len(task.y_train), 'c': lin.fx_train_0.shape[1], 'steps': steps,
         'dense_simulation_seconds': dense_sim, 'dense_wall_seconds': dense_wall,
         'dense_simulation_seconds_less_compilation': dense_run,
         'dense_t_eps': [None if p.diverged else p.times['t_eps'].value for p in dense],
         'ranks': []}
  for rank in ranks:
    preds, wall, sim, sim_run = run(rank)
    curve, loss, t_eps = [], [], []
    for p, d in zip(preds, dense):
      if p.diverged or d.diverged:
        continue
      a, b = p.curves['train_loss'].mean, d.curves['train_loss'].mean
      curve.append(float(np.max(np.abs(np.log(a) - np.log(b)))))
      loss.append(float(np.max(np.abs(a - b))))
      a, b = p.times['t_eps'].value, d.times['t_eps'].value
      t_eps.append(None if a is None or b is None else abs(a - b))
    out['ranks'].append({
        'rank': rank, 'basis_seconds': wall - sim, 'simulation_seconds': sim,
        'wall_seconds': wall, 'simulation_speedup': dense_sim / sim,
        'wall_speedup': dense_wall / wall, 'simulation_seconds_less_compilation': sim_run,
        'speedup_less_compilation': dense_run / sim_run,
        'max_curve_error': max(curve, default=None),
        'max_loss_error': max(loss, default=None),
        't_eps_abs_difference': t_eps, 'compared': len(curve),
        't_eps': [None if p.diverged else p.times['t_eps'].value for p in preds],
        'bound': float(bounds[rank - 1])})
  return out


def paper_scale(workdir) -> dict | None:
  """Part 6: the paper-scale study rerun on its workdir's cache (None: no such workdir)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return None
  config = ml_collections.ConfigDict(wd.read_json(path))
  numbers = pipeline.run_subset(config, workdir, progress=False)
  summary = wd.read_json(os.path.join(workdir, 'summary.json'))
  return {'n_train': summary['n_train'], 'runs': len(summary['rows']),
          'epochs': config.epochs, 'aggregate': numbers['aggregate']}


def main(_):
  logging.set_verbosity(logging.WARNING)  # JAX's backend probing is not news
  results = {'jax': jax.__version__, 'devices': [str(d) for d in jax.local_devices()]}
  parts = set(_PARTS.value)
  if parts & {'1', '2', '3'}:
    task, params, apply_fn = _setup(_N.value, _SOURCE.value,
                                    image_size=default.get_config().target.image_size)
  if '1' in parts:
    results['limit'] = r = limit(task, params, apply_fn)
    print(f"1. kernel {r['kernel_seconds']:.1f} s vs limit {r['limit_seconds']:.1f} s (Jacobian "
          f"pass {r['jacobian_pass_seconds']:.1f} + J Jᵀ {r['gram_matmul_seconds']:.1f}): "
          f"{r['kernel_over_limit']:.2f}× the limit (aim ≤ 1.5×); Gram {r['gram_gflops']:.1f} "
          f"GFLOP/s, plain matmul {r['plain_matmul_gflops']:.1f} GFLOP/s", flush=True)
  if '2' in parts:
    results['projections'] = r = projections(task, params, apply_fn,
                                             [int(k) for k in _SKETCHES.value], _STEPS.value)
    print(f"2. exact kernel {r['exact_seconds']:.1f} s, predicted T_eps {r['exact_t_eps']}")
    for s in r['sketches']:
      print(f"   {s['kind']:11s} k={s['k']:6d}: {s['seconds']:6.1f} s ({s['time_ratio']:.2f}× "
            f"exact), relative error {s['rel_frobenius_error']:.3f}, predicted T_eps {s['t_eps']}"
            f", time errors {s['time_errors']}", flush=True)
  if '3' in parts:
    results['grid_cost'] = r = grid_cost(task, params, apply_fn, _STEPS.value,
                                         _RANK_TOL.value)
    print(f"3. N = {r['n']}, {r['steps']} steps; step timing {r['step_timing_seconds']:.1f} s; "
          f"seconds per step {r['seconds_per_step']}", flush=True)
    for kernel in KERNELS:
      for size in (8, 32):
        for sim in ('dense', 'low_rank'):
          g, k = r[kernel][f'grid_{size}_{sim}'], r[kernel]
          print(f"   {kernel:8s} kernel, {sim:8s} SDE (rank {g['rank']}), grid of {size}: predict "
                f"{g['predict_seconds']:.1f} s (kernel {k['kernel_seconds']:.1f} + SDE "
                f"{g['simulation_seconds']:.1f} + timing) vs fine-tune {g['train_seconds']:.1f} s:"
                f" {g['ratio']:.1f}× cheaper (aim {30 if size == 8 else 100}×; "
                f"{g['ratio_bound_kernel_only']:.1f}× if only the kernel cost)", flush=True)
    for name, d in r['t_eps_vs_full_dense'].items():
      print(f"   {name} vs full dense, predicted T_eps over the grid of 32: median relative "
            f"difference {d['median_relative_difference']}, max {d['max_relative_difference']} "
            f"({d['compared']} compared)", flush=True)
  if '4' in parts:
    print('4. scaling')
    results['scaling'] = scaling(_SOURCE.value, [int(n) for n in _SIZES.value], _EXACT_MAX.value,
                                 _STEPS.value, class_counts=[int(c) for c in _CLASSES.value],
                                 n_classes=500)
  if '5' in parts:
    results['low_rank'] = r = low_rank(_KERNEL.value, [int(k) for k in _RANKS.value], _STEPS.value)
    print(f"5. low-rank SDE, N·C = {r['n'] * r['c']}, grid of 4 × 16 paths, {r['steps']} steps: "
          f"dense simulation {r['dense_simulation_seconds']:.1f} s "
          f"({r['dense_simulation_seconds_less_compilation']:.1f} s without XLA compilation; "
          f"{r['dense_wall_seconds']:.1f} s with λ_max), predicted T_eps {r['dense_t_eps']}",
          flush=True)
    for k in r['ranks']:
      print(f"   k={k['rank']:5d}: simulation {k['simulation_seconds_less_compilation']:5.1f} s "
            f"without compilation ({k['speedup_less_compilation']:5.1f}× faster), "
            f"{k['simulation_seconds']:5.1f} s with ({k['simulation_speedup']:4.1f}×), basis and "
            f"the rest {k['basis_seconds']:5.1f} s (wall "
            f"{k['wall_speedup']:4.1f}×); curve error {k['max_curve_error']:.2e}, loss error "
            f"{k['max_loss_error']:.2e} vs bound β_k {k['bound']:.2e}; |ΔT_eps| "
            f"{k['t_eps_abs_difference']} ({k['compared']} compared)", flush=True)
  if '6' in parts:
    results['paper_scale'] = r = paper_scale(_PAPER.value)
    if r is None:
      print(f'6. paper scale: skipped, no {_PAPER.value} (run `make paper_scale` first)')
    else:
      print(f"6. paper scale, N = {r['n_train']}, {r['runs']} real runs × {r['epochs']} epochs "
            f"(real runs and kernels from {_PAPER.value}'s cache, predictions simulated now), "
            'errors median / max over the runs:', flush=True)
      pct = lambda v: '-' if v is None else ('∞' if v == 'inf' else f'{100 * v:.0f}%')  # noqa: E731
      for a in r['aggregate']:
        if a['loss'] != 'all' and any(b['predictor'] == a['predictor'] and b['loss'] == 'all'
                                      for b in r['aggregate']):
          continue  # per loss in its summary.json; here the pooled rows
        cost = (f"predict {a['predict_seconds']:.0f} s vs train {a['train_seconds']:.0f} s: "
                f"{a['cost_ratio']:.1f}× cheaper (aim 30×)" if 'cost_ratio' in a else 'baseline')
        print(f"   {a['predictor']:17s} ({a['loss']}, {a['runs']} runs): T_eps "
              f"{pct(a['t_eps']['median'])} / {pct(a['t_eps']['max'])}, loss levels "
              f"{pct(a['levels']['median'])} / {pct(a['levels']['max'])} "
              f"({a['levels']['misses']} misses); {cost}", flush=True)
  os.makedirs(os.path.dirname(_OUT.value) or '.', exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(results, f, indent=1)
  print('wrote', _OUT.value)


if __name__ == '__main__':
  app.run(main)
