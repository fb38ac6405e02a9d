r"""One markdown table from several compare workdirs (the README's results table).

  python -m experiments.report workdirs/accuracy/fashion workdirs/accuracy/digits ...

Reads each workdir's summary.json (never recomputes), prints the table and
writes it to report.md beside the workdirs.
"""

import os
import sys

from ntk_time import workdir as wd


def _pct(v):
  return '-' if v is None else f'{100 * v:.0f}%'


def table(workdirs: list[str]) -> str:
  lines = ['| target | method | T_eps error median / max | target-loss error median / max '
           '(not comparable) | curve max abs log error, median | real seed spread of T_eps | '
           'kernel drift, median | predict vs train cost | seconds per step error, timed / FLOPs |',
           '|---|---|---|---|---|---|---|---|---|']
  for w in workdirs:
    s = wd.read_json(os.path.join(w, 'summary.json'))
    agg, c = s['aggregate'], s['costs']
    t = s['config']['target']
    name = f"{t['source']} {tuple(t['classes'])}" + (f" {t['image_size']}px" if t['image_size'] else '')
    for m in s['methods']:
      a = agg[m]
      tl = a.get('t_target_loss', {'median': None, 'max': None, 'missing': len(s['configs'])})
      cost = c['kernel_seconds'] + c[f'{m}_seconds'] + c['step_timing_seconds']
      lines.append(
          f"| {name} ({len(s['configs'])} configs, {s['config']['finetune']['seeds']} seeds) | {m} | "
          f"{_pct(a['t_eps']['median'])} / {_pct(a['t_eps']['max'])} | "
          f"{_pct(tl['median'])} / {_pct(tl['max'])} ({tl['missing']}) | "
          f"{a['curve_log_error']['median']:.2f} | {_pct(agg['real_seed_spread_t_eps']['median'])} | "
          f"{agg['kernel_drift']['median']:.1f} | {cost:.0f} s vs {c['train_seconds']:.0f} s "
          f"({c['train_seconds'] / cost:.1f}x) | "
          f"{_pct(agg.get('seconds_measured_step_error', {}).get('median'))} / "
          f"{_pct(agg.get('seconds_flops_step_error', {}).get('median'))} |")
  return '\n'.join(lines)


def main(argv):
  workdirs = argv[1:]
  if not workdirs:
    raise SystemExit('usage: python -m experiments.report WORKDIR [WORKDIR ...]')
  text = table(workdirs)
  print(text)
  out = os.path.join(os.path.dirname(os.path.abspath(workdirs[0])), 'report.md')
  wd.write_bytes(out, (text + '\n').encode())
  print('wrote', out)


if __name__ == '__main__':
  main(sys.argv)
