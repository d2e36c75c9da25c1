"""The VQ tokenizer through the trainer, checkpoint loading, and the tokenization job."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import tokenizer as tokenizer_configs
from launch import checkpoint as ckpt_lib
from launch import tokenize as tokenize_lib
from launch import train as train_lib
from tokenizers_jax import api, synthetic_video, vq
from tokenizers_jax import video as video_io
from toto_jax import data as token_data
from toto_jax import shards

from conftest import REPO_ROOT

RES = 16


def small_vq_config(train_dir: str, eval_dir: str = ''):
  c = tokenizer_configs.get_config('vq_tiny')
  c.model.channels = [8, 16]
  c.model.groups = 4
  c.model.embed_dim = 4
  c.model.codebook_size = 16
  c.model.mid_blocks = 1
  c.data.input, c.data.eval_input = train_dir, eval_dir
  c.data.resolution = RES
  c.data.frames_per_example = 2
  c.data.frame_stride = 2
  c.train.global_batch_size = 4
  c.train.microbatch_size = 2
  c.train.total_steps = 4
  c.train.warmup_steps = 1
  c.checkpoint.every_steps = 2
  c.checkpoint.async_save = False
  c.log.every_steps = 1
  c.log.tensorboard = False
  c.log.progress_bar = False
  c.eval.every_steps = 4
  c.eval.batches = 1
  c.tokenize.frames = 3
  c.tokenize.stride = 2
  c.tokenize.records_per_shard = 2
  c.tokenize.batch_frames = 8
  return c


@pytest.fixture(scope='module')
def videos(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('videos'))
  synthetic_video.write_synthetic_videos(root, 5, frames=8, height=20, width=24, fps=8, seed=0,
                                         split_name='train', progress=False)
  synthetic_video.write_synthetic_videos(root, 2, frames=8, height=20, width=24, fps=8, seed=1,
                                         split_name='val', progress=False)
  return os.path.join(root, 'train'), os.path.join(root, 'val')


@pytest.fixture(scope='module')
def vq_run(videos, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('vq_run'))
  config = small_vq_config(*videos)
  # Two devices: the EMA codebook statistics must come out the same whatever the data split.
  summary = train_lib.train(config, workdir, devices=jax.devices()[:2])
  return config, workdir, summary


@pytest.fixture
def random_tokenizer(monkeypatch):
  """A random-weight VQ tokenizer in place of loading one (the job's own path is unchanged)."""
  cfg = vq.VQConfig(channels=(8, 16), res_blocks=0, mid_blocks=1, embed_dim=4, codebook_size=16,
                    groups=4)
  params = vq.VQVAE(cfg).init(jax.random.key(0), np.zeros((1, RES, RES, 3), np.float32))['params']
  state = vq.init_codebook_state(jax.random.key(1), 16, 4)
  tok = api.from_vq(cfg, params, state, resolution=RES, name='random-vq')
  monkeypatch.setattr(tokenize_lib, 'load_tokenizer', lambda config: tok)
  return tok


# ------------------------------------------------------------------------------------------------
# Training and loading
# ------------------------------------------------------------------------------------------------

def test_vq_training_updates_the_codebook_and_logs_quality(vq_run):
  config, workdir, summary = vq_run
  m = summary['metrics']
  for key in ('train/loss', 'train/psnr', 'train/perplexity', 'train/codes_used_in_batch',
              'eval/psnr', 'eval/mse'):
    assert key in m and np.isfinite(m[key]), key
  start = vq.init_codebook_state(jax.random.fold_in(
      jax.random.split(jax.random.key(config.seed))[0], 1), 16, 4)
  final = jax.device_get(summary['final_model_state'])
  assert not np.allclose(final['codebook'], np.asarray(start['codebook']))
  assert final['cluster_size'].sum() > 0


def test_checkpoint_load_returns_params_and_codebook_without_optimizer(vq_run):
  config, workdir, summary = vq_run
  run = ckpt_lib.load(workdir)
  assert run['step'] == config.train.total_steps
  assert 'opt_state' not in run
  assert run['config'].data.resolution == RES
  flat = jax.tree_util.tree_leaves_with_path(run['params'])
  final = jax.device_get(summary['final_params'])
  for path, leaf in flat:
    assert isinstance(leaf, np.ndarray)
    ref = final
    for k in path:
      ref = ref[k.key]
    np.testing.assert_array_equal(leaf, ref)
  np.testing.assert_array_equal(run['model_state']['codebook'],
                                np.asarray(summary['final_model_state']['codebook']))
  assert ckpt_lib.load(workdir, step=2)['step'] == 2
  with pytest.raises(FileNotFoundError, match='no checkpoint at step 3'):
    ckpt_lib.load(workdir, step=3)
  with pytest.raises(FileNotFoundError, match='does not exist'):
    ckpt_lib.load(os.path.join(workdir, 'nope'))


def test_load_tokenizer_from_a_training_workdir(vq_run, videos):
  config, workdir, _ = vq_run
  config = small_vq_config(*videos)
  config.tokenizer.weights = workdir
  tok = tokenize_lib.load_tokenizer(config)
  assert (tok.codebook_size, tok.grid, tok.resolution) == (16, 4, RES)
  frames = video_io.read_clip(video_io.list_videos(videos[0])[0], frames=3, stride=2,
                              resolution=RES)
  codes = tok.encode(frames)
  assert codes.shape == (3, 4, 4) and codes.min() >= 0 and codes.max() < 16
  assert tok.decode(codes).shape == frames.shape


def test_load_tokenizer_errors_name_the_field(tmp_path):
  config = tokenizer_configs.get_config('dvae')
  with pytest.raises(ValueError, match='tokenizer.weights is empty'):
    tokenize_lib.load_tokenizer(config)
  config.tokenizer.weights = str(tmp_path / 'missing.npz')
  with pytest.raises(FileNotFoundError, match='missing.npz'):
    tokenize_lib.load_tokenizer(config)
  bad = tmp_path / 'wrong.npz'
  np.savez(bad, **{'blocks.input.w': np.zeros((4, 3, 7, 7), np.float32)})
  config.tokenizer.weights = str(bad)
  with pytest.raises(ValueError, match='blocks.'):
    tokenize_lib.load_tokenizer(config)


def test_training_a_released_tokenizer_is_a_config_error(tmp_path):
  config = tokenizer_configs.get_config('dvae')
  config.data.input = str(tmp_path)
  with pytest.raises(train_lib.ConfigError, match="tokenizer.kind = 'dvae'"):
    train_lib.train(config, str(tmp_path / 'run'), devices=jax.devices()[:1])


# ------------------------------------------------------------------------------------------------
# The tokenization job
# ------------------------------------------------------------------------------------------------

def _folder_with_bad_files(videos, tmp_path) -> str:
  folder = tmp_path / 'inputs'
  folder.mkdir()
  good = video_io.list_videos(videos[0])
  for path in good:
    os.symlink(path, folder / os.path.basename(path))
  (folder / 'garbage.mp4').write_bytes(os.urandom(3000))
  (folder / 'empty.mp4').write_bytes(b'')
  data = open(good[0], 'rb').read()
  (folder / 'truncated.mp4').write_bytes(data[:len(data) // 2])
  (folder / 'labels.csv').write_text('file,label\n' + ''.join(
      f'{os.path.basename(p)},{i}\n' for i, p in enumerate(good)))
  return str(folder)


def _records(output: str) -> list[dict]:
  return list(shards.read_records(sorted(glob.glob(os.path.join(output, '*.array_record')))))


def test_job_finishes_good_files_lists_bad_ones_and_resumes(videos, tmp_path, random_tokenizer):
  folder = _folder_with_bad_files(videos, tmp_path)
  config = small_vq_config(*videos)
  out = str(tmp_path / 'tokens')
  m = tokenize_lib.tokenize(config, folder, out, progress_bar=False)
  assert m['complete'] and m['clips'] == 5 and m['failed'] == 3
  assert sorted(os.path.basename(f['input']) for f in m['failures']) == [
      'empty.mp4', 'garbage.mp4', 'truncated.mp4']
  assert m['frames'] == 15 and m['tokens'] == 15 * 16
  assert m['hours'] > 0 and m['frame_h'] == 4 and m['codebook_size'] == 16
  assert not glob.glob(os.path.join(out, '*.tmp*'))
  with open(os.path.join(out, 'manifest.json')) as f:
    assert json.load(f)['failed'] == 3

  records = _records(out)
  assert len(records) == 5
  assert sorted(r['label'] for r in records) == [0, 1, 2, 3, 4]
  assert all(r['codes'].shape == (3, 4, 4) and r['kind'] == 'video' for r in records)
  # The codes are the tokenizer's own for the same frames.
  first = video_io.list_videos(videos[0])[0]
  expected = random_tokenizer.encode(video_io.read_clip(first, frames=3, stride=2,
                                                        resolution=RES))
  assert any(np.array_equal(r['codes'], expected) for r in records)

  # Toto's pipeline reads the shards as they are.
  toto_data = {'frames': 3, 'frame_h': 4, 'frame_w': 4, 'codebook_size': 16, 'eval_records': 0,
               'sources': {'v': {'pattern': m['pattern'], 'weight': 1.0, 'kind': 'video'}}}
  import ml_collections
  ds = token_data.build_train_dataset(ml_collections.ConfigDict(toto_data), seed=0,
                                      process_index=0, process_count=1, batch_size=2)
  batch = next(iter(ds))
  assert batch['tokens'].shape == (2, 3 * 16 + 2)

  # A rerun skips finished shards; a shard without its stats is redone, the rest kept.
  again = tokenize_lib.tokenize(config, folder, out, progress_bar=False)
  assert again['this_run']['shards'] == 0 and again['clips'] == 5
  stats = sorted(glob.glob(os.path.join(out, '*.stats.json')))
  os.remove(stats[1])
  mtimes = {p: os.path.getmtime(p) for p in stats if p != stats[1]}
  redo = tokenize_lib.tokenize(config, folder, out, progress_bar=False)
  assert redo['this_run']['shards'] == 1 and redo['clips'] == 5 and redo['failed'] == 3
  assert all(os.path.getmtime(p) == t for p, t in mtimes.items())


def test_job_splits_shards_over_processes(videos, tmp_path, random_tokenizer):
  config = small_vq_config(*videos)
  single = str(tmp_path / 'single')
  tokenize_lib.tokenize(config, videos[0], single, progress_bar=False)
  split = str(tmp_path / 'split')
  first = tokenize_lib.tokenize(config, videos[0], split, process_index=0, process_count=2,
                                progress_bar=False)
  assert not first['complete'] and first['shards_finished'] == 2
  last = tokenize_lib.tokenize(config, videos[0], split, process_index=1, process_count=2,
                               progress_bar=False)
  assert last['complete'] and last['clips'] == 5
  key = lambda r: r['codes'].tobytes()
  assert sorted(map(key, _records(single))) == sorted(map(key, _records(split)))


def test_job_on_an_image_folder(tmp_path, random_tokenizer, videos):
  import cv2
  folder = tmp_path / 'images'
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(3):
    cv2.imwrite(str(folder / f'{i}.png'), rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
  (folder / 'broken.jpg').write_bytes(b'not a jpeg')
  m = tokenize_lib.tokenize(small_vq_config(*videos), str(folder), str(tmp_path / 'out'),
                            progress_bar=False)
  assert m['clips'] == 3 and m['failed'] == 1 and m['hours'] == 0
  assert all(r['kind'] == 'image' and r['codes'].shape == (1, 4, 4)
             for r in _records(str(tmp_path / 'out')))


def test_job_rejects_a_missing_input(tmp_path, random_tokenizer, videos):
  with pytest.raises(FileNotFoundError, match='nowhere'):
    tokenize_lib.tokenize(small_vq_config(*videos), str(tmp_path / 'nowhere'),
                          str(tmp_path / 'out'), progress_bar=False)


def test_cli_names_a_missing_input(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'launch.tokenize', '--config', 'configs/tokenizer.py:vq_tiny',
       f'--config.tokenizer.weights={tmp_path}', '--input', str(tmp_path / 'nowhere'),
       '--output', str(tmp_path / 'out')],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'nowhere' in result.stderr and 'does not exist' in result.stderr


def test_interrupted_vq_run_resumes_to_the_same_codebook(vq_run, videos, tmp_path):
  config, _, uninterrupted = vq_run
  workdir = str(tmp_path / 'resumed')
  first = train_lib.train(small_vq_config(*videos), workdir, devices=jax.devices()[:2],
                          stop_after_steps=2)
  assert first['step'] == 2
  resumed = train_lib.train(small_vq_config(*videos), workdir, devices=jax.devices()[:2])
  assert resumed['start_step'] == 2 and resumed['step'] == config.train.total_steps
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(resumed['final_model_state'])),
                  jax.tree_util.tree_leaves(jax.device_get(uninterrupted['final_model_state']))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(resumed['final_params'])),
                  jax.tree_util.tree_leaves(jax.device_get(uninterrupted['final_params']))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_pictures_reconstruction_grid_and_decoded_record(vq_run, videos, tmp_path):
  from launch import pictures as pictures_cli
  config, workdir, _ = vq_run
  config = small_vq_config(*videos)
  config.tokenizer.weights = workdir
  png = str(tmp_path / 'recon.png')
  psnr = pictures_cli.reconstruction_png(config, videos[1], png, count=4)
  assert np.isfinite(psnr) and os.path.getsize(png) > 5_000
  out = str(tmp_path / 'tokens')
  tokenize_lib.tokenize(config, videos[1], out, progress_bar=False)
  shard = sorted(glob.glob(os.path.join(out, '*.array_record')))[0]
  frames = pictures_cli.decode_record(config, shard, 1, str(tmp_path / 'clip.gif'))
  assert frames.shape == (3, RES, RES, 3) and frames.dtype == np.uint8
  from PIL import Image
  with Image.open(tmp_path / 'clip.gif') as gif:
    assert gif.n_frames == 3
  with pytest.raises(ValueError, match='records 0..1'):
    pictures_cli.decode_record(config, shard, 7, str(tmp_path / 'x.gif'))


from test_readers import tfds_dir  # noqa: E402,F401  (a 6-image TFDS split built without TF)


def test_job_on_a_tfds_split(tfds_dir, tmp_path, random_tokenizer, videos):  # noqa: F811
  config = small_vq_config(*videos)
  config.data.tfds_data_dir = tfds_dir
  out = str(tmp_path / 'tfds_tokens')
  m = tokenize_lib.tokenize(config, 'tfds:reader_test_images/train', out, progress_bar=False)
  assert m['complete'] and m['clips'] == 6 and m['failed'] == 0
  records = _records(out)
  assert sorted(r['label'] for r in records) == list(range(6))
  assert all(r['kind'] == 'image' and r['source'] == 'reader_test_images' for r in records)
