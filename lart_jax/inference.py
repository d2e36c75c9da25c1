"""LART inference over whole tracklets and AVA-format detections (DESIGN section 7).

Each tracklet of the evaluation set is cut into covering windows (``lart_jax.data.
inference_windows``: start 0, T, 2T, ...; every frame in exactly one window) with the nearest
people as context. The model runs without masking and deterministically; frames where the person
of interest is not detected are filled with the mask token (they attend, nobody attends to them),
so every frame of the tracklet gets scores. The per-frame class probabilities of a track are then
stitched back together, and the score at a keyframe is the mean over the ``average_frames`` (12)
frames of the track centred on it (frames outside the tracklet do not count).

Keyframes are the frames whose id is a multiple of ``fps / keyframe_hz`` (AVA: one per second),
with the AVA timestamp ``round(frame_id / fps)``; when ``keyframes`` is given (the
``(video_id, timestamp)`` pairs of the ground truth: AVA's evaluated keyframes), only those.
A row per (box, evaluated class) goes to :func:`lart_jax.ava.write_csv`, with the person of
interest's normalised box at that frame.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lart_jax import data as lart_data
from lart_jax.model import Lart

_EXAMPLE_ARRAYS = ('pose', 'appearance', 'detected')


def make_predict_fn(model_cfg) -> Callable[[Any, Mapping[str, np.ndarray]], np.ndarray]:
  """A jitted ``(params, batch) -> probabilities [B, T, 60]`` of the person of interest
  (inference: nothing masked, no dropout)."""
  model = Lart(model_cfg)

  @jax.jit
  def predict(params, pose, appearance, detected):
    out = model.apply({'params': params}, pose, appearance, detected, None, deterministic=True)
    return jax.nn.sigmoid(out['logits'][:, :, 0])

  return lambda params, batch: np.asarray(
      predict(params, *(jnp.asarray(batch[k]) for k in _EXAMPLE_ARRAYS)))


def track_scores(dataset: lart_data.LartDataset, params: Any, model_cfg, data_cfg, *,
                 batch_size: int = 16, progress: bool = True) -> list[np.ndarray]:
  """Per-frame class probabilities ``[len(track), 60]`` of every track of ``dataset``, from the
  covering windows of :func:`lart_data.inference_windows`, run ``batch_size`` at a time (the last
  batch padded by repeating its last window; padded outputs are dropped)."""
  from tqdm.auto import tqdm
  t_len = int(data_cfg.max_frames)
  kw = {'max_frames': t_len, 'num_people': int(data_cfg.num_people),
        'appearance_dim': int(data_cfg.appearance_dim), 'num_classes': int(data_cfg.num_classes)}
  predict = make_predict_fn(model_cfg)
  windows = lart_data.inference_windows(dataset, t_len)
  scores = [np.zeros((len(tr), model_cfg.num_classes), np.float32) for tr in dataset.tracks]
  for lo in tqdm(range(0, len(windows), batch_size), desc='LART inference', unit=' batches',
                 disable=not progress, leave=False):
    rows = windows[lo:lo + batch_size]
    examples = [lart_data.make_example(dataset, int(tr), int(st), rng=None, **kw)
                for _, tr, st in rows]
    examples += [examples[-1]] * (batch_size - len(examples))  # one compiled shape
    batch = {k: np.stack([e[k] for e in examples]) for k in _EXAMPLE_ARRAYS}
    probs = predict(params, batch)
    for i, (_, tr, st) in enumerate(rows):
      n = min(t_len, len(dataset.tracks[int(tr)]) - int(st))
      scores[int(tr)][int(st):int(st) + n] = probs[i, :n]
  return scores


def smooth_at(scores: np.ndarray, position: int, width: int) -> np.ndarray:
  """Mean of ``scores`` over the ``width`` rows centred on ``position`` (``[p - w//2,
  p - w//2 + w)``), clipped to the track."""
  lo = max(0, position - width // 2)
  hi = min(len(scores), position - width // 2 + width)
  return scores[lo:max(hi, lo + 1)].mean(axis=0)


def detection_rows(dataset: lart_data.LartDataset, scores: list[np.ndarray], *, fps: float,
                   average_frames: int = 12, keyframe_hz: float = 1.0,
                   keyframes: set[tuple[str, int]] | None = None,
                   annotated_only: bool = False) -> list[tuple]:
  """AVA detection rows ``(video_id, timestamp, x1, y1, x2, y2, action_id, score)`` of every
  track at every keyframe it covers (module docstring). ``annotated_only`` keeps the frames whose
  tracklet holds a ground-truth label (level 2): scoring the annotated people only, as when
  evaluating on ground-truth boxes (the synthetic benchmark, whose generator leaves people near
  the image border unannotated)."""
  from lart_jax import ava
  period = fps / keyframe_hz
  ids = np.asarray(ava.EVALUATED_IDS)
  rows = []
  for tr, sc in zip(dataset.tracks, scores):
    frames = tr.frame_ids
    on_grid = np.isclose(np.mod(frames, period), 0) | np.isclose(np.mod(frames, period), period)
    h, w = tr.frame_size[:, 0], tr.frame_size[:, 1]
    for p in np.nonzero(on_grid)[0]:
      stamp = int(round(float(frames[p]) / fps))
      if keyframes is not None and (tr.video_id, stamp) not in keyframes:
        continue
      if annotated_only and tr.label_level[p] != 2:
        continue
      if not (h[p] > 0 and w[p] > 0):
        continue
      x1, y1, x2, y2 = (float(v) for v in tr.bbox[p] / np.array([w[p], h[p], w[p], h[p]]))
      box = (min(max(x1, 0.0), 1.0), min(max(y1, 0.0), 1.0), min(max(x2, 0.0), 1.0),
             min(max(y2, 0.0), 1.0))
      mean = smooth_at(sc, int(p), average_frames)
      rows.extend((tr.video_id, stamp, *box, int(a), float(s)) for a, s in zip(ids, mean))
  return rows


def keyframes_of(groundtruth_rows: Iterable[tuple]) -> set[tuple[str, int]]:
  """``(video_id, timestamp)`` pairs of ground-truth rows (the evaluated keyframes)."""
  return {(str(r[0]), int(r[1])) for r in groundtruth_rows}


def predict_csv(path: str, dataset: lart_data.LartDataset, params: Any, config, *,
                keyframes: set[tuple[str, int]] | None = None, progress: bool = True) -> int:
  """Runs :func:`track_scores` and writes :func:`detection_rows` to ``path`` (atomically, by
  ``lart_jax.ava.write_csv``); returns the number of rows."""
  from lart_jax import ava
  ev = config.evaluate
  scores = track_scores(dataset, params, config.model, config.data,
                        batch_size=int(ev.batch_size), progress=progress)
  rows = detection_rows(dataset, scores, fps=float(config.data.fps),
                        average_frames=int(ev.average_frames),
                        keyframe_hz=float(ev.keyframe_hz), keyframes=keyframes,
                        annotated_only=bool(ev.get('annotated_only', False)))
  if not rows:
    raise ValueError(f'{dataset.where}: no keyframe of any tracklet to predict (fps '
                     f'{config.data.fps}, evaluate.keyframe_hz {ev.keyframe_hz}); check data.fps')
  return ava.write_csv(path, rows)

