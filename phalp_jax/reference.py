"""A per-track NumPy PHALP (seed 000, Algorithm 1): the readable reference of the JAX tracker.

Same algorithm as :mod:`phalp_jax.tracker` with ``PhalpParams(lmc=False)`` and the default pose
predictor (:func:`phalp_jax.predict.last_pose`), written the obvious way: a list of :class:`Track`
objects, and per frame a Python loop over tracks (predictions), a double loop over tracks and
detections (costs), ``scipy.optimize.linear_sum_assignment`` and a loop over the result (update).
It computes in float64 and keeps nothing batched, so it checks the JAX tracker's vectorised
formulas (``tests/test_phalp_reference.py``: equal rows on synthetic scenes) and is the speed
reference of ``python -m launch.bench phalp --reference``.

What it shares with the JAX tracker is only the definitions, each restated here:

* usable detections: confidence >= ``conf_threshold``, finite features, non-empty boxes; within a
  frame they keep their file order;
* appearance (Eq. 2.2): ``(1 - alpha0) old + alpha0 new`` on embeddings; on UV maps
  ``alpha = V (1 - V_hat (1 - alpha0))``, visibility ``max(V_hat, V)``;
* location (Eq. 2.3-2.4): per coordinate, a least-squares line over the last ``history``
  observations of the current shot (ridge on the slope), value at the frame and the interval
  ``t_q(n - 2) sqrt(MSE (1 + 1/n + (t' - t_bar)^2 / S_tt))``; under 3 observations the last
  position with ``q sqrt(noise^2 + (speed dt)^2)``; ``q noise`` is the floor of either;
* pose: the most recent observed pose;
* cost (Eq. 2.5-2.10) with the location terms dropped for a tracklet whose location history is of
  an earlier shot; Hungarian on active tracks (slot order) x detections, costs clamped just above
  ``log(beta_th)`` and pairs above it dropped;
* lifecycle: tentative until ``n_init`` hits, dies on its first miss; confirmed dies after
  ``max_age`` frames without a match; a new tracklet takes the lowest free slot (slots are never
  limited here: the JAX tracker grows its capacity without changing the output); ids 1, 2, ... in
  order of confirmation, ties in a frame by detection order.

LMC (section 2.7) is not implemented: compare with ``lmc=False``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import scipy.optimize

from phalp_jax import io as io_lib
from phalp_jax.state import PhalpParams, quantile_table
from phalp_jax.tracker import shot_index

_GATE_EPS = 1e-5  # as phalp_jax.cost: unmatched pairs cost just above the gate


@dataclasses.dataclass
class Track:
  """One tracklet: its aggregates, its last ``history`` observations and its counters."""
  appe: np.ndarray
  uv: np.ndarray | None
  bbox: np.ndarray
  times: list[int]          # frames of the last observations, oldest first
  poses: list[np.ndarray]   # their poses
  locs: list[np.ndarray]    # (x, y, n) of the observations of the current shot (a suffix)
  loc_times: list[int]
  loc_shot: int
  hits: int = 1
  age: int = 0
  time_since_update: int = 0
  confirmed: bool = False
  track_id: int = 0


def predict_location(track: Track, t: int, params: PhalpParams
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Eq. 2.3-2.4 (or the short-history fallback): ``(prediction [3], interval [3])`` at frame t."""
  n = len(track.locs)
  q = float(quantile_table(params.history, params.interval)[min(n, params.history)])
  scale = max(float(track.bbox[3]), 1.0)
  noise = np.array([params.xy_noise * scale, params.xy_noise * scale, params.n_noise])
  speed = np.array([params.xy_speed * scale, params.xy_speed * scale, params.n_speed])
  floor = np.maximum(q * noise, 1e-6)
  if n >= 3:
    tt = np.array(track.loc_times, np.float64) - t   # time relative to the frame predicted
    xs = np.stack(track.locs)                          # [n, 3]
    t_bar, x_bar = tt.mean(), xs.mean(axis=0)
    s_tt = np.sum((tt - t_bar) ** 2)
    slope = ((tt - t_bar) @ (xs - x_bar)) / (s_tt + params.ridge)
    pred = x_bar + slope * (0.0 - t_bar)
    resid = xs - (x_bar + slope * (tt - t_bar)[:, None])
    mse = np.sum(resid ** 2, axis=0) / (n - 2)
    interval = q * np.sqrt(mse * (1.0 + 1.0 / n + t_bar ** 2 / s_tt))
  else:
    pred = track.locs[-1]
    elapsed = max(t - track.loc_times[-1], 0)
    interval = q * np.sqrt(noise ** 2 + (speed * elapsed) ** 2)
  return pred, np.maximum(interval, floor)


def uv_distance(track_uv: np.ndarray, det_uv: np.ndarray) -> float:
  """Mean over pixels visible in both maps (weights ``V_hat V``) of the squared colour difference
  summed over the 3 channels; 0 when no pixel is visible in both."""
  weight = track_uv[3] * det_uv[3]
  total = np.sum(weight * np.sum((track_uv[:3] - det_uv[:3]) ** 2, axis=0))
  return float(total / weight.sum()) if weight.sum() > 1e-6 else 0.0


def aggregate_uv(old: np.ndarray, new: np.ndarray, alpha0: float) -> np.ndarray:
  """Eq. 2.2 on ``[4, h, w]`` UV maps."""
  alpha = new[3] * (1.0 - old[3] * (1.0 - alpha0))
  texture = (1.0 - alpha) * old[:3] + alpha * new[:3]
  return np.concatenate([texture, np.maximum(old[3], new[3])[None]], axis=0)


def pair_cost(track: Track, loc_pred: np.ndarray, loc_int: np.ndarray, use_loc: bool,
              appe: np.ndarray, pose: np.ndarray, loca: np.ndarray, uv: np.ndarray | None,
              params: PhalpParams) -> float:
  """Eq. 2.10 for one tracklet and one detection (without the constant ``log beta_xy beta_n``)."""
  d_a = float(np.sum((track.appe - appe) ** 2))
  if uv is not None and uv[0].size:
    d_a += uv_distance(track.uv, uv)
  d_p = float(np.sum((track.poses[-1] - pose) ** 2))
  cost = math.log1p(params.beta_a * d_a) + math.log1p(params.beta_p * d_p)
  if use_loc:
    d_xy = math.hypot(loc_pred[0] - loca[0], loc_pred[1] - loca[1])
    d_n = abs(loc_pred[2] - loca[2])
    cost += (d_xy / (params.beta_xy * math.hypot(loc_int[0], loc_int[1]))
             + d_n / (params.beta_n * loc_int[2]))
  return cost


def usable(dets: io_lib.Detections, conf_threshold: float) -> np.ndarray:
  """Rows the tracker reads: confident enough, finite features, non-empty boxes."""
  ok = (dets.conf >= conf_threshold) & np.isfinite(dets.conf)
  ok &= np.isfinite(dets.bbox).all(axis=1) & (dets.bbox[:, 2] > 0) & (dets.bbox[:, 3] > 0)
  for f in (dets.appe, dets.pose, dets.loca, dets.uv):
    if f is not None:
      ok &= np.isfinite(f.reshape(len(dets), -1)).all(axis=1)
  return ok


def track_video(dets: io_lib.Detections, params: PhalpParams | None = None) -> np.ndarray:
  """Tracks one video; returns rows ``(frame, id, x, y, w, h, conf)`` float64 ``[N, 7]``, in frame
  order, then detection order (as :func:`phalp_jax.tracker.track_video`)."""
  params = params or PhalpParams(lmc=False)
  if params.lmc:
    raise ValueError('phalp_jax.reference: LMC is not implemented; pass PhalpParams(lmc=False)')
  ok = usable(dets, params.conf_threshold)
  shots = shot_index(dets.shot, dets.num_frames)
  slots: list[Track | None] = []
  next_id = 1
  rows = []
  for t, index in dets.frames():
    index = index[ok[index]]
    shot = int(shots[t])
    appe, pose, loca, bbox = (dets.appe[index], dets.pose[index], dets.loca[index],
                              dets.bbox[index])
    uv = [None] * len(index) if dets.uv is None else dets.uv[index]

    # Predict (lines 4-7) and cost (line 9), one tracklet and one detection at a time.
    active = [k for k, tr in enumerate(slots) if tr is not None]
    cost = np.zeros((len(active), len(index)))
    for r, k in enumerate(active):
      tr = slots[k]
      loc_pred, loc_int = predict_location(tr, t, params)
      use_loc = tr.loc_shot == shot
      for c in range(len(index)):
        cost[r, c] = pair_cost(tr, loc_pred, loc_int, use_loc, appe[c], pose[c], loca[c], uv[c],
                               params)

    # Assign (line 11).
    match: dict[int, int] = {}   # slot -> detection
    if cost.size:
      clamped = np.minimum(cost, params.gate + _GATE_EPS)
      for r, c in zip(*scipy.optimize.linear_sum_assignment(clamped)):
        if clamped[r, c] <= params.gate:
          match[active[r]] = int(c)

    # Update (lines 12-18): matched tracklets, then misses, then new tracklets.
    owner: dict[int, Track] = {}  # detection -> tracklet
    newly: list[tuple[int, Track]] = []
    for k in active:
      tr = slots[k]
      if k in match:
        c = match[k]
        tr.appe = (1.0 - params.alpha0) * tr.appe + params.alpha0 * appe[c]
        if uv[c] is not None:
          tr.uv = aggregate_uv(tr.uv, uv[c], params.alpha0)
        _observe(tr, t, shot, bbox[c], pose[c], loca[c], params.history)
        tr.hits += 1
        tr.age += 1
        tr.time_since_update = 0
        owner[c] = tr
        if not tr.confirmed and tr.hits >= params.n_init:
          tr.confirmed = True
          newly.append((c, tr))
      else:
        tr.time_since_update += 1
        if not tr.confirmed or tr.time_since_update >= params.max_age:
          slots[k] = None
        else:
          tr.age += 1
    for c in range(len(index)):
      if c in owner:
        continue
      tr = Track(appe=appe[c].astype(np.float64), bbox=bbox[c].copy(),
                 uv=None if uv[c] is None else uv[c].astype(np.float64), times=[], poses=[],
                 locs=[], loc_times=[], loc_shot=shot)
      _observe(tr, t, shot, bbox[c], pose[c], loca[c], params.history)
      free = [k for k, s in enumerate(slots) if s is None]
      if free:
        slots[free[0]] = tr
      else:
        slots.append(tr)
      owner[c] = tr
      if tr.hits >= params.n_init:
        tr.confirmed = True
        newly.append((c, tr))
    for c, tr in sorted(newly, key=lambda x: x[0]):   # ids in detection order
      tr.track_id = next_id
      next_id += 1

    for c, i in enumerate(index):
      tr = owner[c]
      if tr.confirmed:
        rows.append((t, tr.track_id, *dets.bbox[i], dets.conf[i]))
  return np.asarray(rows, np.float64) if rows else np.zeros((0, 7))


def _observe(tr: Track, t: int, shot: int, bbox: np.ndarray, pose: np.ndarray, loca: np.ndarray,
             history: int) -> None:
  """Pushes an observation into the tracklet's ``history``-long windows (the location window
  restarts on a new shot)."""
  tr.bbox = np.asarray(bbox, np.float64).copy()
  tr.times = (tr.times + [t])[-history:]
  tr.poses = (tr.poses + [np.asarray(pose, np.float64)])[-history:]
  if tr.loc_shot != shot:
    tr.locs, tr.loc_times = [], []
  tr.locs = (tr.locs + [np.asarray(loca, np.float64)])[-history:]
  tr.loc_times = (tr.loc_times + [t])[-history:]
  tr.loc_shot = shot


def track_batch(detections: list[io_lib.Detections], params: PhalpParams | None = None
                ) -> list[np.ndarray]:
  """:func:`track_video` on each video, one after the other."""
  return [track_video(d, params) for d in detections]
