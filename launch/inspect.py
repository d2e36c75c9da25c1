"""Looking at a run from a notebook: its parameter tree, its metric curves, and Toto's samples.

Used by ``notebooks/inspect_checkpoint.ipynb``; everything works on a laptop from a workdir alone
(``launch.checkpoint.load`` reads the checkpoint as NumPy, without a mesh or an optimizer)::

  from launch import checkpoint, inspect
  run = checkpoint.load('runs/toto_tiny')
  inspect.ParamTable(run['params'])             # shapes, dtypes and norms (text or HTML)
  inspect.plot_metrics(inspect.read_metrics('runs/toto_tiny'))
  clips = inspect.sample_clips(run, num_clips=2, prompt_frames=4)
  inspect.clips_png(clips, run['config'], inspect.run_tokenizer(run['config']), 'samples.png')

Sampled frames are decoded to pixels through the run's tokenizer when the token shards it trained
on name one (``launch.tokenize`` writes ``manifest.json`` next to them), and are otherwise drawn
as their code grids, one colour per code.
"""

from __future__ import annotations

import html
import json
import math
import os
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import numpy as np

# ------------------------------------------------------------------------------------------------
# The parameter tree
# ------------------------------------------------------------------------------------------------


class ParamRow(NamedTuple):
  """One leaf of a parameter tree: ``('layers/attn/q', (4, 32, 8), 'float32', 1.93)``."""
  path: str
  shape: tuple[int, ...]
  dtype: str
  norm: float


def _path_str(path) -> str:
  parts = []
  for k in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return '/'.join(parts)


def param_table(params: Any) -> list[ParamRow]:
  """Every leaf of ``params`` with its shape, dtype and L2 norm (float64), in tree order."""
  rows = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    x = np.asarray(leaf)
    norm = float(np.linalg.norm(x.astype(np.float64).ravel())) if x.size else 0.0
    rows.append(ParamRow(_path_str(path), tuple(int(d) for d in x.shape), str(x.dtype), norm))
  return rows


def _count(rows: Sequence[ParamRow]) -> int:
  return int(sum(math.prod(r.shape) for r in rows))


def format_param_table(rows: Sequence[ParamRow]) -> str:
  """A fixed-width text table of ``rows`` with a total line."""
  header = ('parameter', 'shape', 'dtype', 'count', 'norm')
  body = [(r.path, 'x'.join(map(str, r.shape)) or '()', r.dtype, f'{math.prod(r.shape):,}',
           f'{r.norm:.4g}') for r in rows]
  widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
  def fmt(line):
    return '  '.join(c.ljust(w) if i < 3 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(line, widths)))
  out = [fmt(header), '  '.join('-' * w for w in widths)] + [fmt(line) for line in body]
  out.append(f'{len(rows)} arrays, {_count(rows):,} parameters')
  return '\n'.join(out)


def param_table_html(rows: Sequence[ParamRow]) -> str:
  """The same table as HTML, for notebooks."""
  cells = ''.join(
      f'<tr><td style="text-align:left"><code>{html.escape(r.path)}</code></td>'
      f'<td>{"x".join(map(str, r.shape)) or "()"}</td><td>{r.dtype}</td>'
      f'<td>{math.prod(r.shape):,}</td><td>{r.norm:.4g}</td></tr>' for r in rows)
  return ('<table class="param-table"><thead><tr><th>parameter</th><th>shape</th><th>dtype</th>'
          f'<th>count</th><th>norm</th></tr></thead><tbody>{cells}</tbody></table>'
          f'<p>{len(rows)} arrays, {_count(rows):,} parameters</p>')


class ParamTable:
  """The parameter table of a tree; shows itself as HTML in a notebook and as text elsewhere."""

  def __init__(self, params: Any):
    self.rows = param_table(params)

  @property
  def total(self) -> int:
    return _count(self.rows)

  def __str__(self) -> str:
    return format_param_table(self.rows)

  def __repr__(self) -> str:
    return str(self)

  def _repr_html_(self) -> str:
    return param_table_html(self.rows)


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------


class Series(NamedTuple):
  """One metric over training: ``steps`` int64 ``[N]``, ``values`` float64 ``[N]`` (sorted)."""
  steps: np.ndarray
  values: np.ndarray


def read_metrics(workdir: str) -> dict[str, Series]:
  """Every metric of ``WORKDIR/metrics.jsonl`` as a series (the last record of a step wins;
  non-finite values logged as strings come back as floats)."""
  from launch import metrics as metrics_lib
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing: {workdir!r} has no logged metrics')
  by_name: dict[str, dict[int, float]] = {}
  for record in metrics_lib.read_metrics(workdir):
    step = int(record['step'])
    for name, value in record.items():
      if name in ('step', 'time'):
        continue
      try:
        by_name.setdefault(name, {})[step] = float(value)
      except (TypeError, ValueError):
        continue
  return {name: Series(np.array(sorted(points), np.int64),
                       np.array([points[s] for s in sorted(points)], np.float64))
          for name, points in sorted(by_name.items())}


def plot_metrics(series: Mapping[str, Series], keys: Sequence[str] = ('train/loss', 'eval/loss'),
                 *, title: str = '', ax=None):
  """Line plot of the ``keys`` present in ``series`` (evals with markers); returns the figure."""
  import matplotlib.pyplot as plt
  present = [k for k in keys if k in series and len(series[k].steps)]
  if not present:
    raise ValueError(f'plot_metrics: none of {list(keys)} was logged; the metrics are '
                     f'{sorted(series)}')
  if ax is None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
  else:
    fig = ax.figure
  for k in present:
    s = series[k]
    ax.plot(s.steps, s.values, 'o-' if k.startswith('eval/') else '-', ms=3, label=k)
  ax.set_xlabel('step')
  ax.set_ylabel(', '.join(sorted({k.split('/')[-1] for k in present})))
  if title:
    ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  return fig


# ------------------------------------------------------------------------------------------------
# Toto samples
# ------------------------------------------------------------------------------------------------


def held_out_tokens(config, num_clips: int) -> np.ndarray:
  """The first ``num_clips`` held-out sequences of a Toto run's data (int32 ``[B, L]``), the
  same ones its eval hook scores."""
  from toto_jax import data as token_data
  return token_data.build_eval_dataset(config.data, process_index=0, process_count=1,
                                       batch_size=num_clips, num_batches=1)[0]['tokens']


def sample_clips(run: Mapping[str, Any], *, num_clips: int = 2, prompt_frames: int = 1,
                 seed: int = 0, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0) -> dict[str, Any]:
  """Prompts a Toto run with the first ``prompt_frames`` frames of held-out clips and samples the
  rest of each clip. Returns ``{'truth', 'sampled'}`` codes ``[B, T, h, w]`` (a sampled marker id
  inside a frame is code -1) and ``prompt_frames``."""
  from toto_jax import data as token_data
  from toto_jax import sampling

  config = run['config']
  if config.get('task') != 'toto':
    raise ValueError(f'sample_clips: the run is task {config.get("task")!r}, not a Toto run')
  d = config.data
  frames, h, w = int(d.frames), int(d.frame_h), int(d.frame_w)
  if not 1 <= prompt_frames < frames:
    raise ValueError(f'sample_clips: prompt_frames must be in [1, data.frames={frames}), got '
                     f'{prompt_frames}')
  tokens = held_out_tokens(config, num_clips)
  per_frame = h * w
  prompt = np.asarray(tokens[:, :1 + prompt_frames * per_frame], np.int32)
  new = (frames - prompt_frames) * per_frame
  out = sampling.sample(config.model, run['params'], prompt, new, rng=jax.random.key(seed),
                        temperature=temperature, top_k=top_k, top_p=top_p)
  out = np.asarray(out)
  if out.shape != (num_clips, prompt.shape[1] + new):
    raise ValueError(f'sample_clips: toto_jax.sampling.sample returned shape {out.shape}, '
                     f'expected {(num_clips, prompt.shape[1] + new)}')
  # tokens_to_codes reads the frame part after the start marker; no end marker is needed.
  return {'truth': token_data.tokens_to_codes(tokens, frames, h, w),
          'sampled': token_data.tokens_to_codes(out, frames, h, w),
          'prompt_frames': prompt_frames}


def code_palette(codebook_size: int) -> np.ndarray:
  """uint8 ``[codebook_size + 1, 3]``: a distinct colour per code (golden-ratio hues, three
  brightness levels); the last row, black, is for code -1 (a marker where a code should be)."""
  import matplotlib.colors
  c = np.arange(codebook_size)
  hsv = np.stack([(c * 0.6180339887) % 1.0, 0.55 + 0.45 * ((c // 3) % 2),
                  0.55 + 0.2 * (c % 3)], axis=-1)
  rgb = (matplotlib.colors.hsv_to_rgb(hsv) * 255).round().astype(np.uint8)
  return np.concatenate([rgb, np.zeros((1, 3), np.uint8)])


def code_images(codes: np.ndarray, codebook_size: int) -> np.ndarray:
  """Code grids ``[..., h, w]`` as uint8 images ``[..., h, w, 3]``, one colour per code."""
  codes = np.asarray(codes)
  if codes.size and codes.max() >= codebook_size:
    raise ValueError(f'code_images: codes must be < codebook_size={codebook_size}, got '
                     f'{codes.max()}')
  return code_palette(codebook_size)[np.where(codes < 0, codebook_size, codes)]


def run_tokenizer(config, weights: str = '', kind: str = '') -> Any | None:
  """The tokenizer of a Toto run's tokens, or ``None`` when it names none (synthetic tokens).

  ``weights`` (a VQ training workdir, or a dVAE/VQGAN weight file with ``kind``) takes
  precedence; otherwise each token source's ``manifest.json`` (written by ``launch.tokenize``
  next to its shards) is read for ``tokenizer_weights`` / ``tokenizer_kind``.
  """
  import ml_collections

  from launch import tokenize as tokenize_lib

  if not weights:
    for name, source in sorted(config.data.get('sources', {}).items()):
      pattern = source.get('pattern', '')
      if not pattern or pattern == 'synthetic':
        continue
      manifest_path = os.path.join(os.path.dirname(pattern), tokenize_lib.MANIFEST)
      if not os.path.exists(manifest_path):
        continue
      with open(manifest_path) as f:
        manifest = json.load(f)
      if manifest.get('tokenizer_weights'):
        weights, kind = manifest['tokenizer_weights'], manifest.get('tokenizer_kind', '')
        break
  if not weights:
    return None
  kind = kind or ('vq' if os.path.isdir(weights) else '')
  if not kind:
    raise ValueError(f'run_tokenizer: {weights!r} is a file; say which tokenizer it holds '
                     f"(kind='dvae' or 'vqgan')")
  tok_config = ml_collections.ConfigDict({
      'tokenizer': {'kind': kind, 'weights': weights},
      # dVAE / VQGAN need the frame size; the token grid of the run gives it (grid x stride).
      'data': {'resolution': int(config.data.frame_h) * (16 if kind == 'vqgan' else 8)},
      'model': {'codebook_size': int(config.data.codebook_size)}})
  tokenizer = tokenize_lib.load_tokenizer(tok_config)
  if (tokenizer.codebook_size, tokenizer.grid) != (int(config.data.codebook_size),
                                                    int(config.data.frame_h)):
    raise ValueError(f'run_tokenizer: {weights!r} has {tokenizer.codebook_size} codes of '
                     f'{tokenizer.grid}x{tokenizer.grid}, but the run trained on '
                     f'data.codebook_size={config.data.codebook_size} codes of '
                     f'{config.data.frame_h}x{config.data.frame_w}')
  return tokenizer


def clip_frames(codes: np.ndarray, codebook_size: int, tokenizer=None) -> np.ndarray:
  """One clip's codes ``[T, h, w]`` as uint8 frames: decoded by ``tokenizer`` (a marker id shown
  as code 0, as in ``launch.demo``) or drawn as code images."""
  codes = np.asarray(codes)
  if tokenizer is None:
    return code_images(codes, codebook_size)
  return tokenizer.decode(np.clip(codes, 0, tokenizer.codebook_size - 1))


def clips_png(clips: Mapping[str, Any], config, tokenizer, path: str) -> str:
  """Writes a PNG with, per clip, the held-out frames above the sampled continuation; returns
  ``path``."""
  from tokenizers_jax import pictures
  k = int(config.data.codebook_size)
  rows, labels = [], []
  for i, (truth, sampled) in enumerate(zip(clips['truth'], clips['sampled'])):
    rows += [pictures._upscale(clip_frames(truth, k, tokenizer)),  # pylint: disable=protected-access
             pictures._upscale(clip_frames(sampled, k, tokenizer))]  # pylint: disable=protected-access
    labels += [f'clip {i}: held out', f'clip {i}: sampled']
  shown = 'decoded by ' + tokenizer.name if tokenizer is not None else 'code grids, one colour per code'
  pictures.clip_strip(rows, labels, path,
                      title=f'frames 1..{clips["prompt_frames"]} given, the rest sampled ({shown})')
  return path
