"""The PHALP tracker (seed 000, chapter 2, Algorithm 1): jitted, batched tracklet updates in JAX,
the Hungarian solve on the host.

Code <-> paper:

* Per-detection features (section 2.3 "Single-frame processing"): :class:`phalp_jax.io.Detections`
  ``appe [N, Da]``, ``pose [N, Dp]``, ``loca [N, 3] = (x, y, n = log 1/z)``, optional ``uv``
  (Eq. 2.1). Sizes come from the data; a feature of size 0 (boxes-only MOT files) drops its cue.
* Prediction (Algorithm 1 lines 4-7): appearance = the Eq. 2.2 aggregate, location by the
  Eq. 2.3-2.4 line fits with prediction intervals, pose by a pluggable predictor
  (:mod:`phalp_jax.predict`).
* Cost (line 9, Eq. 2.5-2.10) and assignment (line 11): :mod:`phalp_jax.cost`; location terms
  dropped across a shot change ("Extension to shot changes"; the shot index comes from
  ``Detections.shot`` or ``Tracker.step(new_shot=...)``, e.g. from :mod:`phalp_jax.shots`).
* LMC, the lookback merge check (section 2.7; ``PhalpParams.lmc``, on by default): a tracklet
  that reaches ``w`` hits is merged into a lost one when its locations regressed back in time
  and its appearance agree (:mod:`phalp_jax.lmc`; its Hungarian shares the frame's host
  callback).
* Update (lines 12-18): matched tracklets take the detection (aggregate appearance, push the
  observation into the ``w``-long history); unmatched ones age; unmatched detections start
  tentative tracklets; a tentative tracklet is confirmed after ``n_init`` hits and dies on its first
  miss; a confirmed one dies after ``max_age`` frames without a match (``time_since_update >=
  max_age``, "age >= t_max"). Detections under ``conf_threshold`` are ignored.

Ids: a tracklet gets its public id when it is confirmed, 1, 2, ... in order of confirmation (ties
in a frame by detection order), so ids are stable and a tentative tracklet that dies uses none.
They are dense unless LMC merged a tracklet into an older one: the offline outputs then give all
its rows the older id and its own id is never output (``Tracker.step`` rows carry it until the
merge; ``Tracker.id_map``). Output rows ``(frame, id, x, y, w, h, conf)`` (float64, as
:func:`phalp_jax.baseline.track_iou`) are the detections held by a confirmed tracklet in that
frame, in frame order, then detection order.

Two ways to run, same per-frame function (:func:`frame_step`: predict + cost, a
``jax.pure_callback`` to :func:`phalp_jax.cost.assign` for the B Hungarians (and LMC's), update,
LMC merges), identical outputs:

* :class:`Tracker`: streaming, one video, one jitted call per frame (``step``); detections are
  padded to a bucket of 8, 16, 32, ... per frame to bound recompiles.
* :func:`track_batch` / :func:`track_video`: B videos in one compiled ``lax.scan`` over frames,
  detections padded to the batch's largest frame M (bucketed like the streaming path), frames to
  a multiple of 16 and videos to 1, 2, 4, 8, 16, 24, ... (padding is ``live`` False: no effect).

Capacity (K slots per video): a tracklet is never dropped silently. When the new tracklets of a
frame do not fit in the free slots, the state's ``overflow`` flag is raised. ``Tracker.step`` then
re-runs that frame from the previous state with 2K slots (host re-allocation, free slots appended;
free slots are used lowest first, so growing never changes the output). ``track_batch`` re-runs
the videos that overflowed with 2K slots from their start, doubling up to ``max_capacity``; with
``grow=False``, or beyond ``max_capacity``, it raises ``CapacityError`` naming the video and K.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from phalp_jax import io as io_lib
from phalp_jax.io import shot_index  # noqa: F401 - re-exported: callers read shots here
from phalp_jax import lmc as lmc_lib
from phalp_jax.cost import assign, cost_matrix
from phalp_jax.predict import (PosePredictor, aggregate_embedding, aggregate_uv, last_pose,
                               predict_location)
from phalp_jax.state import (Knobs, PhalpParams, TrackerState, VECTOR_FIELDS, grow_state,
                             init_state, quantile_table)

__all__ = ['PhalpParams', 'TrackerState', 'Tracker', 'FrameBatch', 'CapacityError',
           'track_video', 'track_batch', 'frame_step', 'shot_index', 'VECTOR_FIELDS',
           'quantile_table', 'init_state', 'grow_state']

DEFAULT_CAPACITY = 32
DEFAULT_MAX_CAPACITY = 4096
FRAME_BUCKET = 16  # the compiled loop pads T to a multiple of this (bounds recompiles)


class CapacityError(RuntimeError):
  """More simultaneous tracklets than slots, and growing is off or past ``max_capacity``."""


class FrameBatch(NamedTuple):
  """One frame of B videos, detections padded to M (a leading [T] in the compiled loop)."""
  t: jax.Array      # [B] int32 frame number
  shot: jax.Array   # [B] int32 shot index (0, 1, ...: +1 at every shot change)
  live: jax.Array   # [B] bool: the video has this frame (False past its end)
  valid: jax.Array  # [B, M] bool: a real detection (not padding)
  bbox: jax.Array   # [B, M, 4] f32
  conf: jax.Array   # [B, M] f32
  appe: jax.Array   # [B, M, Da] f32
  pose: jax.Array   # [B, M, Dp] f32
  loca: jax.Array   # [B, M, 3] f32
  uv: jax.Array     # [B, M, 4, h, w] f32 (h = w = 0 without UV maps)


# ------------------------------------------------------------------------------------------------
# The per-frame device work (one video: vmapped over B).


def _predict(st: TrackerState, t: jax.Array, shot: jax.Array, knobs: Knobs,
             pose_predictor: PosePredictor):
  """Predicted location, its interval, pose and whether location terms apply, per slot."""
  loc_pred, loc_int = jax.vmap(predict_location, in_axes=(0, 0, 0, None, 0, None))(
      st.loca, st.times, st.loc_valid, t, st.bbox[:, 3], knobs)
  pose_pred = jax.vmap(pose_predictor, in_axes=(0, 0, 0, None))(st.pose, st.times, st.valid, t)
  use_loc = (st.loc_shot == shot) & st.loc_valid.any(axis=1)
  return loc_pred, loc_int, pose_pred.astype(jnp.float32), use_loc


def _cost(st: TrackerState, fr: FrameBatch, knobs: Knobs, pose_predictor: PosePredictor):
  """``[K, M]`` Eq. 2.10 costs of one video's slots against its frame's detections."""
  loc_pred, loc_int, pose_pred, use_loc = _predict(st, fr.t, fr.shot, knobs, pose_predictor)
  return cost_matrix(track_appe=st.appe, track_uv=st.uv, pose_pred=pose_pred, loc_pred=loc_pred,
                     loc_int=loc_int, use_loc=use_loc, track_ok=st.active, det_appe=fr.appe,
                     det_uv=fr.uv, det_pose=fr.pose, det_loca=fr.loca, det_ok=fr.valid,
                     knobs=knobs)


def _update(st: TrackerState, match: jax.Array, fr: FrameBatch, knobs: Knobs
            ) -> tuple[TrackerState, jax.Array]:
  """Algorithm 1 lines 12-18 for one video; returns the state and the id per detection (0: none)."""
  m = fr.valid.shape[0]
  dets = jnp.arange(m)
  matched = (match >= 0) & st.active
  hit = matched[:, None] & (match[:, None] == dets[None, :])              # [K, M]
  new_det = fr.valid & ~hit.any(axis=0)
  tsu = jnp.where(matched, 0, st.time_since_update + 1)
  dead = st.active & ~matched & (~st.confirmed | (tsu >= knobs.max_age))
  kept = st.active & ~dead
  free = ~kept
  # The r-th unmatched detection takes the r-th free slot (lowest first).
  new_rank = jnp.cumsum(new_det) - 1
  free_rank = jnp.cumsum(free) - 1
  create = free[:, None] & new_det[None, :] & (free_rank[:, None] == new_rank[None, :])
  is_new = create.any(axis=1)
  overflow = jnp.sum(new_det) > jnp.sum(free)
  own = hit | create
  observed = matched | is_new
  j = jnp.argmax(own, axis=1)
  d_bbox, d_appe, d_pose, d_loca, d_uv = (x[j] for x in (fr.bbox, fr.appe, fr.pose, fr.loca,
                                                         fr.uv))
  col = lambda mask, x: mask.reshape(mask.shape + (1,) * (x.ndim - 1))

  appe = jnp.where(col(is_new, d_appe), d_appe,
                   jnp.where(col(matched, d_appe), aggregate_embedding(st.appe, d_appe,
                                                                       knobs.alpha0), st.appe))
  uv_agg = jax.vmap(aggregate_uv, in_axes=(0, 0, None))(st.uv, d_uv, knobs.alpha0)
  uv = jnp.where(col(is_new, d_uv), d_uv, jnp.where(col(matched, d_uv), uv_agg, st.uv))

  def push(hist, new):
    shifted = jnp.concatenate([hist[:, 1:], new[:, None]], axis=1)
    return jnp.where(col(observed, hist), shifted, hist)

  k = st.active.shape[0]
  restart_loc = is_new | (st.loc_shot != fr.shot)
  times = push(st.times, jnp.full((k,), fr.t, jnp.int32))
  valid = push(st.valid & ~is_new[:, None], jnp.ones((k,), bool))
  loc_valid = push(st.loc_valid & ~restart_loc[:, None], jnp.ones((k,), bool))
  loca = push(st.loca, d_loca)
  pose = push(st.pose, d_pose)
  loc_shot = jnp.where(observed, fr.shot, st.loc_shot)

  active = kept | is_new
  hits = jnp.where(is_new, 1, jnp.where(matched, st.hits + 1, st.hits))
  age = jnp.where(is_new, 0, jnp.where(kept, st.age + 1, 0))
  tsu = jnp.where(active & ~is_new, tsu, 0)
  was_confirmed = st.confirmed & kept
  confirmed = active & (was_confirmed | (hits >= knobs.n_init))
  newly = confirmed & ~was_confirmed
  det_of = jnp.where(observed, j, m)
  rank = jnp.sum(newly[None, :] & (det_of[None, :] < det_of[:, None]), axis=1)
  track_id = jnp.where(newly, st.next_id + rank, jnp.where(kept, st.track_id, 0))
  next_id = st.next_id + jnp.sum(newly).astype(jnp.int32)
  out_ids = jnp.sum(jnp.where(own & confirmed[:, None], track_id[:, None], 0), axis=0)

  new_state = TrackerState(
      active=active, confirmed=confirmed, track_id=track_id.astype(jnp.int32),
      hits=hits.astype(jnp.int32), age=age.astype(jnp.int32),
      time_since_update=tsu.astype(jnp.int32),
      bbox=jnp.where(col(observed, d_bbox), d_bbox, st.bbox), appe=appe, uv=uv, times=times,
      valid=valid, loc_valid=loc_valid, loca=loca, pose=pose, loc_shot=loc_shot.astype(jnp.int32),
      next_id=next_id, overflow=st.overflow | overflow)
  return new_state, out_ids.astype(jnp.int32)


def frame_step(state: TrackerState, frame: FrameBatch, knobs: Knobs,
               pose_predictor: PosePredictor = last_pose, lmc: bool = False
               ) -> tuple[TrackerState, jax.Array, jax.Array]:
  """One frame of B videos: predict + cost (vmapped), B Hungarians on the host, update (vmapped).

  With ``lmc`` (static) the same host callback also solves the LMC Hungarian and the merges are
  applied after the update (:mod:`phalp_jax.lmc`). Returns the new batched state, ``[B, M]`` ids
  per detection (0: not output this frame) and ``[B, K, 2]`` LMC merges ``(new id, old id)``
  (zeros without LMC).
  """
  cost = jax.vmap(_cost, in_axes=(0, 0, None, None))(state, frame, knobs, pose_predictor)
  live = frame.live
  track_ok = state.active & live[:, None]
  det_ok = frame.valid & live[:, None]
  slots = jax.ShapeDtypeStruct(state.active.shape, jnp.int32)
  if lmc:
    lmc_cost, new, old = lmc_lib.batch_cost(state, live, knobs)
    match, merge = jax.pure_callback(lmc_lib.assign_with_lmc, (slots, slots), cost, track_ok,
                                     det_ok, knobs.gate, lmc_cost, new, old, knobs.lmc_gate)
  else:
    match = jax.pure_callback(assign, slots, cost, track_ok, det_ok, knobs.gate)
  new_state, out_ids = jax.vmap(_update, in_axes=(0, 0, 0, None))(state, match, frame, knobs)
  if lmc:
    new_state, merged = jax.vmap(lmc_lib.apply_merges, in_axes=(0, 0, None))(new_state, merge,
                                                                           knobs)
  else:
    merged = jnp.zeros(state.active.shape + (2,), jnp.int32)
  keep = lambda new, old: jnp.where(live.reshape(live.shape + (1,) * (new.ndim - 1)), new, old)
  new_state = jax.tree_util.tree_map(keep, new_state, state)
  return (new_state, jnp.where(live[:, None], out_ids, 0),
          jnp.where(live[:, None, None], merged, 0))


class _Tracks(NamedTuple):
  """Per-frame slot snapshot emitted by the compiled loop when asked (each [B, K, ...])."""
  track_id: jax.Array
  time_since_update: jax.Array
  bbox: jax.Array


@functools.partial(jax.jit, static_argnames=('pose_predictor', 'lmc'))
def _step_jit(state, frame, knobs, pose_predictor, lmc):
  return frame_step(state, frame, knobs, pose_predictor, lmc)


@functools.partial(jax.jit, static_argnames=('pose_predictor', 'emit_tracks', 'lmc'))
def _scan_jit(state, frames, knobs, pose_predictor, emit_tracks, lmc):
  def body(st, fr):
    st, ids, merged = frame_step(st, fr, knobs, pose_predictor, lmc)
    tracks = None
    if emit_tracks:
      shown = st.confirmed
      tracks = _Tracks(jnp.where(shown, st.track_id, 0), st.time_since_update, st.bbox)
    return st, (ids, merged, tracks)
  return jax.lax.scan(body, state, frames)


# ------------------------------------------------------------------------------------------------
# Host side: inputs, shots, outputs.


def _usable(conf: np.ndarray, bbox: np.ndarray, feats: Sequence[np.ndarray],
            conf_threshold: float) -> np.ndarray:
  """Rows the tracker reads: confidence at the threshold or above, finite, non-empty boxes."""
  n = conf.shape[0]
  ok = (conf >= conf_threshold) & np.isfinite(conf)
  ok &= np.isfinite(bbox).all(axis=1) & (bbox[:, 2] > 0) & (bbox[:, 3] > 0)
  for f in feats:
    if f is not None:
      ok &= np.isfinite(f.reshape(n, int(np.prod(f.shape[1:])))).all(axis=1)
  return ok


def _uv_shape(uv: np.ndarray | None) -> tuple[int, int, int]:
  return (4, 0, 0) if uv is None else tuple(int(s) for s in uv.shape[1:])


@dataclasses.dataclass
class _Video:
  """One video's usable detections, in output order, with their padded positions."""
  dets: io_lib.Detections
  rows: np.ndarray    # indices into dets, sorted by frame (stable)
  slot: np.ndarray    # position of each within its frame
  shots: np.ndarray   # [T] shot index
  width: int          # the largest number of usable detections in a frame


def _prepare(dets: io_lib.Detections, params: PhalpParams) -> _Video:
  ok = _usable(dets.conf, dets.bbox, (dets.appe, dets.pose, dets.loca, dets.uv),
               params.conf_threshold)
  rows = np.flatnonzero(ok)
  rows = rows[np.argsort(dets.frame[rows], kind='stable')]
  frames = dets.frame[rows]
  starts = np.searchsorted(frames, frames, side='left')
  slot = np.arange(len(rows)) - starts
  width = int(slot.max()) + 1 if len(rows) else 0
  return _Video(dets, rows, slot, shot_index(dets.shot, dets.num_frames), width)


def _bucket(n: int, minimum: int = 8) -> int:
  """The padded detection count: ``minimum``, then powers of two (bounds recompiles)."""
  size = minimum
  while size < n:
    size *= 2
  return size


def _batch_bucket(n: int) -> int:
  """Videos per compiled batch: 1, 2, 4, 8, then multiples of 8 (bounds recompiles)."""
  return _bucket(n, 1) if n <= 8 else -(-n // 8) * 8


def _pack(videos: Sequence[_Video], width: int, batch: int, frames: int) -> FrameBatch:
  """Time-major ``[frames, batch, width, ...]`` numpy arrays of the prepared videos; columns
  past ``len(videos)`` and frames past a video's end are padding (``live`` False)."""
  b, t_max = batch, frames
  first = videos[0].dets
  d_a, d_p = first.appe.shape[1], first.pose.shape[1]
  uv_shape = _uv_shape(first.uv)
  valid = np.zeros((t_max, b, width), bool)
  bbox = np.zeros((t_max, b, width, 4), np.float32)
  conf = np.zeros((t_max, b, width), np.float32)
  appe = np.zeros((t_max, b, width, d_a), np.float32)
  pose = np.zeros((t_max, b, width, d_p), np.float32)
  loca = np.zeros((t_max, b, width, 3), np.float32)
  uv = np.zeros((t_max, b, width, *uv_shape), np.float32)
  shot = np.zeros((t_max, b), np.int32)
  live = np.zeros((t_max, b), bool)
  for i, v in enumerate(videos):
    d, r = v.dets, v.rows
    f = d.frame[r]
    valid[f, i, v.slot] = True
    bbox[f, i, v.slot] = d.bbox[r]
    conf[f, i, v.slot] = d.conf[r]
    appe[f, i, v.slot] = d.appe[r]
    pose[f, i, v.slot] = d.pose[r]
    loca[f, i, v.slot] = d.loca[r]
    if d.uv is not None:
      uv[f, i, v.slot] = d.uv[r]
    shot[:d.num_frames, i] = v.shots
    shot[d.num_frames:, i] = v.shots[-1] if d.num_frames else 0
    live[:d.num_frames, i] = True
  t = np.broadcast_to(np.arange(t_max, dtype=np.int32)[:, None], (t_max, b)).copy()
  return FrameBatch(t=t, shot=shot, live=live, valid=valid, bbox=bbox, conf=conf, appe=appe,
                    pose=pose, loca=loca, uv=uv)


def _relabel_rows(rows: np.ndarray, id_map: Mapping[int, int]) -> np.ndarray:
  """Track rows with LMC's merged-away ids replaced by the surviving ones."""
  if id_map and len(rows):
    rows = rows.copy()
    rows[:, 1] = lmc_lib.relabel(rows[:, 1].astype(np.int64), id_map)
  return rows


def _rows(video: _Video, ids: np.ndarray) -> np.ndarray:
  """Track rows of one video from its ``[T, M]`` ids per padded detection."""
  d, r = video.dets, video.rows
  f = d.frame[r]
  got = ids[f, video.slot] if len(r) else np.zeros(0, np.int64)
  keep = got > 0
  r = r[keep]
  if not len(r):
    return np.zeros((0, 7))
  return np.concatenate([d.frame[r][:, None], got[keep][:, None], d.bbox[r], d.conf[r][:, None]],
                        axis=1).astype(np.float64)


# ------------------------------------------------------------------------------------------------
# The compiled loop.


def _check_batch(detections: Sequence[io_lib.Detections]) -> None:
  if not detections:
    raise ValueError('track_batch: no videos')
  io_lib.check_compatible(detections)


def track_batch(detections: Sequence[io_lib.Detections], params: PhalpParams | None = None,
                capacity: int = DEFAULT_CAPACITY, *, pose_predictor: PosePredictor | None = None,
                grow: bool = True, max_capacity: int = DEFAULT_MAX_CAPACITY,
                return_tracks: bool = False) -> list[np.ndarray] | tuple[list, list]:
  """Tracks B videos in one compiled ``lax.scan`` over frames (vmapped over videos; the host does
  B Hungarians per frame). Returns one ``[N, 7]`` float64 row array per video.

  Videos that run out of slots are re-run from their start with twice the slots (see the module
  docstring); ``grow=False`` raises :class:`CapacityError` instead. ``return_tracks=True`` also
  returns, per video, a dict of per-frame slot arrays ``track_id [T, K]`` (confirmed tracklets,
  lost ones included; 0 elsewhere), ``time_since_update [T, K]`` and ``bbox [T, K, 4]`` (last
  matched box): the released pickle's ``tracked_ids``/``tracked_time``/``tracked_bbox``.
  """
  params = params or PhalpParams()
  detections = list(detections)
  _check_batch(detections)
  pose_predictor = pose_predictor or last_pose
  videos = [_prepare(d, params) for d in detections]
  knobs = params.knobs()
  results: list[Any] = [None] * len(videos)
  tracks: list[Any] = [None] * len(videos)
  todo = list(range(len(videos)))
  k = int(capacity)
  while todo:
    group = [videos[i] for i in todo]
    width = _bucket(max(v.width for v in group))
    batch = _batch_bucket(len(group))
    n_frames = -(-max(v.dets.num_frames for v in group) // FRAME_BUCKET) * FRAME_BUCKET
    frames = _pack(group, width, batch, max(n_frames, FRAME_BUCKET))
    first = group[0].dets
    state = init_state(k, params.history, first.appe.shape[1], first.pose.shape[1],
                       _uv_shape(first.uv), batch=batch)
    final, (ids, merged, snaps) = _scan_jit(state, frames, knobs, pose_predictor, return_tracks,
                                            params.lmc)
    ids, merged, overflow = jax.device_get((ids, merged, final.overflow))
    snaps = jax.device_get(snaps)
    again = []
    for pos, i in enumerate(todo):
      if overflow[pos]:
        again.append(i)
        continue
      id_map = lmc_lib.id_map(lmc_lib.pairs_of(merged[:, pos]))
      results[i] = _relabel_rows(_rows(videos[i], ids[:, pos]), id_map)
      if return_tracks:
        n_t = videos[i].dets.num_frames
        tracks[i] = {'track_id': lmc_lib.relabel(snaps.track_id[:n_t, pos], id_map),
                     'time_since_update': snaps.time_since_update[:n_t, pos],
                     'bbox': snaps.bbox[:n_t, pos]}
    if again and (not grow or 2 * k > max_capacity):
      i = again[0]
      why = ('grow=False' if not grow else f'max_capacity={max_capacity} reached')
      raise CapacityError(
          f'phalp_jax.tracker: video {i} ({detections[i].source}) needs more than {k} tracklet '
          f'slots ({why}); pass a larger capacity'
          + ('' if grow else ' or grow=True') + f' ({len(again)} video(s) overflowed)')
    todo, k = again, 2 * k
  return (results, tracks) if return_tracks else results


def track_video(dets: io_lib.Detections, params: PhalpParams | None = None,
                capacity: int = DEFAULT_CAPACITY, **kwargs) -> np.ndarray:
  """Tracks one video with the compiled loop (:func:`track_batch` with B = 1); with
  ``return_tracks=True`` returns ``(rows, tracks)``."""
  out = track_batch([dets], params, capacity, **kwargs)
  return (out[0][0], out[1][0]) if kwargs.get('return_tracks') else out[0]


# ------------------------------------------------------------------------------------------------
# Streaming.


class Frame(NamedTuple):
  """One frame's detections for :meth:`Tracker.step` (rows as in :class:`io.Detections`)."""
  bbox: np.ndarray
  conf: np.ndarray
  appe: np.ndarray
  pose: np.ndarray
  loca: np.ndarray
  uv: np.ndarray | None = None


class Tracker:
  """Streaming PHALP for one live video: ``step`` takes a frame's detections, returns its rows.

  The state is allocated on the first frame from the feature sizes it carries and grows to 2K
  slots whenever a frame's new tracklets do not fit (that frame is re-run; nothing is dropped).
  """

  def __init__(self, params: PhalpParams | None = None, capacity: int = DEFAULT_CAPACITY,
               pose_predictor: PosePredictor | None = None):
    if capacity < 1:
      raise ValueError(f'Tracker: capacity must be >= 1, got {capacity}')
    self.params = params or PhalpParams()
    self.initial_capacity = int(capacity)
    self.pose_predictor = pose_predictor or last_pose
    self._knobs = self.params.knobs()
    self.reset()

  def reset(self) -> None:
    """Forgets every tracklet; the next frame is frame 0 of a new video."""
    self.state: TrackerState | None = None
    self.capacity = self.initial_capacity
    self._t = 0
    self._shot = 0
    self._sizes: tuple | None = None
    self._merges: list[tuple[int, int]] = []

  @property
  def id_map(self) -> dict[int, int]:
    """LMC merges so far: ``{merged-away id: surviving id}``. Rows ``step`` returned before a
    merge carry the merged-away id; :meth:`track` relabels them."""
    return lmc_lib.id_map(self._merges)

  @property
  def frame(self) -> int:
    """The frame number the next ``step`` gets by default."""
    return self._t

  def _as_frame(self, frame_dets: Any) -> tuple[Frame, int | None]:
    if isinstance(frame_dets, io_lib.Detections):
      frames = np.unique(frame_dets.frame)
      if len(frames) > 1:
        raise ValueError(f'Tracker.step: expected the detections of one frame, got frames '
                         f'{frames.tolist()}')
      d = frame_dets
      return Frame(d.bbox, d.conf, d.appe, d.pose, d.loca, d.uv), (
          int(frames[0]) if len(frames) else None)
    if isinstance(frame_dets, Mapping):
      frame_dets = Frame(**{k: frame_dets.get(k) for k in Frame._fields})
    if not isinstance(frame_dets, Frame):
      raise TypeError(f'Tracker.step: expected io.Detections, Frame or a mapping, got '
                      f'{type(frame_dets).__name__}')
    n = np.asarray(frame_dets.bbox).reshape(-1, 4).shape[0]
    f64 = lambda a, *s: np.asarray(a, np.float64).reshape(n, *s)

    def f32(a, name):
      a = np.asarray(a, np.float32)
      if a.ndim != 2 or a.shape[0] != n:
        raise ValueError(f'Tracker.step: {name} must have shape [{n}, D], got {a.shape}')
      return a

    uv = None if frame_dets.uv is None else np.asarray(frame_dets.uv, np.float32)
    return Frame(f64(frame_dets.bbox, 4), f64(frame_dets.conf), f32(frame_dets.appe, 'appe'),
                 f32(frame_dets.pose, 'pose'), f64(frame_dets.loca, 3), uv), None

  def step(self, frame_dets: io_lib.Detections | Frame | Mapping, t: int | None = None,
           new_shot: bool = False) -> np.ndarray:
    """Tracks one frame; returns its rows ``(frame, id, x, y, w, h, conf)`` (float64 [N, 7]).

    ``frame_dets``: an :class:`io.Detections` holding one frame's rows, a :class:`Frame` or a
    mapping with its fields. ``t`` defaults to the Detections' frame or the next frame number;
    ``new_shot`` marks a shot change at this frame (location terms are dropped), e.g. from
    :class:`phalp_jax.shots.ShotDetector`. With LMC, a merged tracklet's earlier rows keep the id
    they were returned with (see :attr:`id_map`).
    """
    fr, det_t = self._as_frame(frame_dets)
    t = self._t if t is None and det_t is None else (det_t if t is None else int(t))
    if det_t is not None and t != det_t:
      raise ValueError(f'Tracker.step: t={t} but the detections are of frame {det_t}')
    if t < self._t:
      raise ValueError(f'Tracker.step: frame {t} comes after frame {self._t - 1}; frames must '
                       'increase (call reset() for a new video)')
    sizes = (fr.appe.shape[1], fr.pose.shape[1], _uv_shape(fr.uv))
    if self._sizes is None:
      self._sizes = sizes
      self.state = init_state(self.capacity, self.params.history, sizes[0], sizes[1], sizes[2],
                              batch=1)
    elif sizes != self._sizes:
      raise ValueError(f'Tracker.step: frame {t} has feature sizes (appe, pose, uv) {sizes} but '
                       f'earlier frames had {self._sizes}')
    self._shot += int(bool(new_shot)) if t > 0 else 0
    ok = _usable(fr.conf, fr.bbox, (fr.appe, fr.pose, fr.loca, fr.uv), self.params.conf_threshold)
    rows = np.flatnonzero(ok)
    width = _bucket(len(rows))
    pad = lambda a, dtype: _pad_rows(np.asarray(a)[rows], width, dtype)
    uv = (np.zeros((len(rows), *sizes[2]), np.float32) if fr.uv is None else fr.uv[rows])
    batch = FrameBatch(
        t=np.array([t], np.int32), shot=np.array([self._shot], np.int32), live=np.ones(1, bool),
        valid=_pad_rows(np.ones(len(rows), bool), width, bool)[None],
        bbox=pad(fr.bbox, np.float32)[None], conf=pad(fr.conf, np.float32)[None],
        appe=pad(fr.appe, np.float32)[None], pose=pad(fr.pose, np.float32)[None],
        loca=pad(fr.loca, np.float32)[None], uv=_pad_rows(uv, width, np.float32)[None])
    while True:
      state, ids, merged = _step_jit(self.state, batch, self._knobs, self.pose_predictor,
                                     self.params.lmc)
      ids, merged, overflow = jax.device_get((ids, merged, state.overflow))
      if not overflow[0]:
        break
      self.capacity *= 2
      self.state = grow_state(self.state, self.capacity)
    self.state = state
    self._merges.extend(lmc_lib.pairs_of(merged[0]))
    self._t = t + 1
    got = ids[0, :len(rows)]
    keep = got > 0
    r = rows[keep]
    if not len(r):
      return np.zeros((0, 7))
    return np.concatenate([np.full((len(r), 1), t), got[keep][:, None], fr.bbox[r],
                           fr.conf[r][:, None]], axis=1).astype(np.float64)

  def track(self, dets: io_lib.Detections) -> np.ndarray:
    """Resets, then streams every frame of ``dets`` (shot changes from ``dets.shot``)."""
    self.reset()
    shots = shot_index(dets.shot, dets.num_frames)
    out = []
    for t, index in dets.frames():
      new_shot = t > 0 and shots[t] != shots[t - 1]
      out.append(self.step(dets.select(index), t=t, new_shot=new_shot))
    out = [r for r in out if len(r)]
    return _relabel_rows(np.concatenate(out), self.id_map) if out else np.zeros((0, 7))

  def tracks(self) -> dict[str, np.ndarray]:
    """The live tracklets (active slots): id (0 while tentative), confirmed, hits,
    time_since_update and last box."""
    if self.state is None:
      return {k: np.zeros((0,) if k != 'bbox' else (0, 4)) for k in
              ('track_id', 'confirmed', 'hits', 'time_since_update', 'bbox')}
    st = jax.device_get(self.state)
    act = st.active[0]
    return {'track_id': st.track_id[0][act], 'confirmed': st.confirmed[0][act],
            'hits': st.hits[0][act], 'time_since_update': st.time_since_update[0][act],
            'bbox': st.bbox[0][act]}


def _pad_rows(a: np.ndarray, width: int, dtype) -> np.ndarray:
  out = np.zeros((width, *a.shape[1:]), dtype)
  out[:len(a)] = a
  return out
