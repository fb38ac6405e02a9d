"""Training-time definitions, the one estimator of both sides, errors with misses."""

import numpy as np
import pytest

from ntk_time import times

STEPS = np.arange(0, 401, 20)
TARGETS = times.Targets(eps=0.05, eps_acc=0.01, levels=(2.0, 4.0, 8.0))


def _curve(tau, a=0.1, b=1.5):
  return a + b * np.exp(-STEPS / tau)


def test_definitions_on_a_known_curve():
  loss = _curve(50.0)  # L0 = 1.6: L0/2 at 0.8, L0/4 at 0.4, L0/8 at 0.2
  acc = 1.0 - 0.8 * np.exp(-STEPS / 100.0)  # error 0.8 e^{-t/100}
  t = times.curve_times(STEPS, loss, acc, TARGETS)
  # First evaluated step at or below each level, by hand: 0.1 + 1.5 e^{-t/50} <= 0.8
  # <=> t >= 50 ln(1.5/0.7) = 38.1 -> 40; <= 0.4: t >= 80.5 -> 100; <= 0.2: 134.7 -> 140.
  assert (t['t_loss_2'], t['t_loss_4'], t['t_loss_8']) == (40, 100, 140)
  # Error <= 0.8/f <=> t >= 100 ln f: 69.3 -> 80, 138.6 -> 140, 207.9 -> 220.
  assert (t['t_err_2'], t['t_err_4'], t['t_err_8']) == (80, 140, 220)
  # |L_t − L_400| < 0.05 <=> 1.5 (e^{-t/50} − e^{-8}) < 0.05 <=> t > 170.1 -> 180.
  assert t['t_eps'] == 180
  assert set(t) == set(TARGETS.definitions)


def test_never_reached_and_diverged_curves():
  flat = np.full(len(STEPS), 1.0)
  t = times.curve_times(STEPS, flat, np.full(len(STEPS), 0.5), TARGETS)
  assert t['t_loss_2'] is None and t['t_err_8'] is None and t['t_eps'] == 0
  nan = _curve(50.0)
  nan[-3:] = np.nan
  assert times.t_eps(STEPS, nan, 0.05) is None  # a diverging curve does not converge
  assert all(v is None for v in times.curve_times(STEPS, nan, flat, TARGETS).values())


def test_estimate_is_the_mean_with_never_at_the_horizon():
  assert times.estimate([100, 20, 60], 400).value == 60
  assert times.estimate([100, None, 60], 400).value == pytest.approx(560 / 3)
  assert times.estimate([100, None, None], 400).value is None  # most curves never reach it
  assert times.estimate([100, None], 400).value == 250  # half: still counted, at the horizon
  t = times.estimate([40.0] * 9 + [None], 400)
  assert t.q05 == 40 and t.q95 is None


def test_identical_curves_give_zero_error():
  rng = np.random.default_rng(0)
  curves = [_curve(tau) + 0.01 * rng.normal(size=len(STEPS)) for tau in (40.0, 60.0, 90.0)]
  acc = [1 - 0.5 * np.exp(-STEPS / 70.0)] * 3
  per = [times.curve_times(STEPS, lo, ac, TARGETS) for lo, ac in zip(curves, acc)]
  pred = {d: times.estimate([p[d] for p in per], 400) for d in TARGETS.definitions}
  real = {d: times.estimate([p[d] for p in per], 400) for d in TARGETS.definitions}
  for d in TARGETS.definitions:
    e = times.error(pred[d].value, real[d].value, 400)
    assert e.value == 0.0 and not e.miss, d


def _noisy_set(rng, count, tau=80.0, sigma=0.04):
  """`count` curves of one process: the same mean curve, independent noise per step."""
  return [_curve(tau) * np.exp(sigma * rng.normal(size=len(STEPS))) for _ in range(count)]


def test_estimator_is_unbiased_on_noisy_curves_whatever_the_count():
  """3 real seeds against 31 paths of the same process: per-curve times, then their mean,
  agree on average (within sampling error); the mean curve of each set does not, because
  noise enters the ±eps band earlier on a noisier curve."""
  rng = np.random.default_rng(1)
  diff_ours, diff_mean_curve = {'t_eps': [], 't_loss_8': []}, {'t_eps': [], 't_loss_8': []}
  acc = np.full(len(STEPS), 0.5)
  for _ in range(300):
    real, paths = _noisy_set(rng, 3), _noisy_set(rng, 31)
    for d in diff_ours:
      est = lambda cs: times.estimate(
          [times.curve_times(STEPS, c, acc, TARGETS)[d] for c in cs], 400).value
      mean_curve = lambda cs: times.curve_times(STEPS, np.mean(cs, 0), acc, TARGETS)[d]
      diff_ours[d].append(est(paths) - est(real))
      diff_mean_curve[d].append(mean_curve(paths) - mean_curve(real))
  for d in diff_ours:
    ours, naive = np.asarray(diff_ours[d], float), np.asarray(diff_mean_curve[d], float)
    se = ours.std() / np.sqrt(len(ours))
    assert abs(ours.mean()) < 3 * se, (d, ours.mean(), se)
  naive = np.asarray(diff_mean_curve['t_eps'], float)
  # The mean curves of 31 and of 3 curves are biased differently (the test's point).
  assert abs(naive.mean()) > 4 * naive.std() / np.sqrt(len(naive)), naive.mean()


def test_errors_count_misses_at_their_error_at_the_horizon():
  hit = times.error(120, 100, 400)
  assert hit.value == pytest.approx(0.2) and not hit.miss
  never = times.error(None, 100, 400)  # the prediction never gets there: at least T = 400
  assert never.value == pytest.approx(3.0) and never.miss
  early = times.error(100, None, 400)  # the real runs never get there
  assert early.value == pytest.approx(0.75) and early.miss
  neither = times.error(None, None, 400)
  assert neither.value is None and not neither.miss
  assert times.error(100, 100, 400, predicted_diverged=True).value == float('inf')
  assert times.error(None, None, 400, predicted_diverged=True, real_diverged=True).value == 0.0
  assert times.error(0, 0, 400).value == 0.0 and times.error(20, 0, 400).value == float('inf')
  s = times.stat([hit, never, early, neither])
  assert (s.misses, s.unreached, s.n) == (2, 1, 4)
  assert s.median == pytest.approx(0.75) and s.max == pytest.approx(3.0)  # misses not dropped


def test_best_constant_is_the_oracle_of_the_median_error():
  real, horizons = [60.0, 100.0, 300.0, None], [400] * 4
  cands = np.arange(0, 401, 20, dtype=float)
  c = times.best_constant(real, horizons, [False] * 4, cands)
  score = lambda c: np.median([times.error(c, r, 400).value for r in real])
  assert score(c) == min(score(x) for x in cands)
  # By hand: 80 gives errors 1/3, 1/5, 11/15 and (400 − 80)/400 = 4/5 (the real runs never
  # reach it: a miss at the horizon), median 8/15; 100 gives 2/3, 0, 2/3, 3/4, median 2/3.
  assert c == 80.0 and score(80.0) == pytest.approx(8 / 15)
