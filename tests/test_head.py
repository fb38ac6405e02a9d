"""The head: its initialisation (finetune.head_init, the linear probe) and the kernel's
split into the head's and the backbone's parts (the drift diagnosis)."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ntk_time import checks
from ntk_time import compat
from ntk_time import finetune
from ntk_time import models
from ntk_time import ntk
from ntk_time import pipeline
from ntk_time import probe
from ntk_time import summary as summary_lib


def _probe_problem(n=60, d=5, c=3, seed=0):
  rng = np.random.default_rng(seed)
  # Non-negative features with a common mean, as under a ReLU and a pooling.
  return np.abs(rng.normal(size=(n, d))) + 1.0, rng.integers(0, c, n), c


def test_logistic_probe_is_the_optimum_and_sklearns():
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  phi, y, c = _probe_problem()
  n, l2 = len(y), 1e-2
  kernel, bias, report = probe.fit(phi, y, c, loss='cross_entropy', l2=l2)
  # The gradient of (1/N) Σ CE + (λ/2)‖W‖², written out by hand.
  logits = phi @ kernel + bias
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  r = p - np.eye(c)[y]
  grad = np.concatenate([(phi.T @ r / n + l2 * kernel).ravel(), r.mean(0)])
  assert np.linalg.norm(grad) < 1e-8 and report['grad_norm'] < 1e-8
  # sklearn minimises ½‖W‖² + C Σ CE (intercept unpenalised): the same problem at C = 1/(Nλ).
  ref = LogisticRegression(C=1 / (n * l2), tol=1e-12, max_iter=100_000).fit(phi, y)
  np.testing.assert_allclose(kernel, ref.coef_.T, atol=1e-5)
  np.testing.assert_allclose(bias, ref.intercept_, atol=1e-4)


def test_ridge_probe_is_the_optimum_and_sklearns():
  from sklearn.linear_model import Ridge  # pylint: disable=g-import-not-at-top
  phi, y, c = _probe_problem(seed=1)
  n, l2 = len(y), 3e-2
  kernel, bias, report = probe.fit(phi, y, c, loss='mse', l2=l2)
  # sklearn minimises ‖Y − ΦW − b‖² + α‖W‖²: the mean ½-squared loss at α = Nλ.
  ref = Ridge(alpha=n * l2).fit(phi, np.eye(c)[y])
  np.testing.assert_allclose(kernel, ref.coef_.T, atol=1e-10)
  np.testing.assert_allclose(bias, ref.intercept_, atol=1e-10)
  r = phi @ kernel + bias - np.eye(c)[y]
  grad = np.concatenate([(phi.T @ r / n + l2 * kernel).ravel(), r.mean(0)])
  assert np.linalg.norm(grad) < 1e-12 and report['grad_norm'] < 1e-12


@pytest.mark.parametrize('field, value', [('head_init', 'probe'), ('probe_l2', 0.0),
                                          ('probe_l2', -1.0)])
def test_bad_head_options_are_named(smoke_config, field, value):
  smoke_config.finetune[field] = value
  with pytest.raises(ValueError, match=f'finetune.{field}={value!r}'):
    checks.check(smoke_config)


def test_head_aware_needs_a_non_zero_head(smoke_config):
  smoke_config.finetune.head_init = 'zero'
  with pytest.raises(ValueError, match="head_init='zero'"):
    checks.check(smoke_config)
  smoke_config.predict.methods = ('sde', 'replay')
  checks.check(smoke_config)


class _Task:
  def __init__(self, x, y, num_classes):
    self.x_train, self.y_train, self.num_classes = x, y, num_classes


def test_head_inits(tiny_resnet):
  model, variables = tiny_resnet(num_classes=3)
  x = np.asarray(jax.random.normal(jax.random.key(1), (20, 8, 8, 1)))
  task = _Task(x, np.arange(20) % 3, 3)
  features_fn = models.make_features_fn(model, variables['batch_stats'])
  kw = dict(loss='cross_entropy', probe_l2=1e-2)
  head = variables['params']['head']

  same, report = finetune.init_head(variables, features_fn, task, 'random', **kw)
  assert same['params']['head'] is head and report == {'head_init': 'random', 'seconds': 0.0}
  zero, _ = finetune.init_head(variables, features_fn, task, 'zero', **kw)
  for leaf in jax.tree.leaves(zero['params']['head']):
    np.testing.assert_array_equal(leaf, 0.0)
  assert zero['params']['stem_conv'] is variables['params']['stem_conv']

  fitted, report = finetune.init_head(variables, features_fn, task, 'linear_probe', **kw)
  kernel, bias, _ = probe.fit(np.asarray(features_fn(variables['params'], x)), task.y_train, 3,
                              loss='cross_entropy', l2=1e-2)
  np.testing.assert_allclose(fitted['params']['head']['kernel'], kernel, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(fitted['params']['head']['bias'], bias, rtol=1e-5, atol=1e-6)
  assert fitted['params']['head']['kernel'].dtype == head['kernel'].dtype
  assert report['head_init'] == 'linear_probe' and report['seconds'] > 0
  assert report['grad_norm'] < 1e-8 and report['probe_l2'] == 1e-2


def test_kernel_parts_sum_to_the_full_kernel(tiny_resnet, every_parameter_has_gradient):
  with compat.enable_x64():
    model, variables = tiny_resnet(num_classes=3, seed=2)
    variables = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), variables)
    apply_fn = models.make_apply_fn(model, variables['batch_stats'])
    features_fn = models.make_features_fn(model, variables['batch_stats'])
    params = variables['params']
    x = np.asarray(jax.random.normal(jax.random.key(3), (6, 8, 8, 1)), np.float64)
    every_parameter_has_gradient(apply_fn, params, x)
    parts = ntk.kernel_parts(apply_fn, features_fn, params, x, block_size=4)
    full, _ = ntk.empirical_ntk(apply_fn, params, x, block_size=4)
    # The head's part from the Jacobian of the head's parameters alone (not the formula).
    rest = {k: v for k, v in params.items() if k != 'head'}
    head_only, _ = ntk.empirical_ntk(lambda h, xs: apply_fn(dict(rest, head=h), xs),
                                     params['head'], x, block_size=4)
  assert parts['head'].dtype == np.float64
  np.testing.assert_allclose(parts['head'] + parts['backbone'], full, rtol=1e-12,
                             atol=1e-12 * np.abs(full).max())
  np.testing.assert_allclose(parts['head'], head_only, rtol=1e-12, atol=1e-12)
  # Both parts matter on this net: the split is not trivially all one side.
  share = np.linalg.norm(parts['backbone']) / np.linalg.norm(full)
  assert 0.05 < share < 0.95, share


def test_kernel_diagnosis_by_hand():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(4, 4, 2, 2)), rng.normal(size=(4, 4, 2, 2))
  before = {'head': a, 'backbone': b, 'features': rng.normal(size=(4, 3)),
            'head_kernel': rng.normal(size=(3, 2))}
  # Features ×2 and the head ×3: the head part ×4, the backbone part (W G Wᵀ) ×9.
  after = {'head': 4 * a, 'backbone': 9 * b, 'features': 2 * before['features'],
           'head_kernel': 3 * before['head_kernel']}
  d = ntk.kernel_diagnosis(before, after)
  n0, n1 = np.linalg.norm(a + b), np.linalg.norm(4 * a + 9 * b)
  assert d['scale'] == pytest.approx(n1 / n0)
  assert d['shape_drift'] == pytest.approx(np.linalg.norm((4 * a + 9 * b) / n1 - (a + b) / n0))
  assert d['feature_growth'] == pytest.approx(2) and d['head_growth'] == pytest.approx(3)
  assert d['head_part_growth'] == pytest.approx(4)
  assert d['backbone_part_growth'] == pytest.approx(9)
  assert d['backbone_share_0'] == pytest.approx(np.linalg.norm(b) / n0)
  assert d['backbone_share_T'] == pytest.approx(9 * np.linalg.norm(b) / n1)
  same = ntk.kernel_diagnosis(before, {**after, 'head': 2 * a, 'backbone': 2 * b})
  assert same['scale'] == pytest.approx(2) and same['shape_drift'] == pytest.approx(0, abs=1e-12)
  zero = ntk.kernel_diagnosis({**before, 'backbone': 0 * b, 'head_kernel': 0 * a[0, 0]}, after)
  assert zero['backbone_part_growth'] == np.inf and zero['head_growth'] == np.inf


@pytest.fixture(scope='module')
def probe_run(tmp_path_factory, smoke_checkpoint):
  """A smoke comparison with a linear-probe head, and the parameters each real run started from."""
  from ntk_time.configs import smoke  # pylint: disable=g-import-not-at-top
  config = smoke.get_config()
  config.pretrain.checkpoint = smoke_checkpoint
  config.finetune.update(head_init='linear_probe', batch_size=(6,))
  workdir = str(tmp_path_factory.mktemp('probe'))
  started, original = [], pipeline.finetune.finetune

  def spy(apply_fn, params, *args, **kwargs):
    started.append(jax.tree.map(np.array, params))
    return original(apply_fn, params, *args, **kwargs)

  pipeline.finetune.finetune = spy
  try:
    summary = pipeline.run(config, workdir, progress=False)
  finally:
    pipeline.finetune.finetune = original
  return config, workdir, summary, started


def test_probe_head_is_the_same_on_both_sides(probe_run):
  config, workdir, summary, started = probe_run
  assert len(started) == len(summary.configs) == 2
  kernel = np.load(os.path.join(workdir, 'kernel.npz'))  # the predicted side's w0
  for params in started:
    np.testing.assert_array_equal(params['head']['kernel'], kernel['head_kernel'])
    np.testing.assert_array_equal(params['head']['bias'], kernel['head_bias'])
  # ... and it is the probe's solution on the frozen features of the training set.
  task, model, variables, _, _, _ = finetune.target_from_config(
      config, os.path.join(workdir, 'again'), pipeline.sgd.run_keys(config.seed)['head'],
      progress=False)
  phi = np.asarray(models.make_features_fn(model, variables['batch_stats'])(
      variables['params'], task.x_train))
  want, _, _ = probe.fit(phi, task.y_train, task.num_classes, loss=config.finetune.loss,
                         l2=config.finetune.probe_l2)
  np.testing.assert_allclose(kernel['head_kernel'], want, rtol=1e-4, atol=1e-6)
  assert summary.head['head_init'] == 'linear_probe' and summary.head['grad_norm'] < 1e-8
  c = summary.costs
  assert c['probe_seconds'] == summary.head['seconds'] > 0
  assert c['predict_seconds'] == pytest.approx(
      c['kernel_seconds'] + c['sde_seconds'] + c['step_timing_seconds'] + c['probe_seconds'])
  assert c['train_seconds'] == pytest.approx(
      c['probe_seconds'] + sum(np.mean(r.real.train_seconds) for r in summary.configs))


def test_diagnosis_is_in_summary_json_and_csv(probe_run):
  _, workdir, summary, _ = probe_run
  with open(os.path.join(workdir, 'summary.json')) as f:
    raw = json.load(f)
  fields = {f.name for f in summary_lib.dataclasses.fields(summary_lib.KernelDiagnosis)}
  for row, r in zip(raw['configs'], summary.configs):
    assert set(row['real']['diagnosis']) == fields
    d = r.real.diagnosis
    assert all(np.isfinite(getattr(d, k)) and getattr(d, k) >= 0 for k in fields)
    # The drift is the change of the kernel the parts add up to: below scale + 1.
    assert r.real.kernel_drift <= d.scale + 1 + 1e-9
  assert summary_lib.Summary.from_json(raw).to_json() == summary.to_json()
  with open(os.path.join(workdir, 'summary.csv')) as f:
    head, first = [line.split(',') for line in f.read().splitlines()[:2]]
  col = dict(zip(head, first))
  assert float(col['kernel_feature_growth']) == pytest.approx(
      summary.configs[0].real.diagnosis.feature_growth, rel=1e-5)
  assert os.path.exists(os.path.join(workdir, 'error_vs_drift.png'))
  assert 'kernel change, median over configurations' in pipeline.format_table(summary)


def test_head_init_is_in_every_cache_key(smoke_config, tmp_path):
  """Another head is another start point: another kernel, prediction and run hash."""
  smoke_config.finetune.update(lr=(0.05,), batch_size=(6,), momentum=(0.0,))
  smoke_config.predict.methods = ('sde',)  # head_aware needs a non-zero head
  hashes, heads = [], []
  for head_init in ('zero', 'random'):
    smoke_config.finetune.head_init = head_init
    pr = pipeline.predicted(smoke_config, str(tmp_path / head_init), progress=False,
                            with_baselines=False)
    heads.append(pr.lin.head_kernel)
    hashes.append((str(np.load(str(tmp_path / head_init / 'kernel.npz'))['config_hash']),
                   pipeline.wd.read_json(str(tmp_path / head_init / 'predictions.json'))[
                       'config_hash'], pipeline.wd.config_hash(pr.base)))
  np.testing.assert_array_equal(heads[0], 0.0)
  assert np.abs(heads[1]).max() > 0
  assert all(a != b for a, b in zip(*hashes))  # kernel, predictions; base is in run_hash
  keys = [pipeline.head_key(ml_collections.ConfigDict(dict(head_init='linear_probe',
                                                           probe_l2=l2))) for l2 in (1e-2, 1e-3)]
  assert keys[0] != keys[1]
