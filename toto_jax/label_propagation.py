"""Semi-supervised video object segmentation by label propagation (seed 000, Table 4.10).

The protocol of Jabri et al. 2020 ("Space-Time Correspondence as a Contrastive Random Walk"),
as DINO's ``eval_video_segmentation.py`` runs it and Toto's DAVIS evaluation cites it ([60]):
the first frame's ground-truth mask is given; for every later frame ``t`` each token's
(L2-normalised) feature is compared with the tokens of the first frame (ground-truth labels) and of
the last ``n`` frames (their *soft* propagated labels), only within a square spatial window of
``radius`` tokens; the ``k`` most similar source tokens over all those frames are kept, weighted
by ``softmax(similarity / temperature)``, and their labels averaged. The soft token-grid labels
are upsampled bilinearly to the mask resolution, each object channel min-max normalised (DINO's
``norm_mask``) and the argmax taken. Defaults are DINO's: n=7, k=5, radius=12, temperature=0.1.

Metrics follow the official ``davis2017-evaluation`` code: J is the region IoU per object and
frame (1 when both masks are empty); F is the boundary F-measure with boundaries from
``seg2bmap`` matched within a disk of ``ceil(0.008 * image diagonal)`` pixels; the first and the
last frame of every sequence are not scored; J (F) mean is the mean over objects of each object's
mean over frames, recall the fraction of frames above 0.5, decay the drop from the first to the
last quarter; J&F is the mean of J mean and F mean.

Synthetic sequences with known masks come from :mod:`tokenizers_jax.synthetic_video` (the main
sprite's visible pixels are object 1, everything else background 0).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np

# DINO / Jabri et al. defaults.
N_LAST_FRAMES = 7
TOP_K = 5
RADIUS = 12
TEMPERATURE = 0.1
BOUND_TH = 0.008


# ---------------------------------------------------------------------------------------------
# DAVIS measures (official davis2017-evaluation definitions)
# ---------------------------------------------------------------------------------------------

def davis_j(gt: np.ndarray, pred: np.ndarray) -> np.ndarray | float:
  """Region similarity J (IoU) of boolean masks ``[..., H, W]``; 1 where both are empty."""
  gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
  if gt.shape != pred.shape:
    raise ValueError(f'davis_j: masks of different shapes {gt.shape} and {pred.shape}')
  inter = np.sum(gt & pred, axis=(-2, -1))
  union = np.sum(gt | pred, axis=(-2, -1))
  j = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
  return float(j) if j.ndim == 0 else j


def seg2bmap(seg: np.ndarray) -> np.ndarray:
  """Boundary map of a binary mask ``[H, W]`` (the official ``_seg2bmap`` at the mask's size):
  a pixel is boundary when it differs from its right, lower or lower-right neighbour."""
  seg = np.asarray(seg, bool)
  e = np.zeros_like(seg)
  s = np.zeros_like(seg)
  se = np.zeros_like(seg)
  e[:, :-1] = seg[:, 1:]
  s[:-1, :] = seg[1:, :]
  se[:-1, :-1] = seg[1:, 1:]
  b = seg ^ e | seg ^ s | seg ^ se
  b[-1, :] = seg[-1, :] ^ e[-1, :]
  b[:, -1] = seg[:, -1] ^ s[:, -1]
  b[-1, -1] = False
  return b


def disk(radius: int) -> np.ndarray:
  """uint8 disk structuring element of ``radius`` (as ``skimage.morphology.disk``)."""
  r = int(radius)
  y, x = np.mgrid[-r:r + 1, -r:r + 1]
  return (x * x + y * y <= r * r).astype(np.uint8)


def davis_f(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH) -> float:
  """Boundary F-measure of one frame's boolean masks ``[H, W]`` (official ``f_measure``).

  ``bound_th`` < 1 is a fraction of the image diagonal (0.008 in DAVIS), >= 1 pixels.
  """
  gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
  if gt.ndim != 2 or gt.shape != pred.shape:
    raise ValueError(f'davis_f: expected two masks [H, W] of one shape, got {gt.shape} and '
                     f'{pred.shape}')
  bound_pix = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*gt.shape))
  fg_b, gt_b = seg2bmap(pred), seg2bmap(gt)
  kernel = disk(bound_pix)
  fg_dil = cv2.dilate(fg_b.astype(np.uint8), kernel).astype(bool)
  gt_dil = cv2.dilate(gt_b.astype(np.uint8), kernel).astype(bool)
  n_fg, n_gt = int(fg_b.sum()), int(gt_b.sum())
  if n_fg == 0 and n_gt > 0:
    precision, recall = 1.0, 0.0
  elif n_fg > 0 and n_gt == 0:
    precision, recall = 0.0, 1.0
  elif n_fg == 0 and n_gt == 0:
    precision, recall = 1.0, 1.0
  else:
    precision = float((fg_b & gt_dil).sum()) / n_fg
    recall = float((gt_b & fg_dil).sum()) / n_gt
  if precision + recall == 0:
    return 0.0
  return 2 * precision * recall / (precision + recall)


def db_statistics(per_frame: np.ndarray) -> dict[str, float]:
  """Mean, recall (fraction > 0.5) and decay (first minus last quarter) of one object's scores,
  as the official ``db_statistics``."""
  per_frame = np.asarray(per_frame, np.float64)
  mean = float(np.nanmean(per_frame))
  recall = float(np.nanmean(per_frame > 0.5))
  ids = np.round(np.linspace(1, len(per_frame), 5) + 1e-10) - 1
  bins = [per_frame[int(ids[i]):int(ids[i + 1]) + 1] for i in range(4)]
  decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3])) if len(per_frame) else float('nan')
  return {'mean': mean, 'recall': recall, 'decay': decay}


def evaluate_sequence(gt_labels: np.ndarray, pred_labels: np.ndarray,
                      bound_th: float = BOUND_TH) -> dict[int, dict[str, np.ndarray]]:
  """Per-object, per-frame J and F of one sequence of label maps ``int [T, H, W]`` (0 is
  background). Objects are the non-zero ids of the first ground-truth frame; the first and last
  frames are not scored (official semi-supervised protocol), so ``T >= 3``."""
  gt_labels, pred_labels = np.asarray(gt_labels), np.asarray(pred_labels)
  if gt_labels.shape != pred_labels.shape or gt_labels.ndim != 3:
    raise ValueError(f'evaluate_sequence: expected label maps [T, H, W] of one shape, got '
                     f'{gt_labels.shape} and {pred_labels.shape}')
  if gt_labels.shape[0] < 3:
    raise ValueError(f'evaluate_sequence: the first and last frames are not scored, so a '
                     f'sequence needs >= 3 frames, got {gt_labels.shape[0]}')
  out = {}
  for obj in (int(o) for o in np.unique(gt_labels[0]) if o != 0):
    gt, pred = gt_labels[1:-1] == obj, pred_labels[1:-1] == obj
    out[obj] = {'J': np.asarray(davis_j(gt, pred), np.float64).reshape(-1),
                'F': np.array([davis_f(g, p, bound_th) for g, p in zip(gt, pred)])}
  return out


def summarize(sequences: Sequence[dict[int, dict[str, np.ndarray]]]) -> dict[str, Any]:
  """J, F (mean / recall / decay over all objects of all sequences) and J&F mean."""
  stats = {'J': [], 'F': []}
  for seq in sequences:
    for obj in seq.values():
      for m in stats:
        stats[m].append(db_statistics(obj[m]))
  if not stats['J']:
    raise ValueError('summarize: no object to score (every first frame is background only)')
  out = {m: {k: float(np.mean([s[k] for s in v])) for k in ('mean', 'recall', 'decay')}
         for m, v in stats.items()}
  out['J&F'] = (out['J']['mean'] + out['F']['mean']) / 2
  out['objects'] = len(stats['J'])
  return out


# ---------------------------------------------------------------------------------------------
# Label maps <-> token grids
# ---------------------------------------------------------------------------------------------

def labels_to_grid(labels: np.ndarray, num_labels: int, h: int, w: int) -> np.ndarray:
  """One-hot label map ``int [H, W]`` area-averaged to the token grid: float32 ``[h, w, C]``."""
  labels = np.asarray(labels)
  if labels.min() < 0 or labels.max() >= num_labels:
    raise ValueError(f'labels_to_grid: label ids must lie in [0, {num_labels}), got '
                     f'[{labels.min()}, {labels.max()}]')
  onehot = np.eye(num_labels, dtype=np.float32)[labels]
  out = cv2.resize(onehot, (w, h), interpolation=cv2.INTER_AREA)
  return out.reshape(h, w, num_labels)


def grid_to_labels(soft: np.ndarray, height: int, width: int, normalize: bool = True
                   ) -> np.ndarray:
  """Soft token-grid labels ``[..., h, w, C]`` -> label maps ``int [..., H, W]``: bilinear
  upsampling (half-pixel centres, as ``F.interpolate(align_corners=False)``), each channel
  min-max normalised when ``normalize`` (DINO's ``norm_mask``), argmax."""
  soft = np.asarray(soft, np.float32)
  lead, (h, w, c) = soft.shape[:-3], soft.shape[-3:]
  flat = soft.reshape((-1, h, w, c))
  out = np.empty((flat.shape[0], height, width), np.int32)
  for i, grid in enumerate(flat):
    up = cv2.resize(grid, (width, height), interpolation=cv2.INTER_LINEAR).reshape(
        height, width, c)
    if normalize:
      lo, hi = up.min(axis=(0, 1)), up.max(axis=(0, 1))
      up = np.where(hi > 0, (up - lo) / np.maximum(hi - lo, 1e-12), up)
    out[i] = up.argmax(-1)
  return out.reshape(lead + (height, width))


def neighbourhood(h: int, w: int, radius: int) -> np.ndarray:
  """bool ``[h*w, h*w]``: source token within ``radius`` tokens (Chebyshev) of the query."""
  y, x = np.divmod(np.arange(h * w), w)
  return (np.abs(y[:, None] - y[None]) <= radius) & (np.abs(x[:, None] - x[None]) <= radius)


# ---------------------------------------------------------------------------------------------
# Propagation
# ---------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=('n', 'k', 'radius'))
def propagate(features: jax.Array, first_labels: jax.Array, *, n: int = N_LAST_FRAMES,
              k: int = TOP_K, radius: int = RADIUS, temperature: float = TEMPERATURE
              ) -> jax.Array:
  """Soft labels ``[T, h, w, C]`` of every frame from per-token features ``[T, h, w, D]`` and the
  first frame's labels ``[h, w, C]`` (returned unchanged as frame 0).

  Frame ``t`` reads the first frame and frames ``max(1, t-n) .. t-1`` (their propagated soft
  labels), top-``k`` over all of them within ``radius``, softmax at ``temperature``. One
  ``lax.scan`` over frames with a fixed ring of ``n`` context frames: one compilation per shape.
  Batch it with ``jax.vmap`` (see :func:`propagate_batch`).
  """
  if n < 0 or k < 1 or radius < 0:
    raise ValueError(f'propagate: need n >= 0, k >= 1, radius >= 0; got n={n}, k={k}, '
                     f'radius={radius}')
  t_len, h, w, d = features.shape
  c = first_labels.shape[-1]
  hw = h * w
  f = features.reshape(t_len, hw, d).astype(jnp.float32)
  f = f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
  first_l = first_labels.reshape(hw, c).astype(jnp.float32)
  near = jnp.asarray(neighbourhood(h, w, radius))
  k_eff = min(k, (n + 1) * hw)

  def step(carry, ft):
    buf_f, buf_l, valid = carry
    src_f = jnp.concatenate([f[:1], buf_f])                    # [n+1, hw, D]
    src_l = jnp.concatenate([first_l[None], buf_l])            # [n+1, hw, C]
    ok = jnp.concatenate([jnp.ones((1,), bool), valid])
    sim = jnp.einsum('qd,msd->qms', ft, src_f) / temperature
    sim = jnp.where(near[:, None, :] & ok[None, :, None], sim, -jnp.inf)
    vals, idx = jax.lax.top_k(sim.reshape(hw, -1), k_eff)      # over all context tokens
    weights = jax.nn.softmax(vals, axis=-1)                     # -inf (masked) -> weight 0
    out = jnp.einsum('qk,qkc->qc', weights, src_l.reshape(-1, c)[idx])
    if n:
      carry = (jnp.concatenate([buf_f[1:], ft[None]]), jnp.concatenate([buf_l[1:], out[None]]),
               jnp.concatenate([valid[1:], jnp.ones((1,), bool)]))
    return carry, out

  init = (jnp.zeros((n, hw, d), jnp.float32), jnp.zeros((n, hw, c), jnp.float32),
          jnp.zeros((n,), bool))
  _, outs = jax.lax.scan(step, init, f[1:])
  return jnp.concatenate([first_l[None], outs]).reshape(t_len, h, w, c)


def propagate_batch(features: np.ndarray, first_labels: np.ndarray, **kwargs: Any) -> np.ndarray:
  """:func:`propagate` over leading batch axes: features ``[..., T, h, w, D]``, first labels
  ``[..., h, w, C]`` (batch axes of the features broadcast over missing ones of the labels, e.g.
  ``[layers, videos, ...]`` features with ``[videos, ...]`` labels)."""
  features, first_labels = jnp.asarray(features), jnp.asarray(first_labels)
  fn = functools.partial(propagate, **kwargs)
  extra = features.ndim - 4 - (first_labels.ndim - 3)
  for _ in range(first_labels.ndim - 3):
    fn = jax.vmap(fn)
  for _ in range(extra):
    fn = jax.vmap(fn, in_axes=(0, None))
  return np.asarray(fn(features, first_labels))


def features_from_hidden(hidden: np.ndarray, frames: int, h: int, w: int) -> np.ndarray:
  """Residual streams ``[layers, N, T*h*w, D]`` (start marker dropped) -> per-frame token grids
  ``[layers, N, T, h, w, D]``."""
  hidden = np.asarray(hidden)
  if hidden.shape[2] != frames * h * w:
    raise ValueError(f'features_from_hidden: {hidden.shape[2]} token features are not {frames} '
                     f'frames of {h}x{w} tokens')
  return hidden.reshape(hidden.shape[:2] + (frames, h, w, hidden.shape[-1]))


def toto_features(model_config: Any, params: Any, codes: np.ndarray, *, batch_size: int = 16,
                  progress: bool = True) -> np.ndarray:
  """Every layer's features of clips of codes ``int [N, T, h, w]``: ``[layers, N, T, h, w, D]``.

  Each clip is the model input ``[video start] + codes`` (ids ``code + 4``); the residual stream
  at a code's position is that token's feature (:func:`toto_jax.probe.extract_features`).
  """
  from toto_jax import data as token_data
  from toto_jax import probe as probe_lib
  codes = np.asarray(codes)
  if codes.ndim != 4:
    raise ValueError(f'toto_features: expected codes [N, T, h, w], got shape {codes.shape}')
  tokens = np.stack([token_data.codes_to_tokens(c, 'video')[:-1] for c in codes])
  feats = probe_lib.extract_features(model_config, params, tokens, tokens_spec='all',
                                     batch_size=batch_size, progress=progress)
  return features_from_hidden(feats.tokens, *codes.shape[1:])


# ---------------------------------------------------------------------------------------------
# Synthetic sequences with known masks
# ---------------------------------------------------------------------------------------------

def synthetic_sequence(seed: int, index: int, *, frames: int, resolution: int, stride: int = 1
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Video ``index`` of the synthetic sprite stream ``seed`` at ``resolution`` x ``resolution``,
  every ``stride``-th of ``(frames - 1) * stride + 1`` rendered frames: (uint8 ``[T, R, R, 3]``,
  labels ``int32 [T, R, R]`` with 1 on the main sprite's visible pixels)."""
  from tokenizers_jax import synthetic_video
  if frames < 1 or stride < 1:
    raise ValueError(f'synthetic_sequence: frames and stride must be >= 1, got {frames}, {stride}')
  video, info = synthetic_video.make_video(seed, index, frames=(frames - 1) * stride + 1,
                                           height=resolution, width=resolution)
  return video[::stride], info['mask'][::stride].astype(np.int32)


def synthetic_masks_for_file(path: str, *, frames: int, stride: int, resolution: int
                             ) -> np.ndarray:
  """Ground-truth labels ``int32 [T, R, R]`` of a video written by
  :func:`tokenizers_jax.synthetic_video.write_synthetic_videos` (``NNNNN.mp4`` next to its
  ``synthetic.json``), sampled and cropped as :func:`tokenizers_jax.video.read_clip` reads the
  file (every ``stride``-th frame, short side to ``resolution``, centre crop)."""
  import json
  import os

  from tokenizers_jax import synthetic_video
  from tokenizers_jax import video as video_io
  params_path = os.path.join(os.path.dirname(os.path.abspath(path)), synthetic_video.PARAMS_FILE)
  if not os.path.exists(params_path):
    raise FileNotFoundError(f'{params_path} is missing: {path!r} is not a synthetic video with '
                            f'known masks')
  with open(params_path) as f:
    p = json.load(f)
  stem = os.path.splitext(os.path.basename(path))[0]
  if not stem.isdigit():
    raise ValueError(f'{path!r}: synthetic video names are the video index (NNNNN.mp4)')
  _, info = synthetic_video.make_video(int(p['seed']), int(stem), frames=int(p['frames']),
                                       height=int(p['height']), width=int(p['width']))
  sampled = info['mask'][::stride][:frames]
  if sampled.shape[0] < frames:  # read_clip pads a short video with its last sampled frame
    sampled = np.concatenate([sampled, np.repeat(sampled[-1:], frames - sampled.shape[0], 0)])
  out = []
  for m in sampled:
    m = video_io.resize_short_side(m.astype(np.uint8) * 255, resolution)
    out.append(video_io.crop_square(m, resolution, 'center') > 127)
  return np.stack(out).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Picture
# ---------------------------------------------------------------------------------------------

_COLOURS = np.array([[0, 0, 0], [255, 60, 60], [60, 200, 255], [255, 220, 40], [120, 255, 90],
                     [220, 90, 255]], np.float32)


def overlay(frames: np.ndarray, labels: np.ndarray, gt: np.ndarray | None = None,
            alpha: float = 0.5) -> np.ndarray:
  """uint8 frames ``[..., H, W, 3]`` with label colours blended in (background untouched) and,
  when ``gt`` is given, the ground-truth boundaries drawn in white."""
  frames = np.asarray(frames, np.float32)
  labels = np.asarray(labels)
  colours = _COLOURS[labels % len(_COLOURS)]
  a = np.where(labels[..., None] > 0, alpha, 0.0)
  out = frames * (1 - a) + colours * a
  if gt is not None:
    gt = np.asarray(gt)
    flat_gt = gt.reshape((-1,) + gt.shape[-2:])
    edges = np.stack([seg2bmap(g > 0) for g in flat_gt])
    out = np.where(edges.reshape(gt.shape)[..., None], 255.0, out)
  return np.clip(out, 0, 255).astype(np.uint8)
