r"""Probes every layer of a trained Toto run on labelled clips or images (seed 000, sec. 4.3-4.4).

Token shards with labels (e.g. the demo's, whose ``labels.csv`` classes the tokenization job
stored in every record)::

  python -m launch.probe --workdir runs/demo/toto_tiny \
      --train 'runs/demo/tokens/train/*.array_record' \
      --eval 'runs/demo/tokens/val/*.array_record' --probe all --tokens frame \
      --output runs/demo/probe

A local TFDS image classification split (prepared offline in ``array_record`` format; nothing is
downloaded): the images are tokenized with ``--tokenizer`` (through ``launch.tokenize``, into
``OUTPUT/tokens/{train,eval}``), each image becomes one sequence ``[image start] + codes``, and
the same probes run on it. Without ``--tfds_eval`` the last 20% of the split is held out::

  python -m launch.probe --workdir RUN --tfds mnist:train --tfds_eval mnist:test \
      --data_dir ~/tensorflow_datasets --tokenizer runs/demo/vq_tiny --tokenizer_variant vq_tiny \
      --output runs/probe_mnist

Writes ``OUTPUT/probe_results.json`` (accuracy per layer and probe, the best layer) and
``OUTPUT/accuracy_vs_depth.png``, and prints a table. Features of every layer are extracted in one
pass and the probes of all layers are trained jointly (:mod:`toto_jax.probe`).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

from phalp_jax import io as io_lib

RESULTS = 'probe_results.json'
PLOT = 'accuracy_vs_depth.png'


# ------------------------------------------------------------------------------------------------
# Labelled sequences from token shards
# ------------------------------------------------------------------------------------------------

def load_labeled_tokens(pattern: str, frames: int, vocab_size: int, *, flag: str = '--train'
                        ) -> tuple[np.ndarray, np.ndarray, dict]:
  """Model inputs ``int32 [N, L]`` and labels ``[N]`` of the labelled records matching ``pattern``.

  A video record gives its first ``frames`` frames as ``[video start] + codes`` (the model input of
  pre-training: the end marker is never an input); an image record gives ``[image start] +
  codes``. Records without a label (-1) and clips shorter than ``frames`` are skipped and
  counted. All kept records must share one shape; errors name ``flag``.
  """
  from toto_jax import data as token_data
  from toto_jax import shards

  files = sorted(f for f in glob.glob(os.path.expanduser(pattern)) if not f.endswith('.tmp'))
  if not files:
    raise FileNotFoundError(f'{flag}: no files match {pattern!r}')
  seqs, labels = [], []
  stats = {'files': len(files), 'records': 0, 'unlabelled': 0, 'short': 0}
  for rec in shards.read_records(files):
    stats['records'] += 1
    if rec['label'] < 0:
      stats['unlabelled'] += 1
      continue
    codes = rec['codes']
    if rec['kind'] == 'video':
      if codes.shape[0] < frames:
        stats['short'] += 1
        continue
      codes = codes[:frames]
    tokens = token_data.codes_to_tokens(codes, rec['kind'])[:-1]
    if seqs and tokens.shape != seqs[0].shape:
      raise ValueError(f'{flag}: records of different shapes ({seqs[0].shape[0]} and '
                       f'{tokens.shape[0]} tokens); probe one geometry at a time')
    seqs.append(tokens)
    labels.append(rec['label'])
  if not seqs:
    raise ValueError(f'{flag}: none of the {stats["records"]} records matching {pattern!r} has a '
                     f'label ({stats["unlabelled"]} unlabelled, {stats["short"]} shorter than '
                     f'{frames} frames)')
  tokens = np.stack(seqs)
  top = int(tokens.max())
  if top >= vocab_size:
    raise ValueError(f'{flag}: token id {top} >= model.vocab_size = {vocab_size} of the run: the '
                     f'records were made with a larger codebook than the model was trained on')
  stats['kept'] = len(seqs)
  return tokens, np.asarray(labels, np.int64), stats


# ------------------------------------------------------------------------------------------------
# TFDS images -> token shards
# ------------------------------------------------------------------------------------------------

def parse_tfds(spec: str, flag: str = '--tfds') -> tuple[str, str]:
  """``'NAME:SPLIT'`` -> ``(NAME, SPLIT)``; NAME may carry a config and version
  (``'my_set/cfg:1.0.0:train'``): the split is what follows the last ':'."""
  name, sep, split = spec.rpartition(':')
  if not sep or not name or not split:
    raise ValueError(f"{flag}: expected 'NAME:SPLIT' (e.g. 'mnist:train'), got {spec!r}")
  return name, split


def tokenize_tfds(name: str, split: str, data_dir: str, tokenizer_weights: str,
                  tokenizer_variant: str, output: str, resolution: int = 0,
                  progress: bool = True) -> dict:
  """Tokenizes a local TFDS split into labelled image records (resumable; ``launch.tokenize``)
  at ``resolution`` (0: the tokenizer variant's)."""
  from configs import tokenizer as tokenizer_configs
  from launch import tokenize as tokenize_lib

  config = tokenizer_configs.get_config(tokenizer_variant)
  config.tokenizer.weights = tokenizer_weights
  config.data.tfds_data_dir = data_dir
  if resolution:
    config.data.resolution = resolution
  return tokenize_lib.tokenize(config, f'tfds:{name}/{split}', output, progress_bar=progress)


# ------------------------------------------------------------------------------------------------
# The job
# ------------------------------------------------------------------------------------------------

def parse_layers(spec: str, num_layers: int) -> list[int]:
  """``'all'`` or comma-separated 1-based depths -> sorted depths."""
  if spec == 'all':
    return list(range(1, num_layers + 1))
  try:
    layers = sorted({int(s) for s in spec.split(',') if s.strip()})
  except ValueError:
    layers = []
  if not layers or layers[0] < 1 or layers[-1] > num_layers:
    raise ValueError(f"--layers: expected 'all' or depths in 1..{num_layers} like '2,3', "
                     f'got {spec!r}')
  return layers


def run_probes(workdir: str, train_tokens: np.ndarray, train_y: np.ndarray,
               eval_tokens: np.ndarray, eval_y: np.ndarray, output: str, *,
               kinds: Sequence[str], layers: str = 'all', tokens_spec: str = 'all',
               settings: Any = None, step: int | None = None, full_attention: bool = False,
               num_heads: int = 1, batch_size: int = 32, progress: bool = True,
               extra: dict | None = None) -> dict:
  """Features of the run at ``workdir`` for both splits, the probes of ``kinds`` on every
  selected layer, then ``probe_results.json`` and ``accuracy_vs_depth.png`` in ``output``."""
  from launch import checkpoint as ckpt_lib
  from toto_jax import data as token_data
  from toto_jax import probe as probe_lib

  run = ckpt_lib.load(workdir, step, items=('params',))
  model_cfg = run['config'].model
  if full_attention:
    model_cfg.causal = False
  depths = parse_layers(layers, int(model_cfg.num_layers))
  needs_tokens = any(k != 'linear' for k in kinds)
  spec = tokens_spec if needs_tokens else 'none'
  start = int(train_tokens[0, 0])
  per_frame = (train_tokens.shape[1] - 1) // (
      int(run['config'].data.frames) if start == token_data.VIDEO_START else 1)
  num_classes = int(max(train_y.max(), eval_y.max())) + 1
  settings = settings or probe_lib.TrainSettings()

  t0 = time.time()
  feats = {}
  for split, toks in (('train', train_tokens), ('eval', eval_tokens)):
    f = probe_lib.extract_features(model_cfg, run['params'], toks, tokens_spec=spec,
                                   tokens_per_frame=per_frame, batch_size=batch_size,
                                   progress=progress)
    pick = np.asarray(depths) - 1
    feats[split] = probe_lib.Features(f.pooled[pick],
                                      None if f.tokens is None else f.tokens[pick])
  extract_s = time.time() - t0

  results = []
  for kind in kinds:
    r = probe_lib.probe_layers(kind, feats['train'], train_y, feats['eval'], eval_y,
                               num_classes, settings, num_heads=num_heads, progress=progress)
    results.append(r)
  chance = float(np.bincount(eval_y, minlength=num_classes).max() / len(eval_y))

  os.makedirs(output, exist_ok=True)
  out = {
      'workdir': os.path.abspath(workdir), 'step': run['step'], 'layers': depths,
      'num_layers': int(model_cfg.num_layers), 'attention': 'causal' if model_cfg.causal else 'full',
      'num_classes': num_classes, 'train_examples': int(len(train_y)),
      'eval_examples': int(len(eval_y)), 'majority_class_accuracy': chance,
      'tokens': spec, 'sequence_length': int(train_tokens.shape[1]),
      'settings': dict(vars(settings)), 'extract_seconds': extract_s,
      'seconds': time.time() - t0, **(extra or {}),
      'probes': {},
  }
  for r in results:
    entry = r.to_json()
    # Results are indexed by position in ``layers``; report real depths.
    entry['best_layer'] = depths[r.best_layer - 1]
    out['probes'][r.kind] = entry
  best = max(results, key=lambda r: r.best_accuracy)
  out['best'] = {'probe': best.kind, 'layer': depths[best.best_layer - 1],
                 'accuracy': best.best_accuracy}
  io_lib.write_json(os.path.join(output, RESULTS), out, sort_keys=True)
  title = (f'{os.path.basename(os.path.normpath(workdir))} (step {run["step"]}, '
           f'{out["attention"]} attention): {num_classes} classes, {len(eval_y)} held-out')
  probe_lib.plot_accuracy_vs_depth(results, os.path.join(output, PLOT), chance=chance,
                                   depths=depths, title=title)
  return out


def format_table(out: dict) -> str:
  """The per-layer accuracies as a fixed-width text table, best of each probe starred."""
  kinds = list(out['probes'])
  lines = ['layer  ' + '  '.join(f'{k:>14}' for k in kinds)]
  for i, depth in enumerate(out['layers']):
    cells = []
    for k in kinds:
      p = out['probes'][k]
      mark = '*' if p['best_layer'] == depth else ' '
      cells.append(f'{p["eval_accuracy"][i] * 100:13.1f}{mark}')
    lines.append(f'{depth:5d}  ' + '  '.join(cells))
  b = out['best']
  lines.append(f'best: {b["probe"]} probe at layer {b["layer"]}/{out["num_layers"]}: '
               f'{b["accuracy"]:.1%} (majority class {out["majority_class_accuracy"]:.1%}, '
               f'{out["num_classes"]} classes, {out["eval_examples"]} held-out examples)')
  return '\n'.join(lines)


def build_parser() -> argparse.ArgumentParser:
  from toto_jax import probe as probe_lib
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workdir', required=True, help='the Toto training run to probe')
  p.add_argument('--step', type=int, default=None, help='checkpoint step (default: newest)')
  p.add_argument('--output', required=True, help='directory for the results and the plot')
  p.add_argument('--train', help='glob of labelled token shards to train the probes on')
  p.add_argument('--eval', help='glob of labelled held-out token shards')
  p.add_argument('--tfds', help='a local TFDS image classification split, NAME:SPLIT')
  p.add_argument('--tfds_eval', help='held-out TFDS split NAME:SPLIT (default: last 20%% of --tfds)')
  p.add_argument('--data_dir', default='', help='TFDS data_dir holding the prepared dataset')
  p.add_argument('--tokenizer', default='', help='tokenizer weights: a VQ workdir or a weight file')
  p.add_argument('--tokenizer_variant', default='vq_tiny',
                 help='configs/tokenizer.py variant of --tokenizer (vq_tiny, vq, dvae, vqgan_1k)')
  p.add_argument('--resolution', type=int, default=0,
                 help='image side given to the tokenizer (default: the variant\'s)')
  p.add_argument('--probe', default='all', choices=probe_lib.PROBES + ('all',))
  p.add_argument('--layers', default='all', help="'all' or 1-based depths, e.g. '2,3'")
  p.add_argument('--tokens', default='all',
                 help="token features for attention probes: all | frame (mean per frame) | "
                      "sample:K (K evenly spaced tokens)")
  p.add_argument('--full_attention', action='store_true',
                 help='run the backbone with full instead of causal attention')
  p.add_argument('--epochs', type=int, default=50)
  p.add_argument('--batch_size', type=int, default=64, help='probe training batch')
  p.add_argument('--lr', type=float, default=1e-3)
  p.add_argument('--weight_decay', type=float, default=0.05)
  p.add_argument('--heads', type=int, default=1, help='attention probe heads')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--no_progress', action='store_true')
  return p


def main(argv: Sequence[str] | None = None) -> dict:
  from launch import checkpoint as ckpt_lib
  from toto_jax import probe as probe_lib

  args = build_parser().parse_args(argv)
  kinds = list(probe_lib.PROBES) if args.probe == 'all' else [args.probe]
  settings = probe_lib.TrainSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                     weight_decay=args.weight_decay, seed=args.seed)
  try:
    probe_lib.parse_token_spec(args.tokens)
    import ml_collections
    if not os.path.isdir(args.workdir):
      raise FileNotFoundError(f'--workdir: {args.workdir!r} does not exist')
    config = ml_collections.ConfigDict(ckpt_lib.read_config_dict(args.workdir))
    frames, vocab = int(config.data.frames), int(config.model.vocab_size)
    extra: dict = {}
    if args.tfds:
      if args.train or args.eval:
        raise ValueError('give either --train/--eval (token shards) or --tfds, not both')
      if not args.tokenizer:
        raise ValueError('--tfds needs --tokenizer (the weights that turn images into codes)')
      name, split = parse_tfds(args.tfds)
      if args.tfds_eval:
        eval_name, eval_split = parse_tfds(args.tfds_eval, '--tfds_eval')
      else:
        eval_name, eval_split, split = name, f'{split}[80%:]', f'{split}[:80%]'
      dirs = {}
      for role, (n, s) in (('train', (name, split)), ('eval', (eval_name, eval_split))):
        dirs[role] = os.path.join(args.output, 'tokens', role)
        m = tokenize_tfds(n, s, args.data_dir, args.tokenizer, args.tokenizer_variant, dirs[role],
                          args.resolution, progress=not args.no_progress)
        extra[f'tfds_{role}'] = {'dataset': n, 'split': s, 'images': m['clips'],
                                 'failed': m['failed'], 'tokenizer': m['tokenizer']}
      train_glob = os.path.join(dirs['train'], '*.array_record')
      eval_glob = os.path.join(dirs['eval'], '*.array_record')
    else:
      if not args.train or not args.eval:
        raise ValueError('give --train and --eval (globs of labelled token shards), or --tfds')
      train_glob, eval_glob = args.train, args.eval
    train_tokens, train_y, train_stats = load_labeled_tokens(train_glob, frames, vocab)
    eval_tokens, eval_y, eval_stats = load_labeled_tokens(eval_glob, frames, vocab, flag='--eval')
    if train_tokens.shape[1] != eval_tokens.shape[1]:
      raise ValueError(f'--train sequences have {train_tokens.shape[1]} tokens but --eval '
                       f'sequences {eval_tokens.shape[1]}')
    extra.update({'train_data': {'pattern': train_glob, **train_stats},
                  'eval_data': {'pattern': eval_glob, **eval_stats}})
    print(f'[probe] {len(train_y)} train / {len(eval_y)} held-out labelled sequences of '
          f'{train_tokens.shape[1]} tokens; probes: {", ".join(kinds)}', flush=True)
    out = run_probes(args.workdir, train_tokens, train_y, eval_tokens, eval_y, args.output,
                     kinds=kinds, layers=args.layers, tokens_spec=args.tokens, settings=settings,
                     step=args.step, full_attention=args.full_attention, num_heads=args.heads,
                     progress=not args.no_progress, extra=extra)
  except (FileNotFoundError, ValueError, KeyError) as e:
    print(f'probe: {e}', file=sys.stderr)
    sys.exit(2)
  print(format_table(out))
  print(f'  results: {os.path.join(os.path.abspath(args.output), RESULTS)}\n'
        f'  plot:    {os.path.join(os.path.abspath(args.output), PLOT)}')
  return out


if __name__ == '__main__':
  main()
