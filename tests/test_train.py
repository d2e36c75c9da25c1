"""The trainer end to end: learning, logged metrics, the lr schedule, TensorBoard, gradient
accumulation, non-finite steps, the eval hook, config validation and the command line."""

import contextlib
import io
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from launch import metrics as metrics_lib
from launch import tasks as tasks_lib
from launch import train as train_lib
from launch.sharding import ConfigError
from launch.train import NonFiniteError

LN_VOCAB = math.log(64)


def _train(config, workdir, **kwargs):
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    summary = train_lib.train(config, str(workdir), **kwargs)
  return summary, out.getvalue()


def _train_records(records):
  return [r for r in records if 'train/loss' in r]


# ------------------------------------------------------------------------------------------------
# Learning
# ------------------------------------------------------------------------------------------------

def test_loss_falls_on_synthetic_videos(small_toto_config, eight_devices, tmp_path):
  config = small_toto_config({
      'train.total_steps': 50, 'train.warmup_steps': 5, 'train.lr': 1e-2,
      'train.global_batch_size': 16, 'train.microbatch_size': 16,
      'checkpoint.every_steps': 50})
  summary, _ = _train(config, tmp_path, devices=eight_devices[:1])
  assert summary['step'] == 50
  records = _train_records(metrics_lib.read_metrics(str(tmp_path)))
  losses = np.array([r['train/loss'] for r in records])
  assert len(losses) == 50 and np.all(np.isfinite(losses))
  assert losses[0] == pytest.approx(LN_VOCAB, abs=0.05)  # an untrained model is near uniform
  first, last = losses[:5].mean(), losses[-5:].mean()
  assert last < first - 0.15, (first, last)
  assert last < LN_VOCAB - 0.1, last
  accuracy = np.array([r['train/accuracy'] for r in records])
  assert accuracy[-5:].mean() > accuracy[:5].mean() + 0.02


# ------------------------------------------------------------------------------------------------
# Logged metrics (from the shared 8-step baseline run)
# ------------------------------------------------------------------------------------------------

def test_metrics_file_has_train_and_perf_metrics(baseline_run):
  summary = baseline_run.summary
  assert summary['metrics_file'] == os.path.join(os.path.abspath(baseline_run.workdir),
                                                 'metrics.jsonl')
  records = _train_records(baseline_run.records)
  assert [r['step'] for r in records] == list(range(1, 9))
  tokens_per_step = 8 * (2 * 4 * 4 + 1)  # global batch x model input length
  for r in records:
    for key in ('train/loss', 'train/lr', 'train/grad_norm', 'train/param_norm',
                'train/accuracy', 'train/skipped_steps', 'time'):
      assert key in r and np.isfinite(r[key]), (r['step'], key)
    assert 0 < r['train/loss'] < 2 * LN_VOCAB
    assert 0 <= r['train/accuracy'] <= 1
    assert r['train/skipped_steps'] == 0
    assert 'train/finite' not in r
    if r['step'] == 1:
      continue  # throughput starts after the compiling first step
    for key in ('perf/step_time_s', 'perf/tokens_per_s', 'perf/flops_per_s', 'perf/mfu'):
      assert key in r and r[key] > 0, (r['step'], key)
    assert r['perf/tokens_per_s'] * r['perf/step_time_s'] == pytest.approx(tokens_per_step)
    assert 0 < r['perf/mfu'] < 1
    assert r['perf/flops_per_s'] / r['perf/mfu'] == pytest.approx(summary['peak_flops'])
  assert summary['metrics']['train/loss'] == records[-1]['train/loss']
  assert summary['peak_flops'] > 0 and summary['peak_source']


def test_lr_warms_up_then_decays_on_a_cosine(baseline_run):
  t = baseline_run.config.train
  lrs = [r['train/lr'] for r in _train_records(baseline_run.records)]
  # The lr logged at step s is the one its update used: linear from 0 over warmup_steps, then
  # cosine down to lr * end_lr_ratio at total_steps.
  def expected(count):
    if count < t.warmup_steps:
      return t.lr * count / t.warmup_steps
    frac = (count - t.warmup_steps) / (t.total_steps - t.warmup_steps)
    end = t.lr * t.end_lr_ratio
    return end + (t.lr - end) * 0.5 * (1 + math.cos(math.pi * frac))
  np.testing.assert_allclose(lrs, [expected(s - 1) for s in range(1, 9)], rtol=1e-5, atol=1e-12)
  peak = int(np.argmax(lrs))
  assert peak == t.warmup_steps and lrs[peak] == pytest.approx(t.lr)
  assert all(a < b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))      # rises
  assert all(a > b for a, b in zip(lrs[peak:], lrs[peak + 1:]))       # then falls
  assert lrs[-1] > t.lr * t.end_lr_ratio


def test_eval_hook_writes_eval_loss(baseline_run):
  evals = [r for r in baseline_run.records if 'eval/loss' in r]
  assert [r['step'] for r in evals] == [4, 8]  # eval.every_steps=4 and the last step
  for r in evals:
    assert 0 < r['eval/loss'] < 2 * LN_VOCAB
    assert 0 <= r['eval/accuracy'] <= 1
    assert 'train/loss' not in r
  assert baseline_run.summary['metrics']['eval/loss'] == evals[-1]['eval/loss']


def test_tensorboard_event_files(baseline_run, tmp_path):
  events = [os.path.join(dp, f) for dp, _, files in os.walk(baseline_run.workdir)
            for f in files if f.startswith('events.out.tfevents')]
  assert events, 'no TensorBoard event file'
  assert all(os.path.dirname(e) == os.path.join(baseline_run.workdir, 'tensorboard')
             for e in events)
  content = b''.join(open(e, 'rb').read() for e in events)
  for tag in (b'train/loss', b'train/lr', b'perf/mfu', b'eval/loss'):
    assert tag in content, tag


def test_checkpoints_and_config_in_workdir(baseline_run):
  workdir = baseline_run.workdir
  assert baseline_run.summary['checkpoints'] == os.path.join(os.path.abspath(workdir),
                                                             'checkpoints')
  assert sorted(os.listdir(baseline_run.summary['checkpoints'])) == ['3', '6', '8']
  from launch import checkpoint as ckpt_lib
  saved = ckpt_lib.read_config_dict(workdir)
  assert saved['train']['total_steps'] == 8 and saved['model']['dim'] == 32


# ------------------------------------------------------------------------------------------------
# Gradient accumulation
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('global_batch, micro, expected', [
    (8, 0, 1), (8, 8, 1), (8, 4, 2), (8, 2, 4), (16, 2, 8)])
def test_accumulation_steps(small_toto_config, global_batch, micro, expected):
  config = small_toto_config({'train.global_batch_size': global_batch,
                              'train.microbatch_size': micro})
  assert train_lib.accumulation_steps(config.train) == expected


def test_gradient_accumulation_matches_one_big_batch(baseline_run, small_toto_config,
                                                     baseline_overrides, eight_devices, tmp_path,
                                                     helpers):
  """Global batch 8 as 2 x 4 (the baseline) vs one microbatch of 8: the same optimisation."""
  config = small_toto_config({**baseline_overrides, 'train.microbatch_size': 8,
                              'eval.every_steps': 0, 'log.tensorboard': False})
  summary, stdout = _train(config, tmp_path, devices=eight_devices[:1])
  assert 'global batch 8 = 1 x 8' in stdout
  big = helpers.train_losses(tmp_path)
  accumulated = baseline_run.losses
  np.testing.assert_allclose([big[s] for s in range(1, 9)], [accumulated[s] for s in range(1, 9)],
                             rtol=1e-5)
  grad_norms = lambda recs: [r['train/grad_norm'] for r in _train_records(recs)]
  np.testing.assert_allclose(grad_norms(metrics_lib.read_metrics(str(tmp_path))),
                             grad_norms(baseline_run.records), rtol=1e-4)
  helpers.assert_trees_close(summary['final_params'], baseline_run.params, rtol=1e-4, atol=2e-6)


# ------------------------------------------------------------------------------------------------
# Non-finite steps
# ------------------------------------------------------------------------------------------------

def _exploding_config(small_toto_config, mode):
  # Step 1 runs at lr 0 (warm-up starts at 0); step 2's update at lr 5e29 blows the parameters up,
  # so step 3 is the first whose loss or gradient is not finite.
  return small_toto_config({'train.lr': 1e30, 'train.total_steps': 6,
                            'train.on_nonfinite': mode})


def test_nonfinite_error_names_the_step(small_toto_config, eight_devices, tmp_path):
  config = _exploding_config(small_toto_config, 'error')
  with pytest.raises(NonFiniteError, match=r'non-finite loss or gradient at step 3\b') as info:
    _train(config, tmp_path, devices=eight_devices[:1])
  assert 'train.on_nonfinite=skip' in str(info.value)
  # Nothing non-finite was checkpointed (the step-3 save is refused), nor logged past step 2.
  ckpt = os.path.join(str(tmp_path), 'checkpoints')
  saved = [d for d in os.listdir(ckpt) if d.isdigit()] if os.path.isdir(ckpt) else []
  assert saved == [], saved
  assert max(r['step'] for r in metrics_lib.read_metrics(str(tmp_path))) == 2


def test_nonfinite_skip_completes_and_counts(small_toto_config, eight_devices, tmp_path):
  config = _exploding_config(small_toto_config, 'skip')
  summary, _ = _train(config, tmp_path, devices=eight_devices[:1])
  assert summary['step'] == 6
  records = _train_records(metrics_lib.read_metrics(str(tmp_path)))
  skipped = [r['train/skipped_steps'] for r in records]
  assert skipped[:2] == [0, 0] and skipped[-1] > 0
  assert all(a <= b for a, b in zip(skipped, skipped[1:]))
  assert summary['metrics']['train/skipped_steps'] == skipped[-1]
  # A skipped update is never applied: the parameters stay finite.
  for leaf in jax.tree_util.tree_leaves(jax.device_get(summary['final_params'])):
    assert np.all(np.isfinite(leaf))
  assert not os.path.exists(os.path.join(str(tmp_path), 'tensorboard'))  # log.tensorboard=False


# ------------------------------------------------------------------------------------------------
# Config validation
# ------------------------------------------------------------------------------------------------

def _add_rule(rule):
  def mutate(config):
    config.sharding_rules = [rule] + list(config.sharding_rules)
  return mutate


# (overrides or mutation, number of devices, regex the message must match)
VALIDATION_CASES = {
    'global_batch_size': ({'train.global_batch_size': 0}, 1, r'train\.global_batch_size'),
    'microbatch_not_dividing': ({'train.microbatch_size': 3}, 1,
                                r'train\.microbatch_size \(3\) must divide '
                                r'train\.global_batch_size \(8\)'),
    'microbatch_negative': ({'train.microbatch_size': -4}, 1, r'train\.microbatch_size'),
    'microbatch_vs_batch_shards': ({'mesh.ici': (1, -1, 1)}, 8,
                                   r'train\.microbatch_size \(4\) must be divisible by the 8 '
                                   r'batch shards'),
    'total_steps': ({'train.total_steps': 0}, 1, r'train\.total_steps'),
    'warmup_steps_too_long': ({'train.warmup_steps': 8}, 1, r'train\.warmup_steps'),
    'warmup_steps_negative': ({'train.warmup_steps': -1}, 1, r'train\.warmup_steps'),
    'lr_zero': ({'train.lr': 0.0}, 1, r'train\.lr'),
    'lr_nan': ({'train.lr': float('nan')}, 1, r'train\.lr'),
    'b1': ({'train.b1': 1.0}, 1, r'train\.b1'),
    'b2': ({'train.b2': -0.1}, 1, r'train\.b2'),
    'clip_norm': ({'train.clip_norm': -1.0}, 1, r'train\.clip_norm'),
    'end_lr_ratio': ({'train.end_lr_ratio': -0.5}, 1, r'train\.end_lr_ratio'),
    'weight_decay': ({'train.weight_decay': -0.1}, 1, r'train\.weight_decay'),
    'eps': ({'train.eps': 0.0}, 1, r'train\.eps'),
    'on_nonfinite': ({'train.on_nonfinite': 'ignore'}, 1, r'train\.on_nonfinite'),
    'dtype': ({'model.dtype': 'float64'}, 1, r'model\.dtype'),
    'remat_policy': ({'model.remat_policy': 'sometimes'}, 1, r'model\.remat_policy'),
    'checkpoint_every_steps': ({'checkpoint.every_steps': 0}, 1, r'checkpoint\.every_steps'),
    'checkpoint_keep': ({'checkpoint.keep': 0}, 1, r'checkpoint\.keep'),
    'log_every_steps': ({'log.every_steps': 0}, 1, r'log\.every_steps'),
    'eval_every_steps': ({'eval.every_steps': -1}, 1, r'eval\.every_steps'),
    'mesh_two_minus_one': ({'mesh.ici': (-1, -1, 1)}, 8, r'mesh\.ici: at most one axis may be -1'),
    'mesh_product_mismatch': ({'mesh.ici': (2, 2, 1)}, 8,
                              r'mesh\.ici: axes multiply to 4 but 8 devices'),
    'mesh_axis_zero': ({'mesh.ici': (0, -1, 1)}, 8, r'mesh\.ici\.data'),
    'mesh_dcn': ({'mesh.dcn': (1, 2, 1)}, 8, r'mesh\.dcn'),
    'sharding_rules_unknown_axis': (_add_rule(['mlp', 'model']), 1,
                                    r"sharding_rules\[0\] \('mlp'\) names mesh axis 'model'"),
    'arch': ({'model.arch': 'gpt3'}, 1, r'model\.arch'),
    'dim_not_divisible_by_heads': ({'model.dim': 30}, 1,
                                   r'model\.dim \(30\) must be divisible by model\.num_heads '
                                   r'\(4\)'),
    'odd_head_dim': ({'model.dim': 36}, 1, r'model\.dim / model\.num_heads = 9 must be even'),
    'num_kv_heads': ({'model.num_kv_heads': 3}, 1,
                     r'model\.num_kv_heads \(3\) must divide model\.num_heads \(4\)'),
    'vocab_too_small': ({'model.vocab_size': 60}, 1,
                        r'model\.vocab_size \(60\) must be at least data\.codebook_size \+ 4 = '
                        r'64'),
    'max_len_too_short': ({'model.max_len': 32}, 1,
                          r'model\.max_len \(32\) is shorter than the model input of 33'),
    'rope_base': ({'model.rope_base': 0.0}, 1, r'model\.rope_base'),
}


@pytest.mark.parametrize('case', sorted(VALIDATION_CASES))
def test_validate_config_names_the_field(case, small_toto_config, eight_devices):
  change, num_devices, match = VALIDATION_CASES[case]
  if callable(change):
    config = small_toto_config()
    change(config)
  else:
    config = small_toto_config(change)
  task = tasks_lib.get_task(config)
  with pytest.raises(ConfigError, match=match):
    train_lib.validate_config(config, task, eight_devices[:num_devices])


@pytest.mark.parametrize('overrides, match', [
    ({'data.frames': 0}, r'data\.frames'),
    ({'data.codebook_size': 2}, r'data\.codebook_size'),
    ({'data.sources.synthetic.pattern': '/nonexistent/*.array_record'},
     r'data\.sources\.synthetic\.pattern'),
], ids=['frames', 'codebook_size', 'sources_pattern'])
def test_data_config_errors_are_config_errors(overrides, match, small_toto_config,
                                              eight_devices, tmp_path):
  config = small_toto_config(overrides)
  with pytest.raises(ConfigError, match=match):
    _train(config, tmp_path, devices=eight_devices[:1])


def test_valid_configs_pass_validation(small_toto_config, eight_devices):
  for overrides, n in (({}, 1), ({'mesh.ici': (2, 2, 2)}, 8), ({'mesh.ici': (1, -1, 2)}, 8),
                       ({'train.microbatch_size': 0}, 1)):
    config = small_toto_config(overrides)
    train_lib.validate_config(config, tasks_lib.get_task(config), eight_devices[:n])


def test_unknown_task_is_a_config_error(small_toto_config):
  config = small_toto_config({'task': 'totoro'})
  with pytest.raises(ConfigError, match=r"task: unknown task 'totoro'"):
    tasks_lib.get_task(config)


def test_parameter_not_divisible_by_mesh_names_the_parameter(small_toto_config, tmp_path):
  """tensor=8 cannot split the 4 attention heads: caught before anything is compiled."""
  config = small_toto_config({'mesh.ici': (1, 1, 8)})
  with pytest.raises(ConfigError, match=r"parameter \['layers'\]\['attn'\]\['(key|query|value)'\]"
                                        r"\['kernel'\] dimension 2 \(4\) cannot be split 8 ways "
                                        r"over mesh axes \('tensor',\)"):
    _train(config, tmp_path)
  assert not os.path.exists(os.path.join(str(tmp_path), 'checkpoints'))
  assert not os.path.exists(os.path.join(str(tmp_path), 'metrics.jsonl'))


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('flag, message', [
    ('--config.train.warmup_steps=300',
     'config error: train.warmup_steps (300) must be in [0, train.total_steps=300)'),
    ('--config.data.frames=0', 'config error: data.frames must be an int >= 1'),
], ids=['train_field', 'data_field'])
def test_cli_config_error_exits_2_naming_the_field(flag, message, tmp_path, helpers):
  cmd = [sys.executable, '-m', 'launch.train', '--config', 'configs/toto.py:tiny',
         '--workdir', str(tmp_path / 'work'), flag]
  proc = subprocess.run(cmd, cwd=helpers.repo_root, env=helpers.subprocess_env(device_count=1),
                        capture_output=True, text=True, timeout=180)
  assert proc.returncode == 2, proc.stderr[-4000:]
  assert message in proc.stderr, proc.stderr[-4000:]
  assert 'Traceback' not in proc.stderr
  assert not os.path.exists(tmp_path / 'work' / 'checkpoints')
