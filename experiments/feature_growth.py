r"""Simulated vs real growth of the features under the head, ‖Φ_T‖_F/‖Φ_0‖_F, per configuration.

  python -m experiments.feature_growth --config ntk_time/configs/default.py \
      --workdir workdirs/default --config.predict.methods="('head_scaled','head_aware')"

Takes the flags of `experiments.compare` and its workdir after a compare (the kernel, the
batch orders and the real runs' kernel diagnosis are read from there, nothing is trained):
simulates seed 0's batch order with head_aware (γ = 0) and head_scaled
(γ = predict.feature_scale_power) and prints the simulated feature growth at the horizon,
on the whole training set, beside the real one of run.json's diagnosis (on the first
kernel.drift_samples training samples).
"""

import json
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import numpy as np

from ntk_time import dynamics
from ntk_time import pipeline
from ntk_time import sgd


def main(_):
  logging.set_verbosity(logging.WARNING)
  config, workdir = _CONFIG.value, _WORKDIR.value
  pr = pipeline.predicted(config, workdir, progress=False)
  lin, ft = pr.lin, config.finetune
  k_phi, k_phi_test = lin.feature_kernels()
  arrays = dict(k_phi=k_phi, features_train_0=lin.features_train, y_train=pr.task.y_train,
                head_kernel=lin.head_kernel, head_bias=lin.head_bias,
                jw0_features_train=lin.jw0_features_train, k_phi_test=k_phi_test,
                features_test_0=lin.features_test, y_test=pr.task.y_test,
                jw0_features_test=lin.jw0_features_test)
  gamma = config.predict.feature_scale_power
  print(f"{'config':28s} {'real':>7s} {'γ=0':>7s} {f'γ={gamma:g}':>7s}")
  rows = []
  for hp, orders in zip(pr.configs, pr.orders):
    name = pipeline.config_name(hp)
    with open(os.path.join(workdir, 'runs', f'{name}_s0', 'run.json')) as f:
      diagnosis = json.load(f).get('diagnosis') or {}
    sim = []
    for g in (0.0, gamma):
      curves, _, _ = dynamics.simulate_head_aware(
          orders[:1], sgd.learning_rates(hp), loss=ft.loss, eval_every=ft.eval_every,
          momentum=hp.momentum, nesterov=hp.nesterov, weight_decay=hp.weight_decay,
          feature_scale_power=g, **arrays)
      sim.append(float(curves['feature_growth'][0, -1]))
    real = diagnosis.get('feature_growth', float('nan'))
    rows.append([real] + sim)
    print(f'{name:28s} {real:7.2f} {sim[0]:7.2f} {sim[1]:7.2f}')
  rows = np.asarray(rows)
  print(f"{'median':28s} " + ' '.join(f'{v:7.2f}' for v in np.nanmedian(rows, 0)))


if __name__ == '__main__':
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'experiment config file',
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'the workdir of a finished compare')
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
