r"""Cloud TPU pods from one command line: create, copy the repository, install, train, logs, stop,
delete (``gcloud compute tpus ...`` underneath).

  python -m launch.tpu_pod up --name toto-1b --zone us-east5-a --project P \
      --accelerator v5p-128 --queued --spot -- \
      --config configs/toto.py:1b --workdir /mnt/shared/runs/toto_1b --config.model.dtype=bfloat16
  python -m launch.tpu_pod logs   --name toto-1b --zone us-east5-a --project P --accelerator v5p-128
  python -m launch.tpu_pod stop   --name toto-1b ...      # SIGTERM: the trainer checkpoints and exits
  python -m launch.tpu_pod delete --name toto-1b ... --queued

Subcommands: ``create`` (a TPU VM, or a queued resource with ``--queued``; ``--num-slices N > 1``
needs ``--queued`` and makes nodes ``NAME-0 .. NAME-{N-1}``), ``copy`` (a tarball of this checkout,
without ``.git``/``.venv``/``runs``, to every worker), ``install`` (``pip install -e .[tpu]`` on
every worker), ``train`` (the same ``python -m launch.train ARGS`` on every worker under ``nohup``,
one log per worker in ``REMOTE_DIR/logs/train-HOSTNAME.log``, the PID in ``logs/train.pid``;
``jax.distributed`` initialises itself from the TPU metadata), ``logs`` (tail worker 0, or every
worker with ``--all-workers``), ``stop``, ``delete`` and ``up`` (create, [wait], copy, install,
train). ``--dry-run`` prints every command (shell-quoted) instead of running it. Multi-slice runs get
``--config.mesh.dcn.data=N`` appended unless the training arguments already set ``mesh.dcn``.

The accelerator table below (chips, topology, hosts, runtime image, HBM) is shared with
``launch/aot.py`` so the AOT check compiles for exactly the slice this script creates.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Sequence

GiB = 2 ** 30
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Generation:
  """One TPU generation: how gcloud and libtpu name it and what a chip has."""
  name: str                 # what users type: v5p, v5e, v4, v6e
  gcloud_prefix: str        # accelerator type prefix gcloud expects (v5e is "v5litepod")
  topology_prefix: str      # libtpu topology prefix for AOT (``v5:4x4x4``)
  cores_per_chip: int       # TensorCores counted in the accelerator-type number
  dims: int                 # 3D torus (v4, v5p) or 2D (v5e, v6e)
  chip_config: str          # libtpu chip config: one device per chip ("megacore") or "default"
  runtime: str              # default TPU VM software version
  hbm_bytes: int            # HBM per chip
  source: str               # where the HBM figure comes from


# HBM per chip and runtime images from the Cloud TPU system-architecture pages
# (https://cloud.google.com/tpu/docs/v4, /v5p, /v5e, /v6e and /runtimes). Peak FLOP/s live in
# launch/flops.py (ACCELERATOR_PEAKS), not here.
GENERATIONS = {
    'v4': Generation('v4', 'v4', 'v4', 2, 3, 'megacore', 'tpu-ubuntu2204-base', 32 * GiB,
                     'cloud.google.com/tpu/docs/v4: 32 GiB HBM2 per chip'),
    'v5p': Generation('v5p', 'v5p', 'v5', 2, 3, 'megacore', 'v2-alpha-tpuv5', 95 * GiB,
                      'cloud.google.com/tpu/docs/v5p: 95 GiB HBM2e per chip'),
    'v5e': Generation('v5e', 'v5litepod', 'v5e', 1, 2, 'default', 'v2-alpha-tpuv5-lite', 16 * GiB,
                      'cloud.google.com/tpu/docs/v5e: 16 GiB HBM2 per chip'),
    'v6e': Generation('v6e', 'v6e', 'v6e', 1, 2, 'default', 'v2-alpha-tpuv6e', 32 * GiB,
                      'cloud.google.com/tpu/docs/v6e: 32 GiB HBM per chip'),
}
_ALIASES = {'v5litepod': 'v5e', 'v5lite': 'v5e', 'v6litepod': 'v6e'}


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """A TPU slice: ``v5p-128`` is 64 chips in a 4x4x4 torus on 16 hosts."""
  generation: Generation
  shape: tuple[int, ...]

  @property
  def chips(self) -> int:
    return math.prod(self.shape)

  @property
  def name(self) -> str:
    return f'{self.generation.name}-{self.chips * self.generation.cores_per_chip}'

  @property
  def gcloud_type(self) -> str:
    return f'{self.generation.gcloud_prefix}-{self.chips * self.generation.cores_per_chip}'

  @property
  def hosts(self) -> int:
    # 4 chips per host; single-host v5e/v6e machines carry up to 8.
    if self.generation.dims == 2 and self.chips <= 8:
      return 1
    return max(1, self.chips // 4)

  @property
  def topology_name(self) -> str:
    return f'{self.generation.topology_prefix}:{"x".join(map(str, self.shape))}'

  @property
  def wrap(self) -> tuple[bool, bool, bool]:
    """Torus wrap-around links: full 4x4x4 cubes (3D) and 16-chip rows (v5e/v6e)."""
    if self.generation.dims == 3:
      return (all(d % 4 == 0 for d in self.shape),) * 3
    return (self.shape[0] == 16, self.shape[1] == 16, False)

  @property
  def chips_per_host_bounds(self) -> tuple[int, int, int]:
    return (1, 1, 1) if self.chips == 1 else (2, 2, 1)


def _default_shape(dims: int, chips: int) -> tuple[int, ...] | None:
  """The standard slice shape for a power-of-two chip count (2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4,
  ... for 3D; 1x1, 2x2, 2x4, 4x4, 4x8, ... for 2D), or None."""
  if chips < 1 or chips & (chips - 1):
    return None
  if dims == 2:
    if chips == 1:
      return (1, 1)
    if chips < 4:
      return None
    shape = [2, 2]
    while math.prod(shape) < chips:
      shape[1 if shape[0] == shape[1] else 0] *= 2
    return tuple(shape)
  if chips < 4:
    return None
  shape = [2, 2, 1] if chips == 4 else [2, 2, 2]
  order = (2, 1, 0)
  i = 0
  while math.prod(shape) < chips:
    shape[order[i % 3]] *= 2
    i += 1
  return tuple(shape)


def parse_accelerator(text: str) -> Accelerator:
  """``v5p-128`` / ``v5litepod-256`` / ``v5e-256`` (accelerator types) or ``v5p:4x4x12``
  (explicit chip grid) -> :class:`Accelerator`; unknown names raise ``ValueError``."""
  known = ', '.join(sorted(GENERATIONS))
  m = re.fullmatch(r'([a-z0-9]+?)(?:-(\d+)|:(\d+(?:x\d+)+))', text.strip().lower())
  gen_name = m and _ALIASES.get(m.group(1), m.group(1))
  if not m or gen_name not in GENERATIONS:
    raise ValueError(f'--accelerator/--topology {text!r}: unknown TPU accelerator type; expected '
                     f'GENERATION-COUNT (e.g. v5p-128, v5e-256, v4-32, v6e-64) or GENERATION:AxBxC '
                     f'(e.g. v5p:4x4x12) with GENERATION one of {known}')
  gen = GENERATIONS[gen_name]
  if m.group(3):
    shape = tuple(int(x) for x in m.group(3).split('x'))
    if len(shape) != gen.dims or min(shape) < 1:
      raise ValueError(f'--accelerator/--topology {text!r}: {gen.name} chips form a {gen.dims}D '
                       f'grid, got {"x".join(map(str, shape))}')
    return Accelerator(gen, shape)
  count = int(m.group(2))
  if count % gen.cores_per_chip:
    raise ValueError(f'--accelerator/--topology {text!r}: {gen.name}-N counts TensorCores '
                     f'({gen.cores_per_chip} per chip), so N must be a multiple of '
                     f'{gen.cores_per_chip}')
  shape = _default_shape(gen.dims, count // gen.cores_per_chip)
  if shape is None:
    raise ValueError(f'--accelerator/--topology {text!r}: no standard {gen.name} slice has '
                     f'{count // gen.cores_per_chip} chips; give the chip grid instead, e.g. '
                     f'{gen.name}:{"4x4x12" if gen.dims == 3 else "8x16"}')
  return Accelerator(gen, shape)


# ------------------------------------------------------------------------------------------------
# Commands
# ------------------------------------------------------------------------------------------------

# Paths never shipped to the workers (relative to the repository root).
COPY_EXCLUDES = ('./.git', './.venv', './runs', './data', '*/__pycache__', './*.egg-info',
                 './.pytest_cache')


@dataclasses.dataclass
class Pod:
  """Everything the commands need; built from the command line by :func:`pod_from_args`."""
  name: str
  zone: str
  project: str | None
  accelerator: Accelerator
  queued: bool = False
  spot: bool = False
  version: str | None = None
  num_slices: int = 1
  remote_dir: str = 'people-pixels-jax'
  python: str = 'python3'
  repo: str = REPO_ROOT

  @property
  def nodes(self) -> list[str]:
    """TPU node names: NAME, or NAME-0 .. NAME-{N-1} for a multi-slice queued resource."""
    if self.num_slices == 1:
      return [self.name]
    return [f'{self.name}-{i}' for i in range(self.num_slices)]

  @property
  def runtime(self) -> str:
    return self.version or self.accelerator.generation.runtime

  @property
  def archive(self) -> str:
    return os.path.join(tempfile.gettempdir(), f'{self.name}-repo.tar.gz')

  def _where(self) -> list[str]:
    return [f'--zone={self.zone}'] + ([f'--project={self.project}'] if self.project else [])

  def gcloud(self, *args: str) -> list[str]:
    return ['gcloud', 'compute', 'tpus', *args, *self._where()]

  def ssh(self, node: str, command: str, worker: str = 'all') -> list[str]:
    return self.gcloud('tpu-vm', 'ssh', node, f'--worker={worker}', f'--command={command}')


def create_commands(pod: Pod) -> list[list[str]]:
  spot = ['--spot'] if pod.spot else []
  acc = [f'--accelerator-type={pod.accelerator.gcloud_type}']
  if pod.queued:
    nodes = ([f'--node-id={pod.name}'] if pod.num_slices == 1 else
             [f'--node-count={pod.num_slices}', f'--node-prefix={pod.name}'])
    return [pod.gcloud('queued-resources', 'create', pod.name, *nodes, *acc,
                       f'--runtime-version={pod.runtime}', *spot)]
  return [pod.gcloud('tpu-vm', 'create', pod.name, *acc, f'--version={pod.runtime}', *spot)]


def wait_command(pod: Pod) -> list[str]:
  """Prints the queued resource's state (``ACTIVE`` once the nodes exist)."""
  return pod.gcloud('queued-resources', 'describe', pod.name, '--format=value(state.state)')


def copy_commands(pod: Pod) -> list[list[str]]:
  name = os.path.basename(pod.archive)
  tar = ['tar', '-czf', pod.archive, *[f'--exclude={e}' for e in COPY_EXCLUDES], '-C', pod.repo,
         '.']
  remote = (f'rm -rf {shlex.quote(pod.remote_dir)} && mkdir -p {shlex.quote(pod.remote_dir)} && '
            f'tar -xzf {shlex.quote(name)} -C {shlex.quote(pod.remote_dir)} && rm -f '
            f'{shlex.quote(name)}')
  cmds = [tar]
  for node in pod.nodes:
    cmds.append(pod.gcloud('tpu-vm', 'scp', pod.archive, f'{node}:{name}', '--worker=all'))
    cmds.append(pod.ssh(node, remote))
  return cmds


def install_commands(pod: Pod) -> list[list[str]]:
  py = shlex.quote(pod.python)
  remote = (f'cd {shlex.quote(pod.remote_dir)} && {py} -m pip install --upgrade pip && '
            f'{py} -m pip install -e ".[tpu]"')
  return [pod.ssh(node, remote) for node in pod.nodes]


def train_args_for(pod: Pod, train_args: Sequence[str]) -> list[str]:
  """The training arguments, plus the DCN data parallelism of a multi-slice run."""
  args = list(train_args)
  if not any(a.startswith('--config') and not a.startswith('--config.') for a in args) or not any(
      a.startswith('--workdir') for a in args):
    raise ValueError('train: give the training arguments after "--", at least --config '
                     'configs/FILE.py:VARIANT and --workdir DIR (a directory every worker shares)')
  if pod.num_slices > 1 and not any(a.startswith('--config.mesh.dcn.') for a in args):
    args.append(f'--config.mesh.dcn.data={pod.num_slices}')
  return args


def train_commands(pod: Pod, train_args: Sequence[str]) -> list[list[str]]:
  args = train_args_for(pod, train_args)
  train = shlex.join([pod.python, '-m', 'launch.train', *args])
  # LAUNCH_MULTI_HOST tells launch/distributed.py to call jax.distributed.initialize(), which
  # reads the workers, the process id and (multi-slice) the MEGASCALE_* settings from metadata.
  multi = pod.accelerator.hosts * pod.num_slices > 1
  env = 'LAUNCH_MULTI_HOST=1 ' if multi else ''
  remote = (f'cd {shlex.quote(pod.remote_dir)} && mkdir -p logs && '
            f'{{ {env}setsid nohup {train} > "logs/train-$(hostname).log" 2>&1 < /dev/null & '
            f'echo $! > logs/train.pid; }}')
  return [pod.ssh(node, remote) for node in pod.nodes]


def logs_commands(pod: Pod, all_workers: bool = False, lines: int = 100,
                  follow: bool = True) -> list[list[str]]:
  tail = f'tail -n {int(lines)}{" -f" if follow else ""} {shlex.quote(pod.remote_dir)}/logs/train-*.log'
  if all_workers:
    return [pod.ssh(node, tail) for node in pod.nodes]
  return [pod.ssh(pod.nodes[0], tail, worker='0')]


def stop_commands(pod: Pod) -> list[list[str]]:
  """SIGTERM to the trainer on every worker (it saves a checkpoint and exits)."""
  pid = f'{shlex.quote(pod.remote_dir)}/logs/train.pid'
  remote = (f'if [ -f {pid} ]; then kill -TERM "$(cat {pid})" 2>/dev/null && '
            f'echo "$(hostname): sent SIGTERM to $(cat {pid})"; rm -f {pid}; '
            f'else echo "$(hostname): no training process recorded"; fi')
  return [pod.ssh(node, remote) for node in pod.nodes]


def delete_commands(pod: Pod) -> list[list[str]]:
  if pod.queued:
    return [pod.gcloud('queued-resources', 'delete', pod.name, '--force', '--quiet')]
  return [pod.gcloud('tpu-vm', 'delete', pod.name, '--quiet')]


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

SUBCOMMANDS = ('create', 'copy', 'install', 'train', 'logs', 'stop', 'delete', 'up')


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m launch.tpu_pod',
                              description=__doc__.split('\n')[0])
  p.add_argument('action', choices=SUBCOMMANDS)
  p.add_argument('--name', required=True, help='TPU (or queued resource) name')
  p.add_argument('--zone', help='e.g. us-east5-a (required)')
  p.add_argument('--project', help='GCP project (default: the gcloud config)')
  p.add_argument('--accelerator', required=True, help='e.g. v5p-128, v5e-256 (= v5litepod-256)')
  p.add_argument('--queued', action='store_true', help='use a queued resource')
  p.add_argument('--spot', action='store_true', help='Spot (preemptible) capacity')
  p.add_argument('--version', help='TPU VM runtime (default by generation, e.g. v2-alpha-tpuv5)')
  p.add_argument('--num-slices', type=int, default=1, help='multi-slice: N slices (needs --queued)')
  p.add_argument('--remote-dir', default='people-pixels-jax', help='checkout dir on the workers '
                 '(relative to the home directory)')
  p.add_argument('--python', default='python3', help='Python on the workers')
  p.add_argument('--all-workers', action='store_true', help='logs: every worker, not worker 0')
  p.add_argument('--lines', type=int, default=100, help='logs: lines to show')
  p.add_argument('--no-follow', action='store_true', help='logs: print and exit')
  p.add_argument('--dry-run', action='store_true', help='print the commands, run nothing')
  return p


def pod_from_args(args: argparse.Namespace) -> Pod:
  if not args.zone:
    raise ValueError('--zone is required (e.g. --zone us-east5-a for v5p, us-west4-a for v5e)')
  if not re.fullmatch(r'[a-z]([-a-z0-9]*[a-z0-9])?', args.name):
    raise ValueError(f'--name {args.name!r}: TPU names are lower-case letters, digits and "-", '
                     f'starting with a letter')
  if args.num_slices < 1:
    raise ValueError(f'--num-slices must be >= 1, got {args.num_slices}')
  if args.num_slices > 1 and not args.queued:
    raise ValueError('--num-slices > 1 needs --queued (multi-slice TPUs are queued resources)')
  if os.path.isabs(args.remote_dir) or '..' in args.remote_dir.split('/'):
    raise ValueError(f'--remote-dir {args.remote_dir!r} must be relative to the home directory')
  return Pod(name=args.name, zone=args.zone, project=args.project,
             accelerator=parse_accelerator(args.accelerator), queued=args.queued,
             spot=args.spot, version=args.version, num_slices=args.num_slices,
             remote_dir=args.remote_dir, python=args.python)


def plan(action: str, pod: Pod, train_args: Sequence[str], args: argparse.Namespace
         ) -> list[tuple[str, list[list[str]]]]:
  """The (step name, commands) list an action runs, in order."""
  steps = {
      'create': lambda: create_commands(pod),
      'copy': lambda: copy_commands(pod),
      'install': lambda: install_commands(pod),
      'train': lambda: train_commands(pod, train_args),
      'logs': lambda: logs_commands(pod, args.all_workers, args.lines, not args.no_follow),
      'stop': lambda: stop_commands(pod),
      'delete': lambda: delete_commands(pod),
  }
  if action == 'up':
    train_args_for(pod, train_args)  # fail before creating anything
    order = ['create'] + (['wait'] if pod.queued else []) + ['copy', 'install', 'train']
    return [(s, [wait_command(pod)] if s == 'wait' else steps[s]()) for s in order]
  return [(action, steps[action]())]


def wait_until_active(pod: Pod, timeout_s: float = 6 * 3600, poll_s: float = 30) -> None:
  deadline = time.monotonic() + timeout_s
  while True:
    state = subprocess.run(wait_command(pod), check=True, capture_output=True,
                           text=True).stdout.strip()
    print(f'[tpu_pod] queued resource {pod.name}: {state}', flush=True)
    if state == 'ACTIVE':
      return
    if state in ('FAILED', 'SUSPENDED'):
      raise RuntimeError(f'queued resource {pod.name} is {state}; see `{shlex.join(wait_command(pod)[:-1])}`')
    if time.monotonic() > deadline:
      raise TimeoutError(f'queued resource {pod.name} not ACTIVE after {timeout_s:.0f} s')
    time.sleep(poll_s)


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  train_args: list[str] = []
  if '--' in argv:
    cut = argv.index('--')
    argv, train_args = argv[:cut], argv[cut + 1:]
  args = build_parser().parse_args(argv)
  try:
    pod = pod_from_args(args)
    steps = plan(args.action, pod, train_args, args)
  except ValueError as e:
    print(f'tpu_pod: {e}', file=sys.stderr)
    return 2
  acc = pod.accelerator
  print(f'# {acc.name} ({acc.gcloud_type}): {acc.chips} chips {acc.topology_name}, '
        f'{acc.hosts} host(s) x {pod.num_slices} slice(s), runtime {pod.runtime}'
        + (' [dry run]' if args.dry_run else ''), flush=True)
  for step, commands in steps:
    print(f'# {step}', flush=True)
    if step == 'wait':
      print(f'# poll until ACTIVE:\n{shlex.join(commands[0])}', flush=True)
      if not args.dry_run:
        wait_until_active(pod)
      continue
    for cmd in commands:
      print(shlex.join(cmd), flush=True)
      if not args.dry_run:
        result = subprocess.run(cmd)
        if result.returncode:
          print(f'tpu_pod: {step} failed (exit {result.returncode}): {shlex.join(cmd)}',
                file=sys.stderr)
          return result.returncode
  return 0


if __name__ == '__main__':
  sys.exit(main())
