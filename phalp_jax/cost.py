"""PHALP association cost (seed 000, Eq. 2.5-2.10) and the host-side Hungarian assignment.

For tracklet ``i`` with predictions (appearance ``a_hat``, pose ``p_hat``, location ``l_hat`` with
intervals ``delta``) and detection ``j``:

* Eq. 2.5 ``P_A ~ 1 / (1 + beta_a Da)``, ``Da = ||a_hat - a_j||^2`` (plus, when UV maps are given,
  the mean squared colour difference over the pixels visible in both maps; 0 where none is);
* Eq. 2.6 ``P_P ~ 1 / (1 + beta_p Dp)``, ``Dp = ||p_hat - p_j||^2``;
* Eq. 2.7 ``P_XY ~ exp(-Dxy / (beta_xy delta_xy))``, ``Dxy`` the pixel distance of the roots and
  ``delta_xy = sqrt(delta_x^2 + delta_y^2)``;
* Eq. 2.8 ``P_N ~ exp(-Dn / (beta_n delta_n))``, ``Dn = |n_hat - n_j|``;
* Eq. 2.9-2.10 ``cost = -log(P_A P_P P_XY P_N)`` up to the constant ``log beta_xy + log beta_n``,
  i.e. ``log(1 + beta_a Da) + log(1 + beta_p Dp) + Dxy / (beta_xy delta_xy) + Dn / (beta_n
  delta_n)``. The location terms (7, 8) are dropped for a tracklet whose location history belongs
  to an earlier shot than the frame's ("on a shot change the location terms are dropped"; a
  tracklet keeps that status until it is matched in the new shot). A cue of feature size 0 adds 0.

Assignment (Algorithm 1, line 11): per video, ``scipy.optimize.linear_sum_assignment`` on the
costs of the active tracklets x valid detections, with costs above the gate ``log(beta_th)``
clamped to just above it (as the released deep_sort-based code does: leaving a pair unmatched
costs about the gate) and pairs above the gate then discarded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

INVALID_COST = 1e6  # cost of a pair with a free slot or a padding detection (never matched)
_GATE_EPS = 1e-5


def sq_dist(a: jax.Array, b: jax.Array) -> jax.Array:
  """``[K, M]`` squared L2 distances of the rows of ``a [K, D]`` and ``b [M, D]`` (0 if D = 0)."""
  if a.shape[-1] == 0:
    return jnp.zeros((a.shape[0], b.shape[0]), jnp.float32)
  hi = jax.lax.Precision.HIGHEST
  d = (jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1)[None, :]
       - 2.0 * jnp.matmul(a, b.T, precision=hi))
  return jnp.maximum(d, 0.0)


def uv_dist(track_uv: jax.Array, det_uv: jax.Array) -> jax.Array:
  """``[K, M]``: mean over pixels visible in both (weights ``V_hat V``) of the squared colour
  difference summed over the 3 channels; 0 for a pair with no pixel visible in both."""
  if track_uv.shape[-1] * track_uv.shape[-2] == 0:
    return jnp.zeros((track_uv.shape[0], det_uv.shape[0]), jnp.float32)
  hi = jax.lax.Precision.HIGHEST
  k, m = track_uv.shape[0], det_uv.shape[0]
  tt, tv = track_uv[:, :3].reshape(k, 3, -1), track_uv[:, 3].reshape(k, -1)
  dt, dv = det_uv[:, :3].reshape(m, 3, -1), det_uv[:, 3].reshape(m, -1)
  weight = jnp.matmul(tv, dv.T, precision=hi)                               # sum_p Vt Vd
  t2 = jnp.matmul(tv * jnp.sum(tt * tt, 1), dv.T, precision=hi)
  d2 = jnp.matmul(tv, (dv * jnp.sum(dt * dt, 1)).T, precision=hi)
  cross = jnp.einsum('kcp,mcp->km', tt * tv[:, None], dt * dv[:, None], precision=hi)
  total = jnp.maximum(t2 + d2 - 2.0 * cross, 0.0)
  return jnp.where(weight > 1e-6, total / jnp.maximum(weight, 1e-6), 0.0)


def cost_matrix(*, track_appe: jax.Array, track_uv: jax.Array, pose_pred: jax.Array,
                loc_pred: jax.Array, loc_int: jax.Array, use_loc: jax.Array, track_ok: jax.Array,
                det_appe: jax.Array, det_uv: jax.Array, det_pose: jax.Array, det_loca: jax.Array,
                det_ok: jax.Array, knobs) -> jax.Array:
  """Eq. 2.10 for one video: ``[K, M]`` costs; ``INVALID_COST`` where a slot or detection is unused.

  ``use_loc [K]`` says whether the tracklet's location terms apply (same shot); ``loc_int [K, 3]``
  are the positive intervals of :func:`phalp_jax.predict.predict_location`.
  """
  d_a = sq_dist(track_appe, det_appe) + uv_dist(track_uv, det_uv)
  d_p = sq_dist(pose_pred, det_pose)
  d_xy = jnp.sqrt(jnp.sum((loc_pred[:, None, :2] - det_loca[None, :, :2]) ** 2, -1))
  d_n = jnp.abs(loc_pred[:, None, 2] - det_loca[None, :, 2])
  int_xy = jnp.sqrt(loc_int[:, 0] ** 2 + loc_int[:, 1] ** 2)[:, None]
  int_n = loc_int[:, 2][:, None]
  cost = jnp.log1p(knobs.beta_a * d_a) + jnp.log1p(knobs.beta_p * d_p)
  location = d_xy / (knobs.beta_xy * int_xy) + d_n / (knobs.beta_n * int_n)
  cost = cost + jnp.where(use_loc[:, None], location, 0.0)
  ok = track_ok[:, None] & det_ok[None, :]
  return jnp.where(ok, cost, INVALID_COST).astype(jnp.float32)


def assign(cost: np.ndarray, track_ok: np.ndarray, det_ok: np.ndarray, gate: np.ndarray
           ) -> np.ndarray:
  """Host Hungarian for ``B`` videos: ``cost [B, K, M]`` -> ``[B, K]`` int32 detection per slot
  (-1: unmatched). Only active slots x valid detections enter; pairs above ``gate`` are dropped."""
  cost = np.asarray(cost)
  track_ok, det_ok = np.asarray(track_ok, bool), np.asarray(det_ok, bool)
  gate = float(np.asarray(gate))
  out = np.full(cost.shape[:2], -1, np.int32)
  for b in range(cost.shape[0]):
    rows, cols = np.flatnonzero(track_ok[b]), np.flatnonzero(det_ok[b])
    if rows.size == 0 or cols.size == 0:
      continue
    sub = np.minimum(cost[b][np.ix_(rows, cols)].astype(np.float64), gate + _GATE_EPS)
    r, c = scipy.optimize.linear_sum_assignment(sub)
    keep = sub[r, c] <= gate
    out[b, rows[r[keep]]] = cols[c[keep]]
  return out
