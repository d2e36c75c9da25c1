"""``python -m launch.bench tokenizer``: the benches run at tiny sizes and report sane fields.

Timings are never compared with anything: only that they are there, positive and finite.
"""

from __future__ import annotations

import functools
import json
import math

import pytest

from launch import bench

COMMON = ('bench', 'which', 'resolution', 'batch', 'median_step_s', 'step_time_s_all',
          'frames_per_s', 'device', 'cpu_count', 'jax', 'note')


def _positive(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_tokenizer_benches_print_one_json_line_each(monkeypatch, capsys):
  small = {
      'dvae': functools.partial(bench.bench_tokenizer_dvae, n_hid=8),
      'vq': functools.partial(bench.bench_tokenizer_vq, variant='vq_tiny'),
      'job': functools.partial(bench.bench_tokenizer_job, videos=2, variant='vq_tiny',
                               clip_frames=2, threads=1),
  }
  for name, fn in small.items():
    monkeypatch.setitem(bench.TOKENIZER_BENCHES, name, fn)
  results = bench.bench_tokenizer('all', resolution=32, batch=2, repeats=1)

  lines = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith('{')]
  assert lines == results
  assert [r['which'] for r in results] == ['dvae', 'vq', 'job']
  for r in results:
    assert set(COMMON) <= set(r), r
    assert r['bench'] == 'tokenizer' and r['resolution'] == 32 and r['batch'] == 2
    assert 'random' in r['note']
    assert _positive(r['median_step_s']) and _positive(r['frames_per_s'])
    assert len(r['step_time_s_all']) == 1 and _positive(r['cpu_count'])
  dvae, vq, job = results
  assert dvae['grid'] == 4 and dvae['codebook_size'] == 8192 and dvae['n_hid'] == 8
  assert vq['grid'] == 32 // 8 and vq['codebook_size'] == 64
  assert job['videos'] == 2 and job['clips'] == 2 and job['failed'] == 0
  assert job['frames'] == 2 * job['frames_per_clip'] == 4
  assert job['video_size'] == '40x32' and job['video_frames'] >= (2 - 1) * job['stride'] + 1
  assert _positive(job['clips_per_s'])
  assert math.isclose(job['frames_per_s'], job['clips_per_s'] * 2)


def test_unknown_which_is_refused():
  with pytest.raises(ValueError, match='--which'):
    bench.bench_tokenizer('nope')
