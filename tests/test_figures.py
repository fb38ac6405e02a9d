"""Every figure script end to end on its smoke config."""

import json
import math
import os

import numpy as np
import pytest

from experiments import fig_batch_size
from experiments import fig_curves
from experiments import fig_effective_lr
from experiments import fig_times
from ntk_time import summary as summary_lib
from ntk_time.configs import fig_batch_size as fig_batch_size_config
from ntk_time.configs import fig_curves as fig_curves_config
from ntk_time.configs import fig_effective_lr as fig_effective_lr_config
from ntk_time.configs import fig_times as fig_times_config


def _from(config, checkpoint):
  for e in config.experiments.values():
    e.pretrain.checkpoint = checkpoint
  return config


@pytest.fixture(scope='module')
def times_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('fig_times'))
  return workdir, fig_times.run(fig_times_config.get_config('smoke'), workdir, progress=False)


def _written(numbers, workdir):
  assert os.path.exists(numbers['figure'])
  with open(os.path.join(workdir, 'figure.json')) as f:
    return json.load(f)


def test_fig_times(times_run):
  workdir, numbers = times_run
  on_disk = _written(numbers, workdir)
  assert set(on_disk['t_eps_errors']) == {'digits567', 'digits789', 'digits567_6px'}
  summaries = {n: summary_lib.Summary.read(os.path.join(workdir, n)) for n in on_disk['t_eps_errors']}
  # header, then per target every method and every baseline
  assert len(numbers['table']) == 2 + sum(len(s.predictors) for s in summaries.values())
  json_value = lambda v: None if v is None or math.isinf(v) else v  # JSON has no inf
  for name, s in summaries.items():
    for p in s.predictors:
      assert [x[p] for x in on_disk['t_eps_errors'][name]] == [
          json_value(r.errors[p]['t_eps'].value) for r in s.configs]
  # The three targets share the first one's pretraining.
  assert os.path.exists(os.path.join(workdir, 'digits567', 'pretrain', 'checkpoint.msgpack'))
  assert not os.path.exists(os.path.join(workdir, 'digits789', 'pretrain', 'checkpoint.msgpack'))


def test_fig_curves_reuses_the_fig_times_workdir(times_run):
  workdir, _ = times_run
  summary = os.path.join(workdir, 'digits789', 'summary.json')
  before = os.path.getmtime(os.path.join(workdir, 'digits789', 'kernel.npz'))
  numbers = fig_curves.run(fig_curves_config.get_config('smoke'), workdir, progress=False)
  assert os.path.getmtime(os.path.join(workdir, 'digits789', 'kernel.npz')) == before
  assert len(_written(numbers, workdir)['panels']) == 3 * 4
  assert os.path.exists(summary)
  bad = fig_curves_config.get_config('smoke')
  bad.show = (0, 9)
  with pytest.raises(ValueError, match=r'show=\[0, 9\] names a grid point'):
    fig_curves.run(bad, workdir, progress=False)


def test_fig_effective_lr(tmp_path, smoke_checkpoint):
  numbers = fig_effective_lr.run(_from(fig_effective_lr_config.get_config('smoke'),
                                       smoke_checkpoint), str(tmp_path), progress=False)
  [group] = _written(numbers, str(tmp_path))['groups']  # 0.05/(1-0) == 0.02/(1-0.6)
  assert group['effective_lr'] == pytest.approx(0.05)
  assert {m['name'].split('_')[0] for m in group['members']} == {'lr0.05', 'lr0.02'}


def test_fig_batch_size(tmp_path, smoke_checkpoint):
  numbers = fig_batch_size.run(_from(fig_batch_size_config.get_config('smoke'),
                                     smoke_checkpoint), str(tmp_path), progress=False)
  points = _written(numbers, str(tmp_path))['points']
  assert [p['batch_size'] for p in points] == [3, 6, 24]
  # Each point is its configuration's row of the summary, recomputed from its curves.
  [name] = fig_batch_size_config.get_config('smoke').experiments.keys()
  s = summary_lib.Summary.read(str(tmp_path / name))
  for p in points:
    [row] = [r for r in s.configs if r.hparams['batch_size'] == p['batch_size']]
    for m in s.methods:
      paths = row.predicted[m].times['t_eps'].per_curve
      assert p[f'{m}_t_eps'] == pytest.approx(np.mean(paths)), (p['batch_size'], m)
      err = row.errors[m]['t_eps'].value
      assert p[f'{m}_error'] == (None if math.isinf(err) else pytest.approx(err))


def test_subset_experiment(tmp_path, smoke_checkpoint):
  from ntk_time import pipeline  # pylint: disable=g-import-not-at-top
  from ntk_time.configs import subset as subset_config  # pylint: disable=g-import-not-at-top
  config = subset_config.get_config('smoke')
  config.experiment.pretrain.checkpoint = smoke_checkpoint
  numbers = pipeline.run_subset(config, str(tmp_path), progress=False)
  errors = _written(numbers, str(tmp_path))['errors']
  assert [(e['run'].split('_')[0], e['m']) for e in errors] == [
      ('cross', 6), ('cross', 12), ('mse', 6), ('mse', 12)]
  assert all(e['spectral'] is None for e in errors[:2])  # spectral is for MSE only
  with open(tmp_path / 'summary.json') as f:
    summary = json.load(f)
  assert summary['n_train'] == 24 and len(summary['spectra']['12']) == 12 * 3
  bad = subset_config.get_config('smoke')
  bad.sizes = (6, 48)
  with pytest.raises(ValueError, match=r'sizes=\[6, 48\] has a subset larger than '
                     'target.n_train=24'):
    pipeline.run_subset(bad, str(tmp_path / 'bad'), progress=False)


def test_paper_scale_experiment(tmp_path, smoke_checkpoint):
  """The paper-scale study on its smoke config: epoch horizons, the evaluation subset,
  the low-rank replica, every error and cost ratio against what the rows record."""
  from ntk_time import pipeline  # pylint: disable=g-import-not-at-top
  from ntk_time import times  # pylint: disable=g-import-not-at-top
  from ntk_time.configs import paper_scale  # pylint: disable=g-import-not-at-top
  config = paper_scale.get_config('smoke')
  config.experiment.pretrain.checkpoint = smoke_checkpoint
  numbers = pipeline.run_subset(config, str(tmp_path), progress=False)
  with open(tmp_path / 'summary.json') as f:
    summary = json.load(f)
  n, ev = summary['n_train'], config.experiment.finetune.eval_every
  assert n == 60 and summary['eval_samples'] == 20
  for r in summary['rows']:
    b = r['hparams']['batch_size']
    assert r['horizon'] == ev * math.ceil(config.epochs * n / (b * ev)) >= config.epochs * n / b
    for x in r['by_size']:
      # rank_tol picked a basis smaller than the kernel's M·C rows.
      assert 1 <= x['replica_rank'] < 12 * 3
      for method in ('replica', 'spectral'):
        if method + '_errors' not in x:
          assert method == 'spectral' and r['loss'] == 'cross_entropy'
          continue
        for d, real in r['real_times'].items():
          got = None if x[method + '_times'] is None else x[method + '_times'][d]
          want = times.error(got, real, r['horizon'],
                             predicted_diverged=x[method + '_times'] is None).value
          stored = x[method + '_errors'][d]['value']
          assert (float(stored) if stored is not None else None) == (
              None if want is None else pytest.approx(want)), (r['name'], method, d)
  agg = {(a['predictor'], a['loss']): a for a in summary['aggregate']}
  assert set(agg) == {(p, l) for p in ('best_constant', 'horizon_fraction', 'replica_M12')
                      for l in ('cross_entropy', 'mse', 'all')} | {('spectral_M12', 'mse')}
  train = {l: sum(r['real_train_seconds'] for r in summary['rows'] if r['loss'] == l)
           for l in ('cross_entropy', 'mse')}
  a = agg['replica_M12', 'all']
  assert a['runs'] == 8 and a['train_seconds'] == pytest.approx(sum(train.values()))
  assert a['predict_seconds'] == pytest.approx(
      summary['kernel_seconds']['12'] + sum(summary['by_loss'][l]['costs']['replica_M12']
                                            for l in train))
  assert a['cost_ratio'] == pytest.approx(a['train_seconds'] / a['predict_seconds'])
  s = agg['spectral_M12', 'mse']
  assert s['runs'] == 4 and s['train_seconds'] == pytest.approx(train['mse'])
  # The spectrum's eigendecomposition counts in spectral's cost.
  assert summary['by_loss']['mse']['costs']['spectral_M12'] > summary['spectrum_seconds']['12']
  assert any('replica_M12 | all | 8 |' in line for line in numbers['table'])
  # `make bench` part 6: the same study from the workdir's own config and caches (no
  # retraining: the real seconds are those recorded), the same errors.
  from experiments import bench  # pylint: disable=g-import-not-at-top
  again = bench.paper_scale(str(tmp_path))
  assert again['n_train'] == 60 and again['runs'] == 8 and again['epochs'] == 2
  assert [(a['predictor'], a['loss'], a['t_eps'], a['levels']) for a in again['aggregate']] == [
      (a['predictor'], a['loss'], a['t_eps'], a['levels']) for a in summary['aggregate']]
  assert again['aggregate'][-1]['train_seconds'] == summary['aggregate'][-1]['train_seconds']
  assert bench.paper_scale(str(tmp_path / 'none')) is None
  # A diverged predictor's infinite error reads back from JSON as 'inf', printed as ∞.
  summary['aggregate'][-1]['t_eps']['median'] = 'inf'
  assert pipeline.subset_tables(summary)[-1].startswith(
      f"| {summary['aggregate'][-1]['predictor']} | mse | 4 | ∞ / ")
  # Another predict block reuses the workdir: its predictions are not cached.
  config.experiment.predict.rank_tol = 0.02
  pipeline.run_subset(config, str(tmp_path), progress=False)
  config.experiment.seed = 1
  with pytest.raises(ValueError, match=r'another config \(experiment.seed: 0 there, 1 here\)'):
    pipeline.run_subset(config, str(tmp_path), progress=False)


@pytest.mark.parametrize('field, value, match', [
    ('epochs', -1, r'epochs \(0: finetune.steps\) must be an integer >= 0, got epochs=-1'),
    ('eval_samples', -5, r'eval_samples \(0: all\) must be an integer >= 0, got '
     r'eval_samples=-5'),
    ('eval_samples', 61, r'eval_samples=61 is more than target.n_train=60'),
    ('losses', ('mse', 'mse'), r"losses must be distinct names from .*, got \('mse', 'mse'\)"),
    ('losses', ('hinge',), r"unknown finetune.loss='hinge'"),
    ('epoch', 3, r'unknown config field epoch=3'),
])
def test_paper_scale_config_errors(tmp_path, field, value, match):
  from ntk_time import pipeline  # pylint: disable=g-import-not-at-top
  from ntk_time.configs import paper_scale  # pylint: disable=g-import-not-at-top
  config = paper_scale.get_config('smoke')
  config[field] = value
  with pytest.raises(ValueError, match=match):
    pipeline.run_subset(config, str(tmp_path), progress=False)


def test_bench_runs_on_tiny_sizes(monkeypatch):
  """The benchmark's plumbing (not its timings) on a few digits: its numbers against
  those recomputed from the kernels it computed (captured on the way) and from the
  seconds per step it measured."""
  from experiments import bench  # pylint: disable=g-import-not-at-top
  from ntk_time import ntk  # pylint: disable=g-import-not-at-top
  computed = []  # ((sketch_dim, kind), k_train_train) of every kernel the benchmark computes
  linearize, empirical_ntk = ntk.linearize, ntk.empirical_ntk

  def linearize_spy(*args, **kwargs):
    lin = linearize(*args, **kwargs)
    computed.append(((kwargs.get('sketch_dim', 0), kwargs.get('sketch_kind', 'gaussian')),
                     lin.k_train_train))
    return lin

  def empirical_ntk_spy(*args, **kwargs):
    out = empirical_ntk(*args, **kwargs)
    computed.append(((kwargs.get('sketch_dim', 0), kwargs.get('sketch_kind', 'gaussian')),
                     out[0]))
    return out
  monkeypatch.setattr(ntk, 'linearize', linearize_spy)
  monkeypatch.setattr(ntk, 'empirical_ntk', empirical_ntk_spy)
  task, params, apply_fn = bench._setup(100, 'digits')  # pylint: disable=protected-access
  assert bench.limit(task, params, apply_fn)['limit_seconds'] > 0
  computed.clear()
  proj = bench.projections(task, params, apply_fn, [64], steps=20)
  kernels = {d: k for d, k in computed if k.shape == (100, 100, 5, 5)}
  assert sorted(kernels) == [(0, 'gaussian'), (64, 'gaussian'), (64, 'sparse_sign')]
  exact = ntk.flatten(kernels[0, 'gaussian']).astype(np.float64)
  assert [(s['kind'], s['k']) for s in proj['sketches']] == [(kind, 64) for kind in ntk.SKETCH_KINDS]
  for s in proj['sketches']:
    sketched = ntk.flatten(kernels[64, s['kind']])
    err = s['rel_frobenius_error']
    assert err == pytest.approx(np.linalg.norm(sketched - exact) / np.linalg.norm(exact),
                                rel=1e-5)  # the bench subtracts in float32
    # Either sketch's expected squared error: about (tr(Θ)² / ‖Θ‖²_F + 1) / k; one draw.
    expected = np.sqrt((np.trace(exact) ** 2 / np.linalg.norm(exact) ** 2 + 1) / 64)
    assert expected / 2 < err < 2 * expected, (s['kind'], err, expected)
    assert set(s['time_errors']) == set(proj['exact_times'])
  cost = bench.grid_cost(task, params, apply_fn, steps=20, rank_tol=0.01)
  sps = cost['seconds_per_step']
  for kernel in bench.KERNELS:
    for size, per_batch_size in ((8, 4), (32, 16)):  # configurations at B = 10 and at B = 50
      for sim in ('dense', 'low_rank'):
        grid = cost[kernel][f'grid_{size}_{sim}']
        assert grid['train_seconds'] == pytest.approx(20 * per_batch_size * (sps[10] + sps[50]))
        assert grid['ratio'] == pytest.approx(grid['train_seconds'] / grid['predict_seconds'])
        assert grid['predict_seconds'] == pytest.approx(
            cost[kernel]['kernel_seconds'] + grid['simulation_seconds']
            + cost['step_timing_seconds'])
        assert (grid['rank'] > 0) == (sim == 'low_rank')
  assert all(d['compared'] > 0 for d in cost['t_eps_vs_full_dense'].values())
  rows = bench.scaling('digits', [30, 40], exact_max=30, steps=20, sketch_dim=64,
                       class_counts=[2], n_classes=30)['rows']
  assert [(r['n'], r['c'], r['sketch_dim']) for r in rows] == [(30, 5, 0), (40, 5, 64), (30, 2, 0)]
