"""The Detect-and-Track baseline (seed 004): box IoU between adjacent frames + Hungarian, no re-id.

Every tracker result in ``phalp_jax`` is shown against this. Per frame: detections with confidence
below ``conf_threshold`` are dropped; the cost between the tracks alive in the previous frame (their
last box) and this frame's detections is 1 - IoU; ``scipy.optimize.linear_sum_assignment`` pairs
them and a pair is kept when its IoU is at least ``iou_threshold``. Unmatched detections start new
tracks (ids 1, 2, ... in order of first appearance); a track that is not matched in a frame ends
for good, so a person missed for one frame, or a frame without detections, means new ids. The
result is deterministic.

Defaults: ``conf_threshold`` 0.5 (the detector's own score threshold in the released PHALP set-up;
the released tracker itself ignores detections under 0.8, pass that to compare like for like) and
``iou_threshold`` 0.3 (a pair overlapping less is not the same person one frame later).
"""

from __future__ import annotations

import numpy as np
import scipy.optimize

from phalp_jax.io import Detections
from phalp_jax.metrics import box_iou  # the one IoU (TrackEval's), re-exported here

DEFAULT_CONF_THRESHOLD = 0.5
DEFAULT_IOU_THRESHOLD = 0.3


def track_iou(dets: Detections, conf_threshold: float = DEFAULT_CONF_THRESHOLD,
              iou_threshold: float = DEFAULT_IOU_THRESHOLD) -> np.ndarray:
  """Tracks ``dets`` frame by frame; returns rows [K, 7] frame, id, x, y, w, h, conf (float64).

  Rows come in frame order, then in the order of the detections within the frame. Rows that the
  loaders would have dropped (non-finite or empty boxes) are skipped here too.
  """
  usable = (dets.conf >= conf_threshold) & np.isfinite(dets.bbox).all(axis=1) & (
      dets.bbox[:, 2] > 0) & (dets.bbox[:, 3] > 0)
  rows = []
  prev_ids = np.zeros(0, np.int64)
  prev_boxes = np.zeros((0, 4))
  next_id = 1
  for t, index in dets.frames():
    index = index[usable[index]]
    boxes = dets.bbox[index]
    ids = np.zeros(len(index), np.int64)
    matched = np.zeros(len(index), bool)
    if len(prev_ids) and len(index):
      iou = box_iou(prev_boxes, boxes)
      r, c = scipy.optimize.linear_sum_assignment(1.0 - iou)
      ok = iou[r, c] >= iou_threshold
      ids[c[ok]] = prev_ids[r[ok]]
      matched[c[ok]] = True
    for j in np.flatnonzero(~matched):
      ids[j] = next_id
      next_id += 1
    for j, i in enumerate(index):
      rows.append((t, ids[j], *dets.bbox[i], dets.conf[i]))
    prev_ids, prev_boxes = ids, boxes
  if not rows:
    return np.zeros((0, 7))
  return np.asarray(rows, np.float64)
