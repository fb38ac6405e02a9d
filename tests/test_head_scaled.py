"""'head_scaled': head_aware with the feature kernel rescaled by the simulated features' growth,
K_φ(t)[i, j] = s_i^γ s_j^γ K_φ(0)[i, j], s_i = ‖φ_i(t)‖/‖φ_i(0)‖."""

import os

import jax
import numpy as np
import pytest

from ntk_time import checks
from ntk_time import dynamics
from ntk_time import ntk
from ntk_time import pipeline
from ntk_time import predict
from ntk_time import sgd
from ntk_time import times
from ntk_time.compat import enable_x64


def _problem(seed=0, n=7, n_test=3, d=4, c=3):
  """A random head-aware problem: PSD K_φ over train + test points, features, head."""
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(n + n_test, 5))
  k = a @ a.T / 5
  return dict(k_phi=k[:n, :n], k_phi_test=k[n:, :n], features_train_0=rng.normal(size=(n, d)),
              features_test_0=rng.normal(size=(n_test, d)), y_train=rng.integers(0, c, n),
              y_test=rng.integers(0, c, n_test), head_kernel=rng.normal(size=(d, c)),
              head_bias=0.1 * rng.normal(size=c),
              jw0_features_train=rng.normal(size=(n, d)),
              jw0_features_test=rng.normal(size=(n_test, d)))


def _softmax_ce(f, y):
  p = np.exp(f - f.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  onehot = np.eye(f.shape[1])[y]
  return -np.mean(np.log(np.sum(p * onehot, 1))), p - onehot


def _numpy_head_scaled(order, lrs, p, gamma, momentum, nesterov, weight_decay):
  """The definition, step by step: the kernel K_φ(t) = S K_φ S, S = diag(s^γ), built in
  full from the current features, then one head-aware SGD step (optax's heavy ball or
  Nesterov, decoupled weight decay added to each gradient). Returns the training losses
  and feature growths after each step, and the final train / test outputs."""
  phi, phit = p['features_train_0'].copy(), p['features_test_0'].copy()
  w, b = p['head_kernel'].copy(), p['head_bias'].copy()
  n0 = np.linalg.norm(p['features_train_0'], axis=1)
  nt0 = np.linalg.norm(p['features_test_0'], axis=1)
  vel = [np.zeros_like(x) for x in (phi, phit, w, b)]
  losses, growth = [], []
  for idx, lr in zip(order, lrs):
    s = (np.linalg.norm(phi, axis=1) / n0) ** gamma
    st = (np.linalg.norm(phit, axis=1) / nt0) ** gamma
    k_t = s[:, None] * p['k_phi'] * s[None, :]        # [N, N]
    k_st = st[:, None] * p['k_phi_test'] * s[None, :]  # [N_test, N]
    _, r = _softmax_ce(phi[idx] @ w + b, p['y_train'][idx])
    q = r @ w.T
    grads = [k_t[:, idx] @ q / len(idx)
             + weight_decay * (phi - p['features_train_0'] + p['jw0_features_train']),
             k_st[:, idx] @ q / len(idx)
             + weight_decay * (phit - p['features_test_0'] + p['jw0_features_test']),
             phi[idx].T @ r / len(idx) + weight_decay * w, r.mean(0) + weight_decay * b]
    vel = [momentum * v + g for v, g in zip(vel, grads)]
    moves = [g + momentum * v for v, g in zip(vel, grads)] if nesterov else vel
    phi, phit, w, b = [x - lr * m for x, m in zip((phi, phit, w, b), moves)]
    losses.append(_softmax_ce(phi @ w + b, p['y_train'])[0])
    growth.append(np.linalg.norm(phi) / np.linalg.norm(p['features_train_0']))
  return np.array(losses), np.array(growth), phi @ w + b, phit @ w + b


@pytest.mark.parametrize('hp', [dict(momentum=0.9, nesterov=False, weight_decay=0.0),
                                dict(momentum=0.7, nesterov=True, weight_decay=0.05)])
def test_scaled_step_is_its_definition(hp):
  """simulate_head_aware(feature_scale_power=γ) over 8 steps with momentum (heavy ball;
  Nesterov with weight decay) and a decaying learning rate equals a numpy loop that builds
  K_φ(t) = S K_φ(0) S in full each step, to float64 precision, train and test; the
  features shrink (×0.88-0.90) then grow (×1.04-1.38), so that γ = 0 is far from it
  (final outputs 0.15-2.7 apart)."""
  p = _problem()
  rng = np.random.default_rng(1)
  order = np.stack([rng.choice(7, 3, replace=False) for _ in range(8)])
  lrs = 0.8 * 0.9 ** np.arange(8)
  with enable_x64():
    curves, f_t, ft_t = dynamics.simulate_head_aware(
        order[None], lrs, loss='cross_entropy', eval_every=1, feature_scale_power=0.7, **hp,
        **p)
  loss, growth, f_ref, ft_ref = _numpy_head_scaled(order, lrs, p, 0.7, **hp)
  np.testing.assert_allclose(f_t[0], f_ref, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(ft_t[0], ft_ref, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(curves['train_loss'][0, 1:], loss, rtol=1e-12)
  np.testing.assert_allclose(curves['feature_growth'][0], np.r_[1.0, growth], rtol=1e-12)
  assert growth.min() < 0.95 and growth.max() > 1.03
  _, _, f_iso, _ = _numpy_head_scaled(order, lrs, p, 0.0, **hp)
  assert np.abs(f_iso - f_ref).max() > 1e-2


def test_one_sample_by_hand():
  """N = D = C = 1, MSE (target 1), K_φ = 1, η = 0.5, φ0 = 2, W0 = 1, b0 = 0, three steps
  written out: step 1 (s = 1): r = 1, φ = 2 - 0.5·1 = 1.5, W = 1 - 0.5·2·1 = 0, b = -0.5;
  step 2: r = -1.5, the feature's move is K r W = 0, W = 0.5·1.5·1.5 = 1.125, b = 0.25;
  step 3: f = 1.9375, r = 0.9375 and s = 0.75, so φ = 1.5 - 0.5·0.75^(2γ)·0.9375·1.125,
  W = 1.125 - 0.5·1.5·0.9375 = 0.421875, b = 0.25 - 0.5·0.9375 = -0.21875."""
  arrays = dict(k_phi=np.ones((1, 1)), features_train_0=np.full((1, 1), 2.0),
                y_train=np.zeros(1, np.int32), head_kernel=np.ones((1, 1)), head_bias=np.zeros(1))
  for gamma in (0.0, 0.5, 1.0):
    with enable_x64():
      curves, f_t, _ = dynamics.simulate_head_aware(
          np.array([[[0], [0], [0]]]), [0.5] * 3, loss='mse', eval_every=1,
          feature_scale_power=gamma, **arrays)
    phi3 = 1.5 - 0.5 * 0.75 ** (2 * gamma) * 0.9375 * 1.125
    assert f_t[0, 0, 0] == pytest.approx(phi3 * 0.421875 - 0.21875, rel=1e-14)
    np.testing.assert_allclose(curves['feature_growth'][0], [1, 0.75, 0.75, phi3 / 2],
                               rtol=1e-14)
    np.testing.assert_allclose(curves['train_loss'][0, :3], [0.5, 1.125, 0.5 * 0.9375**2],
                               rtol=1e-14)


def test_power_zero_is_head_aware_through_predict(two_layer_linear):
  """predict(method='head_scaled', feature_scale_power=0) gives head_aware's curves and
  times exactly; at γ = 1 the curves differ."""
  t = two_layer_linear()
  hp = sgd.SGD(lr=0.05, batch_size=3, steps=40, momentum=0.9)
  kw = dict(key=jax.random.key(0), num_paths=3, loss='cross_entropy', eval_every=10,
            targets=times.Targets(), dtype=np.float64)
  with enable_x64():
    lin = ntk.linearize(t.apply_fn, t.w0, t.x_train, t.x_test, features_fn=t.features,
                        progress=False)
    [aware] = predict.predict(lin, t.y_train, t.y_test, [hp], method='head_aware', **kw)
    [zero] = predict.predict(lin, t.y_train, t.y_test, [hp], method='head_scaled',
                             feature_scale_power=0.0, **kw)
    [one] = predict.predict(lin, t.y_train, t.y_test, [hp], method='head_scaled',
                            feature_scale_power=1.0, **kw)
  assert zero.to_json() == {**aware.to_json(), 'method': 'head_scaled', 'seconds': zero.seconds}
  assert np.abs(one.curves['train_loss'].mean - aware.curves['train_loss'].mean).max() > 1e-3
  assert one.lr_limit == aware.lr_limit


def test_zero_features_and_bad_powers_are_refused():
  p = _problem()
  p['features_train_0'][2] = 0.0
  kw = dict(loss='cross_entropy', eval_every=1)
  with pytest.raises(ValueError, match='features_train_0 has a sample with'):
    dynamics.simulate_head_aware(np.zeros((1, 2, 3), np.int32), [0.1, 0.1],
                                 feature_scale_power=0.5, **kw, **p)
  dynamics.simulate_head_aware(np.zeros((1, 2, 3), np.int32), [0.1, 0.1], **kw, **p)  # γ = 0
  with pytest.raises(ValueError, match='feature_scale_power must be >= 0, got -1'):
    dynamics.simulate_head_aware(np.zeros((1, 2, 3), np.int32), [0.1, 0.1],
                                 feature_scale_power=-1.0, **kw, **_problem())


@pytest.mark.parametrize('value', [1.5, -0.1, float('nan')])
def test_config_check_names_a_bad_power(smoke_config, value):
  smoke_config.predict.feature_scale_power = value
  with pytest.raises(ValueError, match=f'predict.feature_scale_power must be in .*{value!r}'):
    checks.check(smoke_config)


def test_head_scaled_needs_a_non_zero_head(smoke_config):
  smoke_config.finetune.head_init = 'zero'
  smoke_config.predict.methods = ('sde', 'head_scaled')
  with pytest.raises(ValueError, match="'head_scaled'.*head_init='zero'"):
    checks.check(smoke_config)


def test_pipeline_reports_head_scaled(smoke_config, tmp_path):
  """The smoke comparison with head_scaled first: it is the headline, in summary.json,
  summary.csv, the table and experiments.report's markdown, and its γ = 0 twin is head_aware."""
  smoke_config.predict.methods = ('head_scaled', 'head_aware', 'replay')
  workdir = str(tmp_path / 'run')
  s = pipeline.run(smoke_config, workdir, progress=False)
  assert s.methods[0] == 'head_scaled' and 'head_scaled' in s.aggregate
  for row in s.configs:
    assert not row.predicted['head_scaled'].diverged
    assert set(row.errors) == set(s.predictors)
  with open(os.path.join(workdir, 'summary.csv')) as f:
    assert 'head_scaled' in f.read()
  assert 'head_scaled' in pipeline.format_table(s)
  assert 'head_scaled' in '\n'.join(pipeline.markdown_table({'smoke': s}))  # experiments.report
