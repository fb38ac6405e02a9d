r"""One markdown table from several compare workdirs (the README's results table).

  python -m experiments.report workdirs/accuracy/fashion workdirs/accuracy/digits ...

Reads each workdir's summary.json (never recomputes), prints the table and
writes it to report.md beside the workdirs.
"""

import os
import sys

from ntk_time import pipeline
from ntk_time import summary as summary_lib
from ntk_time import workdir as wd


def main(argv):
  workdirs = argv[1:]
  if not workdirs:
    raise SystemExit('usage: python -m experiments.report WORKDIR [WORKDIR ...]')
  summaries = {os.path.basename(os.path.normpath(w)): summary_lib.Summary.read(w)
               for w in workdirs}
  text = '\n'.join(pipeline.markdown_table(summaries))
  print(text)
  out = os.path.join(os.path.dirname(os.path.abspath(workdirs[0])), 'report.md')
  wd.write_bytes(out, (text + '\n').encode())
  print('wrote', out)


if __name__ == '__main__':
  main(sys.argv)
