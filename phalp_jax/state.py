"""PHALP tracker parameters and the fixed-capacity tracklet state (seed 000, section 2.3).

:class:`PhalpParams` holds the five association parameters of Eq. 2.5-2.10 (``beta_a``, ``beta_p``,
``beta_xy``, ``beta_n`` and the gate ``beta_th``) next to the lifecycle and prediction settings;
:meth:`PhalpParams.from_vector` / :meth:`PhalpParams.to_vector` map the five to a vector for
Nelder-Mead fitting. :meth:`PhalpParams.knobs` turns every number the jitted code reads into traced
arrays, so changing a beta never recompiles; only ``history`` (a shape) and ``lmc`` (whether the
lookback merge check of :mod:`phalp_jax.lmc` is compiled in) are static. :mod:`phalp_jax.fit`
fits the five by Nelder-Mead (``python -m launch.fit_phalp``).

:class:`TrackerState` is a pytree of ``K`` slots per video (batched: a leading ``B``). A slot is
free (``active`` False) or holds one tracklet: its aggregated appearance (Eq. 2.2), the last ``w``
observations (times, locations ``(x, y, n)``, poses) for the predictors of Eq. 2.3-2.4 and the
pose predictor, counters (``hits``, ``age``, ``time_since_update``), status (``confirmed``) and
the public id (0 until the tracklet is confirmed). Shapes come from the data: ``Da``, ``Dp`` and
the UV map size are read from the detections, never fixed here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

# The fields fitted by Nelder-Mead, in vector order (Eq. 2.5-2.8 and the Hungarian gate).
VECTOR_FIELDS = ('beta_a', 'beta_p', 'beta_xy', 'beta_n', 'beta_th')


@dataclasses.dataclass(frozen=True)
class PhalpParams:
  """Association, lifecycle and prediction settings (defaults: the released tracker's, DESIGN 6).

  ``beta_th`` is on the released tracker's product scale: a pair is admissible when
  ``prod_terms = (1 + beta_a da) (1 + beta_p dp) exp(dxy / (beta_xy dxy_int)) exp(dn / (beta_n
  dn_int)) <= beta_th``, i.e. when the cost ``-log P`` of Eq. 2.10 (without its additive constant
  ``log beta_xy + log beta_n``) is at most ``log(beta_th)``.

  Location fallback for tracklets with fewer than 3 observations (Eq. 2.4 needs w - 2 >= 1 degrees
  of freedom): the last observed position is the prediction and its interval is
  ``z_q * sqrt(noise^2 + (speed * dt)^2)`` with ``dt`` the frames since that observation, i.e. a
  detector noise plus an unknown velocity of spread ``speed`` (a random-velocity prior). ``x, y``
  noise and speed are in units of the tracklet's last box height (resolution-free); nearness ones
  in nearness units. The noise interval ``q * noise`` (``q`` the quantile in use) is also the floor
  of the Eq. 2.4 interval, so an exact line fit (MSE 0) never divides by zero.
  """

  beta_a: float = 4.0536     # appearance, Eq. 2.5
  beta_p: float = 1.3070     # pose, Eq. 2.6
  beta_xy: float = 0.3792    # 2D location, Eq. 2.7
  beta_n: float = 4.1658     # nearness, Eq. 2.8
  beta_th: float = 100.0     # gate (product scale, see above)
  history: int = 7           # w: observations kept for the location fit and the pose predictor
  max_age: int = 50          # a confirmed tracklet dies after this many frames without a match
  n_init: int = 5            # hits that confirm a tracklet; a tentative one dies on its first miss
  conf_threshold: float = 0.8  # detections below this confidence are ignored
  alpha0: float = 0.1        # Eq. 2.2 rate where both the tracklet and the detection are visible
  ridge: float = 0.0         # ridge penalty on the slope of the Eq. 2.3 line fits (0: OLS)
  interval: float = 0.95     # prediction interval level: quantile 1 - (1 - interval) / 2
  xy_noise: float = 0.05     # box heights: detector noise of the root position
  xy_speed: float = 0.05     # box heights per frame: prior spread of the 2D velocity
  n_noise: float = 0.05      # nearness noise
  n_speed: float = 0.02      # nearness per frame: prior spread of the nearness velocity
  lmc: bool = True           # LMC, the lookback merge check (section 2.7, phalp_jax.lmc)
  lmc_th: float = 30.0       # LMC gate, product scale like beta_th: merge when cost <= log(lmc_th)

  def __post_init__(self):
    positive = {k: getattr(self, k) for k in VECTOR_FIELDS}
    for name, value in positive.items():
      if not (math.isfinite(value) and value > 0):
        raise ValueError(f'PhalpParams: {name} must be a positive finite number, got {value!r}')
    if self.beta_th <= 1:
      raise ValueError(f'PhalpParams: beta_th must be > 1 (product scale; the cost gate is '
                       f'log(beta_th)), got {self.beta_th!r}')
    for name in ('history', 'max_age', 'n_init'):
      value = getattr(self, name)
      if int(value) != value or value < 1:
        raise ValueError(f'PhalpParams: {name} must be a positive integer, got {value!r}')
    if not isinstance(self.lmc, (bool, np.bool_)):
      raise ValueError(f'PhalpParams: lmc must be a bool, got {self.lmc!r}')
    if not (math.isfinite(self.lmc_th) and self.lmc_th > 1):
      raise ValueError(f'PhalpParams: lmc_th must be a finite number > 1 (product scale; the LMC '
                       f'gate is log(lmc_th)), got {self.lmc_th!r}')
    if not 0 <= self.alpha0 <= 1:
      raise ValueError(f'PhalpParams: alpha0 must lie in [0, 1], got {self.alpha0!r}')
    if not 0 < self.interval < 1:
      raise ValueError(f'PhalpParams: interval must lie in (0, 1), got {self.interval!r}')
    for name in ('ridge', 'xy_noise', 'xy_speed', 'n_noise', 'n_speed'):
      if not getattr(self, name) >= 0:
        raise ValueError(f'PhalpParams: {name} must be >= 0, got {getattr(self, name)!r}')

  @classmethod
  def from_vector(cls, vector: Sequence[float], **others) -> PhalpParams:
    """Params from ``(beta_a, beta_p, beta_xy, beta_n, beta_th)`` plus any other field."""
    values = [float(v) for v in np.asarray(vector, np.float64).reshape(-1)]
    if len(values) != len(VECTOR_FIELDS):
      raise ValueError(f'PhalpParams.from_vector: expected {len(VECTOR_FIELDS)} values '
                       f'{VECTOR_FIELDS}, got {len(values)}')
    return cls(**dict(zip(VECTOR_FIELDS, values)), **others)

  def to_vector(self) -> np.ndarray:
    """``(beta_a, beta_p, beta_xy, beta_n, beta_th)`` as float64."""
    return np.array([getattr(self, k) for k in VECTOR_FIELDS], np.float64)

  @property
  def gate(self) -> float:
    """The cost threshold: ``log(beta_th)``."""
    return math.log(self.beta_th)

  def knobs(self) -> Knobs:
    """Every number the jitted tracker reads, as traced float32/int32 scalars and tables."""
    f = lambda v: jnp.asarray(v, jnp.float32)
    return Knobs(beta_a=f(self.beta_a), beta_p=f(self.beta_p), beta_xy=f(self.beta_xy),
                 beta_n=f(self.beta_n), gate=f(self.gate), alpha0=f(self.alpha0),
                 ridge=f(self.ridge), xy_noise=f(self.xy_noise), xy_speed=f(self.xy_speed),
                 n_noise=f(self.n_noise), n_speed=f(self.n_speed),
                 lmc_gate=f(math.log(self.lmc_th)), n_init=jnp.asarray(self.n_init, jnp.int32),
                 max_age=jnp.asarray(self.max_age, jnp.int32),
                 quantiles=jnp.asarray(quantile_table(self.history, self.interval)))


class Knobs(NamedTuple):
  """Traced numbers of :class:`PhalpParams` (see :meth:`PhalpParams.knobs`)."""
  beta_a: jax.Array
  beta_p: jax.Array
  beta_xy: jax.Array
  beta_n: jax.Array
  gate: jax.Array
  alpha0: jax.Array
  ridge: jax.Array
  xy_noise: jax.Array
  xy_speed: jax.Array
  n_noise: jax.Array
  n_speed: jax.Array
  lmc_gate: jax.Array   # log(lmc_th)
  n_init: jax.Array
  max_age: jax.Array
  quantiles: jax.Array  # [w + 1]: the interval quantile for a fit on n observations


@functools.lru_cache(maxsize=None)
def quantile_table(history: int, interval: float = 0.95) -> np.ndarray:
  """``[history + 1]`` float32: entry ``n`` is the quantile used with ``n`` observations.

  ``n >= 3``: Student's t at ``1 - (1 - interval) / 2`` with ``n - 2`` degrees of freedom (Eq. 2.4,
  ``t_0.975(w - 2)`` for a full window); ``n < 3``: the normal quantile, used by the fallback.
  """
  q = 1.0 - (1.0 - interval) / 2.0
  table = np.full(history + 1, scipy.stats.norm.ppf(q), np.float64)
  for n in range(3, history + 1):
    table[n] = scipy.stats.t.ppf(q, n - 2)
  return table.astype(np.float32)


class TrackerState(NamedTuple):
  """``K`` tracklet slots of one video (every field has a leading ``[K]``; ``next_id`` and
  ``overflow`` are scalars), or of ``B`` videos with a leading ``[B]`` on every field."""
  active: jax.Array             # [K] bool: the slot holds a tentative or confirmed tracklet
  confirmed: jax.Array          # [K] bool
  track_id: jax.Array           # [K] int32: public id, 1, 2, ... in order of confirmation; 0: none
  hits: jax.Array               # [K] int32: matched detections
  age: jax.Array                # [K] int32: frames since creation
  time_since_update: jax.Array  # [K] int32: frames since the last match
  bbox: jax.Array               # [K, 4] f32: last matched box x, y, w, h
  appe: jax.Array               # [K, Da] f32: aggregated appearance embedding (Eq. 2.2)
  uv: jax.Array                 # [K, 4, h, w] f32: aggregated UV map + visibility (Eq. 2.1-2.2)
  times: jax.Array              # [K, w] int32: frames of the last w observations (oldest first)
  valid: jax.Array              # [K, w] bool: history entry holds an observation
  loc_valid: jax.Array          # [K, w] bool: ... whose location belongs to the current shot
  loca: jax.Array               # [K, w, 3] f32: x, y, nearness of those observations
  pose: jax.Array               # [K, w, Dp] f32: their pose features
  loc_shot: jax.Array           # [K] int32: shot index of the location history
  next_id: jax.Array            # [] int32: the id the next confirmed tracklet gets
  overflow: jax.Array           # [] bool: a detection found no free slot (sticky)

  @property
  def capacity(self) -> int:
    return int(self.active.shape[-1])


def init_state(capacity: int, history: int, appe_dim: int, pose_dim: int,
               uv_shape: tuple[int, int, int] = (4, 0, 0), batch: int | None = None
               ) -> TrackerState:
  """An empty state of ``capacity`` slots (with a leading ``batch`` axis unless it is None)."""
  if capacity < 1:
    raise ValueError(f'capacity must be >= 1, got {capacity}')
  lead = () if batch is None else (batch,)
  k, w = (*lead, capacity), history
  zf = lambda *s: jnp.zeros((*k, *s), jnp.float32)
  zi = lambda *s: jnp.zeros((*k, *s), jnp.int32)
  zb = lambda *s: jnp.zeros((*k, *s), bool)
  return TrackerState(
      active=zb(), confirmed=zb(), track_id=zi(), hits=zi(), age=zi(), time_since_update=zi(),
      bbox=zf(4), appe=zf(appe_dim), uv=zf(*uv_shape), times=zi(w), valid=zb(w),
      loc_valid=zb(w), loca=zf(w, 3), pose=zf(w, pose_dim), loc_shot=zi(),
      next_id=jnp.ones(lead, jnp.int32), overflow=jnp.zeros(lead, bool))


def grow_state(state: TrackerState, capacity: int) -> TrackerState:
  """``state`` with its slot axis padded with free slots up to ``capacity`` (host side).

  Free slots are taken lowest index first, so the tracklets already there keep their slots and
  the tracker's output does not depend on when the capacity grew.
  """
  old = state.capacity
  if capacity < old:
    raise ValueError(f'grow_state: cannot shrink {old} slots to {capacity}')
  batched = state.next_id.ndim == 1
  axis = 1 if batched else 0

  def pad(x, name):
    if name in ('next_id', 'overflow'):
      return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, capacity - old)
    return jnp.pad(x, widths)

  return TrackerState(*(pad(x, n) for x, n in zip(state, TrackerState._fields)))
