"""Fitting PHALP's five association parameters (seed 000, section 2.3, "Estimating the parameters
of the cost function"): Nelder-Mead on annotated sequences, minimising frame-level association
error.

The paper: the cost has four parameters (``beta_a, beta_p, beta_xy, beta_n``) and the Hungarian a
fifth (``beta_th``); "we treat this as an empirical risk minimization problem [...] use frame level
association error as a loss function [...] We use the Nelder-Mead algorithm". It does not define
the error further, so here it is (:func:`link_counts`, :func:`association_error`):

* The tracker's decision at every frame is which earlier detection each detection is linked to
  (the tracklet it joins). A **link** is a pair of detections ``(d, d')`` where ``d'`` is the next
  detection after ``d`` on the same track, across any gap.
* **Ground-truth links**: over the detections the tracker reads (confidence at least
  ``conf_threshold``, finite; ``gt_id >= 0``, false positives have -1), consecutive detections of
  each identity. One is **missed** unless the tracker output both with the same id.
* **Predicted links**: consecutive output detections of each predicted id (after LMC's
  relabelling). One is **wrong** unless both detections have the same ``gt_id >= 0``.
* ``error = (missed + wrong) / (gt links + predicted links)``, summed over all sequences: 0 when
  every annotated association is reproduced and none is invented, 1 when none is right. Splits,
  late confirmation (a tracklet's first ``n_init - 1`` detections are not output) and lost
  re-identifications raise the first term; identity switches, merges and false positives pulled
  into tracks the second. Unlike ``1 - IDF1`` it is local (a switch costs one wrong link and the
  links it breaks, not the rest of the track) and needs no box matching, which is what "frame
  level" asks for; it is still piecewise constant in the parameters, which Nelder-Mead (no
  gradients) tolerates.

Search space: ``z = (log beta_a, log beta_p, log beta_xy, log beta_n, log log beta_th)``, so every
point is a valid :class:`PhalpParams` (betas > 0, ``beta_th > 1``, i.e. the cost gate
``log beta_th > 0``). The initial simplex is the start point plus a step of ``step`` (default 0.5,
a factor 1.65) along each beta coordinate and ``step / 2`` along the gate one (scipy's default of
5% of each coordinate would barely move the log-parameters). Each evaluation tracks every
training sequence in one :func:`phalp_jax.tracker.track_batch` call; the betas enter the compiled
loop as traced values (``PhalpParams.knobs``), so nothing recompiles between evaluations.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import scipy.optimize

from phalp_jax import io as io_lib
from phalp_jax import metrics
from phalp_jax.state import VECTOR_FIELDS, PhalpParams

DEFAULT_STEP = 0.5
DEFAULT_CAPACITY = 64
ERROR_DEFINITION = ('(missed ground-truth links + wrong predicted links) / (ground-truth links + '
                    'predicted links); a link joins consecutive detections of one identity / '
                    'one output id, across gaps')


# ------------------------------------------------------------------------------------------------
# The objective.


class LinkCounts(NamedTuple):
  """Link tallies of one or more sequences (see the module docstring)."""
  gt_links: int
  missed: int
  pred_links: int
  wrong: int

  def __add__(self, other: LinkCounts) -> LinkCounts:  # type: ignore[override]
    return LinkCounts(*(a + b for a, b in zip(self, other)))

  @property
  def error(self) -> float:
    return (self.missed + self.wrong) / max(1, self.gt_links + self.pred_links)


def _consecutive(groups: np.ndarray, frames: np.ndarray, keep: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Indices ``(a, b)`` of consecutive rows (by frame) within each group, over rows ``keep``."""
  idx = np.flatnonzero(keep)
  order = idx[np.lexsort((frames[idx], groups[idx]))]
  same = groups[order[1:]] == groups[order[:-1]]
  return order[:-1][same], order[1:][same]


def detection_ids(dets: io_lib.Detections, rows: np.ndarray) -> np.ndarray:
  """``int64 [N]``: the id the track rows give each detection (0: not output).

  Rows are matched to detections by frame and box (the tracker copies boxes exactly); detections
  with identical frame and box are taken in order.
  """
  slots: dict[tuple, list[int]] = {}
  for k in range(len(dets)):
    slots.setdefault((int(dets.frame[k]), dets.bbox[k].tobytes()), []).append(k)
  out = np.zeros(len(dets), np.int64)
  bbox = np.asarray(rows[:, 2:6], np.float64) if len(rows) else np.zeros((0, 4))
  for r, box in zip(rows, bbox):
    free = slots.get((int(r[0]), box.tobytes()))
    if not free:
      raise ValueError(f'{dets.source}: track row (frame {int(r[0])}, box {box.tolist()}) matches '
                       'no detection')
    out[free.pop(0)] = int(r[1])
  return out


def usable(dets: io_lib.Detections, conf_threshold: float) -> np.ndarray:
  """The detections the tracker reads (its own filter: confidence, finite values, boxes)."""
  from phalp_jax import tracker
  return tracker._usable(dets.conf, dets.bbox, (dets.appe, dets.pose, dets.loca, dets.uv),
                         conf_threshold)


def link_counts(dets: io_lib.Detections, rows: np.ndarray, conf_threshold: float) -> LinkCounts:
  """:class:`LinkCounts` of one sequence's track rows against its ``gt_id``."""
  if dets.gt_id is None:
    raise ValueError(f'{dets.source}: field gt_id is missing; fitting needs annotated identities')
  gt = dets.gt_id
  pid = detection_ids(dets, rows)
  ok = usable(dets, conf_threshold)
  a, b = _consecutive(gt, dets.frame, ok & (gt >= 0))
  missed = int(np.sum(~((pid[a] == pid[b]) & (pid[a] > 0))))
  c, d = _consecutive(pid, dets.frame, pid > 0)
  wrong = int(np.sum(~((gt[c] == gt[d]) & (gt[c] >= 0))))
  return LinkCounts(len(a), missed, len(c), wrong)


def association_error(detections: Sequence[io_lib.Detections], outputs: Sequence[np.ndarray],
                      conf_threshold: float) -> float:
  """The frame-level association error of track rows ``outputs`` over ``detections``."""
  total = LinkCounts(0, 0, 0, 0)
  for dets, rows in zip(detections, outputs):
    total = total + link_counts(dets, rows, conf_threshold)
  return total.error


# ------------------------------------------------------------------------------------------------
# Parameter space.


def to_search(params: PhalpParams) -> np.ndarray:
  """``z``: log betas and log of the gate ``log beta_th``."""
  v = params.to_vector()
  return np.concatenate([np.log(v[:4]), [math.log(math.log(v[4]))]])


def from_search(z: Sequence[float], base: PhalpParams) -> PhalpParams:
  """The params at search point ``z`` (other fields from ``base``)."""
  z = np.asarray(z, np.float64)
  vector = np.concatenate([np.exp(z[:4]), [math.exp(math.exp(float(z[4])))]])
  others = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)
            if f.name not in VECTOR_FIELDS}
  return PhalpParams.from_vector(vector, **others)


# ------------------------------------------------------------------------------------------------
# Nelder-Mead.


@dataclasses.dataclass
class FitResult:
  """What :func:`fit` found."""
  params: PhalpParams
  initial: PhalpParams
  objective_before: float
  objective_after: float
  evaluations: int
  iterations: int
  message: str
  history: list[tuple[list[float], float]]  # (vector, objective) per evaluation


def track_all(detections: Sequence[io_lib.Detections], params: PhalpParams,
              capacity: int = DEFAULT_CAPACITY, pose_predictor=None) -> list[np.ndarray]:
  """Track rows of every sequence, one compiled batch (:func:`phalp_jax.tracker.track_batch`)."""
  from phalp_jax import tracker
  return tracker.track_batch(list(detections), params, capacity, pose_predictor=pose_predictor)


def fit(detections: Sequence[io_lib.Detections], initial: PhalpParams | None = None, *,
        maxiter: int = 100, maxfev: int | None = None, step: float = DEFAULT_STEP,
        capacity: int = DEFAULT_CAPACITY, pose_predictor=None, progress: bool = True,
        on_evaluation: Callable[[PhalpParams, float], None] | None = None) -> FitResult:
  """Nelder-Mead over the five parameters from ``initial`` (default: the released values).

  ``maxiter`` / ``maxfev`` bound Nelder-Mead's iterations / objective evaluations (one
  evaluation = one tracking pass over all sequences). Returns the best parameters evaluated
  (never worse than ``initial`` on the training objective).
  """
  detections = list(detections)
  if not detections:
    raise ValueError('fit: no annotated sequences')
  for d in detections:
    if d.gt_id is None:
      raise ValueError(f'{d.source}: field gt_id is missing; fitting needs annotated identities')
  initial = initial or PhalpParams()
  from tqdm.auto import tqdm
  bar = tqdm(total=maxfev, desc='fit_phalp', unit='eval', disable=not progress)
  history: list[tuple[list[float], float]] = []
  best: list[Any] = [math.inf, initial]

  def objective(z: np.ndarray) -> float:
    params = from_search(z, initial)
    outputs = track_all(detections, params, capacity, pose_predictor)
    value = association_error(detections, outputs, params.conf_threshold)
    history.append((params.to_vector().tolist(), value))
    if value < best[0]:
      best[:] = [value, params]
    bar.set_postfix(error=f'{value:.4f}', best=f'{best[0]:.4f}', refresh=False)
    bar.update(1)
    if on_evaluation is not None:
      on_evaluation(params, value)
    return value

  z0 = to_search(initial)
  simplex = np.repeat(z0[None], len(z0) + 1, axis=0)
  for i in range(len(z0)):
    simplex[i + 1, i] += step if i < 4 else step / 2
  try:
    res = scipy.optimize.minimize(
        objective, z0, method='Nelder-Mead',
        options={'maxiter': maxiter, 'maxfev': maxfev, 'initial_simplex': simplex,
                 'xatol': 1e-3, 'fatol': 1e-5})
  finally:
    bar.close()
  return FitResult(params=best[1], initial=initial, objective_before=history[0][1],
                   objective_after=float(best[0]), evaluations=len(history),
                   iterations=int(res.get('nit', 0)), message=str(res.message), history=history)


# ------------------------------------------------------------------------------------------------
# Evaluation and files.


def gt_rows(dets: io_lib.Detections, gt_path: str | None = None) -> np.ndarray:
  """Ground-truth rows ``(frame, id, x, y, w, h)``: a MOT-style file (``gt/NAME.txt`` as
  :func:`phalp_jax.synthetic.write_benchmark` writes) when given, else the annotated
  detections themselves (``gt_id >= 0``, every confidence)."""
  if gt_path is not None:
    return io_lib.load_mot_tracks(gt_path)[:, :6]
  if dets.gt_id is None:
    raise ValueError(f'{dets.source}: field gt_id is missing and no ground-truth file was given')
  keep = dets.gt_id >= 0
  return np.concatenate([dets.frame[keep, None], dets.gt_id[keep, None], dets.bbox[keep]],
                        axis=1).astype(np.float64)


def evaluate(detections: Sequence[io_lib.Detections], params: PhalpParams,
             gts: Sequence[np.ndarray], capacity: int = DEFAULT_CAPACITY,
             pose_predictor=None) -> dict[str, float]:
  """Tracks the sequences and returns the mean IDF1 / MOTA / HOTA over them, the total ID
  switches and the association error."""
  outputs = track_all(detections, params, capacity, pose_predictor)
  runs = [metrics.evaluate(g, o[:, :6]) for g, o in zip(gts, outputs)]
  out = {k: float(np.mean([r[k] for r in runs])) for k in ('idf1', 'mota', 'hota')}
  out['num_switches'] = int(sum(r['num_switches'] for r in runs))
  out['association_error'] = association_error(detections, outputs, params.conf_threshold)
  return out


def load_params(path: str | os.PathLike, **overrides: Any) -> PhalpParams:
  """The :class:`PhalpParams` a ``launch.fit_phalp`` JSON file holds (``vector`` plus the
  ``other_params`` it was fitted with), with ``overrides`` applied."""
  path = os.fspath(path)
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f'{path}: not a readable fit_phalp JSON file ({e})') from e
  if 'vector' not in data:
    raise ValueError(f'{path}: missing field vector')
  names = {f.name for f in dataclasses.fields(PhalpParams)}
  others = {k: v for k, v in data.get('other_params', {}).items() if k in names}
  others.update(overrides)
  return PhalpParams.from_vector(data['vector'], **others)
