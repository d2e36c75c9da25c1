"""Where a compiled step's time goes, op by op: a profiler trace grouped by model part.

``python -m launch.bench profile --config configs/toto.py:base --seq_len 1024`` traces one train
step (after warm-up) and prints one JSON line: the step's wall time, the time XLA's ops recorded,
that time grouped by pass (forward / backward / other) and model part (projection matmuls,
attention, norms, ...), and the slowest ops with their shapes. ``--trace_dir`` keeps the trace for
TensorBoard's profile plugin or Perfetto.

How: ``jax.profiler.trace`` with the Python tracer off and the host tracer at level 3 records every
XLA:CPU thunk (or GPU kernel) under its HLO instruction name; the compiled HLO text maps each name
to the JAX ``op_name`` it came from (``jit(train_step)/transpose(jvp(Toto))/.../layers/mlp/up/
dot_general``), which names the pass and the module. The Python tracer must stay off: with it the
trace reaches its event cap before XLA records an op. Ops that run asynchronously (on CPU, Eigen
matmuls XLA dispatches to its thread pool) are recorded only as their launch, so their time is
missing from the groups; on 2 cores independent ops also overlap, so recorded op time can exceed
the wall time.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time
from typing import Callable

import jax

# Wrappers JAX puts around op names that say how an op was reached, not where in the model it is.
_WRAPPER = re.compile(r'^(jit\(.*\)|jvp\(.*\)|transpose\(.*\)|vmap\(.*\)|remat\d*|checkpoint|'
                      r'closed_call|while|body|cond|branch_\d+_fun|rematted_computation|'
                      r'custom_vjp_call.*|custom_jvp_call.*|pjit)$')
_PROJECTIONS = ('query', 'key', 'value', 'out', 'gate', 'up', 'down', 'lm_head')


def op_pass(op_name: str) -> str:
  """``backward`` for ops of the gradient (JAX's ``transpose(jvp(...))``), ``forward`` for the
  primal under ``jvp``, ``other`` for the rest (optimizer update, metrics, copies)."""
  if 'transpose(' in op_name:
    return 'backward'
  if 'jvp(' in op_name:
    return 'forward'
  return 'other'


def op_part(op_name: str) -> str:
  """The model part an op belongs to, from its JAX ``op_name``.

  ``projection matmuls`` (dense layers and the output head), ``attention`` (everything else in
  the attention module: scores, softmax, RoPE, head transposes), ``norms``, ``mlp activation``,
  ``embedding``, ``layer scan`` (ops of the layer loop outside any module: slicing the stacked
  weights and stacking per-layer residuals), ``optimizer`` (the update under the finite-step
  ``cond``), ``loss and metrics`` for the rest, and ``unattributed`` for ops XLA added without
  a name (copies)."""
  if not op_name:
    return 'unattributed'
  segments = op_name.split('/')
  if any(s.startswith('branch_') for s in segments) and 'jvp(' not in op_name:
    return 'optimizer'
  path = [s for s in segments[:-1] if not _WRAPPER.match(s) and not s.startswith('jit(')]
  primitive = segments[-1]
  if not path:
    return 'layer scan' if 'while' in segments else 'loss and metrics'
  module = path[-1]
  if primitive == 'dot_general' and module in _PROJECTIONS:
    return 'projection matmuls'
  if any(p.endswith('norm') for p in path):
    return 'norms'
  if 'attn' in path:
    return 'attention'
  if 'mlp' in path:
    return 'mlp activation'
  if module in ('embed', 'Toto') and primitive in ('gather', 'scatter-add', 'scatter_add'):
    return 'embedding'
  return 'loss and metrics'


def hlo_op_names(hlo_text: str) -> dict[str, tuple[str, str]]:
  """``{instruction name: (result shape, op_name)}`` from compiled HLO text. An instruction
  whose own line carries no ``op_name`` takes the one of its fused computation's root, or else
  of its first named operand (JAX gives the ops of a ``custom_vjp`` backward no names)."""
  out, calls, operands, computation_names = {}, {}, {}, {}
  computation, named = None, ''
  for line in hlo_text.split('\n'):
    head = re.match(r'^(?:ENTRY )?%?([\w.\-]+) .*\{$', line)
    if head:
      computation, named = head.group(1), ''
      continue
    m = re.match(r'\s*(ROOT )?%?([\w.\-]+) = (\S+) ', line)
    if not m:
      continue
    name = re.search(r'op_name="([^"]*)"', line)
    op_name = name.group(1) if name else ''
    named = op_name or named
    if m.group(1) and computation:
      computation_names[computation] = named
    out[m.group(2)] = (m.group(3), op_name)
    if not op_name:
      called = re.search(r'calls=%?([\w.\-]+)', line)
      if called:
        calls[m.group(2)] = called.group(1)
      args = re.search(r' [\w\-]+\(([^)]*)\)', line[m.end(3):])
      operands[m.group(2)] = re.findall(r'%([\w.\-]+)', args.group(1)) if args else []
  for op, computation in calls.items():
    out[op] = (out[op][0], computation_names.get(computation, ''))
  for op, args in operands.items():
    if not out[op][1]:
      named_args = [out[a][1] for a in args if a in out and out[a][1]]
      out[op] = (out[op][0], named_args[0] if named_args else '')
  return out


def recorded_op_times(trace_dir: str) -> dict[str, tuple[float, int]]:
  """``{HLO instruction: (seconds, calls)}`` from the newest trace under ``trace_dir``."""
  files = sorted(glob.glob(os.path.join(trace_dir, 'plugins', 'profile', '*', '*.trace.json.gz')))
  if not files:
    raise FileNotFoundError(f'no *.trace.json.gz under {trace_dir}/plugins/profile: did the '
                            f'profiler run?')
  with gzip.open(files[-1]) as f:
    events = json.load(f)['traceEvents']
  seconds: dict[str, float] = collections.Counter()
  calls: dict[str, int] = collections.Counter()
  for e in events:
    op = e.get('args', {}).get('hlo_op')
    if op and e.get('ph') == 'X':
      seconds[op] += e.get('dur', 0) / 1e6
      calls[op] += 1
  return {k: (seconds[k], calls[k]) for k in seconds}


def trace(fn: Callable[[], object], trace_dir: str) -> None:
  """Runs ``fn`` (which must block until its results are ready) under the profiler, recording
  XLA ops but not Python calls."""
  options = jax.profiler.ProfileOptions()
  options.python_tracer_level = 0
  options.host_tracer_level = 3
  with jax.profiler.trace(trace_dir, profiler_options=options):
    fn()


def summarize(op_times: dict[str, tuple[float, int]], names: dict[str, tuple[str, str]],
              top: int = 20) -> dict:
  """Recorded op time grouped by ``pass / part`` (largest first, with shares) plus the ``top``
  slowest instructions."""
  total = sum(s for s, _ in op_times.values())
  groups: dict[str, float] = collections.Counter()
  for op, (seconds, _) in op_times.items():
    op_name = names.get(op, ('', ''))[1]
    groups[f'{op_pass(op_name)} / {op_part(op_name)}'] += seconds
  slowest = sorted(op_times.items(), key=lambda kv: -kv[1][0])[:top]
  return {
      'recorded_op_s': total,
      'groups': [{'group': g, 'seconds': s, 'share': s / total if total else 0.0}
                 for g, s in sorted(groups.items(), key=lambda kv: -kv[1])],
      'slowest_ops': [{'op': op, 'seconds': s, 'calls': n, 'shape': names.get(op, ('?', ''))[0],
                       'op_name': names.get(op, ('', ''))[1]} for op, (s, n) in slowest],
  }


def profile_compiled(run_once: Callable[[], object], hlo_text: str, trace_dir: str | None = None,
                     top: int = 20) -> dict:
  """Traces one call of ``run_once`` (already compiled and warmed up) and summarizes it against
  the compiled ``hlo_text``; the trace is kept in ``trace_dir`` when given."""
  with tempfile.TemporaryDirectory() as tmp:
    directory = trace_dir or tmp
    wall = []

    def timed():
      t = time.perf_counter()
      run_once()
      wall.append(time.perf_counter() - t)

    trace(timed, directory)
    summary = summarize(recorded_op_times(directory), hlo_op_names(hlo_text), top)
  return {'wall_s': wall[0], **summary}


def format_table(result: dict, rows: int = 12) -> str:
  """The grouped times as a plain-text table, largest first."""
  lines = [f"step wall {result['wall_s']:.3f} s, recorded op time {result['recorded_op_s']:.3f} s",
           f"{'pass / part':40s} {'seconds':>8s} {'share':>6s}"]
  for g in result['groups'][:rows]:
    lines.append(f"{g['group']:40s} {g['seconds']:8.3f} {100 * g['share']:5.1f}%")
  return '\n'.join(lines)
