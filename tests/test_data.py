"""Tests for the Toto token data layer: shard format, synthetic clips and the Grain pipeline."""

from __future__ import annotations

import json
import os

import grain
import ml_collections
import numpy as np
import pytest

from toto_jax import data, shards, synthetic

T, H, W, K = 4, 3, 3, 64


# ----------------------------------------------------------------------------- helpers


def const_clip(value: int, frames: int = T, h: int = H, w: int = W) -> np.ndarray:
  return np.full((frames, h, w), value, np.uint16)


def write_records(d, prefix: str, clips, kind: str = 'video', per_shard: int = 5) -> list[str]:
  with shards.ShardWriter(str(d), prefix, per_shard) as w:
    for c in clips:
      w.write(shards.encode_record(c, kind, prefix))
  return w.paths


def make_cfg(sources: dict, **overrides) -> ml_collections.ConfigDict:
  cfg = dict(frames=T, frame_h=H, frame_w=W, codebook_size=K, synthetic_clips=32,
             worker_count=0, read_threads=2, read_buffer_size=8, sources=sources)
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def video_source(pattern: str, weight: float = 1.0, kind: str = 'video') -> dict:
  return {'pattern': pattern, 'weight': weight, 'kind': kind}


def body_codes(tokens: np.ndarray) -> np.ndarray:
  """[B, L] tokens -> [B, T, H, W] codes (asserting nothing reserved inside)."""
  assert (tokens[:, 1:-1] >= data.NUM_RESERVED).all()
  return data.tokens_to_codes(tokens, T, H, W)


def take(it, n: int) -> list[np.ndarray]:
  return [next(it)['tokens'] for _ in range(n)]


def train(cfg, seed=0, process_index=0, process_count=1, batch_size=4):
  return data.build_train_dataset(cfg, seed=seed, process_index=process_index,
                                  process_count=process_count, batch_size=batch_size)


@pytest.fixture
def video_dir(tmp_path):
  """20 video records, record r has every code equal to r."""
  d = tmp_path / 'vid'
  write_records(d, 'vid', [const_clip(r) for r in range(20)])
  return d


# ----------------------------------------------------------------------------- records and shards


def test_record_roundtrip():
  rng = np.random.default_rng(0)
  codes = rng.integers(0, 65536, size=(3, 4, 5)).astype(np.uint16)
  codes[0, 0, 0] = 65535
  rec = shards.decode_record(shards.encode_record(codes, 'video', 'kinetics', label=7))
  assert rec['codes'].dtype == np.uint16 and rec['codes'].shape == (3, 4, 5)
  np.testing.assert_array_equal(rec['codes'], codes)
  assert (rec['kind'], rec['source'], rec['label']) == ('video', 'kinetics', 7)
  img = shards.decode_record(shards.encode_record(codes[:1].astype(np.int64), 'image', 'in1k'))
  assert img['kind'] == 'image' and img['label'] == -1 and img['codes'].shape == (1, 4, 5)


@pytest.mark.parametrize('kwargs, field', [
    (dict(codes=np.zeros((4, 4), np.uint16)), 'codes'),
    (dict(codes=np.full((1, 2, 2), -1)), 'codes'),
    (dict(codes=np.full((1, 2, 2), 70000)), 'codes'),
    (dict(codes=np.zeros((1, 2, 2), np.float32)), 'codes'),
    (dict(kind='audio'), 'kind'),
    (dict(kind='image', codes=np.zeros((2, 2, 2), np.uint16)), 'codes'),
    (dict(source=3), 'source'),
    (dict(source='x' * 5000), 'source'),
    (dict(label=-2), 'label'),
    (dict(label=1.5), 'label'),
])
def test_encode_validation(kwargs, field):
  args = dict(codes=np.zeros((1, 2, 2), np.uint16), kind='video', source='s', label=-1)
  args.update(kwargs)
  with pytest.raises(ValueError, match=f'^{field}'):
    shards.encode_record(**args)


def test_decode_corrupt_record():
  rec = shards.encode_record(const_clip(5), 'video', 's')
  for bad, msg in [(rec[:-1], 'truncated'), (rec + b'\0', 'truncated'), (b'\x00' * 64, 'header'),
                   (b'garbage', 'header'), (rec.replace(b'toto-codes', b'toto-cadez'), 'format'),
                   (b'{"format": "toto-codes"\n', 'header')]:
    with pytest.raises(ValueError, match=msg):
      shards.decode_record(bad)


def test_write_shard_is_atomic(tmp_path):
  path = str(tmp_path / 'x-00000.array_record')
  good = [shards.encode_record(const_clip(i), 'video', 's') for i in range(3)]

  def crashing():
    yield good[0]
    yield good[1]
    raise RuntimeError('worker died')

  with pytest.raises(RuntimeError, match='worker died'):
    shards.write_shard(path, crashing())
  assert os.listdir(tmp_path) == []  # neither the final file nor a temporary is left

  assert shards.write_shard(path, good) == 3
  with pytest.raises(RuntimeError):
    shards.write_shard(path, crashing())
  assert os.listdir(tmp_path) == ['x-00000.array_record']  # the old complete file is intact
  src = grain.sources.ArrayRecordDataSource([path])
  assert len(src) == 3 and [shards.decode_record(src[i])['codes'][0, 0, 0] for i in range(3)] == [
      0, 1, 2]


def test_shard_writer_rolls_and_discards_partial(tmp_path):
  paths = write_records(tmp_path, 'clips', [const_clip(i) for i in range(7)], per_shard=3)
  assert [os.path.basename(p) for p in paths] == [
      'clips-00000.array_record', 'clips-00001.array_record', 'clips-00002.array_record']
  assert [len(grain.sources.ArrayRecordDataSource([p])) for p in paths] == [3, 3, 1]
  (tmp_path / 'clips-00003.array_record.123-abc.tmp').write_bytes(b'partial')
  (tmp_path / 'other-00000.array_record').write_bytes(b'')
  assert shards.finished_shards(str(tmp_path), 'clips') == paths

  out = tmp_path / 'crash'
  with pytest.raises(KeyboardInterrupt):
    with shards.ShardWriter(str(out), 'c', 2) as w:
      for i in range(5):
        w.write(shards.encode_record(const_clip(i), 'video', 's'))
      raise KeyboardInterrupt
  assert sorted(os.listdir(out)) == ['c-00000.array_record', 'c-00001.array_record']
  assert shards.finished_shards(str(out), 'c') == w.paths

  resumed = shards.ShardWriter(str(out), 'c', 2, start_index=2)
  resumed.write(shards.encode_record(const_clip(9), 'video', 's'))
  assert resumed.close() == [str(out / 'c-00002.array_record')]
  assert len(shards.finished_shards(str(out), 'c')) == 3


# ----------------------------------------------------------------------------- synthetic clips


def test_synthetic_clips_deterministic_with_temporal_structure():
  src = synthetic.SyntheticTokenClips(64, frames=8, h=12, w=12, codebook_size=512, seed=3)
  again = synthetic.SyntheticTokenClips(64, frames=8, h=12, w=12, codebook_size=512, seed=3)
  other = synthetic.SyntheticTokenClips(64, frames=8, h=12, w=12, codebook_size=512, seed=4)
  clips = [src[i] for i in range(len(src))]
  for i in (0, 17, 63):
    np.testing.assert_array_equal(clips[i]['codes'], again[i]['codes'])
    assert not np.array_equal(clips[i]['codes'], other[i]['codes'])
  assert not np.array_equal(clips[0]['codes'], clips[1]['codes'])
  c = clips[0]
  assert c['codes'].dtype == np.uint16 and c['codes'].shape == (8, 12, 12)
  assert c['kind'] == 'video' and c['source'] == 'synthetic'
  assert {x['label'] for x in clips} == {0, 1, 2, 3}

  codes = np.stack([x['codes'] for x in clips]).astype(np.int64)
  # Copying the previous frame is right most of the time (chance would be ~1/512) ...
  copy_acc = (codes[:, 1:] == codes[:, :-1]).mean()
  assert copy_acc > 0.6
  # ... but not always: objects move in every clip.
  assert all((x[1:] != x[:-1]).any() for x in codes)
  # Backgrounds and objects use different halves, together a fair part of the codebook.
  assert (codes < 256).any() and (codes >= 256).any()
  assert len(np.unique(codes)) > 256

  # The main object moves in the labelled direction: the clip shifted by its velocity predicts
  # the object cells better than shifting the other way.
  shifts = {0: (0, 1), 1: (0, -1), 2: (1, 0), 3: (-1, 0)}
  good = 0
  for x, clip in zip(codes, clips):
    dy, dx = shifts[clip['label']]
    fg = x[1:] >= 256
    right = np.logical_or((np.roll(x[:-1], (dy, dx), (1, 2)) == x[1:])[fg],
                          (np.roll(x[:-1], (2 * dy, 2 * dx), (1, 2)) == x[1:])[fg]).mean()
    wrong = np.logical_or((np.roll(x[:-1], (-dy, -dx), (1, 2)) == x[1:])[fg],
                          (np.roll(x[:-1], (-2 * dy, -2 * dx), (1, 2)) == x[1:])[fg]).mean()
    good += right > wrong
  assert good > 0.8 * len(clips)


def test_write_synthetic_shards_roundtrip(tmp_path):
  paths = synthetic.write_synthetic_shards(str(tmp_path), num_clips=5, frames=3, h=4, w=5,
                                           codebook_size=32, seed=1, records_per_shard=2)
  assert len(paths) == 3 and shards.finished_shards(str(tmp_path), 'synthetic') == paths
  src = grain.sources.ArrayRecordDataSource(paths)
  ref = synthetic.SyntheticTokenClips(5, 3, 4, 5, 32, seed=1)
  for i in range(5):
    rec = shards.decode_record(src[i])
    np.testing.assert_array_equal(rec['codes'], ref[i]['codes'])
    assert (rec['kind'], rec['source'], rec['label']) == ('video', 'synthetic', ref[i]['label'])
    assert rec['codes'].max() < 32


# ----------------------------------------------------------------------------- sequences


def test_sequence_layout_video_image_and_windows(tmp_path):
  # Videos of T+3 frames where frame t of record r has code 10*r + t: a window is consecutive.
  long_clips = [np.stack([np.full((H, W), 10 * r + t) for t in range(T + 3)]) for r in range(5)]
  short = [const_clip(60, frames=T - 1)]  # shorter than T: skipped
  write_records(tmp_path / 'v', 'v', long_clips + short)
  write_records(tmp_path / 'i', 'i', [const_clip(r, frames=1) for r in range(8)], kind='image')
  assert data.sequence_length(make_cfg({})) == T * H * W + 2
  assert data.vocab_size(make_cfg({})) == K + 4

  cfg = make_cfg({'v': video_source(str(tmp_path / 'v/*.array_record'))})
  (tokens,) = take(iter(train(cfg, batch_size=16)), 1)
  assert tokens.dtype == np.int32 and tokens.shape == (16, T * H * W + 2)
  assert (tokens[:, 0] == data.VIDEO_START).all() and (tokens[:, -1] == data.END).all()
  codes = body_codes(tokens)
  assert (codes == codes[:, :, :1, :1]).all()  # frames are constant as written (code + 4 offset)
  per_frame = codes[:, :, 0, 0]
  assert (np.diff(per_frame, axis=1) == 1).all()  # T consecutive frames of one clip
  assert (per_frame[:, 0] % 10 <= 3).all() and (per_frame < 60).all()
  assert len(set(per_frame[:, 0] % 10)) > 1  # random window starts

  cfg = make_cfg({'i': video_source(str(tmp_path / 'i/*.array_record'), kind='image')})
  (tokens,) = take(iter(train(cfg, batch_size=6)), 1)
  assert (tokens[:, 0] == data.IMAGE_START).all() and (tokens[:, -1] == data.END).all()
  per_frame = body_codes(tokens)[:, :, 0, 0]
  assert all(len(set(row)) == T for row in per_frame)  # T different image records
  assert np.array_equal(data.codes_to_tokens(const_clip(2))[1:-1], np.full(T * H * W, 6))


# ----------------------------------------------------------------------------- determinism & resume


def mixed_cfg(tmp_path):
  write_records(tmp_path / 'v', 'v', [const_clip(r, frames=T + 2) for r in range(12)])
  write_records(tmp_path / 'i', 'i', [const_clip(r, frames=1) for r in range(10)], kind='image')
  return make_cfg({
      'vid': video_source(str(tmp_path / 'v/*.array_record'), 2.0),
      'img': video_source(str(tmp_path / 'i/*.array_record'), 1.0, kind='image'),
      'syn': video_source('synthetic', 1.0),
  }, synthetic_clips=16, eval_records=2)


def test_determinism(tmp_path):
  cfg = mixed_cfg(tmp_path)
  a = take(iter(train(cfg, seed=1)), 6)
  b = take(iter(train(cfg, seed=1)), 6)
  c = take(iter(train(cfg, seed=2)), 6)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert any(not np.array_equal(x, y) for x, y in zip(a, c))


def test_resume_from_state(tmp_path):
  cfg = mixed_cfg(tmp_path)
  it = iter(train(cfg, seed=5))
  take(it, 3)
  state = json.loads(json.dumps(it.get_state()))  # states are JSON (as in the Orbax handler)
  reference = take(it, 8)  # crosses several epochs of the small sources
  fresh = iter(train(cfg, seed=5))
  fresh.set_state(state)
  for x, y in zip(reference, take(fresh, 8)):
    np.testing.assert_array_equal(x, y)


def test_resume_through_orbax_checkpoint(tmp_path, video_dir):
  ocp = pytest.importorskip('orbax.checkpoint')
  cfg = make_cfg({'v': video_source(str(video_dir / '*.array_record'))})
  it = iter(train(cfg, seed=0))
  take(it, 2)
  with ocp.CheckpointManager(str(tmp_path / 'ckpt')) as mngr:
    mngr.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    reference = take(it, 3)  # keep training while an async save may still be in flight
    mngr.wait_until_finished()
  fresh = iter(train(cfg, seed=0))
  with ocp.CheckpointManager(str(tmp_path / 'ckpt')) as mngr:
    mngr.restore(mngr.latest_step(),
                 args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  for x, y in zip(reference, take(fresh, 3)):
    np.testing.assert_array_equal(x, y)


def test_worker_processes_match_in_process(video_dir):
  cfg = make_cfg({'v': video_source(str(video_dir / '*.array_record'))})
  ref = take(iter(train(cfg, seed=0)), 3)
  cfg.worker_count = 1
  it = iter(train(cfg, seed=0))
  try:
    got = take(it, 3)
  finally:
    it.close()
  for x, y in zip(ref, got):
    np.testing.assert_array_equal(x, y)


# ----------------------------------------------------------------------------- sharding & mixture


def seen_records(tokens_list) -> set[int]:
  return {int(v) for t in tokens_list for v in body_codes(t)[:, 0, 0, 0]}


def test_process_sharding_is_disjoint(video_dir):
  cfg = make_cfg({'v': video_source(str(video_dir / '*.array_record'))})
  p0 = seen_records(take(iter(train(cfg, process_index=0, process_count=2)), 10))
  p1 = seen_records(take(iter(train(cfg, process_index=1, process_count=2)), 10))
  assert p0 and p1 and not p0 & p1
  assert p0 | p1 == set(range(20))


def test_mixture_weights(tmp_path):
  # Grain's index shuffle is slow on tiny domains (ms per element below ~20 records): use 300.
  write_records(tmp_path / 'a', 'a', [const_clip(1)] * 300, per_shard=100)
  write_records(tmp_path / 'b', 'b', [const_clip(2)] * 300, per_shard=100)
  write_records(tmp_path / 'c', 'c', [const_clip(3, frames=1)] * 300, kind='image', per_shard=100)
  cfg = make_cfg({'a': video_source(str(tmp_path / 'a/*')),
                  'b': video_source(str(tmp_path / 'b/*'), 3.0),
                  'c': video_source(str(tmp_path / 'c/*'), 0.5, kind='image')})
  tokens = np.concatenate(take(iter(train(cfg, batch_size=20)), 18))
  tags = body_codes(tokens)[:, 0, 0, 0]
  frac = {v: float((tags == v).mean()) for v in (1, 2, 3)}
  for v, w in ((1, 1.0), (2, 3.0), (3, 0.5)):
    assert abs(frac[v] - w / 4.5) < 0.03, frac
  assert (tokens[tags == 3, 0] == data.IMAGE_START).all()
  assert (tokens[tags != 3, 0] == data.VIDEO_START).all()


# ----------------------------------------------------------------------------- eval split


def test_eval_is_deterministic_and_held_out(video_dir):
  cfg = make_cfg({'v': video_source(str(video_dir / '*.array_record'))}, eval_records=4)
  ev = data.build_eval_dataset(cfg, process_index=0, process_count=1, batch_size=3, num_batches=3)
  ev2 = data.build_eval_dataset(cfg, process_index=0, process_count=1, batch_size=3, num_batches=3)
  assert len(ev) == 3 and ev[0]['tokens'].shape == (3, T * H * W + 2)
  for x, y in zip(ev, ev2):
    np.testing.assert_array_equal(x['tokens'], y['tokens'])
  assert seen_records(b['tokens'] for b in ev) == {0, 1, 2, 3}
  assert not seen_records(take(iter(train(cfg)), 15)) & {0, 1, 2, 3}


def test_synthetic_eval_is_disjoint_from_train():
  cfg = make_cfg({'s': video_source('synthetic')}, synthetic_clips=8, frames=3, frame_h=6,
                 frame_w=6, codebook_size=128)
  ev = data.build_eval_dataset(cfg, process_index=0, process_count=1, batch_size=4, num_batches=2)
  tr = take(iter(train(cfg, batch_size=8)), 3)
  train_set = {t.tobytes() for b in tr for t in b}
  assert len(train_set) == 8  # every training clip seen
  assert not train_set & {t.tobytes() for b in ev for t in b['tokens']}


# ----------------------------------------------------------------------------- config errors


def test_config_errors(tmp_path, video_dir):
  vids = str(video_dir / '*.array_record')
  write_records(tmp_path / 'small', 'small', [const_clip(1, h=2, w=2)])
  write_records(tmp_path / 'img', 'img', [const_clip(1, frames=1)], kind='image')

  def err(cfg, match, **kw):
    with pytest.raises(ValueError, match=match):
      take(iter(train(cfg, **kw)), 5)  # most errors raise at build time, record checks on read

  err(make_cfg({'howto': video_source(str(tmp_path / 'x/*.array_record'))}),
      r"data\.sources\.howto\.pattern: no files match '.*x/\*\.array_record'")
  err(make_cfg({'x': video_source(vids, weight=0.0)}), r'data\.sources\.x\.weight must be > 0')
  err(make_cfg({'x': video_source(vids, weight=-1)}), r'data\.sources\.x\.weight must be > 0')
  err(make_cfg({'x': video_source(vids, kind='audio')}), r'data\.sources\.x\.kind')
  err(make_cfg({'x': video_source('synthetic', kind='image')}), r'data\.sources\.x\.kind')
  err(make_cfg({'x': {'weight': 1.0, 'kind': 'video'}}), r'data\.sources\.x\.pattern')
  err(make_cfg({}), r'data\.sources')
  err(make_cfg({'x': video_source(vids)}, frames=0), r'data\.frames')
  err(make_cfg({'x': video_source(vids)}, codebook_size=70000), r'data\.codebook_size')
  err(make_cfg({'x': video_source(vids)}, worker_count=-1), r'data\.worker_count')
  err(make_cfg({'x': video_source('synthetic')}, synthetic_clips=0), r'data\.synthetic_clips')
  err(make_cfg({'x': video_source(vids)}, eval_records=20), r'data\.eval_records')
  err(make_cfg({'x': video_source(vids)}, codebook_size=10), r'code 1\d >= data\.codebook_size')
  err(make_cfg({'tiny': video_source(str(tmp_path / 'small/*'))}),
      r"data\.sources\.tiny: record 0 of file '.*small-00000\.array_record' has frame size 2x2, "
      r'expected data\.frame_h x data\.frame_w = 3x3')
  err(make_cfg({'x': video_source(str(tmp_path / 'img/*'))}), r"kind 'image'.*data\.sources\.x")
  err(make_cfg({'x': video_source(vids)}), 'process_index', process_index=2, process_count=2)
  err(make_cfg({'x': video_source(str(tmp_path / 'img/*'), kind='image')}),
      r'data\.sources\.x: 1 records')
  with pytest.raises(ValueError, match='num_batches'):
    data.build_eval_dataset(make_cfg({'x': video_source(vids)}), process_index=0,
                            process_count=1, batch_size=2, num_batches=0)


def test_bad_record_later_in_source_names_its_file(tmp_path):
  d = tmp_path / 'v'
  write_records(d, 'v', [const_clip(1) for _ in range(3)], per_shard=3)
  shards.write_shard(str(d / 'v-00001.array_record'),
                     [shards.encode_record(const_clip(1, h=5, w=5), 'video', 'v')] * 3)
  it = iter(train(make_cfg({'v': video_source(str(d / '*'))}), batch_size=4))
  with pytest.raises(ValueError, match=r"record \d of file '.*v-00001\.array_record' has frame "
                                       r'size 5x5'):
    take(it, 3)
