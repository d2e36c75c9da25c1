"""LART through the trainer on synthetic tracklets: the loss falls, pre-train -> fine-tune via
``train.init_from`` with layer-wise decay, epoch schedules, and the AVA evaluation of a run."""

from __future__ import annotations

import csv
import math
import os

import jax
import ml_collections
import numpy as np
import pytest

from configs import lart as lart_config
from launch import evaluate as evaluate_lib
from launch import train as train_lib
from lart_jax.task import LartTask


def _config(arg: str = 'tiny', steps: int = 30):
  c = lart_config.get_config(arg)
  m, d, t = c.model, c.data, c.train
  m.dim, m.num_heads, m.num_layers, m.mlp_dim, m.embed_hidden = 16, 2, 2, 32, 16
  d.max_frames, d.num_people = 16, 3
  d.synthetic_videos, d.synthetic_eval_videos = 4, 2
  d.synthetic = ml_collections.ConfigDict({'frames': (60, 90), 'people': (2, 4)})
  t.global_batch_size, t.total_steps, t.warmup_steps, t.lr = 16, steps, min(2, steps - 1), 1e-2
  c.checkpoint.every_steps = steps
  c.checkpoint.async_save = False
  c.log.every_steps = 1
  c.log.progress_bar = False
  c.log.tensorboard = False
  c.eval.every_steps = 0
  c.evaluate.batch_size = 8
  return c


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('lart_pre'))
  summary = train_lib.train(_config('tiny,pretrain'), workdir)
  return workdir, summary


def _losses(workdir):
  import json
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return [r['train/loss'] for r in rows if 'train/loss' in r]


def test_loss_falls_on_synthetic_tracklets(pretrained):
  workdir, summary = pretrained
  losses = _losses(workdir)
  assert summary['step'] == 30 and len(losses) == 30
  assert all(math.isfinite(x) for x in losses)
  assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3]), losses
  assert 0.2 < summary['metrics']['train/masked_share'] < 0.6   # mask ratio 0.4 on the POI


def test_finetune_starts_from_the_pretrained_run(pretrained, capsys):
  pre_dir, pre = pretrained
  c = _config('tiny,finetune', steps=1)
  c.train.init_from = pre_dir
  c.train.lr = 1e-12                               # one step that cannot move the params
  summary = train_lib.train(c, pre_dir + '_ft')
  assert 'initialised' in capsys.readouterr().out
  a = jax.tree_util.tree_leaves(jax.device_get(pre['final_params']))
  b = jax.tree_util.tree_leaves(jax.device_get(summary['final_params']))
  assert all(np.allclose(x, y, atol=1e-6) for x, y in zip(a, b))
  # Layer-wise decay 0.9: the top block 0.9, the bottom 0.9^L, the embeddings 0.9^(L+1), heads 1.
  task = LartTask(c)
  scales = task.lr_scales(jax.device_get(summary['final_params']))
  np.testing.assert_allclose(np.ravel(scales['layers']['mlp']['up']['kernel']), [0.81, 0.9])
  assert float(scales['head']['kernel']) == 1.0
  assert float(scales['pose_mlp']['fc1']['kernel']) == pytest.approx(0.9 ** 3)
  assert c.model.drop_path == 0.1 and c.model.mask_ratio == 0.0


def test_epochs_set_the_step_budget():
  c = _config()
  c.train.epochs, c.train.warmup_epochs = 3, 1.0
  task = LartTask(c)
  train_lib.apply_epoch_schedule(c, task)
  per_epoch = task.examples_per_epoch() / c.train.global_batch_size
  assert c.train.total_steps == round(3 * per_epoch) and c.train.warmup_steps == round(per_epoch)


def test_evaluate_writes_ava_csv_and_scores(pretrained):
  workdir, _ = pretrained
  c = _config('tiny,pretrain')
  result = evaluate_lib.evaluate_run(c, workdir, progress=False)
  assert result['step'] == 30 and 0.0 <= result['mAP'] <= 1.0
  with open(result['detections_csv']) as f:
    rows = list(csv.reader(f))
  with open(result['groundtruth_csv']) as f:
    gt_keys = {(r[0], r[1]) for r in csv.reader(f)}
  assert rows and {(r[0], r[1]) for r in rows} <= gt_keys      # only evaluated keyframes
  assert len(rows) % 60 == 0 and all(len(r) == 8 for r in rows)
  boxes = np.asarray([[float(v) for v in r[2:6]] for r in rows])
  assert (boxes >= 0).all() and (boxes <= 1).all() and (boxes[:, 2] > boxes[:, 0]).all()
  assert all(0.0 <= float(r[7]) <= 1.0 for r in rows)
