"""``launch.generate`` end to end: a tiny Toto run and a tiny VQ tokenizer (random weights, written
as real workdirs), held-out token shards with a manifest, generation beyond the context, GIF/mp4."""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import tokenizer as tokenizer_configs
from launch import checkpoint
from launch import generate as generate_lib
from tokenizers_jax import video as video_io
from tokenizers_jax import vq
from toto_jax import shards
from toto_jax.model import Toto

CODEBOOK, GRID, RESOLUTION = 60, 4, 16


def _random_tree(shapes, seed, scale):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda s: (scale * rng.standard_normal(s.shape)).astype(np.float32),
                                shapes)


def _write_run(workdir, config, state) -> None:
  """A training workdir as the trainer leaves it: config.json + one checkpoint (step 1)."""
  checkpoint.write_config(str(workdir), config)
  manager = checkpoint.make_manager(str(workdir), keep=1, async_save=False)
  checkpoint.save(manager, 1, state, None, force=True)
  manager.wait_until_finished()
  manager.close()


@pytest.fixture(scope='module')
def pipeline(tmp_path_factory, small_toto_config):
  root = tmp_path_factory.mktemp('generate')
  # A VQ tokenizer: 16 px frames -> 4x4 codes from 60 entries.
  vq_config = tokenizer_configs.get_config('vq_tiny')
  m = vq_config.model
  m.channels, m.groups, m.embed_dim, m.codebook_size, m.mid_blocks = [8, 8], 4, 8, CODEBOOK, 1
  vq_config.data.resolution = RESOLUTION
  cfg = vq.VQConfig.from_config(m)
  shapes = jax.eval_shape(lambda: nn.meta.unbox(vq.VQVAE(cfg).init(
      jax.random.key(0), jnp.zeros((1, RESOLUTION, RESOLUTION, 3)))['params']))
  state = {k: np.asarray(v) for k, v in
           vq.init_codebook_state(jax.random.key(1), CODEBOOK, cfg.embed_dim).items()}
  _write_run(root / 'vq', vq_config, {'params': _random_tree(shapes, 0, 0.3),
                                      'model_state': state})
  # Held-out token shards of 3-frame clips, with the manifest launch.tokenize writes.
  tokens = root / 'tokens' / 'val'
  tokens.mkdir(parents=True)
  clips = np.random.default_rng(2).integers(0, CODEBOOK, (4, 3, GRID, GRID))
  shards.write_shard(str(tokens / 'tokens-00000.array_record'),
                     [shards.encode_record(c, 'video', f'clip{i}') for i, c in enumerate(clips)])
  with open(tokens / 'manifest.json', 'w') as f:
    json.dump({'tokenizer': 'vq@vq:1', 'codebook_size': CODEBOOK, 'frame_h': GRID,
               'frame_w': GRID, 'resolution': RESOLUTION,
               'pattern': str(tokens / 'tokens-*.array_record')}, f)
  # Toto: 2 frames of 4x4 codes fill the context (max_len 33).
  config = small_toto_config()
  config.data.sources = {'videos': {'pattern': str(tokens / 'tokens-*.array_record'),
                                    'eval_pattern': str(tokens / 'tokens-*.array_record'),
                                    'weight': 1.0, 'kind': 'video'}}
  shapes = jax.eval_shape(lambda: nn.meta.unbox(Toto(config.model).init(
      jax.random.key(0), jnp.zeros((1, 2), jnp.int32))['params']))
  _write_run(root / 'toto', config, {'params': _random_tree(shapes, 3, 0.3)})
  return root, clips


def test_generate_slides_and_writes_gif(pipeline):
  root, clips = pipeline
  out = str(root / 'gen.gif')
  result = generate_lib.generate(str(root / 'toto'), out, frames=5, prompt_frames=1, videos=2,
                                 record=1, temperature=0.0, progress=False)
  codes = result['codes']
  assert codes.shape == (2, 5, GRID, GRID)  # 5 frames > the 2-frame context: the window slid
  np.testing.assert_array_equal(codes[:, 0], clips[1:3, 0])  # prompted with records 1 and 2
  assert codes.min() >= 0 and codes.max() < CODEBOOK
  assert result['context_frames'] == 2 and result['generated_tokens'] == 2 * 4 * 16
  assert result['tokenizer'] == 'vq@vq:1'  # found through the shards' manifest
  with Image.open(out) as gif:
    assert gif.n_frames == 5
    assert gif.size[0] == 2 * gif.size[1]  # two videos side by side


def test_cli_writes_mp4(pipeline, capsys):
  root, _ = pipeline
  out = str(root / 'gen.mp4')
  generate_lib.main(['--workdir', str(root / 'toto'), '--output', out, '--frames', '4',
                     '--prompt_frames', '1', '--videos', '2', '--temperature', '0.8',
                     '--top_k', '10', '--top_p', '0.9', '--tokenizer_workdir', str(root / 'vq')])
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary['frames'] == 4 and summary['output'] == os.path.abspath(out)
  assert video_io.probe_video(out).frames == 4
  with pytest.raises(SystemExit):
    generate_lib.main(['--workdir', str(root / 'toto'), '--output', str(root / 'x.avi')])
  assert '--output' in capsys.readouterr().err
