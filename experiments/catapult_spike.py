r"""The first steps of real runs against 'catapult' and the unclipped replay, on the same orders.

For a compare workdir whose real runs were evaluated every step (README, "Above the linear
limit: the catapult"), e.g.

  python -m experiments.compare --config ntk_time/configs/fashion_mse.py --workdir W \
      --config.pretrain.checkpoint=CHECKPOINT --config.finetune.seeds=1 \
      --config.finetune.steps=40 --config.finetune.eval_every=1 \
      --config.finetune.checkpoint_every=40 --config.finetune.lr='(0.01,)' \
      --config.predict.methods='("replay",)'
  python -m experiments.catapult_spike W lr0.01_B10_m0_wd0_s0 lr0.01_B50_m0_wd0_s0

prints, per run, the real training loss of the first 12 steps, the replay on Θ itself, the
'catapult' prediction and its model (Prediction.catapult: cap, predicted spike).
"""

import sys

import numpy as np

from ntk_time import data
from ntk_time import dynamics
from ntk_time import ntk
from ntk_time import predict
from ntk_time import sgd
from ntk_time import times
from ntk_time import workdir as wd
from ntk_time.configs import fashion_mse


def main(argv):
  workdir, names = argv[1], argv[2:]
  task = data.task_from_config(fashion_mse.get_config().target)
  cached = wd.read_npz(f'{workdir}/kernel.npz')
  lin = ntk.Linearization(**{k: v for k, v in cached.items()
                             if k not in ('config_hash', 'seconds')})
  print('lambda_max/N', predict.largest_eigenvalue(lin.k_train_train) / len(task.y_train))
  for name in names:
    hp = wd.read_json(f'{workdir}/runs/{name}/run.json')['hparams']
    real = wd.read_npz(f'{workdir}/runs/{name}/curves.npz')
    hp = sgd.SGD(**{**hp, 'steps': len(real['train_loss']) - 1})
    order = np.asarray(real['order'])[None, :hp.steps]
    linear, _, _ = dynamics.simulate_sgd(
        order, sgd.learning_rates(hp), lin.k_train_train.astype(np.float32),
        lin.fx_train_0.astype(np.float32), task.y_train, loss='mse', eval_every=1,
        momentum=hp.momentum, nesterov=hp.nesterov)
    [cat] = predict.predict(lin, task.y_train, task.y_test, [hp], method='catapult',
                            loss='mse', eval_every=1, targets=times.Targets(), orders=[order])
    print(name, cat.catapult)
    print('  real     ', np.round(real['train_loss'][:12], 3))
    print('  replay   ', np.round(np.asarray(linear['train_loss'][0][:12]), 3))
    if not cat.diverged:
      print('  catapult ', np.round(cat.curves['train_loss'].mean[:12], 3))


if __name__ == '__main__':
  main(sys.argv)
