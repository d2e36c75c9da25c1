r"""Fits PHALP's five association parameters by Nelder-Mead on annotated sequences.

  python -m launch.fit_phalp --input DIR_OF_NPZ_WITH_GT_ID --output params.json [--maxiter N]
  python -m launch.fit_phalp --synthetic hard --videos 8 --output params.json [--eval DIR]

* Training data: every ``*.npz`` detection file in ``--input`` (``phalp_jax.io`` canonical
  format; each needs ``gt_id``), or ``--videos`` synthetic scenes of the ``--synthetic`` preset
  made in memory (video ``i`` from seed ``(--seed, i)``, as ``python -m phalp_jax.synthetic``
  writes them).
* Objective: the frame-level association error of :mod:`phalp_jax.fit` (missed ground-truth links
  + wrong predicted links over all links), minimised over ``(beta_a, beta_p, beta_xy, beta_n,
  beta_th)`` in log space, from ``--init`` (a previous output) or the released defaults. One
  progress-bar step per evaluation (one compiled tracking pass over all training sequences).
* Output (written atomically): the fitted ``vector`` and ``params``, the objective before and
  after, the other tracker settings used (``other_params``), and with ``--eval DIR`` held-out
  metrics (mean IDF1 / MOTA / HOTA over the videos, total ID switches, association error) before
  and after. Held-out ground truth is ``DIR/gt/NAME.txt`` when present (as
  ``phalp_jax.synthetic`` writes it), else the annotated detections. Load the result with
  ``phalp_jax.fit.load_params(path)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import sys
import time
from collections.abc import Sequence
from typing import Any


def _npz_files(directory: str, flag: str) -> list[str]:
  if not os.path.isdir(directory):
    raise SystemExit(f'{flag}: {directory!r} is not a directory')
  files = sorted(glob.glob(os.path.join(directory, '*.npz')))
  if not files:
    raise SystemExit(f'{flag}: no .npz detection files in {directory!r}')
  return files


def _load_dir(directory: str, flag: str, limit: int | None = None):
  """Annotated detections of a folder and their ground-truth file (or None) per video."""
  from phalp_jax import io as io_lib
  files = _npz_files(directory, flag)[:limit]
  dets, gts = [], []
  for path in files:
    d = io_lib.load_npz(path)
    if d.gt_id is None:
      raise SystemExit(f'{path}: field gt_id is missing; {flag} needs annotated identities')
    gt = os.path.join(directory, 'gt', os.path.splitext(os.path.basename(path))[0] + '.txt')
    dets.append(d)
    gts.append(gt if os.path.isfile(gt) else None)
  return dets, gts, files


def _synthetic(preset: str, videos: int, seed: int, num_frames: int | None):
  from phalp_jax import io as io_lib
  from phalp_jax import synthetic
  cfg = synthetic.get_config(preset, **({'num_frames': num_frames} if num_frames else {}))
  dets = [io_lib.from_scene(synthetic.make_scene(cfg, seed=(seed, i)),
                             source=f'synthetic:{preset}:{seed}:{i}') for i in range(videos)]
  return dets


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument('--input', help='folder of .npz detection files with gt_id')
  src.add_argument('--synthetic', help='train on synthetic scenes of this preset instead')
  parser.add_argument('--videos', type=int, default=None,
                      help='number of synthetic scenes (default 8) / at most this many files')
  parser.add_argument('--seed', type=int, default=0, help='synthetic scenes: seed (seed, i)')
  parser.add_argument('--num_frames', type=int, default=None, help='synthetic scenes: length')
  parser.add_argument('--output', required=True, help='JSON file to write')
  parser.add_argument('--eval', dest='eval_dir', default=None,
                      help='held-out folder of .npz files with gt_id (+ optional gt/*.txt)')
  parser.add_argument('--maxiter', type=int, default=100, help='Nelder-Mead iterations')
  parser.add_argument('--maxfev', type=int, default=None, help='at most this many evaluations')
  parser.add_argument('--step', type=float, default=None, help='initial simplex step (log space)')
  parser.add_argument('--init', default=None, help='start from this fit_phalp JSON')
  parser.add_argument('--no_lmc', action='store_true', help='fit without LMC (section 2.7)')
  parser.add_argument('--capacity', type=int, default=None, help='tracklet slots per video')
  parser.add_argument('--no_progress', action='store_true')
  args = parser.parse_args(argv)
  for name in ('videos', 'maxiter', 'maxfev', 'capacity', 'num_frames'):
    value = getattr(args, name)
    if value is not None and value < 1:
      parser.error(f'--{name} must be >= 1, got {value}')
  if args.synthetic is not None:
    from phalp_jax import synthetic
    if args.synthetic not in synthetic.PRESETS:
      parser.error(f'--synthetic: expected one of {sorted(synthetic.PRESETS)}, '
                   f'got {args.synthetic!r}')
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the fit; returns the JSON payload it wrote."""
  args = parse_args(argv)
  from phalp_jax import fit as fit_lib
  from phalp_jax import io as io_lib
  from phalp_jax.state import VECTOR_FIELDS, PhalpParams

  t0 = time.time()
  if args.input is not None:
    train, _, files = _load_dir(args.input, '--input', args.videos)
    source = {'input': os.path.abspath(args.input), 'files': [os.path.basename(f) for f in files]}
  else:
    count = args.videos or 8
    train = _synthetic(args.synthetic, count, args.seed, args.num_frames)
    source = {'synthetic': args.synthetic, 'seed': args.seed, 'num_frames': args.num_frames}
  initial = fit_lib.load_params(args.init) if args.init else PhalpParams()
  if args.no_lmc:
    initial = dataclasses.replace(initial, lmc=False)
  capacity = args.capacity or fit_lib.DEFAULT_CAPACITY
  print(f'[fit_phalp] {len(train)} training sequences, start {initial.to_vector().tolist()}, '
        f'lmc={initial.lmc}', file=sys.stderr, flush=True)
  result = fit_lib.fit(train, initial, maxiter=args.maxiter, maxfev=args.maxfev,
                       step=args.step or fit_lib.DEFAULT_STEP, capacity=capacity,
                       progress=not args.no_progress)
  fitted = result.params
  payload: dict[str, Any] = {
      'fields': list(VECTOR_FIELDS),
      'vector': fitted.to_vector().tolist(),
      'params': dict(zip(VECTOR_FIELDS, fitted.to_vector().tolist())),
      'initial_vector': initial.to_vector().tolist(),
      'objective': {'name': 'frame-level association error',
                    'definition': fit_lib.ERROR_DEFINITION,
                    'before': result.objective_before, 'after': result.objective_after},
      'evaluations': result.evaluations, 'iterations': result.iterations,
      'message': result.message,
      'train': dict(source, videos=len(train)),
      'other_params': {f.name: getattr(fitted, f.name) for f in dataclasses.fields(fitted)
                       if f.name not in VECTOR_FIELDS},
  }
  if args.eval_dir is not None:
    dets, gt_files, files = _load_dir(args.eval_dir, '--eval')
    gts = [fit_lib.gt_rows(d, g) for d, g in zip(dets, gt_files)]
    payload['heldout'] = {
        'input': os.path.abspath(args.eval_dir), 'videos': len(dets),
        'ground_truth': 'gt/*.txt' if all(gt_files) else 'annotated detections',
        'metrics': 'mean over videos of idf1, mota, hota; total num_switches',
        'before': fit_lib.evaluate(dets, initial, gts, capacity),
        'after': fit_lib.evaluate(dets, fitted, gts, capacity)}
  payload['seconds'] = round(time.time() - t0, 1)
  io_lib.write_json(args.output, payload)
  print(f'[fit_phalp] objective {result.objective_before:.5f} -> {result.objective_after:.5f} '
        f'after {result.evaluations} evaluations; wrote {args.output}', file=sys.stderr,
        flush=True)
  if 'heldout' in payload:
    for when in ('before', 'after'):
      m = payload['heldout'][when]
      print(f'[fit_phalp] held-out {when}: ' + ' '.join(
          f'{k}={v:.4f}' if isinstance(v, float) else f'{k}={v}' for k, v in m.items()),
          file=sys.stderr, flush=True)
  return payload


if __name__ == '__main__':
  main()
