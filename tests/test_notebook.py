"""Notebook inspection: ``launch.checkpoint.load`` on a run of every task, the helpers of
``launch.inspect``, and ``notebooks/inspect_checkpoint.ipynb`` executed top to bottom."""

from __future__ import annotations

import json
import os
import shutil
import sys

import jax
import numpy as np
import pytest

from launch import checkpoint as ckpt_lib
from launch import inspect as inspect_lib
from launch import train as train_lib

NOTEBOOK = 'notebooks/inspect_checkpoint.ipynb'


def _quiet(config):
  config.log.progress_bar = False
  config.log.tensorboard = False
  config.log.every_steps = 1
  return config


@pytest.fixture(scope='module')
def vq_run(tmp_path_factory):
  """A 4-step VQ tokenizer run (the small config of tests/test_tokenize.py)."""
  from test_tokenize import small_vq_config
  from tokenizers_jax import synthetic_video
  root = str(tmp_path_factory.mktemp('nb_videos'))
  synthetic_video.write_synthetic_videos(root, 3, frames=6, height=20, width=24, fps=8, seed=0,
                                         split_name='train', progress=False)
  config = small_vq_config(os.path.join(root, 'train'))
  config.eval.every_steps = 0
  workdir = str(tmp_path_factory.mktemp('nb_vq'))
  summary = train_lib.train(config, workdir, devices=jax.devices()[:1])
  return config, workdir, summary


@pytest.fixture(scope='module')
def pose_run(tmp_path_factory):
  """A 4-step PHALP pose-predictor run."""
  from configs import phalp as phalp_configs
  config = _quiet(phalp_configs.get_config('tiny'))
  config.train.total_steps = 4
  config.train.warmup_steps = 1
  config.checkpoint.every_steps = 2
  config.eval.every_steps = 0
  workdir = str(tmp_path_factory.mktemp('nb_pose'))
  summary = train_lib.train(config, workdir, devices=jax.devices()[:1])
  return config, workdir, summary


def _assert_loaded(run, config, summary, helpers):
  assert run['config'].task == config.task
  assert run['step'] == config.train.total_steps
  assert 'opt_state' not in run
  for leaf in jax.tree_util.tree_leaves(run['params']):
    assert isinstance(leaf, np.ndarray)
  helpers.assert_trees_equal(run['params'], summary['final_params'])


# ------------------------------------------------------------------------------------------------
# checkpoint.load
# ------------------------------------------------------------------------------------------------

def test_load_returns_config_params_and_step_of_every_task(baseline_run, vq_run, pose_run,
                                                           helpers):
  run = ckpt_lib.load(baseline_run.workdir)
  _assert_loaded(run, baseline_run.config, baseline_run.summary, helpers)
  assert run['config'].model.dim == 32 and 'model_state' not in run
  assert ckpt_lib.load(baseline_run.workdir, step=3)['step'] == 3

  config, workdir, summary = vq_run
  run = ckpt_lib.load(workdir)
  _assert_loaded(run, config, summary, helpers)
  helpers.assert_trees_equal(run['model_state'], summary['final_model_state'])

  config, workdir, summary = pose_run
  run = ckpt_lib.load(workdir, step=2)
  assert run['step'] == 2 and run['config'].model.pose_dim == config.model.pose_dim
  _assert_loaded(ckpt_lib.load(workdir), config, summary, helpers)


def test_load_errors_name_the_path(baseline_run, tmp_path):
  missing = str(tmp_path / 'nope')
  with pytest.raises(FileNotFoundError, match=f'workdir {missing!r} does not exist'):
    ckpt_lib.load(missing)
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match=f'{empty}/config.json is missing'):
    ckpt_lib.load(str(empty))
  shutil.copy(os.path.join(baseline_run.workdir, 'config.json'), empty / 'config.json')
  with pytest.raises(FileNotFoundError, match=f'{empty}/checkpoints is missing'):
    ckpt_lib.load(str(empty))
  (empty / 'checkpoints').mkdir()
  with pytest.raises(FileNotFoundError, match=f'{empty}/checkpoints holds no checkpoint'):
    ckpt_lib.load(str(empty))
  with pytest.raises(FileNotFoundError, match=r'no checkpoint at step 5; it has \[3, 6, 8\]'):
    ckpt_lib.load(baseline_run.workdir, step=5)


def test_load_skips_an_incomplete_save_with_a_warning(baseline_run, tmp_path, capsys):
  from launch import drill
  workdir = str(tmp_path / 'work')
  shutil.copytree(baseline_run.workdir, workdir)
  broken = drill.break_newest_checkpoint(workdir, 'tmp')
  assert broken['broken_step'] == 8 and broken['expected_resume'] == 6
  assert ckpt_lib.incomplete_saves(ckpt_lib.checkpoint_dir(workdir)) == [broken['broken']]
  capsys.readouterr()
  assert ckpt_lib.load(workdir)['step'] == 6
  assert f'ignoring the incomplete checkpoint save {broken["broken"]}' in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# launch.inspect
# ------------------------------------------------------------------------------------------------

def test_param_table_lists_every_leaf_with_shape_dtype_and_norm(baseline_run):
  params = baseline_run.params
  rows = inspect_lib.param_table(params)
  leaves = jax.tree_util.tree_leaves_with_path(params)
  assert len(rows) == len(leaves)
  for row, (path, leaf) in zip(rows, leaves):
    assert row.path == '/'.join(k.key for k in path)
    assert row.shape == leaf.shape and row.dtype == 'float32'
    assert row.norm == pytest.approx(float(np.linalg.norm(leaf.astype(np.float64))), rel=1e-12)
    assert row.norm > 0
  embed = next(r for r in rows if r.path == 'embed')
  assert embed.shape == params['embed'].shape
  table = inspect_lib.ParamTable(params)
  total = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
  assert table.total == total
  text = str(table)
  assert 'embed' in text and f'{total:,} parameters' in text
  assert len(text.splitlines()) == len(rows) + 3
  html = table._repr_html_()
  assert html.count('<tr>') == len(rows) + 1 and 'class="param-table"' in html


def test_read_metrics_gives_sorted_series_and_plots_them(baseline_run, helpers, tmp_path):
  series = inspect_lib.read_metrics(baseline_run.workdir)
  losses = helpers.train_losses(baseline_run.workdir)
  loss = series['train/loss']
  assert loss.steps.tolist() == sorted(losses) == list(range(1, 9))
  np.testing.assert_array_equal(loss.values, [losses[s] for s in range(1, 9)])
  assert series['eval/loss'].steps.tolist() == [4, 8]
  fig = inspect_lib.plot_metrics(series)
  assert [line.get_label() for line in fig.axes[0].get_lines()] == ['train/loss', 'eval/loss']
  with pytest.raises(ValueError, match='none of'):
    inspect_lib.plot_metrics(series, keys=('train/nothing',))
  with pytest.raises(FileNotFoundError, match=f'{tmp_path}/metrics.jsonl is missing'):
    inspect_lib.read_metrics(str(tmp_path))


def test_code_images_give_each_code_its_own_colour():
  palette = inspect_lib.code_palette(64)
  assert len({tuple(c) for c in palette[:64]}) == 64
  images = inspect_lib.code_images(np.array([[[0, 5], [-1, 63]]]), 64)
  assert images.shape == (1, 2, 2, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(images[0, 1, 0], [0, 0, 0])  # a marker id: black
  np.testing.assert_array_equal(images[0, 0, 1], palette[5])
  with pytest.raises(ValueError, match='codebook_size=64'):
    inspect_lib.code_images(np.array([64]), 64)


def test_run_tokenizer_comes_from_the_token_manifest(vq_run, baseline_run, tmp_path):
  import ml_collections
  _, vq_dir, _ = vq_run
  assert inspect_lib.run_tokenizer(baseline_run.config) is None  # synthetic tokens
  tokens = tmp_path / 'tokens'
  tokens.mkdir()
  (tokens / 'manifest.json').write_text(json.dumps(
      {'tokenizer': 'vq@x:4', 'tokenizer_weights': vq_dir, 'tokenizer_kind': 'vq'}))
  config = ml_collections.ConfigDict({'data': {
      'frame_h': 4, 'frame_w': 4, 'codebook_size': 16,
      'sources': {'videos': {'pattern': str(tokens / 'tokens-*.array_record')}}}})
  tokenizer = inspect_lib.run_tokenizer(config)
  assert (tokenizer.codebook_size, tokenizer.grid) == (16, 4)
  codes = np.random.default_rng(0).integers(-1, 16, size=(3, 4, 4))
  frames = inspect_lib.clip_frames(codes, 16, tokenizer)
  assert frames.shape == (3, 16, 16, 3) and frames.dtype == np.uint8
  np.testing.assert_array_equal(frames, tokenizer.decode(np.clip(codes, 0, 15)))
  synthetic = ml_collections.ConfigDict(config.to_dict())
  synthetic.data.sources = {'synthetic': {'pattern': 'synthetic'}}
  assert inspect_lib.run_tokenizer(synthetic) is None
  assert inspect_lib.run_tokenizer(synthetic, weights=vq_dir).name == tokenizer.name
  config.data.codebook_size = 32
  with pytest.raises(ValueError, match='data.codebook_size=32'):
    inspect_lib.run_tokenizer(config)


def test_sample_clips_keep_the_prompt_and_sample_the_rest(baseline_run):
  run = ckpt_lib.load(baseline_run.workdir)
  clips = inspect_lib.sample_clips(run, num_clips=2, prompt_frames=1, seed=3)
  d = baseline_run.config.data
  assert clips['sampled'].shape == clips['truth'].shape == (2, d.frames, d.frame_h, d.frame_w)
  np.testing.assert_array_equal(clips['sampled'][:, :1], clips['truth'][:, :1])
  assert clips['sampled'].min() >= 0 and clips['sampled'].max() < d.codebook_size
  again = inspect_lib.sample_clips(run, num_clips=2, prompt_frames=1, seed=3)
  np.testing.assert_array_equal(again['sampled'], clips['sampled'])
  with pytest.raises(ValueError, match='prompt_frames'):
    inspect_lib.sample_clips(run, prompt_frames=d.frames)


# ------------------------------------------------------------------------------------------------
# The notebook
# ------------------------------------------------------------------------------------------------

def _kernel_spec(root) -> str:
  """A kernel spec running this interpreter (the venv of the tests), in a private JUPYTER_PATH."""
  spec_dir = root / 'kernels' / 'tests-python'
  spec_dir.mkdir(parents=True)
  (spec_dir / 'kernel.json').write_text(json.dumps({
      'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
      'display_name': 'tests python', 'language': 'python'}))
  return 'tests-python'


def test_notebook_runs_on_a_toto_run(baseline_run, helpers, tmp_path, monkeypatch):
  import nbclient  # the `test` extra of setup.cfg installs nbclient, nbformat and ipykernel
  import nbformat
  monkeypatch.setenv('JUPYTER_PATH', str(tmp_path))
  kernel = _kernel_spec(tmp_path)
  nb = nbformat.read(os.path.join(helpers.repo_root, NOTEBOOK), as_version=4)
  params = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
  assert len(params) == 1 and 'WORKDIR =' in params[0].source
  params[0].source += f'\nWORKDIR = {baseline_run.workdir!r}\nNUM_CLIPS = 2\n'
  client = nbclient.NotebookClient(nb, kernel_name=kernel, timeout=240,
                                   resources={'metadata': {'path': helpers.repo_root}})
  client.execute()  # raises CellExecutionError on any exception in a cell

  outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])]
  assert not [o for o in outputs if o.output_type == 'error']
  text = '\n'.join(o.get('text', '') for o in outputs if o.output_type == 'stream')
  assert f"task 'toto', step 8 of 8" in text
  assert 'sampled 2 clips x 1 frames' in text
  html = [o.data['text/html'] for o in outputs if 'text/html' in o.get('data', {})]
  assert any('class="param-table"' in h and 'embed' in h for h in html)
  images = [o for o in outputs if 'image/png' in o.get('data', {})]
  assert len(images) == 2  # the loss curve and the sampled clips
