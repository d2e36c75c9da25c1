"""PHALP tracklet predictors (seed 000, section 2.3 "3D tracklet prediction"), pure JAX, one slot.

* Appearance, Eq. 2.1-2.2: :func:`aggregate_uv` blends a detection's UV map into the tracklet's
  with ``alpha = alpha0`` where both are visible, 1 where only the new one is and 0 where only the
  old one is (written ``alpha = V (1 - V_hat (1 - alpha0))``, which is exactly those cases for
  binary visibility and interpolates for soft visibility); the tracklet's visibility becomes
  ``max(V_hat, V)``. :func:`aggregate_embedding` is the same rule on embeddings, which carry no
  visibility (both always "visible"): an exponential average with rate ``alpha0``. The aggregate
  is the appearance prediction.
* Location, Eq. 2.3-2.4: :func:`predict_location` fits ``x``, ``y`` and nearness ``n``
  independently by least squares lines over the last ``w`` observations against time (optionally
  with a ridge penalty on the slope) and returns the value at the target frame with its prediction
  interval ``t_q(n_obs - 2) sqrt(MSE (1 + 1/n_obs + (t' - t_bar)^2 / sum (t - t_bar)^2))``. With
  fewer than 3 observations (no degrees of freedom for the MSE) it falls back to the last position
  with the random-velocity interval documented in :class:`phalp_jax.state.PhalpParams`; no 0/0 is
  ever formed (every division has a positive denominator, not a ``nan_to_num`` after the fact).
* Pose: a pluggable ``pose_predictor(pose_hist [H, Dp], times [H], valid [H], target_t) -> [Dp]``
  (history oldest first; entries with ``valid`` False hold stale values; ``target_t`` is the frame
  being matched, so a predictor forecasts ``target_t - times`` frames ahead). It must be a JAX
  function (it is vmapped over slots and videos inside the jitted step) and hashable (a static
  argument). :func:`last_pose` (the default) returns the most recent observed pose; the
  transformer of section 2.3 plugs in here with the same signature.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

PosePredictor = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


def aggregate_embedding(old: jax.Array, new: jax.Array, alpha0: jax.Array) -> jax.Array:
  """Eq. 2.2 on an embedding (visible everywhere): ``(1 - alpha0) old + alpha0 new``."""
  return (1.0 - alpha0) * old + alpha0 * new


def aggregate_uv(old: jax.Array, new: jax.Array, alpha0: jax.Array) -> jax.Array:
  """Eq. 2.2 on ``[4, h, w]`` UV maps (3 colour channels + visibility in [0, 1]).

  Returns the blended texture and the tracklet visibility ``max(V_hat, V)`` as channel 3.
  """
  v_old, v_new = old[3:4], new[3:4]
  alpha = v_new * (1.0 - v_old * (1.0 - alpha0))
  texture = (1.0 - alpha) * old[:3] + alpha * new[:3]
  return jnp.concatenate([texture, jnp.maximum(v_old, v_new)], axis=0)


def last_pose(pose_hist: jax.Array, times: jax.Array, valid: jax.Array,
              target_t: jax.Array) -> jax.Array:
  """The default pose predictor: the most recent valid observation (zeros when there is none)."""
  del target_t
  key = jnp.where(valid, times, jnp.iinfo(jnp.int32).min)
  latest = jnp.argmax(key)
  return jnp.where(valid.any(), pose_hist[latest], jnp.zeros_like(pose_hist[0]))


def predict_location(loca: jax.Array, times: jax.Array, valid: jax.Array, target_t: jax.Array,
                     box_h: jax.Array, knobs) -> tuple[jax.Array, jax.Array]:
  """Eq. 2.3-2.4 for one tracklet: ``(prediction [3], interval [3])`` of ``(x, y, n)`` at a frame.

  ``loca [w, 3]``, ``times [w]`` int frames, ``valid [w]``; ``box_h`` scales the ``x, y`` noise
  and speed of the short-history fallback and of the interval floor; ``knobs`` is a
  :class:`phalp_jax.state.Knobs`. Observations are used in time relative to ``target_t`` so that
  float32 keeps its precision however long the video.
  """
  w = valid.astype(jnp.float32)
  n_obs = jnp.sum(valid.astype(jnp.int32))
  n = jnp.maximum(n_obs.astype(jnp.float32), 1.0)
  tt = (times - target_t).astype(jnp.float32)             # <= 0 for past observations
  t_bar = jnp.sum(w * tt) / n
  x_bar = jnp.sum(w[:, None] * loca, axis=0) / n          # [3]
  dt = w * (tt - t_bar)
  s_tt = jnp.sum(dt * (tt - t_bar))
  s_tx = jnp.sum(dt[:, None] * (loca - x_bar), axis=0)    # [3]
  enough = n_obs >= 3
  denom = jnp.where(enough, s_tt + knobs.ridge, 1.0)      # s_tt > 0: >= 3 distinct frames
  slope = s_tx / denom
  fit_pred = x_bar + slope * (0.0 - t_bar)
  resid = w[:, None] * (loca - (x_bar + slope * (tt - t_bar)[:, None]))
  dof = jnp.maximum(n_obs - 2, 1).astype(jnp.float32)
  mse = jnp.sum(resid * resid, axis=0) / dof
  q = knobs.quantiles[jnp.clip(n_obs, 0, knobs.quantiles.shape[0] - 1)]
  lever = 1.0 + 1.0 / n + (0.0 - t_bar) ** 2 / jnp.where(enough, s_tt, 1.0)
  fit_int = q * jnp.sqrt(mse * lever)

  # Fallback (< 3 observations): last position, random-velocity interval.
  latest = jnp.argmax(jnp.where(valid, times, jnp.iinfo(jnp.int32).min))
  last = loca[latest]
  elapsed = jnp.maximum(-tt[latest], 0.0)
  scale = jnp.maximum(box_h, 1.0)
  noise = jnp.stack([knobs.xy_noise * scale, knobs.xy_noise * scale, knobs.n_noise])
  speed = jnp.stack([knobs.xy_speed * scale, knobs.xy_speed * scale, knobs.n_speed])
  fb_int = q * jnp.sqrt(noise ** 2 + (speed * elapsed) ** 2)

  floor = jnp.maximum(q * noise, 1e-6)
  pred = jnp.where(enough, fit_pred, last)
  interval = jnp.maximum(jnp.where(enough, fit_int, fb_int), floor)
  has_any = n_obs > 0
  return jnp.where(has_any, pred, 0.0), jnp.where(has_any, interval, 1.0)
