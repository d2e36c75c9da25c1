r"""Semi-supervised video object segmentation with a Toto run's features (DAVIS protocol, Table 4.10).

On the demo's outputs (``python -m launch.demo --workdir runs/demo`` first); the held-out
synthetic videos there carry known sprite masks (recomputed from their ``synthetic.json``)::

  python -m launch.label_prop --workdir runs/demo/toto_tiny --tokenizer_workdir runs/demo/vq_tiny \
      --videos runs/demo/videos/val --layer all --n 7 --output runs/demo/label_prop

``--videos synthetic`` renders ``--num_videos`` fresh sprite videos at the tokenizer's resolution
instead. Each video gives one clip of the run's ``data.frames`` frames (every ``--stride``-th
frame, as tokenization samples them); clips are tokenized, every layer's token features come from
one pass of the model, and the first frame's mask is propagated by
:mod:`toto_jax.label_propagation` (top ``--k`` of the first + last ``--n`` frames within
``--radius`` tokens, softmax at ``--temperature``). Without ``--tokenizer_workdir`` the tokenizer
named in the run's token ``manifest.json`` is looked up next to the token folder (the demo layout).

Prints J, F and J&F per layer (and the best layer) with two references: copying the first mask to
every frame, and propagating with the tokenizer's code ids as features (one-hot). Writes
``OUTPUT/label_prop.json``, ``OUTPUT/label_prop.png`` (frames with the propagated mask of the best
layer, ground-truth outline in white) and, with several layers, ``OUTPUT/jf_vs_depth.png``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from typing import Any

import numpy as np

from phalp_jax import io as io_lib
from tokenizers_jax.pictures import save_figure

RESULTS = 'label_prop.json'
PICTURE = 'label_prop.png'
DEPTH_PLOT = 'jf_vs_depth.png'


def tokenizer_from_workdir(workdir: str) -> Any:
  """The VQ tokenizer trained in ``workdir`` (:func:`launch.tokenize.load_tokenizer`)."""
  from configs import tokenizer as tokenizer_configs
  from launch import tokenize as tokenize_lib
  config = tokenizer_configs.get_config('vq_tiny')
  config.tokenizer.kind = 'vq'
  config.tokenizer.weights = workdir
  return tokenize_lib.load_tokenizer(config)


def tokenizer_from_manifest(run_config) -> str:
  """The tokenizer workdir of a run trained on token shards: the manifest of its first source
  names it (``vq@NAME:STEP``); it is looked up as a sibling of the token folder's parent."""
  for src in run_config.data.sources.values():
    folder = os.path.dirname(str(src.pattern))
    manifest = os.path.join(folder, 'manifest.json')
    if not os.path.exists(manifest):
      continue
    with open(manifest) as f:
      name = json.load(f).get('tokenizer', '')
    stem = name.split('@', 1)[-1].split(':', 1)[0]
    for base in (os.path.dirname(folder), os.path.dirname(os.path.dirname(folder))):
      candidate = os.path.join(base, stem)
      if stem and os.path.exists(os.path.join(candidate, 'config.json')):
        return candidate
    raise FileNotFoundError(f'{manifest} names tokenizer {name!r} but no workdir {stem!r} was '
                            f'found near {folder}; pass --tokenizer_workdir')
  raise FileNotFoundError('--tokenizer_workdir not given and the run\'s data.sources have no '
                          'token manifest.json naming a tokenizer')


def load_sequences(videos: str, *, frames: int, stride: int, resolution: int, num_videos: int,
                   seed: int = 0, progress: bool = True) -> tuple[np.ndarray, np.ndarray, list]:
  """(uint8 clips ``[N, T, R, R, 3]``, labels ``int32 [N, T, R, R]``, names) from
  ``'synthetic'`` (rendered now) or a folder of synthetic videos with its ``synthetic.json``."""
  from tqdm import tqdm

  from toto_jax import label_propagation as lp
  from tokenizers_jax import video as video_io
  clips, labels, names = [], [], []
  if videos == 'synthetic':
    for i in tqdm(range(num_videos), desc='videos', disable=not progress):
      v, m = lp.synthetic_sequence(seed, i, frames=frames, resolution=resolution, stride=stride)
      clips.append(v)
      labels.append(m)
      names.append(f'synthetic:{seed}:{i}')
  else:
    if not os.path.isdir(videos):
      raise FileNotFoundError(f"--videos: {videos!r} is not a folder (or 'synthetic')")
    paths = sorted(glob.glob(os.path.join(videos, '*.mp4')))[:num_videos or None]
    if not paths:
      raise FileNotFoundError(f'--videos: no .mp4 in {videos!r}')
    for path in tqdm(paths, desc='videos', disable=not progress):
      clips.append(video_io.read_clip(path, frames=frames, stride=stride, resolution=resolution))
      labels.append(lp.synthetic_masks_for_file(path, frames=frames, stride=stride,
                                                resolution=resolution))
      names.append(os.path.basename(path))
  return np.stack(clips), np.stack(labels), names


def _score(lp, soft: np.ndarray, labels: np.ndarray) -> tuple[dict, np.ndarray]:
  """Summary and predicted label maps of soft grids ``[N, T, h, w, C]``."""
  res = labels.shape[-1]
  pred = lp.grid_to_labels(soft, res, res)
  return lp.summarize([lp.evaluate_sequence(g, p) for g, p in zip(labels, pred)]), pred


def evaluate(run: dict, tokenizer, clips: np.ndarray, labels: np.ndarray, *, layers: list[int],
             n: int, k: int, radius: int, temperature: float, progress: bool = True) -> dict:
  """J, F, J&F per layer (1-based depths) plus the references; ``predictions`` per layer."""
  from tqdm import tqdm

  from toto_jax import label_propagation as lp
  cfg = run['config']
  t_len, h, w = int(cfg.data.frames), int(cfg.data.frame_h), int(cfg.data.frame_w)
  num, frames = clips.shape[:2]
  if frames != t_len:
    raise ValueError(f'clips of {frames} frames but the run was trained on data.frames={t_len}')
  if tokenizer.grid != h or h != w:
    raise ValueError(f'the tokenizer gives {tokenizer.grid}x{tokenizer.grid} codes but the run '
                     f'was trained on data.frame_h x frame_w = {h}x{w}')
  codes = tokenizer.encode(clips.reshape((-1,) + clips.shape[2:])).reshape(num, t_len, h, w)
  if codes.max() + 4 >= int(cfg.model.vocab_size):
    raise ValueError(f'code {codes.max()} does not fit model.vocab_size={cfg.model.vocab_size}')
  feats = lp.toto_features(cfg.model, run['params'], codes, progress=progress)
  num_labels = int(labels.max()) + 1
  first = np.stack([lp.labels_to_grid(l[0], num_labels, h, w) for l in labels])
  kw = dict(n=n, k=k, radius=radius, temperature=temperature)
  out = {'layers': {}, 'predictions': {}}
  copy = np.repeat(labels[:, :1], t_len, axis=1)
  out['first_frame_copy'] = lp.summarize([lp.evaluate_sequence(g, p)
                                          for g, p in zip(labels, copy)])
  onehot = np.eye(tokenizer.codebook_size, dtype=np.float32)[codes]
  out['code_ids'], _ = _score(lp, lp.propagate_batch(onehot, first, **kw), labels)
  soft = lp.propagate_batch(feats[np.asarray(layers) - 1], first, **kw)
  for i, depth in enumerate(tqdm(layers, desc='layers', disable=not progress)):
    out['layers'][depth], out['predictions'][depth] = _score(lp, soft[i], labels)
  best = max(layers, key=lambda d: out['layers'][d]['J&F'])
  out['best'] = {'layer': best, 'J&F': out['layers'][best]['J&F']}
  return out


def picture(path: str, clips: np.ndarray, labels: np.ndarray, pred: np.ndarray, title: str,
            rows: int = 4) -> None:
  """Rows of videos, columns of frames: propagated mask (colour) and true outline (white)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  from toto_jax import label_propagation as lp
  rows = min(rows, clips.shape[0])
  cols = clips.shape[1]
  fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.7 * rows), squeeze=False)
  for r in range(rows):
    shown = lp.overlay(clips[r], pred[r], labels[r])
    for c in range(cols):
      ax = axes[r, c]
      ax.imshow(shown[c])
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title('frame 1 (given)' if c == 0 else f'frame {c + 1}', fontsize=8)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  save_figure(fig, path)


def depth_plot(path: str, result: dict) -> None:
  """J&F, J and F against layer depth, with the two references as horizontal lines."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  depths = sorted(result['layers'])
  fig, ax = plt.subplots(figsize=(5, 3.4))
  for key, style in (('J&F', 'o-'), ('J', 's--'), ('F', '^--')):
    ys = [result['layers'][d][key] if key == 'J&F' else result['layers'][d][key]['mean']
          for d in depths]
    ax.plot(depths, ys, style, label=key)
  ax.axhline(result['first_frame_copy']['J&F'], color='grey', ls=':', label='J&F: copy frame 1')
  ax.axhline(result['code_ids']['J&F'], color='black', ls='-.', label='J&F: code ids')
  ax.set_xlabel('layer (depth)')
  ax.set_ylabel('score')
  ax.set_xticks(depths)
  ax.set_ylim(0, 1)
  ax.legend(fontsize=7)
  ax.set_title('label propagation vs depth', fontsize=9)
  fig.tight_layout()
  save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(prog='python -m launch.label_prop',
                              description='DAVIS-protocol label propagation with Toto features')
  p.add_argument('--workdir', required=True, help='the Toto training run')
  p.add_argument('--step', type=int, default=None, help='checkpoint step (default: newest)')
  p.add_argument('--tokenizer_workdir', default='', help='VQ tokenizer run (default: from the '
                 "run's token manifest)")
  p.add_argument('--videos', default='synthetic', help="folder of synthetic videos, or 'synthetic'")
  p.add_argument('--num_videos', type=int, default=32, help='videos to use (0: all in --videos)')
  p.add_argument('--seed', type=int, default=1, help="stream of --videos synthetic")
  p.add_argument('--stride', type=int, default=4, help='keep every stride-th frame')
  p.add_argument('--layer', default='all', help="'all' or comma-separated 1-based depths")
  p.add_argument('--n', type=int, default=7, help='context: the first frame + the last n frames')
  p.add_argument('--k', type=int, default=5, help='nearest neighbours per token')
  p.add_argument('--radius', type=int, default=12, help='spatial window, in tokens')
  p.add_argument('--temperature', type=float, default=0.1, help='softmax temperature')
  p.add_argument('--output', required=True, help='output folder')
  p.add_argument('--no_progress', action='store_true')
  args = p.parse_args(argv)

  from launch import checkpoint as ckpt_lib
  from launch import probe as probe_cli
  try:
    run = ckpt_lib.load(args.workdir, args.step, items=('params',))
    layers = probe_cli.parse_layers(args.layer, int(run['config'].model.num_layers))
    tok_dir = args.tokenizer_workdir or tokenizer_from_manifest(run['config'])
    tokenizer = tokenizer_from_workdir(tok_dir)
  except (FileNotFoundError, ValueError) as e:
    print(f'label_prop: {e}', file=sys.stderr)
    sys.exit(2)
  progress = not args.no_progress
  t0 = time.time()
  clips, labels, names = load_sequences(
      args.videos, frames=int(run['config'].data.frames), stride=args.stride,
      resolution=tokenizer.resolution, num_videos=args.num_videos, seed=args.seed,
      progress=progress)
  result = evaluate(run, tokenizer, clips, labels, layers=layers, n=args.n, k=args.k,
                    radius=args.radius, temperature=args.temperature, progress=progress)
  preds = result.pop('predictions')
  best = result['best']['layer']
  os.makedirs(args.output, exist_ok=True)
  pic = os.path.join(args.output, PICTURE)
  picture(pic, clips, labels, preds[best],
          f'layer {best}: J&F {result["layers"][best]["J&F"]:.3f} (propagated mask in colour, '
          f'true outline in white)')
  if len(layers) > 1:
    depth_plot(os.path.join(args.output, DEPTH_PLOT), result)
  summary = {'workdir': os.path.abspath(args.workdir), 'step': run['step'],
             'tokenizer': tokenizer.name, 'videos': args.videos, 'num_videos': len(names),
             'frames': int(clips.shape[1]), 'stride': args.stride,
             'mask_resolution': int(labels.shape[-1]),
             'token_grid': [int(run['config'].data.frame_h), int(run['config'].data.frame_w)],
             'settings': {'n': args.n, 'k': args.k, 'radius': args.radius,
                          'temperature': args.temperature},
             'protocol': 'DAVIS 2017 semi-supervised: frames 2..T-1 scored, bound_th 0.008',
             'layers': {str(d): v for d, v in result['layers'].items()},
             'best': result['best'], 'first_frame_copy': result['first_frame_copy'],
             'code_ids': result['code_ids'], 'seconds': time.time() - t0}
  io_lib.write_json(os.path.join(args.output, RESULTS), summary, sort_keys=True)
  print(f'{"layer":>8} {"J":>7} {"F":>7} {"J&F":>7}')
  rows = [(str(d), result['layers'][d]) for d in layers]
  rows += [('copy f1', result['first_frame_copy']), ('code ids', result['code_ids'])]
  for name, r in rows:
    print(f'{name:>8} {r["J"]["mean"]:7.3f} {r["F"]["mean"]:7.3f} {r["J&F"]:7.3f}')
  print(f'best layer {best}: J&F {result["best"]["J&F"]:.3f} over {len(names)} videos '
        f'({summary["seconds"]:.0f} s); wrote {os.path.join(args.output, RESULTS)}, {pic}')
  return summary


if __name__ == '__main__':
  main()
