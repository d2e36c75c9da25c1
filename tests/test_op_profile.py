"""``python -m launch.bench profile``: op names grouped by pass and model part, HLO name
resolution, and one traced step of the tiny model."""

import os

import pytest

from configs import toto
from launch import bench, op_profile

STEP = 'jit(train_step)/'


@pytest.mark.parametrize('op_name, expected', [
    (STEP + 'jvp(Toto)/while/body/closed_call/layers/mlp/up/dot_general',
     ('forward', 'projection matmuls')),
    (STEP + 'transpose(jvp(Toto))/while/body/closed_call/layers/attn/query/dot_general',
     ('backward', 'projection matmuls')),
    (STEP + 'transpose(jvp(Toto))/lm_head/dot_general', ('backward', 'projection matmuls')),
    (STEP + 'transpose(jvp(Toto))/while/body/closed_call/layers/attn/mul', ('backward', 'attention')),
    (STEP + 'jvp(Toto)/while/body/closed_call/layers/attn/jit(_where)/select_n',
     ('forward', 'attention')),
    (STEP + 'transpose(jvp(Toto))/while/body/closed_call/layers/mlp_norm/reduce_sum',
     ('backward', 'norms')),
    (STEP + 'jvp(Toto)/while/body/closed_call/layers/mlp/jit(silu)/logistic',
     ('forward', 'mlp activation')),
    (STEP + 'jvp(Toto)/while/body/jit(dynamic_update_index_in_dim)/dynamic_update_slice',
     ('forward', 'layer scan')),
    (STEP + 'cond/branch_1_fun/add', ('other', 'optimizer')),
    (STEP + 'reduce_sum', ('other', 'loss and metrics')),
    ('', ('other', 'unattributed')),
])
def test_op_names_are_grouped_by_pass_and_part(op_name, expected):
  assert (op_profile.op_pass(op_name), op_profile.op_part(op_name)) == expected


HLO = '''
%fused_computation.3 (param_0: f32[4,8], param_1: f32[8,2]) -> f32[4,2] {
  %param_0 = f32[4,8]{1,0} parameter(0)
  %param_1 = f32[8,2]{1,0} parameter(1)
  ROOT %dot.1 = f32[4,2]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(f)/jvp(Toto)/lm_head/dot_general"}
}

ENTRY %main (x: f32[4,8], w: f32[8,2]) -> f32[4,2] {
  %x = f32[4,8]{1,0} parameter(0)
  %w = f32[8,2]{1,0} parameter(1)
  %mul_fusion = f32[4,8]{1,0} fusion(%x), kind=kLoop, calls=%fc.9, metadata={op_name="jit(f)/jvp(Toto)/layers/attn/mul"}
  %copy.4 = f32[4,8]{0,1} copy(%mul_fusion)
  ROOT %ynn_fusion.3 = f32[4,2]{1,0} fusion(%copy.4, %w), kind=kCustom, calls=%fused_computation.3
}
'''


def test_hlo_names_resolve_through_fused_computations_and_operands():
  names = op_profile.hlo_op_names(HLO)
  assert names['ynn_fusion.3'] == ('f32[4,2]{1,0}', 'jit(f)/jvp(Toto)/lm_head/dot_general')
  assert names['mul_fusion'][1] == 'jit(f)/jvp(Toto)/layers/attn/mul'
  assert names['copy.4'] == ('f32[4,8]{0,1}', 'jit(f)/jvp(Toto)/layers/attn/mul')  # from operand
  assert names['x'] == ('f32[4,8]{1,0}', '')


def test_profile_of_a_tiny_train_step(tmp_path):
  config = toto.get_config('tiny')
  trace_dir = str(tmp_path / 'trace')
  before = config.to_json()
  r = bench.profile_toto(config, seq_len=32, batch=8, warmup=1, trace_dir=trace_dir, top=5)
  assert config.to_json() == before  # the caller's config is not changed
  assert r['bench'] == 'toto_profile' and r['wall_s'] > 0 and r['recorded_op_s'] > 0
  groups = {g['group']: g for g in r['groups']}
  assert 'forward / projection matmuls' in groups and 'backward / projection matmuls' in groups
  assert 'other / optimizer' in groups
  assert sum(g['share'] for g in r['groups']) == pytest.approx(1.0)
  assert len(r['slowest_ops']) == 5
  assert all(o['seconds'] > 0 and o['calls'] >= 1 for o in r['slowest_ops'])
  assert any(files for _, _, files in os.walk(trace_dir))  # the trace is kept
  table = op_profile.format_table(r)
  assert 'forward / projection matmuls' in table
