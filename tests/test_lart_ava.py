"""Tests of lart_jax.ava: class lists, label maps, CSV I/O and the AVA v2.2 frame-level mAP.

Every AP below is worked out by hand in the comments (PASCAL VOC: precision made non-increasing,
summed over the recall steps), and a random case is checked against a second implementation in
this file written the other way round: plain-Python loops over a global score ranking and the
AP = (1 / #gt) * sum over true positives k of max_{j >= k} precision_j form.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from lart_jax import ava

A = (0.1, 0.1, 0.4, 0.9)  # Two people, far apart (IoU 0).
B = (0.5, 0.1, 0.9, 0.9)
A_SHIFTED = (0.12, 0.1, 0.42, 0.9)  # IoU(A, A_SHIFTED) = 0.28 / 0.32 = 0.875.


def write_files(tmp_path, gt, det, ids=(11, 12, 17, 79, 80), exclusions=None):
  """Writes gt / detection CSVs, a label map (and exclusions); returns evaluate's arguments."""
  paths = (tmp_path / 'gt.csv', tmp_path / 'det.csv', tmp_path / 'labels.pbtxt')
  ava.write_csv(paths[0], gt)
  ava.write_csv(paths[1], det)
  ava.write_labelmap(paths[2], ids)
  args = [str(p) for p in paths]
  if exclusions is not None:
    (tmp_path / 'excl.csv').write_text(''.join(f'{v},{t:04d}\n' for v, t in exclusions))
    args.append(str(tmp_path / 'excl.csv'))
  return args


def gt_row(ts, box, action, person, video='vidA'):
  return (video, ts, *box, action, person)


def det_row(ts, box, action, score, video='vidA'):
  return (video, ts, *box, action, float(score))


# ---------------------------------------------------------------------------------------------
# Class lists
# ---------------------------------------------------------------------------------------------

def test_class_lists():
  assert len(ava.EVALUATED_IDS) == 60 and list(ava.EVALUATED_IDS) == sorted(ava.EVALUATED_IDS)
  assert sorted(ava.NAMES) == list(range(1, 81))
  # The 20 classes AVA v2.2 does not evaluate (too few validation examples).
  assert sorted(set(range(1, 81)) - set(ava.EVALUATED_IDS)) == [
      2, 16, 18, 19, 21, 23, 25, 31, 32, 33, 35, 39, 40, 42, 44, 50, 53, 55, 71, 75]
  assert (ava.NAMES[1], ava.NAMES[15], ava.NAMES[64], ava.NAMES[80]) == (
      'bend/bow (at the waist)', 'answer phone', 'fight/hit (a person)', 'watch (a person)')
  counts = {cat: sum(ava.CATEGORY[i] == cat for i in ava.EVALUATED_IDS) for cat in ava.CATEGORIES}
  assert counts == {'PM': 13, 'OM': 32, 'PI': 15}
  assert (ava.CATEGORY[14], ava.CATEGORY[15], ava.CATEGORY[63], ava.CATEGORY[64]) == (
      'PM', 'OM', 'OM', 'PI')


def test_label_vector_mapping():
  x = np.arange(2 * 80).reshape(2, 80)  # Column i holds i (+80 on row 1): AVA id i + 1.
  sel = ava.ava80_to_evaluated(x)
  assert sel.shape == (2, 60)
  np.testing.assert_array_equal(sel[0] + 1, ava.EVALUATED_IDS)
  np.testing.assert_array_equal(ava.evaluated_to_ids(np.arange(60)), ava.EVALUATED_IDS)
  assert ava.evaluated_to_ids(14) == 17 and isinstance(ava.evaluated_to_ids(14), int)
  back = ava.evaluated_to_ava80(sel, fill=-1)
  np.testing.assert_array_equal(back[:, np.asarray(ava.EVALUATED_IDS) - 1], sel)
  assert (back[:, 1] == -1).all()  # id 2 (crawl) is not evaluated.
  with pytest.raises(ValueError, match='80 AVA classes'):
    ava.ava80_to_evaluated(np.zeros((3, 60)))
  with pytest.raises(ValueError, match=r'\[0, 60\)'):
    ava.evaluated_to_ids(60)


# ---------------------------------------------------------------------------------------------
# Label maps and CSV files
# ---------------------------------------------------------------------------------------------

def test_labelmap_round_trip(tmp_path):
  path = tmp_path / 'ava_action_list_v2.2_for_activitynet_2019.pbtxt'
  ava.write_labelmap(path)
  text = path.read_text()
  assert text.startswith('item {\n  name: "bend/bow (at the waist)"\n  id: 1\n}\n')
  labelmap, ids = ava.read_labelmap(path)
  assert ids == set(ava.EVALUATED_IDS)
  assert labelmap == [{'id': i, 'name': ava.NAMES[i]} for i in ava.EVALUATED_IDS]
  assert not list(tmp_path.glob('.*.tmp'))  # The atomic write left no temporary file behind.


def test_labelmap_other_layouts(tmp_path):
  # The v1.0 layout (label / label_id / label_type), one-line items, tabs and comments.
  path = tmp_path / 'odd.pbtxt'
  path.write_text('# comment\nlabel{\n\tname:"crawl"   label_id:2\n  label_type: PERSON_MOVEMENT\n}'
                  'item { name: "talk to (e.g., self, a person, a group)" id: 79 }  # trailing\n')
  labelmap, ids = ava.read_labelmap(path)
  assert labelmap == [{'id': 2, 'name': 'crawl'},
                      {'id': 79, 'name': 'talk to (e.g., self, a person, a group)'}]
  assert ids == {2, 79}
  path.write_text('item {\n  name: "dance"\n  id: 4\n}\nitem {\n  name: "no id"\n}\n')
  with pytest.raises(ValueError, match=r'odd\.pbtxt:5: item block has no id'):
    ava.read_labelmap(path)


def test_csv_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  rows = []
  for k in range(20):
    x1, y1 = rng.uniform(0, 0.5, size=2)
    rows.append(('-5KQ66BBWC4', 902 + k % 3, x1, y1, x1 + rng.uniform(0.1, 0.5),
                 y1 + rng.uniform(0.1, 0.5), int(rng.integers(1, 81)), float(rng.uniform())))
  path = tmp_path / 'det.csv'
  assert ava.write_csv(path, rows) == 20
  first = path.read_text().splitlines()[0].split(',')
  assert first[:2] == ['-5KQ66BBWC4', '0902']  # AVA's 4-digit timestamps.
  boxes, labels, scores = ava.read_csv(path)
  assert list(boxes) == [('-5KQ66BBWC4', 902), ('-5KQ66BBWC4', 903), ('-5KQ66BBWC4', 904)]
  for key in boxes:
    mine = sorted((r for r in rows if (r[0], r[1]) == key), key=lambda r: -r[7])
    np.testing.assert_array_equal(boxes[key], [r[2:6] for r in mine])  # Exact: full precision.
    np.testing.assert_array_equal(labels[key], [r[6] for r in mine])
    np.testing.assert_array_equal(scores[key], [r[7] for r in mine])
  # Ground truth: an integer person id stays an integer; a whitelist drops other classes.
  ava.write_csv(path, [gt_row(903.0, A, 12, 3), gt_row(903, B, 17, 4)])
  assert path.read_text() == ('vidA,0903,0.1,0.1,0.4,0.9,12,3\n'
                              'vidA,0903,0.5,0.1,0.9,0.9,17,4\n')
  boxes, labels, _ = ava.read_csv(path, class_whitelist={17})
  np.testing.assert_array_equal(labels[('vidA', 903)], [17])
  np.testing.assert_array_equal(boxes[('vidA', 903)], [B])
  with pytest.raises(ValueError, match='row 1: timestamp must be a non-negative whole number'):
    ava.write_csv(path, [det_row(902.5, A, 12, 0.5)])
  with pytest.raises(ValueError, match=r'row 2: box .* normalised to \[0, 1\]'):
    ava.write_csv(path, [det_row(902, A, 12, 0.5), det_row(902, (0.1, 0.1, 1.2, 0.5), 12, 0.5)])


def test_read_csv_capacity(tmp_path):
  # Per keyframe, only the `capacity` best scores over all classes survive, sorted best first.
  path = tmp_path / 'det.csv'
  ava.write_csv(path, [det_row(902, A, 12, s) for s in (0.1, 0.5, 0.3, 0.9, 0.7)]
                + [det_row(903, A, 17, 0.2)])
  _, labels, scores = ava.read_csv(path, capacity=3)
  np.testing.assert_array_equal(scores[('vidA', 902)], [0.9, 0.7, 0.5])
  np.testing.assert_array_equal(scores[('vidA', 903)], [0.2])
  _, _, scores = ava.read_csv(path, capacity=0)
  assert len(scores[('vidA', 902)]) == 5


def test_bad_rows_name_file_and_line(tmp_path):
  path = tmp_path / 'bad.csv'
  path.write_text('vidA,0902,0.1,0.1,0.4,0.9,12,0.5\n\nvidA,0903,0.1,0.1,0.4,12\n')
  with pytest.raises(ValueError, match=r'bad\.csv:3: expected 7 or 8 columns'):
    ava.read_csv(path)
  path.write_text('vidA,0902,0.1,x,0.4,0.9,12,0.5\n')
  with pytest.raises(ValueError, match=r'bad\.csv:1: box .* is not four numbers'):
    ava.read_csv(path)
  path.write_text('vidA,0902,0.1,0.1,0.4,0.9,12,0.5\nvidA,09:02,0.1,0.1,0.4,0.9,12,0.5\n')
  with pytest.raises(ValueError, match=r"bad\.csv:2: timestamp '09:02' is not a number"):
    ava.read_csv(path)
  path.write_text('vidA,0902,0.1,0.1,0.4,0.9,walk,0.5\n')
  with pytest.raises(ValueError, match=r"bad\.csv:1: action_id 'walk' is not an integer"):
    ava.read_csv(path)
  path.write_text('vidA,0902\nvidB\n')
  with pytest.raises(ValueError, match=r'bad\.csv:2: expected 2 columns'):
    ava.read_exclusions(path)


# ---------------------------------------------------------------------------------------------
# Hand-computed APs
# ---------------------------------------------------------------------------------------------

def test_box_iou_and_threshold():
  # gt (0.1, 0.1, 0.6, 0.6) has area 0.25; a box (0.1, 0.1, 0.6, 0.1 + h) inside it has IoU 2h.
  gt = (0.1, 0.1, 0.6, 0.6)
  iou = ava.box_iou([(0.1, 0.1, 0.6, 0.345), (0.1, 0.1, 0.6, 0.355)], [gt])[:, 0]
  np.testing.assert_allclose(iou, [0.49, 0.51], atol=1e-12)
  assert ava.box_iou([A], [B])[0, 0] == 0.0
  assert ava.box_iou([A], [A_SHIFTED])[0, 0] == pytest.approx(0.875)
  # Dyadic coordinates give an IoU of exactly 0.5, which matches (>= 0.5).
  assert ava.box_iou([(0.25, 0.25, 0.75, 0.5)], [(0.25, 0.25, 0.75, 0.75)])[0, 0] == 0.5


@pytest.mark.parametrize('y2, expected', [(0.345, 0.0), (0.355, 1.0), (0.5, 1.0)])
def test_iou_threshold_in_evaluate(tmp_path, y2, expected):
  # One gt, one detection of IoU 0.49 (a false positive: AP 0), 0.51 or exactly 0.5 (AP 1).
  gt_box = (0.1, 0.1, 0.6, 0.6) if y2 != 0.5 else (0.25, 0.25, 0.75, 0.75)
  det_box = (0.1, 0.1, 0.6, y2) if y2 != 0.5 else (0.25, 0.25, 0.75, 0.5)
  res = ava.evaluate(*write_files(tmp_path, [gt_row(902, gt_box, 12, 0)],
                                  [det_row(902, det_box, 12, 0.9)], ids=(12,)))
  assert res['per_class'] == {12: expected} and res['mAP'] == expected


PERFECT_GT = [gt_row(902, A, 12, 0), gt_row(902, A, 79, 0), gt_row(902, B, 17, 1),
              gt_row(903, B, 12, 1), gt_row(904, A, 79, 0), gt_row(904, B, 11, 1)]


def test_perfect_detector(tmp_path):
  dets = [det_row(r[1], r[2:6], r[6], 0.9 - 0.1 * i) for i, r in enumerate(PERFECT_GT)]
  res = ava.evaluate(*write_files(tmp_path, PERFECT_GT, dets))
  assert res['per_class'] == {11: 1.0, 12: 1.0, 17: 1.0, 79: 1.0, 80: res['per_class'][80]}
  assert math.isnan(res['per_class'][80])  # No ground truth: NaN, left out of the means.
  assert (res['mAP'], res['PM'], res['OM'], res['PI']) == (1.0, 1.0, 1.0, 1.0)
  assert (res['num_classes'], res['num_labelmap_classes']) == (4, 5)
  assert (res['num_groundtruth_boxes'], res['num_detection_boxes']) == (6, 6)


def test_hand_computed_map_and_category_means(tmp_path):
  # Ground truth as PERFECT_GT: class 12 on (902, A), (903, B); 79 on (902, A), (904, A);
  # 17 on (902, B); 11 on (904, B).
  dets = [
      # 12 (PM): a false positive ranked first (A at 903 holds no 12), then both gts:
      # FP, TP, TP -> precision 0, 1/2, 2/3 at recall 0, 1/2, 1 -> interpolated 2/3, 2/3:
      # AP = 1/2 * 2/3 + 1/2 * 2/3 = 2/3.
      det_row(903, A, 12, 0.95), det_row(902, A, 12, 0.90), det_row(903, B, 12, 0.85),
      # 11 (PM): the one gt found first: AP 1.
      det_row(904, B, 11, 0.80),
      # 17 (OM): two false positives, then the gt: precision 1/3 at recall 1: AP 1/3.
      det_row(902, A, 17, 0.75), det_row(903, B, 17, 0.70), det_row(902, B, 17, 0.65),
      # 79 (PI): a duplicate on one gt counts as a false positive:
      # TP (902 A), FP (902 A_SHIFTED, IoU 0.875 with the taken A), TP (904 A)
      # -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1: AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
      det_row(902, A, 79, 0.60), det_row(902, A_SHIFTED, 79, 0.55), det_row(904, A, 79, 0.50),
      # 80 (PI): detections but no ground truth: NaN, not in the PI mean.
      det_row(902, B, 80, 0.45),
  ]
  res = ava.evaluate(*write_files(tmp_path, PERFECT_GT, dets))
  ap = res['per_class']
  assert ap[12] == pytest.approx(2 / 3) and ap[11] == 1.0
  assert ap[17] == pytest.approx(1 / 3) and ap[79] == pytest.approx(5 / 6)
  assert math.isnan(ap[80])
  assert res['PM'] == pytest.approx((2 / 3 + 1) / 2)
  assert res['OM'] == pytest.approx(1 / 3)
  assert res['PI'] == pytest.approx(5 / 6)
  assert res['mAP'] == pytest.approx((2 / 3 + 1 + 1 / 3 + 5 / 6) / 4)  # = 17 / 24.
  assert res['num_classes'] == 4 and res['num_detection_boxes'] == len(dets)
  table = ava.format_table(res)
  assert ' 12  PM     66.67  stand' in table and ' 80  PI         -  watch (a person)' in table
  assert 'mAP    70.83  mean of 4 classes' in table


def test_voc_rule_best_overlap_only(tmp_path):
  # Two people with action 79, overlapping: G1 = (0.1, 0.1, 0.5, 0.9), G2 = (0.2, 0.1, 0.6, 0.9).
  # det1 = G1 takes G1. det2 = (0.12, ...) overlaps G1 by 0.38/0.42 = 0.905 and G2 by
  # 0.32/0.48 = 0.667: its best box G1 is taken, so it is a false positive although G2 is free
  # (the official per-image rule). TP, FP -> recall 1/2, precision 1: AP = 1/2.
  g1, g2 = (0.1, 0.1, 0.5, 0.9), (0.2, 0.1, 0.6, 0.9)
  gt = [gt_row(902, g1, 79, 0), gt_row(902, g2, 79, 1)]
  dets = [det_row(902, g1, 79, 0.9), det_row(902, (0.12, 0.1, 0.52, 0.9), 79, 0.8)]
  res = ava.evaluate(*write_files(tmp_path, gt, dets, ids=(79,)))
  assert res['per_class'][79] == pytest.approx(0.5)


def test_exclusions_and_labelmap_filter(tmp_path):
  dets = [det_row(r[1], r[2:6], r[6], 0.9 - 0.1 * i) for i, r in enumerate(PERFECT_GT)]
  # A missed gt at 905, a top-scoring false positive at 906, and a class (2, crawl) that is not
  # in the label map, with a gt and a false positive.
  gt = PERFECT_GT + [gt_row(905, A, 12, 0), gt_row(902, A, 2, 0)]
  dets = dets + [det_row(906, B, 12, 0.99), det_row(902, B, 2, 0.97)]
  res = ava.evaluate(*write_files(tmp_path, gt, dets))
  # Class 12: 3 gts; FP (0.99), TP (0.9), TP (0.6) -> precision 0, 1/2, 2/3 at recall 0, 1/3,
  # 2/3: AP = 1/3 * 2/3 + 1/3 * 2/3 = 4/9. Class 2 is ignored (not in the per-class results).
  assert res['per_class'][12] == pytest.approx(4 / 9) and 2 not in res['per_class']
  assert res['num_groundtruth_boxes'] == 7 and res['num_detection_boxes'] == 7
  assert res['mAP'] == pytest.approx((4 / 9 + 3) / 4)
  res = ava.evaluate(*write_files(tmp_path, gt, dets, exclusions=[('vidA', 905), ('vidA', 906)]))
  assert res['per_class'][12] == 1.0 and res['mAP'] == 1.0
  assert res['num_groundtruth_boxes'] == 6 and res['num_detection_boxes'] == 6


def test_detection_cap_per_keyframe(tmp_path):
  # 50 higher-scoring detections of class 80 fill keyframe 902, so the one of class 12 (score
  # 0.5) is dropped by the official cap of 50: class 12 has a gt and no detection, AP 0.
  gt = [gt_row(902, A, 12, 0)]
  dets = [det_row(902, B, 80, 0.6 + 0.001 * i) for i in range(50)] + [det_row(902, A, 12, 0.5)]
  res = ava.evaluate(*write_files(tmp_path, gt, dets, ids=(12, 80)))
  assert res['per_class'][12] == 0.0 and res['num_detection_boxes'] == 50
  res = ava.evaluate(*write_files(tmp_path, gt, dets[1:], ids=(12, 80)))
  assert res['per_class'][12] == 1.0


def test_no_groundtruth_is_an_error(tmp_path):
  with pytest.raises(ValueError, match=r'gt\.csv: no ground-truth box'):
    ava.evaluate(*write_files(tmp_path, [gt_row(902, A, 2, 0)], [det_row(902, A, 12, 0.5)],
                              ids=(12,)))


# ---------------------------------------------------------------------------------------------
# Random case against an independent implementation
# ---------------------------------------------------------------------------------------------

def _iou_py(a, b) -> float:
  iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _reference_aps(gt, det, classes) -> dict[int, float]:
  """Per class: one global ranking, each detection against its keyframe's gt boxes."""
  aps = {}
  for c in classes:
    gts = [((r[0], r[1]), r[2:6]) for r in gt if r[6] == c]
    if not gts:
      continue
    dets = sorted(((r[7], (r[0], r[1]), r[2:6]) for r in det if r[6] == c), reverse=True)
    used, hits = set(), []
    for _, key, box in dets:
      best, best_iou = None, -1.0
      for i, (gkey, gbox) in enumerate(gts):
        if gkey == key and _iou_py(box, gbox) > best_iou:
          best, best_iou = i, _iou_py(box, gbox)
      hit = best is not None and best_iou >= 0.5 and best not in used
      if hit:
        used.add(best)
      hits.append(hit)
    precisions = [sum(hits[:k + 1]) / (k + 1) for k in range(len(hits))]
    aps[c] = sum(max(precisions[k:]) for k in range(len(hits)) if hits[k]) / len(gts)
  return aps


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_matches_independent_implementation(tmp_path, seed):
  rnd = random.Random(seed)
  classes = (12, 17, 79, 80)
  gt, det = [], []
  for video in ('vidA', 'vidB'):
    for ts in range(902, 908):
      for person in range(rnd.randint(0, 3)):
        x1, y1 = rnd.uniform(0, 0.6), rnd.uniform(0, 0.5)
        # Widths >= 0.15 keep the +-0.06 jittered boxes valid (x1 < x2).
        box = (x1, y1, x1 + rnd.uniform(0.15, 0.4), y1 + rnd.uniform(0.2, 0.5))
        for c in rnd.sample(classes, rnd.randint(1, 2)):
          gt.append(gt_row(ts, box, c, person, video))
        for _ in range(rnd.randint(1, 2)):  # Jittered detections: IoUs from ~0.3 to 1.
          jit = tuple(min(1.0, max(0.0, v + rnd.uniform(-0.06, 0.06))) for v in box)
          for c in classes:
            det.append(det_row(ts, jit, c, rnd.random(), video))
      for _ in range(rnd.randint(0, 2)):  # Spurious boxes.
        x1, y1 = rnd.uniform(0, 0.6), rnd.uniform(0, 0.5)
        det.append(det_row(ts, (x1, y1, x1 + 0.3, y1 + 0.4), rnd.choice(classes), rnd.random(),
                           video))
  res = ava.evaluate(*write_files(tmp_path, gt, det, ids=classes))
  ref = _reference_aps(gt, det, classes)
  assert {c for c, ap in res['per_class'].items() if not math.isnan(ap)} == set(ref)
  for c, ap in ref.items():
    assert res['per_class'][c] == pytest.approx(ap, abs=1e-12), c
  assert 0.05 < res['mAP'] < 0.95  # Neither trivially perfect nor empty.
  assert res['mAP'] == pytest.approx(sum(ref.values()) / len(ref), abs=1e-12)
