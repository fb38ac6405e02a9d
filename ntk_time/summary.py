"""The typed results of a comparison: what `pipeline.run` writes to summary.json.

Plots, reports, figure scripts, notebooks and tests read a summary through
these classes (`Summary.read(workdir)`), never through string paths into
nested dicts. Every class converts to and from JSON with `to_json` /
`from_json`: arrays become lists, an infinite error (a predicted divergence
where the real run converged) is written as the string 'inf'.

Times are in SGD steps. Relative errors are |T̂ - T| / T.
"""

import dataclasses
import math
import os
import types
import typing
from typing import Any

import numpy as np

from ntk_time import workdir as wd


def _encode(v: Any) -> Any:
  if dataclasses.is_dataclass(v):
    return {f.name: _encode(getattr(v, f.name)) for f in dataclasses.fields(v)}
  if isinstance(v, dict):
    return {str(k): _encode(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [_encode(x) for x in v]
  if isinstance(v, np.ndarray):
    return _encode(v.tolist())
  if isinstance(v, np.generic):
    return _encode(v.item())
  if isinstance(v, float) and math.isinf(v):
    return 'inf' if v > 0 else '-inf'
  if isinstance(v, float) and math.isnan(v):
    return None
  return v


def _decode(tp: Any, v: Any) -> Any:
  if v is None:
    return None
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if origin in (typing.Union, types.UnionType):
    inner = [a for a in args if a is not type(None)]
    return _decode(inner[0], v)
  if dataclasses.is_dataclass(tp):
    hints = typing.get_type_hints(tp)
    return tp(**{f.name: _decode(hints[f.name], v.get(f.name)) for f in dataclasses.fields(tp)
                 if f.name in v})
  if origin is dict:
    return {k: _decode(args[1], x) for k, x in v.items()}
  if origin is list:
    return [_decode(args[0], x) for x in v]
  if tp is np.ndarray:
    return np.asarray(v, np.float64)
  if tp is float:
    return float(v)
  return v


class _Json:
  """to_json / from_json for a dataclass whose fields are typed."""

  def to_json(self) -> dict:
    return _encode(self)

  @classmethod
  def from_json(cls, obj: dict):
    return _decode(cls, obj)


@dataclasses.dataclass
class Band(_Json):
  """A curve over paths (or seeds): mean and 5/50/95% quantiles, [E] each."""
  mean: np.ndarray
  q05: np.ndarray
  q50: np.ndarray
  q95: np.ndarray


@dataclasses.dataclass
class Time(_Json):
  """One training-time definition measured on a set of curves (paths or seeds).

  per_curve: the time of each curve (None: that curve never reaches it).
  value: the estimate compared on both sides, the mean of per_curve with a
    never-reaching curve counted at the horizon (None: more than half the
    curves never reach it; see times.estimate).
  q05, q95: quantiles of per_curve in the same sense.
  """
  value: float | None
  per_curve: list[float | None]
  q05: float | None = None
  q95: float | None = None


@dataclasses.dataclass
class Prediction(_Json):
  """One method's prediction of one configuration.

  steps: [E] evaluated steps; curves: per curve name ('train_loss', 'train_acc',
  'test_loss', 'test_acc') its Band over paths; times: per definition. A
  diverging prediction has curves and times None. rank: the eigenpairs of the
  kernel simulated (dynamics.low_rank), 0 for the dense kernel. catapult: the
  'catapult' method's model of this configuration (predict._catapult's info), None
  for the other methods.
  """
  method: str
  hparams: dict
  steps: np.ndarray
  lr_limit: float
  seconds: float
  diverged: bool
  curves: dict[str, Band] | None = None
  times: dict[str, Time] | None = None
  rank: int = 0
  catapult: dict[str, float | None] | None = None


@dataclasses.dataclass
class KernelDiagnosis(_Json):
  """Where a real run's kernel drift comes from (ntk.kernel_diagnosis), on the
  drift subset at w0 and at the run's final weights w_T: Θ = Θ_head + Θ_backbone,
  Θ_head = (ΦΦᵀ + 1) ⊗ I_C from the features Φ under the head, Θ_backbone =
  W G Wᵀ from the other parameters' Jacobian.

  scale: ‖Θ_T‖/‖Θ_0‖; shape_drift: ‖Θ_T/‖Θ_T‖ − Θ_0/‖Θ_0‖‖ (in [0, 2]);
  feature_growth: ‖Φ_T‖/‖Φ_0‖; head_growth: ‖W_T‖/‖W_0‖ (the head's kernel);
  head_part_growth, backbone_part_growth: each part's ‖·_T‖/‖·_0‖;
  backbone_share_0, backbone_share_T: ‖Θ_backbone‖/‖Θ‖ at w0 and w_T. A ratio
  to a part that is zero at w0 (a zero head) is inf.
  """
  scale: float
  shape_drift: float
  feature_growth: float
  head_growth: float
  head_part_growth: float
  backbone_part_growth: float
  backbone_share_0: float
  backbone_share_T: float


@dataclasses.dataclass
class Real(_Json):
  """The real fine-tuning runs of one configuration, one per seed.

  curves: per curve name, one [E] array per seed; diverged_at: per seed the
  step at which the loss went non-finite (None: it did not); kernel_drift:
  ‖Θ(w_T) − Θ(w0)‖/‖Θ(w0)‖ on a fixed subset, first seed (None if it diverged),
  and diagnosis its split by part, scale and shape (same seed and subset).
  """
  curves: dict[str, list[np.ndarray]]
  times: dict[str, Time]
  spread: dict[str, float | None]
  train_seconds: list[float]
  seconds_per_step: float
  diverged_at: list[int | None]
  kernel_drift: float | None = None
  diagnosis: KernelDiagnosis | None = None

  @property
  def diverged(self) -> bool:
    """More than half the seeds diverged (the majority rule of times.estimate)."""
    return 2 * sum(d is not None for d in self.diverged_at) > len(self.diverged_at)


@dataclasses.dataclass
class Error(_Json):
  """A predictor's error on one definition of one configuration.

  value: |T̂ − T|/T (curve_log_error: max_t |log L̂_t − log L_t|); inf where one
  side diverged and the other did not, or the real time is 0 and the predicted not; None where neither side reaches the
  level within the horizon (nothing to compare; counted as unreached).
  miss: the prediction reaches a level the real runs do not, or the other way
  round; value is then the error it has at the horizon, a lower bound.
  """
  value: float | None
  miss: bool = False


@dataclasses.dataclass
class Stat(_Json):
  """Errors of one predictor and definition over a grid: median and max of the
  values (misses included), the number of misses and of unreached levels."""
  median: float | None
  max: float | None
  misses: int = 0
  unreached: int = 0
  n: int = 0


@dataclasses.dataclass
class Seconds(_Json):
  """Wall-clock of one configuration: seconds per step measured before training,
  from XLA's FLOP count, and the real runs' own; seconds to T_eps predicted
  (headline method) and real, with their relative errors."""
  measured_step: float
  flops_step: float
  step_flops: float
  real_step: float
  measured_step_error: float | None
  flops_step_error: float | None
  predicted_t_eps: float | None
  predicted_t_eps_flops: float | None
  real_t_eps: float | None
  t_eps_error: float | None


@dataclasses.dataclass
class ConfigResult(_Json):
  """One configuration of the grid: real runs, every prediction and every error.

  predicted: per simulated predictor (the methods, then the simulated
  baselines); errors: per predictor (methods and every baseline, the trivial
  ones included) and definition (and 'curve_log_error').
  """
  name: str
  hparams: dict
  horizon: int
  eval_every: int
  steps: np.ndarray
  real: Real
  predicted: dict[str, Prediction]
  errors: dict[str, dict[str, Error]]
  seconds: Seconds


@dataclasses.dataclass
class Verdict(_Json):
  """Whether a method works on this target: it beats every baseline on the
  median T_eps error and on the median error of the loss levels."""
  works: bool
  beats: list[str]
  loses_to: list[str]


@dataclasses.dataclass
class Summary(_Json):
  """Everything `pipeline.run` measured, as written to <workdir>/summary.json.

  methods: the compared methods, the first the headline (its cost is the
  prediction's); baselines: the trivial and reference predictors every method
  is measured against; definitions: the training-time definitions, in order;
  aggregate: per predictor and definition (and 'curve_log_error', 'levels',
  'acc_levels': the loss and accuracy levels pooled); seed_spread: per
  definition, the median over configurations of the real seeds' (max − min)
  / value, the floor no predictor can beat; costs: seconds ('kernel_seconds',
  'step_timing_seconds', 'train_seconds', '<method>_seconds',
  'predict_seconds') and 'ratio' train / predict; a linear probe's
  'probe_seconds' are in both predict_seconds and train_seconds (both sides
  start from its head); a method that trains before it predicts has its own
  'relinearised_probe_seconds' (its real steps) and 'relinearised_kernel_seconds'
  (its kernel at the probe's weights) beside its '<method>_seconds'
  (pipeline.method_cost sums a method's); head: how the head was initialised
  (finetune.init_head's report: 'head_init', 'seconds', the probe's numbers).
  """
  config: dict
  methods: list[str]
  baselines: list[str]
  definitions: list[str]
  pretrain: dict
  task: dict
  kernel: dict
  targets: dict
  costs: dict[str, float]
  aggregate: dict[str, dict[str, Stat]]
  verdicts: dict[str, Verdict]
  seed_spread: dict[str, float | None]
  kernel_drift: Stat
  seconds_errors: dict[str, Stat]
  configs: list[ConfigResult]
  wall_seconds: float = 0.0
  head: dict = dataclasses.field(default_factory=dict)
  notes: list[str] = dataclasses.field(default_factory=list)

  @property
  def predictors(self) -> list[str]:
    return list(self.methods) + list(self.baselines)

  @classmethod
  def read(cls, workdir: str) -> 'Summary':
    return cls.from_json(wd.read_json(os.path.join(workdir, 'summary.json')))

  def write(self, workdir: str) -> str:
    path = os.path.join(workdir, 'summary.json')
    wd.write_json(path, self.to_json())
    return path
