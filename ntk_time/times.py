"""Training times (DESIGN §3.3): the definitions, one estimator for both sides, errors.

Every definition is applied to one curve at a time — a simulated path or a
real seed — and the per-curve times are then summarised by one statistic,
`estimate`: the mean, a curve that never reaches counting at the horizon.
Predicted and real times are computed by the same two functions,
so that noise biases both the same way whatever the number of curves (the
mean curve of 3 seeds is noisier than that of 32 paths, and noise enters a
±ε band early; the mean of per-curve times has the same expectation for any
count).

Definitions, on curves evaluated at `steps` (the first is step 0):
- 't_eps': the paper's T_eps = min{t : |L_t − L_T| < eps} on the training loss
  (depends on the horizon T: informative only where the curve has flattened);
- 't_eps_acc': the same on the training accuracy with eps_acc;
- 't_loss_<f>': the first step with L_t <= L_0 / f, for each level f (L_0 is
  known before training: the real and the linearised model start equal);
- 't_err_<f>': the first step with training error 1 − acc_t <= (1 − acc_0) / f.
The last two do not depend on the horizon.
"""

import dataclasses

import numpy as np

from ntk_time import summary as summary_lib


@dataclasses.dataclass(frozen=True)
class Targets:
  """What "trained" means: eps (loss) and eps_acc (accuracy) for T_eps, and the
  fractions `levels` of the initial loss and error for the horizon-free times."""
  eps: float = 0.05
  eps_acc: float = 0.01
  levels: tuple[float, ...] = (2.0, 4.0, 8.0)

  def __post_init__(self):
    for name in ('eps', 'eps_acc'):
      v = getattr(self, name)
      if not (np.isfinite(v) and v > 0):
        raise ValueError(f'{name} must be > 0, got {name}={v!r}')
    if not self.levels or any(not (np.isfinite(f) and f > 1) for f in self.levels):
      raise ValueError(f'levels must be fractions f > 1 of the initial loss (L0/f), got '
                       f'levels={self.levels!r}')

  @property
  def loss_levels(self) -> tuple[str, ...]:
    return tuple(f't_loss_{f:g}' for f in self.levels)

  @property
  def acc_levels(self) -> tuple[str, ...]:
    return tuple(f't_err_{f:g}' for f in self.levels)

  @property
  def definitions(self) -> tuple[str, ...]:
    """The names `curve_times` returns, in order."""
    return ('t_eps', 't_eps_acc') + self.loss_levels + self.acc_levels


def first_reaching(steps: np.ndarray, curve: np.ndarray, target: float) -> int | None:
  """First evaluated step with curve <= target; None if never. steps, curve: [E]."""
  hit = np.asarray(curve) <= target
  return int(steps[np.argmax(hit)]) if hit.any() else None


def t_eps(steps: np.ndarray, curve: np.ndarray, eps: float) -> int | None:
  """The paper's T_eps = min{t : |L_t − L_T| < eps}, T = steps[-1].

  Args:
    steps: [E] evaluated steps, increasing; curve: [E] values at those steps.

  Returns:
    The first evaluated step within eps of the value at the horizon (the
    horizon itself if nothing earlier is); None if the curve is not finite
    everywhere (a diverging curve does not converge).
  """
  curve = np.asarray(curve, np.float64)
  if not np.all(np.isfinite(curve)):
    return None
  return int(steps[np.argmax(np.abs(curve - curve[-1]) < eps)])


def curve_times(steps: np.ndarray, loss: np.ndarray, acc: np.ndarray,
                targets: Targets) -> dict[str, int | None]:
  """Every definition on one loss / accuracy curve pair ([E] each); None: not reached."""
  loss, acc = np.asarray(loss, np.float64), np.asarray(acc, np.float64)
  if not np.all(np.isfinite(loss)):
    return dict.fromkeys(targets.definitions)
  err = 1.0 - acc
  out = {'t_eps': t_eps(steps, loss, targets.eps), 't_eps_acc': t_eps(steps, acc, targets.eps_acc)}
  for f, name in zip(targets.levels, targets.loss_levels):
    out[name] = first_reaching(steps, loss, loss[0] / f)
  for f, name in zip(targets.levels, targets.acc_levels):
    out[name] = first_reaching(steps, err, err[0] / f)
  return out


def estimate(per_curve: list[float | None], horizon: int) -> summary_lib.Time:
  """The one statistic of per-curve times used on both sides.

  The mean over curves, a curve that never reaches counting at the horizon (a
  lower bound of its time); None where more than half the curves never reach.
  The mean of per-curve times is unbiased whatever the number of curves (3
  seeds or 32 paths of the same process give the same expectation; the median
  of a few curves is not, their times being discrete and skewed), and the
  horizon rule is the same on both sides. q05/q95: quantiles over the curves,
  None where they fall on never-reaching ones.
  """
  if not per_curve:
    return summary_lib.Time(value=None, per_curve=[])
  vals = np.array([np.inf if v is None else v for v in per_curve], np.float64)
  q05, q95 = (np.quantile(vals, q, method='nearest') for q in (0.05, 0.95))
  fin = lambda v: float(v) if np.isfinite(v) else None
  reached = np.isfinite(vals)
  value = float(np.mean(np.minimum(vals, horizon))) if 2 * reached.sum() >= len(vals) else None
  return summary_lib.Time(value=value, per_curve=[None if v is None else float(v)
                                                  for v in per_curve], q05=fin(q05), q95=fin(q95))


def spread(t: summary_lib.Time) -> float | None:
  """(max − min) / value over the real seeds: the seed-to-seed floor of any error."""
  vals = [v for v in t.per_curve if v is not None]
  if len(t.per_curve) < 2 or len(vals) < len(t.per_curve) or not t.value:
    return None
  return (max(vals) - min(vals)) / t.value


def error(predicted: float | None, real: float | None, horizon: int, *,
          predicted_diverged: bool = False, real_diverged: bool = False) -> summary_lib.Error:
  """A predicted time against the real one, misses kept (see summary.Error).

  Where only one side reaches a level within the horizon, the other's time is
  at least the horizon, and the error at the horizon, a lower bound, is what
  counts: |T − real|/real, or |predicted − T|/T. A divergence on one side only
  is an infinite error; on both sides, none. A real time of 0 (the real curve
  within ε of its end from the start) makes any other prediction an infinite
  error too: relative errors have no scale there.
  """
  if predicted_diverged or real_diverged:
    return summary_lib.Error(0.0 if predicted_diverged and real_diverged else float('inf'),
                             miss=predicted_diverged != real_diverged)
  if predicted is None and real is None:
    return summary_lib.Error(None)
  if real is None:
    return summary_lib.Error(abs(predicted - horizon) / horizon, miss=True)
  if predicted is None:
    return summary_lib.Error(abs(horizon - real) / real if real else float('inf'), miss=True)
  if real == 0:
    return summary_lib.Error(0.0 if predicted == 0 else float('inf'))
  return summary_lib.Error(abs(predicted - real) / real)


def relative_error(predicted: float | None, real: float | None) -> float | None:
  """|T̂ − T| / T; None when either is missing or the real one is 0 (seconds, steps)."""
  if predicted is None or real is None or real == 0:
    return None
  return abs(predicted - real) / real


def curve_log_error(predicted: np.ndarray, real: np.ndarray) -> float:
  """max_t |log L̂_t − log L_t| over the evaluated steps ([E] each)."""
  return float(np.max(np.abs(np.log(np.asarray(predicted)) - np.log(np.asarray(real)))))


def stat(errors: list[summary_lib.Error]) -> summary_lib.Stat:
  """Median and max over a grid (misses included at their error), with the counts."""
  vals = [e.value for e in errors if e.value is not None]
  return summary_lib.Stat(median=float(np.median(vals)) if vals else None,
                          max=float(np.max(vals)) if vals else None,
                          misses=sum(e.miss for e in errors),
                          unreached=sum(e.value is None for e in errors), n=len(errors))


def best_constant(real: list[float | None], horizons: list[int], real_diverged: list[bool],
                  candidates: np.ndarray) -> float:
  """The oracle constant guess: the candidate time with the lowest median error
  against the real times of a whole grid (it peeks at them: an upper bound on
  any trivial guess). Ties go to the earliest candidate."""
  def median_error(c):
    errs = [error(c, r, h, real_diverged=d).value for r, h, d in zip(real, horizons, real_diverged)]
    errs = [e for e in errs if e is not None]
    return np.median(errs) if errs else np.inf
  scores = [median_error(float(c)) for c in candidates]
  return float(candidates[int(np.argmin(scores))])
