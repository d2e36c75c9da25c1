"""Tests of phalp_jax.metrics: hand-computed cases always; equality with TrackEval where installed.

TrackEval is not a dependency (its metadata pulls the GUI ``opencv-python``); install it for the
comparison with ``pip install --no-deps trackeval==1.3.0`` (its metric classes need only NumPy and
SciPy). Without it the comparison tests are skipped and the hand-computed cases still run.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from phalp_jax.metrics import HOTA_ALPHAS, box_iou, evaluate

BOX = (0.0, 0.0, 10.0, 10.0)  # area 100; (0, 0, w, 10) with w <= 10 has IoU w / 10 with it.
FAR = (500.0, 500.0, 10.0, 10.0)  # IoU 0 with BOX.


def rows(*entries: tuple) -> np.ndarray:
  """(frame, id, box) tuples -> (N, 6) array."""
  return np.array([(f, i, *b) for f, i, b in entries], dtype=float).reshape(-1, 6)


def assert_metrics(res: dict, **expected: float) -> None:
  for key, value in expected.items():
    assert res[key] == pytest.approx(value, abs=1e-12), key


# ----------------------------------------------------------------------------- hand-computed cases


def test_perfect_track():
  gt = rows(*[(t, 1, BOX) for t in range(1, 5)])
  pred = rows(*[(t, 42, BOX) for t in range(1, 5)])
  # Every gt box matched with IoU 1 by the same id: no errors at any threshold.
  assert_metrics(evaluate(gt, pred), mota=1, motp=1, idf1=1, idp=1, idr=1, hota=1, deta=1, assa=1,
                 loca=1, num_switches=0, num_false_positives=0, num_misses=0, num_objects=4,
                 mostly_tracked=1, num_fragmentations=0, num_frames=4)


def test_one_id_switch():
  gt = rows(*[(t, 1, BOX) for t in range(1, 5)])
  pred = rows((1, 7, BOX), (2, 7, BOX), (3, 8, BOX), (4, 8, BOX))
  res = evaluate(gt, pred)
  # CLEAR: TP 4, FP 0, FN 0, IDSW 1 (7 -> 8 at frame 3) -> MOTA (4 - 0 - 1) / 4 = 0.75.
  # Identity: gt 1 (4 boxes) gets pred 7 (or 8, 2 boxes each): IDTP 2, IDFN 2, IDFP 2 (the other
  #   id) -> IDF1 = 2 / (2 + 1 + 1) = 0.5, IDP = IDR = 2 / 4.
  # HOTA: DetA 1 at every alpha; pairs (1,7), (1,8): 2 matches, Ass-IoU 2 / (4 + 2 - 2) = 0.5;
  #   AssA = (2 * 0.5 + 2 * 0.5) / 4 = 0.5; HOTA = sqrt(1 * 0.5).
  assert_metrics(res, mota=0.75, motp=1, num_switches=1, idf1=0.5, idp=0.5, idr=0.5, idtp=2,
                 idfn=2, idfp=2, deta=1, assa=0.5, hota=math.sqrt(0.5), num_fragmentations=0)


def test_miss():
  gt = rows(*[(t, 1, BOX) for t in range(1, 5)])
  pred = rows((1, 5, BOX), (2, 5, BOX), (4, 5, BOX))  # nothing predicted in frame 3
  res = evaluate(gt, pred)
  # CLEAR: TP 3, FN 1 -> MOTA 3 / 4; tracked 3/4 <= 0.8 -> partially tracked. A frame without any
  #   prediction does not end a match run in TrackEval, so no fragmentation is counted.
  # Identity: IDTP 3, IDFN 1, IDFP 0 -> IDF1 = 3 / 3.5, IDP 1, IDR 3 / 4.
  # HOTA: DetA 3 / 4; pair (1,5): 3 matches, Ass-IoU 3 / (4 + 3 - 3); AssA 3/4; HOTA 3/4.
  assert_metrics(res, mota=0.75, motp=1, num_misses=1, num_false_positives=0, num_switches=0,
                 mostly_tracked=0, partially_tracked=1, num_fragmentations=0, idf1=3 / 3.5, idp=1,
                 idr=0.75, deta=0.75, assa=0.75, hota=0.75)


def test_false_positive_in_a_frame_without_gt():
  gt = rows((1, 1, BOX), (2, 1, BOX))
  pred = rows((1, 3, BOX), (2, 3, BOX), (3, 4, FAR))  # frame 3 exists only in pred
  res = evaluate(gt, pred)
  # CLEAR: TP 2, FP 1 -> MOTA (2 - 1) / 2. Identity: gt 1 <-> pred 3: IDTP 2, IDFN 0, IDFP 1 ->
  #   IDF1 = 2 / 2.5, IDP 2/3, IDR 1. HOTA: DetA 2 / 3, AssA 1 -> HOTA sqrt(2/3).
  assert_metrics(res, mota=0.5, moda=0.5, num_false_positives=1, num_misses=0, idf1=0.8,
                 idp=2 / 3, idr=1, deta=2 / 3, assa=1, hota=math.sqrt(2 / 3), num_frames=3,
                 num_predictions=3)


def test_fragmented_track_and_switch_after_a_gap():
  gt = rows(*[(t, 1, BOX) for t in range(1, 5)])
  pred = rows((1, 5, BOX), (2, 9, FAR), (3, 5, BOX), (4, 6, BOX))
  res = evaluate(gt, pred)
  # CLEAR: frame 2 misses gt 1 (and pred 9 is a FP); frame 3 returns to 5, the last id gt 1 had:
  #   no switch; frame 4 switches to 6: IDSW 1. TP 3, FN 1, FP 1 -> MOTA (3 - 1 - 1) / 4 = 0.25.
  #   Match runs frames 1 and 3-4 -> 1 fragmentation.
  # Identity: gt 1 <-> pred 5: IDTP 2, IDFN 2, IDFP 2 (pred 6 and 9) -> IDF1 0.5.
  # HOTA: TP 3, FN 1, FP 1 -> DetA 3/5; Ass-IoU (1,5) 2 / (4 + 2 - 2), (1,6) 1 / (4 + 1 - 1);
  #   AssA = (2 * 0.5 + 1 * 0.25) / 3 = 5/12; HOTA = sqrt(3/5 * 5/12) = 0.5.
  assert_metrics(res, mota=0.25, num_switches=1, num_fragmentations=1, num_misses=1,
                 num_false_positives=1, idf1=0.5, idtp=2, deta=0.6, assa=5 / 12, hota=0.5)


def test_clear_prefers_continuing_the_previous_match():
  gt = rows((1, 1, BOX), (2, 1, BOX))
  pred = rows((1, 1, BOX), (2, 1, (0, 0, 6, 10)), (2, 2, (0, 0, 9, 10)))
  res = evaluate(gt, pred)
  # Frame 2: pred 1 (IoU 0.6) continues gt 1's match and beats pred 2 (IoU 0.9): no ID switch.
  #   TP 2, FP 1 -> MOTA 0.5; MOTP = (1 + 0.6) / 2 = 0.8.
  assert_metrics(res, mota=0.5, motp=0.8, num_switches=0, num_false_positives=1)


@pytest.mark.parametrize('width, matched', [(4.99, False), (5.0, True), (5.01, True)])
def test_iou_at_the_threshold(width, matched):
  gt = rows((1, 1, BOX))
  pred = rows((1, 2, (0, 0, width, 10)))  # IoU = width / 10; 5.0 gives exactly 0.5
  assert box_iou(gt[:, 2:], pred[:, 2:])[0, 0] == pytest.approx(width / 10, abs=1e-15)
  res = evaluate(gt, pred)
  # Matched at IoU >= 0.5: all counts perfect. Unmatched: TP 0, FN 1, FP 1 -> MOTA -1, IDF1 0.
  # HOTA: the one pair matches for the alphas <= IoU (10 of 19 alphas 0.05..0.95 for IoU >= 0.5,
  # 9 for 0.499), with DetA = AssA = 1 there and 0 elsewhere -> HOTA = DetA = AssA = k / 19.
  k = int(np.sum(HOTA_ALPHAS <= width / 10 + 1e-12))
  assert k == (10 if matched else 9)
  assert_metrics(res, mota=1 if matched else -1, idf1=float(matched), num_switches=0,
                 hota=k / 19, deta=k / 19, assa=k / 19)
  if width == 5.0:  # LocA: IoU 0.5 where matched, 1 (TrackEval's value without matches) elsewhere.
    assert_metrics(res, motp=0.5, loca=(10 * 0.5 + 9 * 1) / 19)


def test_iou_threshold_argument():
  gt = rows((1, 1, BOX))
  pred = rows((1, 2, (0, 0, 6, 10)))  # IoU 0.6
  assert evaluate(gt, pred, iou_threshold=0.5)['mota'] == 1
  assert evaluate(gt, pred, iou_threshold=0.7)['mota'] == -1


def test_empty_sequences():
  empty = np.zeros((0, 6))
  gt = rows((1, 1, BOX), (2, 1, BOX), (2, 2, FAR))
  # No predictions: every gt box missed, all ids mostly lost; LocA defined as 1 (TrackEval).
  assert_metrics(evaluate(gt, empty), mota=0, motp=0, idf1=0, hota=0, deta=0, assa=0, loca=1,
                 num_misses=3, num_objects=3, mostly_lost=2, num_false_positives=0)
  # No ground truth: TrackEval's per-sequence MOTA is 0 (it returns before computing it).
  assert_metrics(evaluate(empty, gt), mota=0, idf1=0, hota=0, num_false_positives=3,
                 num_objects=0, num_predictions=3)
  assert_metrics(evaluate(empty, []), mota=0, idf1=0, hota=0, num_frames=0, num_objects=0)


def test_arbitrary_frames_and_ids():
  big = 2**40 + 1
  gt = np.array([[1000, big, *BOX], [5, big, *BOX], [-3, -7, *FAR]], dtype=np.int64)
  pred = np.array([[5, -1, *BOX], [-3, big, *FAR], [1000, -1, *BOX]], dtype=np.int64)
  assert_metrics(evaluate(gt, pred), mota=1, idf1=1, hota=1, num_frames=3)


def test_relabelling_changes_nothing():
  gt, pred = _random_sequence(np.random.default_rng(0))
  ref = evaluate(gt, pred)
  gt2, pred2 = gt.copy(), pred.copy()
  for a in (gt2, pred2):  # increasing maps keep every matrix (and tie-break) as it was
    a[:, 0] = a[:, 0] * 7 - 100
  gt2[:, 1] = gt2[:, 1] * 1000 - 5
  pred2[:, 1] = pred2[:, 1] + 10**9
  assert evaluate(gt2, pred2) == ref


@pytest.mark.parametrize('make, match', [
    (lambda g: g[:, :5], r'gt must have shape \(N, 6\)'),
    (lambda g: np.concatenate([g, g[:1]]), 'gt: id 1 appears more than once in frame 1'),
    (lambda g: np.where(np.arange(6) == 2, np.nan, g), 'gt: boxes'),
    (lambda g: np.where(np.arange(6) == 4, -1.0, g), 'gt: box width and height'),
    (lambda g: np.where(np.arange(6) == 0, 1.5, g), 'gt: frame and id'),
    (lambda g: g.astype(str), 'gt must be a numeric array'),
])
def test_malformed_input(make, match):
  gt = rows((1, 1, BOX), (2, 1, BOX))
  with pytest.raises(ValueError, match=match):
    evaluate(make(gt), gt)
  with pytest.raises(ValueError, match=match.replace('gt', 'pred')):
    evaluate(gt, make(gt))


@pytest.mark.parametrize('thr', [0.0, 1.5, float('nan')])
def test_bad_threshold(thr):
  with pytest.raises(ValueError, match='iou_threshold'):
    evaluate(rows((1, 1, BOX)), rows((1, 1, BOX)), iou_threshold=thr)


def test_zero_size_box_never_matches():
  res = evaluate(rows((1, 1, (0, 0, 0, 0))), rows((1, 1, (0, 0, 0, 0))))
  assert_metrics(res, mota=-1, num_misses=1, num_false_positives=1, hota=0)


# ------------------------------------------------------------------------- equality with TrackEval

# evaluate() key -> (TrackEval metric, field); HOTA array fields are averaged over the alphas as in
# TrackEval's summaries.
TRACKEVAL_FIELDS = {
    'mota': ('CLEAR', 'MOTA'), 'motp': ('CLEAR', 'MOTP'), 'moda': ('CLEAR', 'MODA'),
    'recall': ('CLEAR', 'CLR_Re'), 'precision': ('CLEAR', 'CLR_Pr'),
    'num_matches': ('CLEAR', 'CLR_TP'), 'num_misses': ('CLEAR', 'CLR_FN'),
    'num_false_positives': ('CLEAR', 'CLR_FP'), 'num_switches': ('CLEAR', 'IDSW'),
    'num_fragmentations': ('CLEAR', 'Frag'), 'mostly_tracked': ('CLEAR', 'MT'),
    'partially_tracked': ('CLEAR', 'PT'), 'mostly_lost': ('CLEAR', 'ML'),
    'idf1': ('Identity', 'IDF1'), 'idp': ('Identity', 'IDP'), 'idr': ('Identity', 'IDR'),
    'idtp': ('Identity', 'IDTP'), 'idfp': ('Identity', 'IDFP'), 'idfn': ('Identity', 'IDFN'),
    'hota': ('HOTA', 'HOTA'), 'deta': ('HOTA', 'DetA'), 'assa': ('HOTA', 'AssA'),
    'loca': ('HOTA', 'LocA'), 'detre': ('HOTA', 'DetRe'), 'detpr': ('HOTA', 'DetPr'),
    'assre': ('HOTA', 'AssRe'), 'asspr': ('HOTA', 'AssPr'),
}


def _random_sequence(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Random-walk gt tracks with gaps; predictions: noisy copies (IoU around the thresholds), misses,
  wrong/swapped ids, far or random false positives, sometimes integer boxes (exact ties)."""
  num_frames, num_tracks = int(rng.integers(1, 25)), int(rng.integers(0, 7))
  gt = []
  for track in range(num_tracks):
    x, y = rng.uniform(0, 100, 2)
    w, h = rng.uniform(10, 40, 2)
    start, end = sorted(rng.integers(0, num_frames, 2))
    for t in range(start, end + 1):
      x, y = x + rng.normal(0, 4), y + rng.normal(0, 4)
      if rng.random() < 0.85:
        gt.append([t, track * 3 + 7, x, y, w, h])
  gt = np.array(gt).reshape(-1, 6)
  id_map = rng.permutation(20)
  pred = []
  for f, i, x, y, w, h in gt:
    if rng.random() < 0.15:
      continue
    pid = id_map[int(i) % 20] if rng.random() > 0.1 else rng.integers(0, 20)
    pred.append([f, pid, x + rng.normal(0, 3), y + rng.normal(0, 3), w * rng.uniform(0.8, 1.2),
                 h * rng.uniform(0.8, 1.2)])
  for _ in range(rng.integers(0, 5)):
    pred.append([rng.integers(0, num_frames + 2), rng.integers(0, 20), *rng.uniform(0, 100, 2),
                 *rng.uniform(10, 40, 2)])
  pred = np.array(pred).reshape(-1, 6)
  _, first = np.unique(pred[:, :2], axis=0, return_index=True)  # one box per (frame, id)
  pred = pred[np.sort(first)]
  for a in (gt, pred):
    if rng.random() < 0.3:
      a[:, 2:] = np.round(a[:, 2:])
  return gt, pred


def _trackeval_data(gt: np.ndarray, pred: np.ndarray) -> dict:
  """The data dict TrackEval's MotChallenge2DBox builds (no preprocessing to do): every frame from
  the first to the last, ids relabelled 0.. in sorted order, IoUs by TrackEval's own function."""
  from trackeval.datasets._base_dataset import _BaseDataset
  frames = np.concatenate([gt[:, 0], pred[:, 0]]).astype(int)
  first, last = (frames.min(), frames.max()) if len(frames) else (0, -1)
  gt_ids, pred_ids = np.unique(gt[:, 1]).astype(int), np.unique(pred[:, 1]).astype(int)
  data = {'gt_ids': [], 'tracker_ids': [], 'similarity_scores': []}
  for f in range(first, last + 1):
    g, p = gt[gt[:, 0] == f], pred[pred[:, 0] == f]
    data['gt_ids'].append(np.searchsorted(gt_ids, g[:, 1].astype(int)))
    data['tracker_ids'].append(np.searchsorted(pred_ids, p[:, 1].astype(int)))
    data['similarity_scores'].append(
        _BaseDataset._calculate_box_ious(g[:, 2:6].copy(), p[:, 2:6].copy(), box_format='xywh'))
  data.update(num_timesteps=last - first + 1, num_gt_ids=len(gt_ids), num_tracker_ids=len(pred_ids),
              num_gt_dets=len(gt), num_tracker_dets=len(pred))
  return data


def _assert_equal_to_trackeval(res: dict, ref: dict) -> None:
  for key, (metric, field) in TRACKEVAL_FIELDS.items():
    assert res[key] == pytest.approx(float(np.mean(ref[metric][field])), abs=1e-12), key


def test_equals_trackeval_on_random_sequences():
  trackeval = pytest.importorskip('trackeval')
  switches = 0
  for seed in range(200):
    gt, pred = _random_sequence(np.random.default_rng(seed))
    thr = (0.5, 0.3, 0.5, 0.7)[seed % 4]
    config = {'THRESHOLD': thr, 'PRINT_CONFIG': False}
    data = _trackeval_data(gt, pred)
    ref = {'CLEAR': trackeval.metrics.CLEAR(config).eval_sequence(data),
           'Identity': trackeval.metrics.Identity(config).eval_sequence(data),
           'HOTA': trackeval.metrics.HOTA().eval_sequence(data)}
    _assert_equal_to_trackeval(evaluate(gt, pred, iou_threshold=thr), ref)
    switches += ref['CLEAR']['IDSW'] > 0
  assert switches > 50  # the sequences do exercise ID switches


def test_equals_trackeval_through_its_mot_challenge_files(tmp_path):
  """End to end: MOTChallenge files read by TrackEval's own MotChallenge2DBox and Evaluator."""
  trackeval = pytest.importorskip('trackeval')
  seqs = {}
  for seed in range(16):
    gt, pred = _random_sequence(np.random.default_rng(1000 + seed))
    if not len(gt) or not len(pred):
      continue
    offset = 1 - int(min(gt[:, 0].min(), pred[:, 0].min()))  # MOTChallenge frames start at 1
    gt[:, 0] += offset
    pred[:, 0] += offset
    name = f'MOT17-{seed:02d}'
    seqs[name] = gt, pred
    seq_dir = tmp_path / 'gt' / 'MOT17-train' / name
    os.makedirs(seq_dir / 'gt')
    length = int(max(gt[:, 0].max(), pred[:, 0].max()))
    (seq_dir / 'seqinfo.ini').write_text(f'[Sequence]\nname={name}\nseqLength={length}\n')
    ones = np.ones((len(gt), 3))  # confidence (not zero-marked), class pedestrian, visibility
    np.savetxt(seq_dir / 'gt' / 'gt.txt', np.c_[gt, ones], delimiter=',', fmt='%.17g')
    tracker_dir = tmp_path / 'trackers' / 'MOT17-train' / 'ours' / 'data'
    os.makedirs(tracker_dir, exist_ok=True)
    extra = np.c_[np.ones(len(pred)), -np.ones((len(pred), 3))]
    np.savetxt(tracker_dir / f'{name}.txt', np.c_[pred, extra], delimiter=',', fmt='%.17g')
  os.makedirs(tmp_path / 'gt' / 'seqmaps')
  (tmp_path / 'gt' / 'seqmaps' / 'MOT17-train.txt').write_text('name\n' + '\n'.join(seqs) + '\n')
  evaluator = trackeval.Evaluator({
      'USE_PARALLEL': False, 'PRINT_RESULTS': False, 'PRINT_CONFIG': False, 'TIME_PROGRESS': False,
      'OUTPUT_SUMMARY': False, 'OUTPUT_DETAILED': False, 'PLOT_CURVES': False})
  dataset = trackeval.datasets.MotChallenge2DBox({
      'GT_FOLDER': str(tmp_path / 'gt'), 'TRACKERS_FOLDER': str(tmp_path / 'trackers'),
      'BENCHMARK': 'MOT17', 'SPLIT_TO_EVAL': 'train', 'PRINT_CONFIG': False})
  metrics = [trackeval.metrics.CLEAR({'PRINT_CONFIG': False}),
             trackeval.metrics.Identity({'PRINT_CONFIG': False}), trackeval.metrics.HOTA()]
  results, _ = evaluator.evaluate([dataset], metrics)
  assert len(seqs) >= 8
  for name, (gt, pred) in seqs.items():
    _assert_equal_to_trackeval(evaluate(gt, pred),
                               results['MotChallenge2DBox']['ours'][name]['pedestrian'])
