"""LMC, the lookback merge check (seed 000, sections 2.4 "More design choices" and 2.7).

"For each new track, we wait for 7 frames [...] Then, we take these 7 detected locations and their
corresponding time-steps to regress k frames back into the past. The value k is determined by the
old tracks which have been not updated for k + 7 frames. [...] we measure 3D location distance
between old tracks and predicted past location [...] also [...] the similarity between the
appearance of the old and new tracks [...] our cost function for LMC involves location distance and
appearance distance and we solve it via Hungarian to assign new tracks to old tracks."

Here, per video and frame (all in JAX except the Hungarian):

* **new** tracklets: those that reached ``w = history`` hits (7 in the paper and the released
  config) in the previous frame (``hits == w`` and ``time_since_update == 0``), so their ``w``-long
  history holds exactly their own observations; each is checked once in its life.
* **old** tracklets: confirmed, lost (``time_since_update > 0``), and last seen before the new
  tracklet's first observation (the two never overlap in time, so merging them cannot put one id
  twice in a frame).
* cost of (new ``i``, old ``j``): :func:`line_at` fits the Eq. 2.3 lines to the new tracklet's
  locations and evaluates them at the old tracklet's last observation time (``k`` frames before
  the new one's first), with the Eq. 2.4 interval there, and compares with the old tracklet's last
  location exactly as Eq. 2.7-2.8 do; plus the Eq. 2.5 appearance term between the two aggregates:
  ``log(1 + beta_a Da) + Dxy / (beta_xy delta_xy) + Dn / (beta_n delta_n)``. No pose term (the
  paper's LMC uses location and appearance only). Both tracklets' locations must lie in the same
  shot: across a cut there is no location to regress to, and appearance alone merged wrongly
  (on 8 'hard' synthetic scenes, whose identities are look-alikes, 15 of 17 such merges joined
  two people at a gate of 100), so re-identification across a cut is left to the association
  (appearance + pose).
* Hungarian (the same :func:`phalp_jax.cost.assign`) with the gate ``log(lmc_th)``
  (:class:`phalp_jax.state.PhalpParams`; default ``lmc_th = 30``, gate 3.4: on synthetic scenes
  the best same-shot candidate cost ran up to ~4 for correct merges and from ~2.8 for wrong ones;
  on 16 scenes per preset of seed 2 with the released betas, gates of 10, 20, 30, 50 and 100
  gave IDF1 within 0.013 of each other; 30 was within 0.001 of the best IDF1 on 'medium' and
  'hard' with the fewest ID switches).

Measured effect (released betas, 16 synthetic scenes of 200 frames, seed 1, mean per video):
'medium' IDF1 0.767 -> 0.794, HOTA 0.590 -> 0.604, ID switches 37 -> 17; 'hard' IDF1 0.661 ->
0.676, HOTA 0.437 -> 0.444, ID switches 157 -> 69; MOTA unchanged (+0.001). The gain depends on
the betas: with betas fitted without LMC on 'hard' (looser location term, so the association
already re-identifies most returns) LMC no longer helps on 'hard' (IDF1 -0.008 to -0.022 at
this gate, still +0.011 on 'medium'), so fit the betas with the LMC setting you will track with
(``launch.fit_phalp`` fits with the tracker's, LMC on unless ``--no_lmc``).

Where it runs (the design choice): both Hungarians of a frame, the association's and LMC's, are
solved in the one ``jax.pure_callback`` the tracker already makes per frame, so LMC costs no extra
host round trip and the streaming and the compiled paths (which share ``frame_step``) stay
identical. The LMC costs are computed from the state at the start of frame ``t`` (the new
tracklet got its ``w``-th hit at ``t - 1``) and only under a ``lax.cond`` when some video has a
candidate pair, so frames without one cost nothing extra. The merge is applied after frame ``t``'s
update (:func:`apply_merges`) and is cancelled if the old tracklet was matched or died in frame
``t`` (it is then no longer the lost one).

A merge keeps the new tracklet's slot with its recent history (locations, poses, times: what the
predictors need next), gives it the old tracklet's id, confirmation and hit count, and blends the
appearance as if the old aggregate had continued through the new observations:
``A = (1 - alpha0)^h A_old + (1 - (1 - alpha0)^h) A_new`` with ``h`` the new tracklet's hits
(UV maps blend the same way where both are visible, Eq. 2.2). The old slot is freed.
"Postponing the final decision about the identity of a detection": the offline outputs
(``track_batch``, ``track_video``, ``Tracker.track``) relabel the merged tracklet's earlier rows
to the old id (:func:`relabel`), so a merged person carries one id throughout; ``Tracker.step``
returns rows as known at that frame (the new id until the merge) and ``Tracker.id_map`` holds the
merges. The merged-away ids leave gaps in the id sequence.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from phalp_jax.cost import INVALID_COST, assign, sq_dist, uv_dist
from phalp_jax.predict import aggregate_uv
from phalp_jax.state import Knobs, TrackerState

_IMIN = np.iinfo(np.int32).min
_IMAX = np.iinfo(np.int32).max


def line_at(loca: jax.Array, times: jax.Array, valid: jax.Array, targets: jax.Array,
            box_h: jax.Array, knobs: Knobs) -> tuple[jax.Array, jax.Array]:
  """The Eq. 2.3-2.4 line fits of one tracklet evaluated at several frames (past ones too).

  ``loca [w, 3]``, ``times [w]``, ``valid [w]``, ``targets [J]`` -> ``(pred [J, 3], interval
  [J, 3])``. Same fit, interval, short-history fallback and floor as
  :func:`phalp_jax.predict.predict_location` (one fit, many targets), except that the fallback's
  random-velocity spread grows with ``|target - last observation|`` in both directions of time.
  """
  w = valid.astype(jnp.float32)
  n_obs = jnp.sum(valid.astype(jnp.int32))
  n = jnp.maximum(n_obs.astype(jnp.float32), 1.0)
  latest = jnp.argmax(jnp.where(valid, times, _IMIN))
  ref = times[latest]
  tt = (times - ref).astype(jnp.float32)                  # relative times keep float32 precision
  tgt = (targets - ref).astype(jnp.float32)               # [J]
  t_bar = jnp.sum(w * tt) / n
  x_bar = jnp.sum(w[:, None] * loca, axis=0) / n
  dt = w * (tt - t_bar)
  s_tt = jnp.sum(dt * (tt - t_bar))
  s_tx = jnp.sum(dt[:, None] * (loca - x_bar), axis=0)
  enough = n_obs >= 3
  slope = s_tx / jnp.where(enough, s_tt + knobs.ridge, 1.0)
  fit_pred = x_bar + slope * (tgt - t_bar)[:, None]
  resid = w[:, None] * (loca - (x_bar + slope * (tt - t_bar)[:, None]))
  mse = jnp.sum(resid * resid, axis=0) / jnp.maximum(n_obs - 2, 1).astype(jnp.float32)
  q = knobs.quantiles[jnp.clip(n_obs, 0, knobs.quantiles.shape[0] - 1)]
  lever = 1.0 + 1.0 / n + (tgt - t_bar) ** 2 / jnp.where(enough, s_tt, 1.0)
  fit_int = q * jnp.sqrt(mse * lever[:, None])
  scale = jnp.maximum(box_h, 1.0)
  noise = jnp.stack([knobs.xy_noise * scale, knobs.xy_noise * scale, knobs.n_noise])
  speed = jnp.stack([knobs.xy_speed * scale, knobs.xy_speed * scale, knobs.n_speed])
  fb_int = q * jnp.sqrt(noise ** 2 + (speed * jnp.abs(tgt)[:, None]) ** 2)
  floor = jnp.maximum(q * noise, 1e-6)
  pred = jnp.where(enough, fit_pred, loca[latest][None, :])
  interval = jnp.maximum(jnp.where(enough, fit_int, fb_int), floor)
  has_any = n_obs > 0
  return jnp.where(has_any, pred, 0.0), jnp.where(has_any, interval, 1.0)


def candidates(st: TrackerState) -> tuple[jax.Array, jax.Array]:
  """``(new [K], old [K])`` bool: the tracklets LMC checks and those it may merge them into."""
  w = st.valid.shape[-1]
  new = st.active & (st.hits == w) & (st.time_since_update == 0)
  old = st.active & st.confirmed & (st.time_since_update > 0)
  return new, old


def lmc_cost(st: TrackerState, knobs: Knobs) -> jax.Array:
  """``[K, K]`` LMC costs of one video, new tracklets (rows) x old ones (columns); pairs that are
  not candidates get ``INVALID_COST``."""
  new, old = candidates(st)
  first = jnp.min(jnp.where(st.valid, st.times, _IMAX), axis=1)
  last = jnp.max(jnp.where(st.valid, st.times, _IMIN), axis=1)
  pair_ok = new[:, None] & old[None, :] & (last[None, :] < first[:, None])
  pred, interval = jax.vmap(line_at, in_axes=(0, 0, 0, None, 0, None))(
      st.loca, st.times, st.loc_valid, last, st.bbox[:, 3], knobs)       # [K new, K old, 3]
  latest = jnp.argmax(jnp.where(st.valid, st.times, _IMIN), axis=1)
  old_loc = jnp.take_along_axis(st.loca, latest[:, None, None], axis=1)[:, 0]  # [K, 3]
  d_a = sq_dist(st.appe, st.appe) + uv_dist(st.uv, st.uv)
  d_xy = jnp.sqrt(jnp.sum((pred[..., :2] - old_loc[None, :, :2]) ** 2, -1))
  d_n = jnp.abs(pred[..., 2] - old_loc[None, :, 2])
  int_xy = jnp.sqrt(interval[..., 0] ** 2 + interval[..., 1] ** 2)
  location = d_xy / (knobs.beta_xy * int_xy) + d_n / (knobs.beta_n * interval[..., 2])
  has_loc = st.loc_valid.any(axis=1)
  same_shot = (st.loc_shot[:, None] == st.loc_shot[None, :]) & has_loc[:, None] & has_loc[None, :]
  cost = jnp.log1p(knobs.beta_a * d_a) + location
  return jnp.where(pair_ok & same_shot, cost, INVALID_COST).astype(jnp.float32)


def batch_cost(state: TrackerState, live: jax.Array, knobs: Knobs
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(cost [B, K, K], new [B, K], old [B, K])`` for B videos; the costs are only computed
  (``lax.cond``) when some video has a new and an old candidate."""
  new, old = jax.vmap(candidates)(state)
  new, old = new & live[:, None], old & live[:, None]
  b, k = new.shape
  any_pair = jnp.any(new.any(axis=1) & old.any(axis=1))
  cost = jax.lax.cond(any_pair, lambda s: jax.vmap(lmc_cost, in_axes=(0, None))(s, knobs),
                      lambda s: jnp.full((b, k, k), INVALID_COST, jnp.float32), state)
  return cost, new, old


def assign_with_lmc(cost: np.ndarray, track_ok: np.ndarray, det_ok: np.ndarray, gate: np.ndarray,
                    lmc: np.ndarray, new: np.ndarray, old: np.ndarray, lmc_gate: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Host side of one frame: the association Hungarian and the LMC Hungarian (``[B, K]`` old slot
  per new slot, -1: none), both by :func:`phalp_jax.cost.assign`."""
  match = assign(cost, track_ok, det_ok, gate)
  new = np.asarray(new, bool)
  merge = (assign(lmc, new, old, lmc_gate) if new.any()
           else np.full(new.shape, -1, np.int32))
  return match, merge


def apply_merges(st: TrackerState, merge: jax.Array, knobs: Knobs
                 ) -> tuple[TrackerState, jax.Array]:
  """Merges of one video after the frame's update: ``merge [K]`` is the old slot per new slot.

  Returns the state and ``[K, 2]`` int32 ``(new id, old id)`` per merged slot (0, 0 elsewhere).
  A merge is dropped when the new tracklet died or the old one was matched or died this frame.
  """
  k = merge.shape[0]
  jj = jnp.clip(merge, 0, k - 1)
  ok = ((merge >= 0) & st.active & (st.age > 0) & st.active[jj]
        & (st.time_since_update[jj] > 0) & st.confirmed[jj])
  col = lambda mask, x: mask.reshape(mask.shape + (1,) * (x.ndim - 1))
  a = 1.0 - (1.0 - knobs.alpha0) ** st.hits.astype(jnp.float32)             # [K]
  appe = jnp.where(col(ok, st.appe), (1.0 - a[:, None]) * st.appe[jj] + a[:, None] * st.appe,
                   st.appe)
  uv = jnp.where(col(ok, st.uv), jax.vmap(aggregate_uv)(st.uv[jj], st.uv, a), st.uv)
  freed = jnp.any(ok[:, None] & (jj[:, None] == jnp.arange(k)[None, :]), axis=0)
  old_id = st.track_id[jj]
  pairs = jnp.stack([jnp.where(ok, st.track_id, 0), jnp.where(ok, old_id, 0)], axis=-1)
  track_id = jnp.where(ok, old_id, jnp.where(freed, 0, st.track_id))
  merged = st._replace(
      active=st.active & ~freed, confirmed=(st.confirmed | ok) & ~freed,
      track_id=track_id.astype(jnp.int32),
      hits=jnp.where(ok, st.hits + st.hits[jj], st.hits).astype(jnp.int32),
      age=jnp.where(ok, jnp.maximum(st.age, st.age[jj]), jnp.where(freed, 0, st.age)
                    ).astype(jnp.int32),
      time_since_update=jnp.where(freed, 0, st.time_since_update).astype(jnp.int32),
      appe=appe, uv=uv)
  return merged, pairs.astype(jnp.int32)


# ------------------------------------------------------------------------------------------------
# Host side: the id map and the relabelling of outputs.


def id_map(pairs: Iterable[tuple[int, int]]) -> dict[int, int]:
  """``{merged-away id: surviving id}`` from ``(new id, old id)`` pairs in time order (chains
  resolved; pairs with a 0 are skipped: the new tracklet had no public id yet)."""
  parent: dict[int, int] = {}
  for new, old in pairs:
    new, old = int(new), int(old)
    if new > 0 and old > 0 and new != old:
      parent[new] = old
  out = {}
  for new in parent:
    root, seen = new, set()
    while root in parent and root not in seen:
      seen.add(root)
      root = parent[root]
    out[new] = root
  return out


def pairs_of(merged: np.ndarray) -> list[tuple[int, int]]:
  """The ``(new id, old id)`` pairs of per-frame ``[T, K, 2]`` merge outputs, in time order."""
  merged = np.asarray(merged).reshape(-1, 2)
  keep = merged[:, 1] > 0
  return [(int(a), int(b)) for a, b in merged[keep]]


def relabel(ids: np.ndarray, mapping: Mapping[int, int]) -> np.ndarray:
  """``ids`` (any shape, any numeric dtype) with every merged-away id replaced by its survivor."""
  ids = np.asarray(ids)
  if not mapping:
    return ids
  out = ids.copy()
  for new, old in mapping.items():
    out[ids == new] = old
  return out
