r"""Power-law fit of loss against training compute over a learning-rate sweep (seed 000, Fig. 4.9).

  python -m launch.scaling --sweep runs/sweep_mup [--mode best|frontier] [--irreducible]

Reads ``sweep.json`` from :mod:`launch.sweep` and fits ``L(C) = a * C^-b`` (``C`` in MACs) with
:func:`toto_jax.scaling.fit_power_law` (``--irreducible``: ``e + a * C^-b``) to

* ``best`` (default): each width's run at its best learning rate, final eval loss against the run's
  total compute (the thesis's recipe: one point per model size at its optimal rate);
* ``frontier``: the lower envelope of the train-loss-vs-compute curves of those best runs (logged
  steps past ``--min_fraction`` of training, so warm-up does not dominate).

Writes ``scaling_fit.json`` and ``scaling.png`` (log-log, with the thesis's ``7.32 C^-0.0378``
drawn for reference: different data, tokenizer and scale, so only the slopes are comparable in
kind) into ``--output`` (default: the sweep directory).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from phalp_jax import io as io_lib
from toto_jax import scaling


def fit_sweep(summary: dict, *, mode: str = 'best', irreducible: bool = False,
              min_fraction: float = 0.25) -> dict:
  """The fit over a sweep summary (``sweep.json``): ``{'a', 'b', 'e', 'mode', 'points', ...}``."""
  from launch.sweep import best_per_width
  best = best_per_width(summary['runs'])
  if len(best) < 2:
    raise ValueError(f'sweep.json: a fit needs finished runs at 2 or more widths, found '
                     f'{sorted(best)}')
  curves = [{'macs': [c[1] for c in r['curve']], 'loss': [c[2] for c in r['curve']],
             'label': f"w{w} lr {r['lr_label']} (train)"} for w, r in best.items()]
  if mode == 'best':
    points = [{'macs': r['macs'], 'loss': r['eval_loss'], 'width': w, 'lr': r['lr'],
               'label': f'w{w}'} for w, r in best.items()]
  elif mode == 'frontier':
    c, l = [], []
    for r in best.values():
      first = min_fraction * r['steps']
      c += [x[1] for x in r['curve'] if x[0] >= first]
      l += [x[2] for x in r['curve'] if x[0] >= first]
    fc, fl = scaling.frontier(c, l)
    points = [{'macs': float(x), 'loss': float(y), 'label': ''} for x, y in zip(fc, fl)]
  else:
    raise ValueError(f"--mode must be 'best' or 'frontier', got {mode!r}")
  cs = [p['macs'] for p in points]
  ls = [p['loss'] for p in points]
  if irreducible:
    a, b, e = scaling.fit_power_law_offset(cs, ls)
  else:
    (a, b), e = scaling.fit_power_law(cs, ls), 0.0
  pred = scaling.power_law(cs, a, b, e)
  rmse = float(np.sqrt(np.mean((np.log(pred) - np.log(ls)) ** 2)))
  return {'a': a, 'b': b, 'e': e, 'mode': mode, 'irreducible': irreducible,
          'log_rmse': rmse, 'parameterisation': summary.get('parameterisation'),
          'points': points, 'curves': curves, 'thesis_law': list(scaling.THESIS_LAW),
          'note': 'our fit on CPU runs over synthetic tokens; the thesis law (VQGAN tokens of '
                  'real images and video, a1..a6) is drawn for reference only'}


def main(argv) -> None:
  from absl import flags
  del argv
  f = flags.FLAGS
  path = os.path.join(f.sweep, 'sweep.json')
  if not os.path.exists(path):
    print(f'error: --sweep: {path} does not exist (run python -m launch.sweep first)',
          file=sys.stderr)
    sys.exit(2)
  with open(path) as fh:
    summary = json.load(fh)
  try:
    fit = fit_sweep(summary, mode=f.mode, irreducible=f.irreducible, min_fraction=f.min_fraction)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  out = f.output or f.sweep
  curves = fit.pop('curves')
  io_lib.write_json(os.path.join(out, 'scaling_fit.json'), fit)
  kind = 'muP' if fit['parameterisation'] == 'mup' else 'standard parameterisation'
  scaling.plot_power_law(fit['points'], fit, os.path.join(out, 'scaling.png'), curves=curves,
                         title=f'{kind}, {f.mode} points, synthetic tokens (our figures)')
  law = f"L(C) = {fit['a']:.4g} * C^-{fit['b']:.4g}" + (f" + {fit['e']:.4g}" if fit['e'] else '')
  print(f"[scaling] {law}  (log RMSE {fit['log_rmse']:.4f}, {len(fit['points'])} points)\n"
        f"  thesis (reference, other data): L(C) = {scaling.THESIS_LAW[0]} * "
        f"C^-{scaling.THESIS_LAW[1]}\n"
        f"  wrote {os.path.join(out, 'scaling_fit.json')}, {os.path.join(out, 'scaling.png')}")


if __name__ == '__main__':
  from absl import app, flags
  flags.DEFINE_string('sweep', None, 'A launch.sweep workdir (holds sweep.json).')
  flags.DEFINE_enum('mode', 'best', ['best', 'frontier'], 'Which points to fit.')
  flags.DEFINE_bool('irreducible', False, 'Fit e + a * C^-b instead of a * C^-b.')
  flags.DEFINE_float('min_fraction', 0.25, 'frontier mode: ignore steps before this fraction.')
  flags.DEFINE_string('output', '', 'Where to write scaling_fit.json and scaling.png.')
  flags.mark_flags_as_required(['sweep'])
  app.run(main)
