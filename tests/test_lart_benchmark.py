"""The synthetic LART benchmark command (lart_jax/benchmark.py): config overrides, seeds, the
summary and ordering checks, resumption from results.json, and one real end-to-end run."""

from __future__ import annotations

import json
import math
import os

import pytest

from lart_jax import benchmark


def fake_run(interaction: float, scene: float, pose: float = 0.9) -> dict:
  return {'all': (interaction + scene + pose) / 3, 'interaction': interaction,
          'lookalike': 0.5, 'scene': scene, 'pose': pose, 'seconds': 1.0, 'train_loss': 1.0,
          'config': 'tiny', 'per_class': {}}


def test_config_overrides_convert_types_and_name_unknown_fields():
  c = benchmark.benchmark_config('tiny,n5', steps=10, videos=4, eval_videos=2, seed=3,
                                 overrides={'data.context': 'nearest', 'train.lr': '5e-4',
                                            'model.num_layers': '2',
                                            'data.require_labels': 'true'})
  assert c.data.context == 'nearest' and c.train.lr == 5e-4 and c.model.num_layers == 2
  assert c.data.require_labels is True and c.seed == 3 and c.data.num_people == 5
  assert c.train.total_steps == 10 and c.data.synthetic_eval_videos == 2
  with pytest.raises(KeyError, match=r'--set data\.contxt: the config has no field .contxt.'):
    benchmark.benchmark_config('tiny', steps=1, videos=1, eval_videos=1,
                               overrides={'data.contxt': 'nearest'})
  with pytest.raises(ValueError, match=r'--set data\.require_labels: expected true or false'):
    benchmark.benchmark_config('tiny', steps=1, videos=1, eval_videos=1,
                               overrides={'data.require_labels': 'yes'})


def test_summary_and_orderings_over_seeds():
  results = {'pose_n1': {0: fake_run(0.30, 0.50), 1: fake_run(0.40, 0.50)},
             'pose_n5': {0: fake_run(0.60, 0.50), 1: fake_run(0.35, 0.52)},
             'pose_appearance_n5': {0: fake_run(0.60, 0.90), 1: fake_run(0.50, float('nan'))}}
  stats = benchmark.summarize(results)
  assert stats['pose_n1']['interaction'] == pytest.approx((0.35, 0.05))
  assert stats['pose_appearance_n5']['scene'] == pytest.approx((0.9, 0.0))  # NaN seed left out
  checks = {o['what']: o for o in benchmark.orderings(results)}
  ctx = checks['context helps interactions']
  assert (ctx['holds'], ctx['seeds']) == (1, 2)  # seed 1: 0.35 < 0.40
  assert ctx['mean_gap'] == pytest.approx(((0.60 - 0.30) + (0.35 - 0.40)) / 2)
  app = checks['appearance helps scenes']
  assert (app['holds'], app['seeds']) == (1, 2) and math.isnan(app['mean_gap'])
  text = benchmark.format_results(results)
  assert 'pose_n5 > pose_n1 on interaction in 1 of 2 seeds (mean gap +12.5 AP)' in text
  assert '35.0 ± 5.0' in text
  only_n1 = benchmark.orderings({'pose_n1': results['pose_n1']})
  assert only_n1 == []  # nothing to compare


def test_run_resumes_from_results_json(tmp_path, monkeypatch):
  calls = []

  def run_one(workdir, name, *, steps, videos, eval_videos, seed, overrides=None, resume=False):
    calls.append((name, seed, resume))
    if (name, seed) == ('pose_n5', 1) and not resume:
      raise benchmark.Stopped('pose_n5 stopped')  # SIGTERM part-way through training
    return fake_run(0.1 * (seed + 1), 0.5)

  monkeypatch.setattr(benchmark, 'run_one', run_one)
  kw = dict(steps=5, videos=2, eval_videos=2, seeds=(0, 1), overrides={'data.context': 'nearest'})
  with pytest.raises(benchmark.Stopped):
    benchmark.run(str(tmp_path), ['pose_n1', 'pose_n5'], **kw)
  saved = json.loads((tmp_path / 'results.json').read_text())
  assert sorted(saved['runs']) == ['pose_n1/seed0', 'pose_n1/seed1', 'pose_n5/seed0']
  assert calls[-1] == ('pose_n5', 1, False)
  calls.clear()
  results = benchmark.run(str(tmp_path), ['pose_n1', 'pose_n5'], **kw)
  assert calls == [('pose_n5', 1, True)]  # only the stopped run, continued from its checkpoint
  assert results['pose_n1'][1]['interaction'] == pytest.approx(0.2)  # kept, not re-run
  assert results['pose_n5'][1]['interaction'] == pytest.approx(0.2)  # the stopped run
  monkeypatch.setattr(benchmark, 'run_one', lambda *a, **k: fake_run(0.2, 0.5))
  # Other settings: the saved runs do not count.
  other = benchmark.run(str(tmp_path), ['pose_n1'], **{**kw, 'steps': 6})
  assert other['pose_n1'][0]['interaction'] == pytest.approx(0.2)
  with pytest.raises(ValueError, match="unknown model 'pose_n9'"):
    benchmark.run(str(tmp_path), ['pose_n9'], **kw)


def test_command_end_to_end(tmp_path, capsys, monkeypatch):
  from launch import train as train_lib
  workdir = tmp_path / 'bench'
  args = ['--workdir', str(workdir), '--models', 'pose_n1,pose_n5', '--steps', '3',
          '--videos', '3', '--eval_videos', '3', '--seeds', '0', '--set', 'data.context=nearest']
  # First attempt: pose_n5 is stopped after 1 of its 3 steps, as SIGTERM would stop it.
  real_train = train_lib.train

  def preempted_n5(config, workdir_, **kw):
    stop = 1 if config.data.num_people == 5 else None
    return real_train(config, workdir_, stop_after_steps=stop, **kw)

  monkeypatch.setattr(train_lib, 'train', preempted_n5)
  benchmark.main(args)
  out = capsys.readouterr().out
  assert 'pose_n5 (seed 0) stopped at step 1 of 3' in out and 'rerun the same command' in out
  saved = json.loads((workdir / 'results.json').read_text())
  assert list(saved['runs']) == ['pose_n1/seed0']  # the stopped run is not scored
  # The same command again: pose_n1 is kept and pose_n5 continues from its step-1 checkpoint.
  monkeypatch.setattr(train_lib, 'train', real_train)
  benchmark.main(args)
  out = capsys.readouterr().out
  assert 'pose_n1/seed0: kept' in out and 'resumed at step 1' in out
  assert 'pose_n5 > pose_n1 on interaction in' in out and 'of 1 seeds' in out
  saved = json.loads((workdir / 'results.json').read_text())
  assert saved['settings']['overrides'] == {'data.context': 'nearest'}
  for key in ('pose_n1/seed0', 'pose_n5/seed0'):
    r = saved['runs'][key]
    assert 0.0 <= r['all'] <= 1.0 and r['per_class'], key
  assert os.path.getsize(workdir / 'benchmark.png') > 1000
  assert (workdir / 'pose_n5' / 'seed0' / 'detections.csv').is_file()
