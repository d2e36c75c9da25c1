"""AVA v2.2 action-detection evaluation: class lists, label maps, CSV I/O and frame-level mAP.

This is the protocol LART reports (DESIGN section 7; seed 000 chapter 3): the ActivityNet 2019
``get_ava_performance.py`` with the TF object-detection ``PascalDetectionEvaluator``, re-implemented
in NumPy so that it needs neither TensorFlow nor the object-detection API.

* Ids are AVA's 1-based action ids. ``EVALUATED_IDS`` are the 60 classes of the 2019 label map
  (``ava_action_list_v2.2_for_activitynet_2019.pbtxt``), ``NAMES`` all 80 of
  ``ava_action_list_v2.2.pbtxt``, ``CATEGORY`` the PM / OM / PI group of each.
* CSV rows are ``video_id, timestamp, x1, y1, x2, y2, action_id, score`` (detections) or
  ``..., action_id, person_id`` (ground truth), boxes normalised to [0, 1], one row per
  (box, action); timestamps are whole seconds written as 4 digits (``0902``).
* ``evaluate`` matches the official numbers, ties included: the same detection cap (50 per
  keyframe, by heap), the same per-keyframe matching (a detection takes the ground-truth box it
  overlaps most, the VOC rule) and the same ranking expression. ``tests/test_lart_ava.py`` checks
  hand-computed cases and an independent re-implementation on random data.
"""

from __future__ import annotations

import csv
import heapq
import io
import math
import os
import re
from collections.abc import Iterable, Mapping

import numpy as np

from phalp_jax.io import atomic_write

# ---------------------------------------------------------------------------------------------
# Class lists
# ---------------------------------------------------------------------------------------------

# The 60 ids of ``ava_action_list_v2.2_for_activitynet_2019.pbtxt`` (the evaluated classes): the
# 80 of ``ava_action_list_v2.2.pbtxt`` less the 20 with too few validation examples.
EVALUATED_IDS: tuple[int, ...] = (
    1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17, 20, 22, 24, 26, 27, 28, 29, 30, 34, 36,
    37, 38, 41, 43, 45, 46, 47, 48, 49, 51, 52, 54, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66,
    67, 68, 69, 70, 72, 73, 74, 76, 77, 78, 79, 80)

# All 80 names of ``ava_action_list_v2.2.pbtxt``, by 1-based id.
NAMES: dict[int, str] = dict(enumerate((
    'bend/bow (at the waist)', 'crawl', 'crouch/kneel', 'dance', 'fall down', 'get up',
    'jump/leap', 'lie/sleep', 'martial art', 'run/jog', 'sit', 'stand', 'swim', 'walk',
    'answer phone', 'brush teeth', 'carry/hold (an object)', 'catch (an object)', 'chop',
    'climb (e.g., a mountain)', 'clink glass', 'close (e.g., a door, a box)', 'cook', 'cut', 'dig',
    'dress/put on clothing', 'drink', 'drive (e.g., a car, a truck)', 'eat', 'enter', 'exit',
    'extract', 'fishing', 'hit (an object)', 'kick (an object)', 'lift/pick up',
    'listen (e.g., to music)', 'open (e.g., a window, a car door)', 'paint', 'play board game',
    'play musical instrument', 'play with pets', 'point to (an object)', 'press',
    'pull (an object)', 'push (an object)', 'put down', 'read',
    'ride (e.g., a bike, a car, a horse)', 'row boat', 'sail boat', 'shoot', 'shovel', 'smoke',
    'stir', 'take a photo', 'text on/look at a cellphone', 'throw', 'touch (an object)',
    'turn (e.g., a screwdriver)', 'watch (e.g., TV)', 'work on a computer', 'write',
    'fight/hit (a person)', 'give/serve (an object) to (a person)', 'grab (a person)',
    'hand clap', 'hand shake', 'hand wave', 'hug (a person)', 'kick (a person)',
    'kiss (a person)', 'lift (a person)', 'listen to (a person)', 'play with kids',
    'push (another person)', 'sing to (e.g., self, a person, a group)',
    'take (an object) from (a person)', 'talk to (e.g., self, a person, a group)',
    'watch (a person)'), start=1))

# AVA's label_type, abbreviated: person movement 1-14, object manipulation 15-63, person
# interaction 64-80.
CATEGORY: dict[int, str] = {i: 'PM' if i <= 14 else 'OM' if i <= 63 else 'PI' for i in range(1, 81)}

# Column i of an 80-vector is AVA id i + 1; these are the columns of the evaluated classes.
_EVALUATED_COLUMNS = np.asarray(EVALUATED_IDS, dtype=np.int64) - 1
CATEGORIES: tuple[str, ...] = ('OM', 'PI', 'PM')

# Detections kept per keyframe (top scores over all classes), as ``get_ava_performance.py`` does.
DETECTION_CAPACITY = 50
IOU_THRESHOLD = 0.5

ImageKey = tuple[str, int]  # (video_id, timestamp in seconds): AVA's keyframe identity.


# ---------------------------------------------------------------------------------------------
# Label vectors: 80 AVA columns <-> 60 evaluated columns
# ---------------------------------------------------------------------------------------------

def ava80_to_evaluated(labels80: np.ndarray) -> np.ndarray:
  """Selects the 60 evaluated columns (in ``EVALUATED_IDS`` order) of ``[..., 80]`` AVA vectors."""
  labels80 = np.asarray(labels80)
  if labels80.ndim == 0 or labels80.shape[-1] != 80:
    raise ValueError(f'ava80_to_evaluated: expected a last axis of 80 AVA classes, got shape '
                     f'{labels80.shape}')
  return labels80[..., _EVALUATED_COLUMNS]


def evaluated_to_ids(indices: int | np.ndarray) -> int | np.ndarray:
  """AVA action ids (1-based) of evaluated-class column indices (0..59): the inverse of the
  column selection in ``ava80_to_evaluated``."""
  idx = np.asarray(indices)
  if not np.issubdtype(idx.dtype, np.integer):
    raise ValueError(f'evaluated_to_ids: indices must be integers, got dtype {idx.dtype}')
  if idx.size and (idx.min() < 0 or idx.max() >= len(EVALUATED_IDS)):
    raise ValueError(f'evaluated_to_ids: indices must lie in [0, {len(EVALUATED_IDS)}), got '
                     f'range [{idx.min()}, {idx.max()}]')
  ids = np.asarray(EVALUATED_IDS, dtype=np.int64)[idx]
  return int(ids) if ids.ndim == 0 else ids


def evaluated_to_ava80(values60: np.ndarray, fill: float = 0.0) -> np.ndarray:
  """Scatters ``[..., 60]`` evaluated-class values back into ``[..., 80]`` AVA columns; the 20
  classes AVA does not evaluate get ``fill``."""
  values60 = np.asarray(values60)
  if values60.ndim == 0 or values60.shape[-1] != len(EVALUATED_IDS):
    raise ValueError(f'evaluated_to_ava80: expected a last axis of {len(EVALUATED_IDS)} '
                     f'evaluated classes, got shape {values60.shape}')
  out = np.full(values60.shape[:-1] + (80,), fill, dtype=np.result_type(values60, fill))
  out[..., _EVALUATED_COLUMNS] = values60
  return out


# ---------------------------------------------------------------------------------------------
# Label maps (pbtxt)
# ---------------------------------------------------------------------------------------------

# Tokens of the protobuf text format as label maps use it: quoted strings, braces, colons, bare
# words (field names, numbers, enum values); whitespace and '#' comments are skipped.
_PBTXT_TOKEN = re.compile(r'(?P<skip>\s+|#[^\n]*)|(?P<str>"(?:[^"\\\n]|\\.)*")|(?P<sym>[{}:])'
                          r'|(?P<word>[^\s{}:"#]+)')


def _pbtxt_tokens(text: str, path: str) -> list[tuple[str, str, int]]:
  """(kind, text, line) tokens of ``text``; an unreadable character is an error naming the line."""
  tokens, pos, line = [], 0, 1
  while pos < len(text):
    m = _PBTXT_TOKEN.match(text, pos)
    if m is None:
      raise ValueError(f'{path}:{line}: cannot parse label map near {text[pos:pos + 20]!r} '
                       '(unterminated string?)')
    if m.lastgroup != 'skip':
      tokens.append((m.lastgroup, m.group(), line))
    line += m.group().count('\n')
    pos = m.end()
  return tokens


def read_labelmap(path: str | os.PathLike) -> tuple[list[dict], set[int]]:
  """Parses an AVA label map: ``item { name: "..." id: N }`` (or ``label { ... label_id: N
  label_type: ... }``) blocks in any layout. Returns ``([{'id': N, 'name': ...}, ...] in file
  order, {ids})`` like the official ``read_labelmap``, but without its fixed-indentation parsing."""
  path = os.fspath(path)
  with open(path, encoding='utf-8') as f:
    tokens = _pbtxt_tokens(f.read(), path)
  labelmap: list[dict] = []
  i = 0

  def expect(kind: str, what: str) -> tuple[str, str, int]:
    nonlocal i
    if i >= len(tokens):
      raise ValueError(f'{path}: unexpected end of file, expected {what}')
    tok = tokens[i]
    if tok[0] != kind or (kind == 'sym' and tok[1] != what):
      raise ValueError(f'{path}:{tok[2]}: expected {what}, got {tok[1]!r}')
    i += 1
    return tok

  while i < len(tokens):
    _, block, line = expect('word', 'a block name such as item')
    expect('sym', '{')
    fields: dict[str, str] = {}
    while i < len(tokens) and tokens[i][1] != '}':
      _, key, key_line = expect('word', 'a field name')
      expect('sym', ':')
      if i >= len(tokens) or tokens[i][0] not in ('str', 'word'):
        raise ValueError(f'{path}:{key_line}: field {key!r} has no value')
      kind, value, _ = tokens[i]
      i += 1
      fields[key] = value[1:-1].replace('\\"', '"') if kind == 'str' else value
    expect('sym', '}')
    raw_id = fields.get('id', fields.get('label_id'))
    if raw_id is None:
      raise ValueError(f'{path}:{line}: {block} block has no id or label_id field')
    try:
      class_id = int(raw_id)
    except ValueError:
      raise ValueError(f'{path}:{line}: id {raw_id!r} is not an integer') from None
    if any(entry['id'] == class_id for entry in labelmap):
      raise ValueError(f'{path}:{line}: id {class_id} appears twice')
    labelmap.append({'id': class_id, 'name': fields.get('name', NAMES.get(class_id, ''))})
  return labelmap, {entry['id'] for entry in labelmap}


def write_labelmap(path: str | os.PathLike, ids: Iterable[int] = EVALUATED_IDS,
                   names: Mapping[int, str] = NAMES) -> None:
  """Writes ``ids`` as an AVA label map (``item { name id }``, the layout of the official files),
  atomically."""
  lines = []
  for class_id in ids:
    class_id = int(class_id)
    if class_id not in names:
      raise ValueError(f'write_labelmap({os.fspath(path)}): no name for id {class_id}')
    name = names[class_id].replace('"', '\\"')
    lines.append(f'item {{\n  name: "{name}"\n  id: {class_id}\n}}\n')
  data = ''.join(lines).encode('utf-8')
  atomic_write(os.fspath(path), lambda f: f.write(data))


# ---------------------------------------------------------------------------------------------
# CSV files: detections, ground truth, excluded timestamps
# ---------------------------------------------------------------------------------------------

def _format_timestamp(ts: int | float, where: str) -> str:
  """AVA's 4-digit zero-padded integer seconds, e.g. ``0902``."""
  if isinstance(ts, bool) or not isinstance(ts, (int, float, np.integer, np.floating)):
    raise ValueError(f'{where}: timestamp must be a number, got {ts!r}')
  if not math.isfinite(ts) or ts != int(ts) or ts < 0:
    raise ValueError(f'{where}: timestamp must be a non-negative whole number of seconds, '
                     f'got {ts!r}')
  return f'{int(ts):04d}'


def _parse_timestamp(text: str, where: str) -> int:
  """Whole seconds from ``0902``, ``902`` or ``902.0`` (the official reader uses ``int(...)``)."""
  try:
    value = float(text)
  except ValueError:
    raise ValueError(f'{where}: timestamp {text!r} is not a number') from None
  if not math.isfinite(value) or value != int(value):
    raise ValueError(f'{where}: timestamp {text!r} is not a whole number of seconds')
  return int(value)


def write_csv(path: str | os.PathLike, rows: Iterable[tuple]) -> int:
  """Writes AVA CSV rows ``(video_id, timestamp, x1, y1, x2, y2, action_id, score_or_person)``
  atomically; returns the row count. An integer last column (ground truth's person id) is
  written as an integer, a float (a detection score) at full precision; boxes must be
  normalised to [0, 1]."""
  path = os.fspath(path)
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator='\n')
  count = 0
  for count, row in enumerate(rows, start=1):
    where = f'write_csv({path}) row {count}'
    if len(row) != 8:
      raise ValueError(f'{where}: expected 8 fields (video_id, timestamp, x1, y1, x2, y2, '
                       f'action_id, score_or_person), got {len(row)}')
    video_id, ts, x1, y1, x2, y2, action_id, last = row
    video_id = str(video_id)
    if not video_id or ',' in video_id:
      raise ValueError(f'{where}: bad video_id {video_id!r}')
    box = [float(v) for v in (x1, y1, x2, y2)]
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in box):
      raise ValueError(f'{where}: box {box} must be normalised to [0, 1]')
    if isinstance(action_id, bool) or int(action_id) != action_id:
      raise ValueError(f'{where}: action_id {action_id!r} is not an integer')
    if isinstance(last, (int, np.integer)) and not isinstance(last, bool):
      last_text = str(int(last))
    else:
      last = float(last)
      if not math.isfinite(last):
        raise ValueError(f'{where}: score {last} is not finite')
      last_text = repr(last)
    writer.writerow([video_id, _format_timestamp(ts, where), *(repr(v) for v in box),
                     int(action_id), last_text])
  data = buf.getvalue().encode('utf-8')
  atomic_write(path, lambda f: f.write(data))
  return count


def read_csv(path: str | os.PathLike, class_whitelist: set[int] | None = None,
             capacity: int = 0, progress: bool | None = False
             ) -> tuple[dict[ImageKey, np.ndarray], dict[ImageKey, np.ndarray],
                        dict[ImageKey, np.ndarray]]:
  """Reads an AVA CSV (7 or 8 columns) as ``get_ava_performance.read_csv`` does.

  Rows whose action is not in ``class_whitelist`` (when given) are skipped. ``capacity > 0``
  keeps, per keyframe, only the ``capacity`` highest-scoring rows over all classes (the official
  script reads detections with 50, ground truth with 0 = no limit), with the same heap so that
  ties fall the same way. Returns three dicts keyed by ``(video_id, timestamp)`` in order of first
  appearance: boxes ``(n, 4)`` as ``x1, y1, x2, y2``, integer action ids ``(n,)`` and the last
  column ``(n,)`` as float (the score; for ground truth the person id; 1.0 on 7-column rows), rows
  sorted by that column, highest first. A malformed row raises ``ValueError`` naming
  ``path:line``.
  """
  from tqdm.auto import tqdm
  path = os.fspath(path)
  entries: dict[ImageKey, list] = {}
  with open(path, newline='', encoding='utf-8') as f:
    reader = csv.reader(f)
    for row in tqdm(reader, desc=f'read {os.path.basename(path)}', unit=' rows',
                    disable=None if progress is None else not progress, leave=False):
      if not row or not any(field.strip() for field in row):
        continue
      where = f'{path}:{reader.line_num}'
      if len(row) not in (7, 8):
        raise ValueError(f'{where}: expected 7 or 8 columns (video_id, timestamp, x1, y1, x2, '
                         f'y2, action_id[, score or person_id]), got {len(row)}: {row}')
      key = (row[0].strip(), _parse_timestamp(row[1], where))
      try:
        x1, y1, x2, y2 = (float(v) for v in row[2:6])
      except ValueError:
        raise ValueError(f'{where}: box {row[2:6]} is not four numbers') from None
      try:
        action_id = int(row[6])
      except ValueError:
        raise ValueError(f'{where}: action_id {row[6]!r} is not an integer') from None
      score = 1.0
      if len(row) == 8:
        try:
          score = float(row[7])
        except ValueError:
          raise ValueError(f'{where}: score/person_id {row[7]!r} is not a number') from None
      if not all(math.isfinite(v) for v in (x1, y1, x2, y2, score)):
        raise ValueError(f'{where}: non-finite value in {row}')
      if class_whitelist is not None and action_id not in class_whitelist:
        continue
      # The official heap of (score, action_id, y1, x1, y2, x2): its min is what a better-scoring
      # row replaces once the keyframe is at capacity.
      item = (score, action_id, y1, x1, y2, x2)
      heap = entries.setdefault(key, [])
      if capacity < 1 or len(heap) < capacity:
        heapq.heappush(heap, item)
      elif score > heap[0][0]:
        heapq.heapreplace(heap, item)
  boxes, labels, scores = {}, {}, {}
  for key, heap in entries.items():
    ordered = sorted(heap, key=lambda t: -t[0])  # Stable, as the official sort.
    arr = np.asarray(ordered, dtype=np.float64).reshape(-1, 6)
    boxes[key] = arr[:, [3, 2, 5, 4]]
    labels[key] = arr[:, 1].astype(np.int64)
    scores[key] = arr[:, 0]
  return boxes, labels, scores


def read_exclusions(path: str | os.PathLike) -> set[ImageKey]:
  """The ``(video_id, timestamp)`` keyframes listed in an AVA excluded-timestamps CSV."""
  path = os.fspath(path)
  excluded = set()
  with open(path, newline='', encoding='utf-8') as f:
    reader = csv.reader(f)
    for row in reader:
      if not row or not any(field.strip() for field in row):
        continue
      where = f'{path}:{reader.line_num}'
      if len(row) != 2:
        raise ValueError(f'{where}: expected 2 columns (video_id, timestamp), got {len(row)}: '
                         f'{row}')
      excluded.add((row[0].strip(), _parse_timestamp(row[1], where)))
  return excluded


# ---------------------------------------------------------------------------------------------
# Frame-level detection mAP (PASCAL VOC AP at IoU 0.5, per class)
# ---------------------------------------------------------------------------------------------

def box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
  """IoU matrix of ``(x1, y1, x2, y2)`` boxes as the TF object-detection ``np_box_ops.iou`` that
  the official evaluation uses: continuous coordinates (no +1), no epsilon.

  Not ``phalp_jax.metrics.box_iou``: that one is TrackEval's ``(x, y, w, h)`` variant with epsilon
  clamps, and the conversion to it would move an IoU of exactly 0.5 by a rounding error.
  """
  b1 = np.asarray(boxes1, dtype=np.float64).reshape(-1, 4)
  b2 = np.asarray(boxes2, dtype=np.float64).reshape(-1, 4)
  heights = np.maximum(0.0, np.minimum(b1[:, None, 3], b2[None, :, 3])
                       - np.maximum(b1[:, None, 1], b2[None, :, 1]))
  widths = np.maximum(0.0, np.minimum(b1[:, None, 2], b2[None, :, 2])
                      - np.maximum(b1[:, None, 0], b2[None, :, 0]))
  inter = heights * widths
  area1 = (b1[:, 3] - b1[:, 1]) * (b1[:, 2] - b1[:, 0])
  area2 = (b2[:, 3] - b2[:, 1]) * (b2[:, 2] - b2[:, 0])
  union = area1[:, None] + area2[None, :] - inter
  with np.errstate(divide='ignore', invalid='ignore'):
    return inter / union


def average_precision(scores: np.ndarray, is_tp: np.ndarray, num_gt: int) -> float:
  """PASCAL VOC AP of one class: detections ranked by score (as the TF API: ``argsort``
  reversed), precision made non-increasing, summed over the recall steps. NaN when the class has
  no ground truth; 0 when it has ground truth but no detections."""
  scores = np.asarray(scores, dtype=np.float64).ravel()
  is_tp = np.asarray(is_tp, dtype=bool).ravel()
  if scores.shape != is_tp.shape:
    raise ValueError(f'average_precision: {scores.size} scores but {is_tp.size} tp/fp labels')
  if num_gt <= 0:
    return float('nan')
  if is_tp.sum() > num_gt:
    raise ValueError(f'average_precision: {is_tp.sum()} true positives > {num_gt} ground truth')
  if scores.size == 0:
    return 0.0
  tp = is_tp[np.argsort(scores)[::-1]].astype(np.int64)
  cum_tp = np.cumsum(tp)
  cum_fp = np.cumsum(1 - tp)
  precision = np.concatenate([[0.0], cum_tp / (cum_tp + cum_fp), [0.0]])
  recall = np.concatenate([[0.0], cum_tp / num_gt, [1.0]])
  precision = np.maximum.accumulate(precision[::-1])[::-1]
  steps = np.nonzero(recall[1:] != recall[:-1])[0] + 1
  return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def _match_keyframe(det_boxes: np.ndarray, det_labels: np.ndarray, gt_boxes: np.ndarray,
                    gt_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """TF ``PerImageEvaluation`` on one keyframe. Returns ``(keep, is_tp)`` over the detections:
  boxes with ``x2 <= x1`` or ``y2 <= y1`` are dropped (``keep`` False); per class, in the given
  (score-descending) order, a detection is a true positive when the ground-truth box it overlaps
  most has IoU >= 0.5 and was not taken by an earlier detection (else a false positive, even if
  another unmatched box of the class overlaps it by 0.5: the VOC rule)."""
  keep = (det_boxes[:, 0] < det_boxes[:, 2]) & (det_boxes[:, 1] < det_boxes[:, 3])
  is_tp = np.zeros(len(det_boxes), dtype=bool)
  for c in np.unique(det_labels[keep]):
    dets = np.nonzero(keep & (det_labels == c))[0]
    gts = np.nonzero(gt_labels == c)[0]
    if gts.size == 0:
      continue
    iou = box_iou(det_boxes[dets], gt_boxes[gts])
    best = np.argmax(iou, axis=1)
    taken = np.zeros(gts.size, dtype=bool)
    for k, j in enumerate(best):
      if iou[k, j] >= IOU_THRESHOLD and not taken[j]:
        is_tp[dets[k]] = True
        taken[j] = True
  return keep, is_tp


def _nanmean(values: Iterable[float]) -> float:
  """Mean of the non-NaN values (NaN when there are none)."""
  vals = [v for v in values if not math.isnan(v)]
  return float(np.mean(vals)) if vals else float('nan')


def evaluate(groundtruth_csv: str | os.PathLike, detections_csv: str | os.PathLike,
             labelmap_pbtxt: str | os.PathLike,
             exclusions_csv: str | os.PathLike | None = None) -> dict:
  """AVA v2.2 frame-level action-detection mAP, as ActivityNet's ``get_ava_performance.py``.

  Keyframes are ``(video_id, timestamp)``; excluded keyframes are dropped from ground truth and
  detections; only label-map classes count; detections are capped at the 50 best per keyframe;
  per class, AP at IoU 0.5 (see ``_match_keyframe`` and ``average_precision``). Classes without
  ground truth have AP NaN and are left out of every mean, as in the official ``nanmean``.

  Returns ``{'mAP', 'per_class': {id: AP}, 'OM', 'PI', 'PM', 'num_classes' (classes in the mean),
  'num_labelmap_classes', 'num_groundtruth_boxes', 'num_detection_boxes' (rows evaluated after
  exclusions, the class filter, the cap and invalid-box removal)}``; APs are fractions in [0, 1].
  A category mean is NaN only if none of its classes has ground truth.
  """
  from tqdm.auto import tqdm
  _, class_ids = read_labelmap(labelmap_pbtxt)
  if not class_ids:
    raise ValueError(f'{os.fspath(labelmap_pbtxt)}: label map has no classes')
  excluded = read_exclusions(exclusions_csv) if exclusions_csv is not None else set()
  gt_boxes, gt_labels, _ = read_csv(groundtruth_csv, class_ids, 0, progress=None)
  det_boxes, det_labels, det_scores = read_csv(detections_csv, class_ids, DETECTION_CAPACITY,
                                               progress=None)

  num_gt = dict.fromkeys(class_ids, 0)
  num_gt_boxes = 0
  for key, labels in gt_labels.items():
    if key in excluded:
      continue
    num_gt_boxes += labels.size
    for c in labels.tolist():
      num_gt[c] += 1

  # Evaluated detections of all keyframes in reading order; a stable sort by class then gives
  # each class's detections in the order the official per-class concatenation has them.
  all_labels, all_scores, all_tp = [], [], []
  empty_boxes, empty_labels = np.zeros((0, 4)), np.zeros(0, np.int64)
  for key in tqdm(det_boxes, desc='AVA keyframes', unit=' frames', disable=None, leave=False):
    if key in excluded:
      continue
    keep, is_tp = _match_keyframe(det_boxes[key], det_labels[key], gt_boxes.get(key, empty_boxes),
                                  gt_labels.get(key, empty_labels))
    all_labels.append(det_labels[key][keep])
    all_scores.append(det_scores[key][keep])
    all_tp.append(is_tp[keep])
  labels = np.concatenate(all_labels) if all_labels else np.zeros(0, np.int64)
  scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
  is_tp = np.concatenate(all_tp) if all_tp else np.zeros(0, bool)
  order = np.argsort(labels, kind='stable')
  labels, scores, is_tp = labels[order], scores[order], is_tp[order]
  per_class = {}
  for c in sorted(class_ids):
    lo, hi = np.searchsorted(labels, c, side='left'), np.searchsorted(labels, c, side='right')
    per_class[c] = average_precision(scores[lo:hi], is_tp[lo:hi], num_gt[c])
  num_det_boxes = int(labels.size)
  num_classes = sum(not math.isnan(ap) for ap in per_class.values())
  if num_classes == 0:
    raise ValueError(f'{os.fspath(groundtruth_csv)}: no ground-truth box of a label-map class '
                     'outside the excluded timestamps; nothing to evaluate')
  result = {'mAP': _nanmean(per_class.values()), 'per_class': per_class}
  for cat in CATEGORIES:
    result[cat] = _nanmean(ap for c, ap in per_class.items() if CATEGORY.get(c) == cat)
  result.update(num_classes=num_classes, num_labelmap_classes=len(class_ids),
                num_groundtruth_boxes=num_gt_boxes, num_detection_boxes=num_det_boxes)
  return result


def format_table(result: Mapping, names: Mapping[int, str] = NAMES) -> str:
  """A plain-text table of an ``evaluate`` result: per-class AP (in %) sorted by id, then the
  category means and the mAP. Classes without ground truth show ``-``."""
  def pct(v: float) -> str:
    return '      -' if math.isnan(v) else f'{100.0 * v:7.2f}'

  lines = [f'{"id":>3}  {"cat":3}  {"AP (%)":>7}  name']
  for c in sorted(result['per_class']):
    lines.append(f'{c:>3}  {CATEGORY.get(c, "?"):3}  {pct(result["per_class"][c])}  '
                 f'{names.get(c, "")}')
  lines.append('')
  for cat, title in (('PM', 'person movement'), ('OM', 'object manipulation'),
                     ('PI', 'person interaction')):
    n = sum(CATEGORY.get(c) == cat and not math.isnan(ap) for c, ap in result['per_class'].items())
    lines.append(f'{cat}   {pct(result[cat])}  mean of {n} {title} classes')
  lines.append(f'mAP  {pct(result["mAP"])}  mean of {result["num_classes"]} classes '
               f'({result["num_groundtruth_boxes"]} ground-truth boxes, '
               f'{result["num_detection_boxes"]} detections)')
  return '\n'.join(lines)
