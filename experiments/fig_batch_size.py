r"""Figure 4: SDE vs ODE (full-batch) prediction as the batch size shrinks.

  python -m experiments.fig_batch_size --config=ntk_time/configs/fig_batch_size.py \
      --workdir=workdirs/batch_size

Writes batch_size.png (T_eps and its error against B, per method) and figure.json.
"""

import os

from experiments import figures
from ntk_time import plots


def run(config, workdir: str, progress: bool = True) -> dict:
  [(name, s)] = figures.run_experiments(config.experiments, workdir, progress).items()
  rows = sorted(s['configs'], key=lambda r: r['hparams']['batch_size'])
  points, table = [], []
  for r in rows:
    p = {'batch_size': r['hparams']['batch_size'], 'real_t_eps': r['real']['times']['t_eps']['mean'],
         **{f'{m}_t_eps': None if r['predicted'][m]['diverged'] else
            r['predicted'][m]['times']['t_eps']['mean_curve'] for m in s['methods']},
         **{f'{m}_error': r['errors'][m].get('t_eps') for m in s['methods']}}
    points.append(p)
    table.append(', '.join(f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}'
                           for k, v in p.items()))
  figure = plots.batch_size(s, os.path.join(workdir, 'batch_size.png'))
  numbers = {'figure': figure, 'table': table, 'points': points, 'experiment': name}
  figures.write(workdir, config, numbers)
  return numbers


if __name__ == '__main__':
  figures.cli(run, 'ntk_time/configs/fig_batch_size.py')
