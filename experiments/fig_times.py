r"""Figure 2: predicted vs real T_eps over a grid on several targets, and the error table.

  python -m experiments.fig_times --config=ntk_time/configs/fig_times.py --workdir=workdirs/accuracy

Writes <workdir>/<task>/ (one compare workdir per target), training_times.png,
errors.md and figure.json.
"""

import os

import numpy as np

from experiments import figures
from ntk_time import plots
from ntk_time import workdir as wd


def error_table(summaries: dict[str, dict]) -> list[str]:
  """Markdown: per target and method, the median / max T_eps error and how many are within 20%."""
  lines = ['| target | method | T_eps error median | max | within 20% |', '|---|---|---|---|---|']
  for name, s in summaries.items():
    for m in s['methods']:
      errs = [r['errors'][m].get('t_eps') for r in s['configs']]
      ok = [e for e in errs if e is not None]
      med = f'{100 * np.median(ok):.0f}%' if ok else '-'
      worst = f'{100 * np.max(ok):.0f}%' if ok else '-'
      lines.append(f'| {name} | {m} | {med} | {worst} | '
                   f'{sum(e <= 0.2 for e in ok)} of {len(errs)} |')
  return lines


def run(config, workdir: str, progress: bool = True) -> dict:
  summaries = figures.run_experiments(config.experiments, workdir, progress)
  table = error_table(summaries)
  wd.write_bytes(os.path.join(workdir, 'errors.md'), ('\n'.join(table) + '\n').encode())
  figure = plots.times_by_task(summaries, os.path.join(workdir, 'training_times.png'))
  points = {name: [{'name': r['name'], 'real': r['real']['times']['t_eps']['mean'],
                    **{m: r['errors'][m].get('t_eps') for m in s['methods']}}
                   for r in s['configs']] for name, s in summaries.items()}
  numbers = {'figure': figure, 'table': table, 't_eps_errors': points}
  figures.write(workdir, config, numbers)
  return numbers


if __name__ == '__main__':
  figures.cli(run, 'ntk_time/configs/fig_times.py')
