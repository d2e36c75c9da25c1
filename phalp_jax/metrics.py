"""Multi-object tracking metrics that equal TrackEval's: CLEAR-MOT, identity (IDF1) and HOTA.

TrackEval (https://github.com/JonathonLuiten/TrackEval) is the official MOTChallenge / HOTA code.
Its package metadata pulls ``opencv-python`` (the GUI build, which needs libGL) next to the
headless build this project uses, and py-motmetrics 1.4 does not run with NumPy 2, so this module
re-implements the three metric families in NumPy/SciPy, statement for statement after TrackEval
1.3.0 (``metrics/clear.py``, ``metrics/identity.py``, ``metrics/hota.py`` and
``_BaseDataset._calculate_box_ious``). ``tests/test_phalp_metrics.py`` checks hand-computed cases
and, where ``trackeval`` is importable, equality with TrackEval on random sequences.

Conventions (TrackEval's, for one sequence as its ``eval_sequence`` returns them):

* Every value is a fraction, not a percentage. ``motp`` is the mean IoU of the CLEAR matches
  (higher is better), not py-motmetrics' mean distance ``1 - IoU``.
* ``iou_threshold`` is the CLEAR and identity threshold; HOTA, DetA, AssA and LocA are averaged
  over TrackEval's 19 localisation thresholds ``alpha = 0.05, 0.10, ..., 0.95``.
* A sequence with no ground truth gives ``mota = motp = 0`` (TrackEval returns early there; only
  its multi-sequence combination would report ``-FP``); no predictions gives ``loca = 1``.
* Frames are the union of the frames in ``gt`` and ``pred``; a frame absent from both changes
  nothing, so the frame numbers need not be contiguous. Ids are arbitrary integers per array.
* All rows are evaluated: filter MOTChallenge files (zero-marked gt rows, non-pedestrian classes,
  confidences) before calling, as TrackEval's dataset preprocessing would.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

_EPS = np.finfo(float).eps
HOTA_ALPHAS = np.arange(0.05, 0.99, 0.05)  # TrackEval's HOTA array_labels.


class _Sequence(NamedTuple):
  """One sequence as TrackEval's metrics see it: per frame, contiguous ids and the IoU matrix."""
  gt_ids: list[np.ndarray]
  pred_ids: list[np.ndarray]
  similarity: list[np.ndarray]  # (num gt in frame, num pred in frame) IoUs.
  num_gt_ids: int
  num_pred_ids: int
  num_gt_dets: int
  num_pred_dets: int


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
  """IoU matrix of (x, y, w, h) boxes, as TrackEval's ``_calculate_box_ious``: 0 for empty boxes."""
  b1 = np.array(boxes1, dtype=float).reshape(-1, 4)
  b2 = np.array(boxes2, dtype=float).reshape(-1, 4)
  b1[:, 2:] += b1[:, :2]
  b2[:, 2:] += b2[:, :2]
  lo = np.minimum(b1[:, None, :], b2[None, :, :])
  hi = np.maximum(b1[:, None, :], b2[None, :, :])
  inter = np.maximum(lo[..., 2] - hi[..., 0], 0) * np.maximum(lo[..., 3] - hi[..., 1], 0)
  area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
  area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
  union = area1[:, None] + area2[None, :] - inter
  inter[area1 <= _EPS, :] = 0
  inter[:, area2 <= _EPS] = 0
  inter[union <= _EPS] = 0
  union[union <= _EPS] = 1
  return inter / union


def _check_rows(rows: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Validates an array of (frame, id, x, y, w, h) rows; returns int frames, int ids, boxes."""
  arr = np.asarray(rows)
  if arr.size == 0:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4))
  if arr.ndim != 2 or arr.shape[1] != 6:
    raise ValueError(f'{name} must have shape (N, 6) with rows (frame, id, x, y, w, h); '
                     f'got shape {arr.shape}')
  if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
    raise ValueError(f'{name} must be a numeric array; got dtype {arr.dtype}')
  keys = arr[:, :2]
  if np.issubdtype(arr.dtype, np.floating):
    if not np.all(np.isfinite(keys)) or np.any(keys != np.round(keys)):
      raise ValueError(f'{name}: frame and id (columns 0 and 1) must be integers')
  keys = keys.astype(np.int64)
  boxes = arr[:, 2:].astype(float)
  if not np.all(np.isfinite(boxes)):
    raise ValueError(f'{name}: boxes (columns 2-5) must be finite; found NaN or inf')
  if np.any(boxes[:, 2:] < 0):
    raise ValueError(f'{name}: box width and height (columns 4 and 5) must be >= 0')
  uniq, counts = np.unique(keys, axis=0, return_counts=True)
  if np.any(counts > 1):
    frame, tid = uniq[np.argmax(counts > 1)]
    raise ValueError(f'{name}: id {tid} appears more than once in frame {frame}')
  return keys[:, 0], keys[:, 1], boxes


def _by_frame(frames: np.ndarray, ids: np.ndarray, boxes: np.ndarray,
              all_frames: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray], int]:
  """Contiguous ids (sorted original ids, as TrackEval relabels) and boxes, split per frame.

  Rows keep their input order within a frame, as TrackEval reads a text file, so the Hungarian
  solves see the same matrices (and break ties the same way).
  """
  uniq, ids = np.unique(ids, return_inverse=True)
  order = np.argsort(frames, kind='stable')
  starts = np.searchsorted(frames[order], all_frames, side='left')
  ends = np.searchsorted(frames[order], all_frames, side='right')
  ids_t = [ids[order[a:b]] for a, b in zip(starts, ends)]
  boxes_t = [boxes[order[a:b]] for a, b in zip(starts, ends)]
  return ids_t, boxes_t, len(uniq)


def _sequence(gt: np.ndarray, pred: np.ndarray) -> _Sequence:
  g_frames, g_ids, g_boxes = _check_rows(gt, 'gt')
  p_frames, p_ids, p_boxes = _check_rows(pred, 'pred')
  all_frames = np.union1d(g_frames, p_frames)
  gt_ids, gt_boxes, num_gt_ids = _by_frame(g_frames, g_ids, g_boxes, all_frames)
  pred_ids, pred_boxes, num_pred_ids = _by_frame(p_frames, p_ids, p_boxes, all_frames)
  similarity = [box_iou(g, p) for g, p in zip(gt_boxes, pred_boxes)]
  return _Sequence(gt_ids, pred_ids, similarity, num_gt_ids, num_pred_ids, len(g_ids), len(p_ids))


def _clear(seq: _Sequence, threshold: float) -> dict:
  """CLEAR-MOT (TrackEval ``CLEAR.eval_sequence``): per-frame Hungarian preferring to continue the
  previous frame's matches; an ID switch is a gt matched to another id than at its last match."""
  n = seq.num_gt_ids
  res = dict(num_matches=0, num_misses=0, num_false_positives=0, num_switches=0,
             num_fragmentations=0, mostly_tracked=0, partially_tracked=0, mostly_lost=0,
             motp_sum=0.0)
  if seq.num_pred_dets == 0 or seq.num_gt_dets == 0:  # TrackEval returns these early.
    res.update(num_misses=seq.num_gt_dets, num_false_positives=seq.num_pred_dets, mostly_lost=n)
    return res
  gt_count, matched_count, frag_count = np.zeros(n), np.zeros(n), np.zeros(n)
  last_pred = np.full(n, np.nan)  # Last matched pred id ever: for ID switches.
  prev_pred = np.full(n, np.nan)  # Matched pred id in the previous evaluated frame: for matching.
  for g, p, sim in zip(seq.gt_ids, seq.pred_ids, seq.similarity):
    if len(g) == 0:
      res['num_false_positives'] += len(p)
      continue
    if len(p) == 0:
      res['num_misses'] += len(g)
      gt_count[g] += 1
      continue
    score = 1000 * (p[None, :] == prev_pred[g][:, None]) + sim
    score[sim < threshold - _EPS] = 0
    rows, cols = linear_sum_assignment(-score)
    keep = score[rows, cols] > _EPS
    rows, cols = rows[keep], cols[keep]
    mg, mp = g[rows], p[cols]
    last = last_pred[mg]
    res['num_switches'] += int(np.sum(~np.isnan(last) & (mp != last)))
    gt_count[g] += 1
    matched_count[mg] += 1
    was_untracked = np.isnan(prev_pred)
    last_pred[mg] = mp
    prev_pred[:] = np.nan
    prev_pred[mg] = mp
    frag_count += was_untracked & ~np.isnan(prev_pred)
    res['num_matches'] += len(mg)
    res['num_misses'] += len(g) - len(mg)
    res['num_false_positives'] += len(p) - len(mg)
    if len(mg):
      res['motp_sum'] += sum(sim[rows, cols])  # Builtin sum: TrackEval's summation order.
  ratio = matched_count[gt_count > 0] / gt_count[gt_count > 0]
  res['mostly_tracked'] = int(np.sum(ratio > 0.8))
  res['partially_tracked'] = int(np.sum(ratio >= 0.2)) - res['mostly_tracked']
  res['mostly_lost'] = n - res['mostly_tracked'] - res['partially_tracked']
  res['num_fragmentations'] = int(np.sum(frag_count[frag_count > 0] - 1))
  return res


def _identity(seq: _Sequence, threshold: float) -> dict:
  """IDTP/IDFP/IDFN (TrackEval ``Identity.eval_sequence``): one global gt-id to pred-id assignment
  minimising IDFN + IDFP, where a pair's detections match when IoU >= threshold."""
  ng, np_ = seq.num_gt_ids, seq.num_pred_ids
  if seq.num_pred_dets == 0 or seq.num_gt_dets == 0:
    return dict(idtp=0, idfn=seq.num_gt_dets, idfp=seq.num_pred_dets)
  both = np.zeros((ng, np_))
  gt_count, pred_count = np.zeros(ng), np.zeros(np_)
  for g, p, sim in zip(seq.gt_ids, seq.pred_ids, seq.similarity):
    r, c = np.nonzero(sim >= threshold)
    both[g[r], p[c]] += 1
    gt_count[g] += 1
    pred_count[p] += 1
  # Rows: gt ids then one dummy per pred id; columns: pred ids then one dummy per gt id.
  fp = np.zeros((ng + np_, ng + np_))
  fn = np.zeros((ng + np_, ng + np_))
  fp[ng:, :np_] = 1e10
  fn[:ng, np_:] = 1e10
  fn[:ng, :np_] = gt_count[:, None]
  fn[np.arange(ng), np_ + np.arange(ng)] = gt_count
  fp[:ng, :np_] = pred_count[None, :]
  fp[ng + np.arange(np_), np.arange(np_)] = pred_count
  fn[:ng, :np_] -= both
  fp[:ng, :np_] -= both
  rows, cols = linear_sum_assignment(fn + fp)
  idfn = int(fn[rows, cols].sum())
  idfp = int(fp[rows, cols].sum())
  return dict(idtp=int(gt_count.sum()) - idfn, idfn=idfn, idfp=idfp)


def _hota(seq: _Sequence) -> dict:
  """HOTA (TrackEval ``HOTA.eval_sequence``), per alpha: per-frame Hungarian on IoU weighted by
  the global id alignment, DetA = TP / (TP + FN + FP), AssA = mean over TPs of the id pair's
  association IoU, HOTA = sqrt(DetA * AssA); returned averaged over the alphas."""
  na = len(HOTA_ALPHAS)
  tp, fn, fp, loca = np.zeros(na), np.zeros(na), np.zeros(na), np.zeros(na)
  ass_a, ass_re, ass_pr = np.zeros(na), np.zeros(na), np.zeros(na)
  if seq.num_pred_dets == 0 or seq.num_gt_dets == 0:
    fn[:], fp[:], loca[:] = seq.num_gt_dets, seq.num_pred_dets, 1.0
  else:
    potential = np.zeros((seq.num_gt_ids, seq.num_pred_ids))
    gt_count = np.zeros((seq.num_gt_ids, 1))
    pred_count = np.zeros((1, seq.num_pred_ids))
    for g, p, sim in zip(seq.gt_ids, seq.pred_ids, seq.similarity):
      denom = sim.sum(0)[None, :] + sim.sum(1)[:, None] - sim
      sim_iou = np.zeros_like(sim)
      ok = denom > _EPS
      sim_iou[ok] = sim[ok] / denom[ok]
      potential[g[:, None], p[None, :]] += sim_iou
      gt_count[g] += 1
      pred_count[0, p] += 1
    alignment = potential / (gt_count + pred_count - potential)
    matches = np.zeros((na,) + potential.shape)
    for g, p, sim in zip(seq.gt_ids, seq.pred_ids, seq.similarity):
      if len(g) == 0 or len(p) == 0:
        fp += len(p)
        fn += len(g)
        continue
      rows, cols = linear_sum_assignment(-(alignment[g[:, None], p[None, :]] * sim))
      for a, alpha in enumerate(HOTA_ALPHAS):
        keep = sim[rows, cols] >= alpha - _EPS
        r, c = rows[keep], cols[keep]
        tp[a] += len(r)
        fn[a] += len(g) - len(r)
        fp[a] += len(p) - len(r)
        if len(r):
          loca[a] += sum(sim[r, c])  # Builtin sum: TrackEval's summation order.
          matches[a][g[r], p[c]] += 1
    for a in range(na):
      m = matches[a]
      ass_a[a] = np.sum(m * (m / np.maximum(1, gt_count + pred_count - m))) / max(1, tp[a])
      ass_re[a] = np.sum(m * (m / np.maximum(1, gt_count))) / max(1, tp[a])
      ass_pr[a] = np.sum(m * (m / np.maximum(1, pred_count))) / max(1, tp[a])
    loca = np.maximum(1e-10, loca) / np.maximum(1e-10, tp)
  det_a = tp / np.maximum(1, tp + fn + fp)
  return dict(hota=float(np.mean(np.sqrt(det_a * ass_a))), deta=float(np.mean(det_a)),
              assa=float(np.mean(ass_a)), loca=float(np.mean(loca)),
              detre=float(np.mean(tp / np.maximum(1, tp + fn))),
              detpr=float(np.mean(tp / np.maximum(1, tp + fp))),
              assre=float(np.mean(ass_re)), asspr=float(np.mean(ass_pr)))


def evaluate(gt: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> dict:
  """CLEAR-MOT, identity and HOTA metrics of one sequence, equal to TrackEval's.

  Args:
    gt, pred: arrays of shape (N, 6), rows (frame, id, x, y, w, h) with integer frame and id, box
      top-left corner and size; an empty array (any shape with size 0) is an empty sequence. A
      zero-size box is allowed (IoU 0 with everything); NaN/inf, negative sizes, a wrong shape or
      an id repeated within a frame raise ValueError naming the argument.
    iou_threshold: the IoU a CLEAR or identity match needs, in (0, 1]; HOTA sweeps its own.

  Returns:
    A dict of Python floats (fractions) and ints: mota, motp, moda, precision, recall, idf1, idp,
    idr, hota, deta, assa, loca, detre, detpr, assre, asspr; num_objects (gt boxes),
    num_predictions, num_unique_objects (gt ids), num_frames, num_matches, num_misses,
    num_false_positives, num_switches, num_fragmentations, mostly_tracked, partially_tracked,
    mostly_lost, idtp, idfp, idfn.
  """
  thr = float(iou_threshold)
  if not 0 < thr <= 1:
    raise ValueError(f'iou_threshold must be in (0, 1]; got {iou_threshold}')
  seq = _sequence(gt, pred)
  out = _clear(seq, thr)
  tp, fn, fp = out['num_matches'], out['num_misses'], out['num_false_positives']
  num_gt = max(1, tp + fn)
  if seq.num_gt_dets and seq.num_pred_dets:
    out['mota'] = (tp - fp - out['num_switches']) / num_gt
    out['moda'] = (tp - fp) / num_gt
    out['motp'] = out['motp_sum'] / max(1, tp)
  else:
    out['mota'] = out['moda'] = out['motp'] = 0.0
  out['recall'] = tp / num_gt
  out['precision'] = tp / max(1, tp + fp)
  del out['motp_sum']
  ids = _identity(seq, thr)
  ids['idr'] = ids['idtp'] / max(1, ids['idtp'] + ids['idfn'])
  ids['idp'] = ids['idtp'] / max(1, ids['idtp'] + ids['idfp'])
  ids['idf1'] = ids['idtp'] / max(1, ids['idtp'] + 0.5 * ids['idfp'] + 0.5 * ids['idfn'])
  out.update(ids)
  out.update(_hota(seq))
  out.update(num_objects=seq.num_gt_dets, num_predictions=seq.num_pred_dets,
             num_unique_objects=seq.num_gt_ids, num_frames=len(seq.gt_ids))
  return {k: (float(v) if isinstance(v, (float, np.floating)) else int(v)) for k, v in out.items()}
