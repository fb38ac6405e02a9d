"""'relinearised': the kernel retaken after k real SGD steps of one configuration, the grid
replayed on it from f(w0). Checked against its definition on a tiny ResNet trained with
optax, and end to end on the smoke config."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ntk_time import checks
from ntk_time import data
from ntk_time import dynamics
from ntk_time import finetune
from ntk_time import models
from ntk_time import ntk
from ntk_time import pipeline
from ntk_time import predict
from ntk_time import sgd
from ntk_time import times as times_lib
from ntk_time.configs import default
from ntk_time.configs import smoke

N, N_TEST, C = 8, 4, 3
PROBE = sgd.SGD(lr=0.2, batch_size=4, steps=12, momentum=0.9)
K = 5  # the probe's real steps


def _flat(tree):
  return np.concatenate([np.ravel(v) for v in jax.tree.leaves(tree)])


@pytest.fixture(scope='module')
def probed(tiny_resnet, tmp_path_factory):
  """A tiny ResNet, its probe by pipeline.relinearised, and the same probe written out:
  K steps of optax.sgd with momentum on cross-entropy, J at w_K by jax.jacrev."""
  with jax.default_matmul_precision('highest'):
    model, variables = tiny_resnet(num_classes=C, seed=3)
    apply_fn = models.make_apply_fn(model, variables['batch_stats'])
    w0 = variables['params']
    rng = np.random.default_rng(0)
    task = data.Task(x_train=rng.normal(size=(N, 8, 8, 1)).astype(np.float32),
                     y_train=rng.integers(0, C, N).astype(np.int32),
                     x_test=rng.normal(size=(N_TEST, 8, 8, 1)).astype(np.float32),
                     y_test=rng.integers(0, C, N_TEST).astype(np.int32),
                     classes=tuple(range(C)), class_names=tuple('abc'))
    order = sgd.batch_order(jax.random.key(1), N, PROBE.batch_size, PROBE.steps)
    config = smoke.get_config()
    config.kernel.block_size = 3  # blocks that do not divide N
    lin0 = ntk.linearize(apply_fn, w0, task.x_train, task.x_test, progress=False)
    workdir = str(tmp_path_factory.mktemp('relin'))
    relin, report = pipeline.relinearised(apply_fn, w0, lin0, task, PROBE, order, K, config,
                                          workdir, 'h', progress=False)

    tx = optax.sgd(PROBE.lr, momentum=PROBE.momentum)
    w, opt = w0, tx.init(w0)
    for idx in order[:K]:
      grads = jax.grad(lambda p: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
          apply_fn(p, task.x_train[idx]), task.y_train[idx])))(w)
      updates, opt = tx.update(grads, opt, w)
      w = optax.apply_updates(w, updates)

    def jac(x):  # [n·C, P] at w_K
      j = jax.jacrev(lambda p: apply_fn(p, x))(w)
      return np.concatenate([np.asarray(v).reshape(len(x) * C, -1) for v in jax.tree.leaves(j)],
                            axis=1)
    j_train, j_test = jac(task.x_train), jac(task.x_test)
  return dict(relin=relin, report=report, lin0=lin0, task=task, order=order, w0=w0, w_k=w,
              j_train=j_train, j_test=j_test, apply_fn=apply_fn, workdir=workdir)


def test_kernel_is_the_ntk_after_k_optax_steps(probed):
  p = probed
  relin, j, jt = p['relin'], p['j_train'], p['j_test']
  theta = (j @ j.T).reshape(N, C, N, C).transpose(0, 2, 1, 3)
  theta_test = (jt @ j.T).reshape(N_TEST, C, N, C).transpose(0, 2, 1, 3)
  scale = np.abs(theta).max()
  np.testing.assert_allclose(relin.k_train_train, theta, atol=2e-5 * scale)
  np.testing.assert_allclose(relin.k_test_train, theta_test, atol=2e-5 * scale)
  # The probe moved the kernel far beyond that tolerance: it is not Θ(w0).
  assert np.abs(p['lin0'].k_train_train - theta).max() > 1e-2 * scale
  # ... and ntk.empirical_ntk recomputed at the probe's weights agrees too.
  k_tt, _ = ntk.empirical_ntk(p['apply_fn'], p['w_k'], p['task'].x_train)
  np.testing.assert_allclose(relin.k_train_train, k_tt, atol=2e-5 * scale)
  # The start is f(w0), and the weight-decay term J_k w0.
  np.testing.assert_array_equal(relin.fx_train_0, p['lin0'].fx_train_0)
  np.testing.assert_array_equal(relin.fx_test_0, p['lin0'].fx_test_0)
  w0 = _flat(p['w0'])
  jw0 = np.abs(j @ w0).max()
  np.testing.assert_allclose(relin.jw0_train, (j @ w0).reshape(N, C), atol=1e-5 * jw0)
  np.testing.assert_allclose(relin.jw0_test, (jt @ w0).reshape(N_TEST, C), atol=1e-5 * jw0)
  assert p['report']['probe_seconds'] > 0 and p['report']['kernel_seconds'] > 0
  train_loss_k = np.mean(optax.softmax_cross_entropy_with_integer_labels(
      p['apply_fn'](p['w_k'], p['task'].x_train), p['task'].y_train))
  assert p['report']['probe_train_loss'] == pytest.approx(float(train_loss_k), rel=1e-4)


def test_predictions_are_sgd_on_the_model_linearised_at_w_k(probed):
  """predict's 'relinearised' on that linearisation is dynamics.simulate_sgd on Θ(w_k) from
  f(w0), and both are optax SGD (weight decay included) on F(w) = f(w0) + J_k (w − w0)."""
  p = probed
  task, relin = p['task'], p['relin']
  grid = [sgd.SGD(lr=0.3, batch_size=4, steps=12, momentum=0.9, weight_decay=0.05),
          sgd.SGD(lr=0.5, batch_size=2, steps=12)]
  orders = [sgd.batch_order(jax.random.key(i), N, hp.batch_size, hp.steps)[None]
            for i, hp in enumerate(grid)]
  targets = times_lib.Targets(eps=0.05, eps_acc=0.01, levels=(2.0,))
  with jax.default_matmul_precision('highest'):
    preds = predict.predict(relin, task.y_train, task.y_test, grid, method='relinearised',
                            loss='cross_entropy', eval_every=2, targets=targets, orders=orders)
    j, flat0 = p['j_train'], _flat(p['w0'])
    theta = (j @ j.T).reshape(N, C, N, C).transpose(0, 2, 1, 3)
    fx0 = jnp.asarray(p['lin0'].fx_train_0)
    for hp, o, pred in zip(grid, orders, preds):
      curves, _, _ = dynamics.simulate_sgd(
          o, sgd.learning_rates(hp), theta, p['lin0'].fx_train_0, task.y_train,
          loss='cross_entropy', eval_every=2, momentum=hp.momentum,
          weight_decay=hp.weight_decay, jw0_train=(j @ flat0).reshape(N, C))
      np.testing.assert_allclose(pred.curves['train_loss'].mean, curves['train_loss'][0],
                                 rtol=1e-5)

      # The definition: the model linear in w with J_k, trained by optax from w0 (its weights
      # flat, in the order of J's columns).
      def f_lin(w, idx):
        return fx0[idx] + (j @ (w - flat0)).reshape(N, C)[idx]
      tx = sgd.make_optimizer(hp)
      w, opt = flat0, tx.init(flat0)
      losses = [float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
          f_lin(w, slice(None)), task.y_train)))]
      for step, idx in enumerate(o[0]):
        grads = jax.grad(lambda v: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
            f_lin(v, idx), task.y_train[idx])))(w)
        updates, opt = tx.update(grads, opt, w)
        w = optax.apply_updates(w, updates)
        if (step + 1) % 2 == 0:
          losses.append(float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
              f_lin(w, slice(None)), task.y_train))))
      np.testing.assert_allclose(pred.curves['train_loss'].mean, losses, rtol=1e-4)
    # The weight decay moved this run: without J_k w0 it would not match.
    assert grid[0].weight_decay


@pytest.mark.parametrize('field,value,match', [
    ('relin_fraction', 0.0, r'relin_fraction must be in \(0, 1\), got 0.0'),
    ('relin_fraction', 1.0, r'relin_fraction must be in \(0, 1\), got 1.0'),
    ('relin_fraction', -0.1, r'relin_fraction must be in \(0, 1\), got -0.1'),
    ('relin_config', 8, r'relin_config must be -1 .* grid of 8 configurations, got 8'),
    ('relin_config', -2, r'relin_config must be .* got -2'),
])
def test_config_checks(field, value, match):
  config = default.get_config()
  config.predict[field] = value
  with pytest.raises(ValueError, match=match):
    checks.check(config)


def test_config_checks_of_the_probe_and_the_headline():
  config = default.get_config()
  grid = checks.check(config)
  # The default: the configuration of the lower-median η/(1−m) (0.01; 0.001 / (1 − 0.9)).
  assert checks.relin_probe(config.predict, grid) == (3, 60)
  assert (grid[3].lr, grid[3].batch_size, grid[3].momentum) == (0.001, 50, 0.9)
  config.predict.update(methods=('sde', 'relinearised'), relin_fraction=0.0004)
  with pytest.raises(ValueError, match=r'relin_fraction=0.0004 of the horizon T=1200 of '
                     r'configuration 3 is k=0 real steps; relinearised needs 1 <= k < T'):
    checks.check(config)
  config.predict.relin_fraction = 0.9999
  with pytest.raises(ValueError, match='is k=1200 real steps'):
    checks.check(config)
  config.predict.update(relin_fraction=0.05, methods=('relinearised', 'sde'))
  with pytest.raises(ValueError, match="starts with 'relinearised'.*not training-free.*never "
                     'be the headline'):
    checks.check(config)
  config.predict.methods = ('sde', 'relinearised')
  config.finetune.schedule = 'cosine'
  with pytest.raises(ValueError, match="'relinearised'.*schedule='constant', got 'cosine'"):
    checks.check(config)


def test_pipeline_writes_its_predictions_and_costs_and_reuses_its_probe(smoke_config, tmp_path,
                                                                       monkeypatch):
  smoke_config.predict.update(methods=('replay', 'relinearised'), relin_fraction=0.5,
                              relin_config=1)
  workdir = str(tmp_path)
  summary = pipeline.run(smoke_config, workdir, progress=False)
  assert summary.kernel['relinearised_config'] == 1 and summary.kernel['relinearised_steps'] == 3
  for row in summary.configs:
    pred = row.predicted['relinearised']
    assert not pred.diverged and np.all(np.isfinite(pred.curves['train_loss'].mean))
    assert row.errors['relinearised']['t_eps'].value is not None
  c = summary.costs
  assert c['relinearised_probe_seconds'] > 0 and c['relinearised_kernel_seconds'] > 0
  assert pipeline.method_cost(c, 'relinearised') == pytest.approx(
      c['relinearised_probe_seconds'] + c['relinearised_kernel_seconds']
      + c['relinearised_seconds'] + c['step_timing_seconds'])
  assert 'relinearised_t_eps' in open(os.path.join(workdir, 'summary.csv')).readline()
  assert 'relinearised (method, not training-free)' in pipeline.format_table(summary)
  assert any('| relinearised (not training-free) |' in line
             for line in pipeline.markdown_table({'smoke': summary}))
  # From f(w0) like replay, on another kernel.
  for row in summary.configs:
    relin, replay = (row.predicted[m].curves['train_loss'].mean for m in ('relinearised', 'replay'))
    assert relin[0] == replay[0] and not np.allclose(relin[1:], replay[1:], rtol=1e-6)

  files = ('relinearised_probe.npz', 'relinearised_kernel.npz', 'predictions.json')
  mtimes = {f: os.path.getmtime(os.path.join(workdir, f)) for f in files}

  def no_work(*args, **kwargs):
    raise AssertionError('a rerun probed or linearised again')
  monkeypatch.setattr(finetune, 'finetune', no_work)
  monkeypatch.setattr(ntk, 'linearize', no_work)
  again = pipeline.run(smoke_config, workdir, progress=False)
  for f, t in mtimes.items():
    assert os.path.getmtime(os.path.join(workdir, f)) == t, f
  assert again.costs['relinearised_probe_seconds'] == c['relinearised_probe_seconds']
  for a, b in zip(summary.configs, again.configs):
    np.testing.assert_array_equal(a.predicted['relinearised'].curves['train_loss'].mean,
                                  b.predicted['relinearised'].curves['train_loss'].mean)
