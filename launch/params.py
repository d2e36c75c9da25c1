r"""Prints every Toto variant's parameter count next to the thesis's (Tables 4.1 and 4.15).

  python -m launch.params            # table
  python -m launch.params --json     # one JSON line per variant

The comparison uses non-embedding parameters (input table and output head excluded, the
convention of scaling-law papers), which is what reproduces both tables with the MLP width rules
stated in ``configs/toto.py``; total counts (with the 8k-code vocabulary) are shown beside them.
"""

from __future__ import annotations

import json
import sys

from configs import toto
from toto_jax.task import param_counts


def variant_rows() -> list[dict]:
  rows = []
  for name, (dim, heads, layers, _, paper, counted_as) in toto.VARIANTS.items():
    m = toto.model_config(name)
    counts = param_counts(m)
    row = {'variant': name, 'dim': dim, 'heads': heads, 'layers': layers, 'mlp_dim': m.mlp_dim,
           'total': counts['total'], 'non_embedding': counts['non_embedding'],
           'paper': paper, 'counted_as': counted_as}
    if paper:
      row['rel_diff'] = counts[counted_as] / paper - 1.0
    rows.append(row)
  return rows


def main(argv: list[str]) -> None:
  rows = variant_rows()
  if '--json' in argv:
    for r in rows:
      print(json.dumps(r))
    return
  print(f"{'variant':8} {'dim':>5} {'heads':>5} {'layers':>6} {'mlp':>6} {'total':>9} "
        f"{'non-emb':>9} {'paper':>8} {'diff':>7}")
  for r in rows:
    paper = f"{r['paper'] / 1e6:.1f}M" if r['paper'] else '-'
    diff = f"{r['rel_diff']:+.1%}" if r['paper'] else '-'
    print(f"{r['variant']:8} {r['dim']:5d} {r['heads']:5d} {r['layers']:6d} {r['mlp_dim']:6d} "
          f"{r['total'] / 1e6:8.1f}M {r['non_embedding'] / 1e6:8.1f}M {paper:>8} {diff:>7}")


if __name__ == '__main__':
  main(sys.argv[1:])
