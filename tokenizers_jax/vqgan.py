"""VQGAN tokenizer (taming-transformers architecture) in Flax Linen, with a PyTorch converter.

The network mirrors taming's ``VQModel``: ``Encoder`` -> 1x1 ``quant_conv`` -> nearest-code
``VectorQuantizer`` -> 1x1 ``post_quant_conv`` -> ``Decoder``. Layout is NHWC; pixels fed to the
modules are in [-1, 1] as in taming. The jitted host-level helpers :func:`encode` and :func:`decode`
take and return uint8 RGB images.

Parameter layout (``params`` is a plain, unboxed dict mirroring taming's module tree, so the
converter is a name mapping)::

  encoder/conv_in/{kernel,bias}
  encoder/down_{i}/block_{j}/{norm1,conv1,norm2,conv2,nin_shortcut}    # level i, block j
  encoder/down_{i}/attn_{j}/{norm,q,k,v,proj_out}
  encoder/down_{i}/downsample/conv                                     # levels 0..L-2
  encoder/mid/{block_1,attn_1,block_2}, encoder/{norm_out,conv_out}
  decoder/conv_in, decoder/mid/..., decoder/up_{i}/{block_{j},attn_{j},upsample/conv}
  decoder/{norm_out,conv_out}, quant_conv, post_quant_conv, quantize/embedding [n_embed, embed_dim]

Torch ``a.down.0.block.1.conv1.weight`` is Flax ``a/down_0/block_1/conv1/kernel``; conv kernels go
OIHW -> HWIO, GroupNorm ``weight`` -> ``scale``. Taming builds ``decoder.up`` in reverse and inserts
each level at the front, so ``decoder.up.{i}`` is level ``i`` (width ``ch * ch_mult[i]``, run last
for ``i = 0``); ``up_{i}`` here is the same level.

Converting the released checkpoints (``vqgan_imagenet_f16_1024`` / ``f16_16384``, ``last.ckpt``),
once, where PyTorch is installed::

  import numpy as np, torch
  sd = torch.load('last.ckpt', map_location='cpu', weights_only=False)['state_dict']
  np.savez('vqgan_f16_1024.npz', **{k: v.float().numpy() for k, v in sd.items()
                                     if not k.startswith('loss.')})

then ``params = params_from_torch('vqgan_f16_1024.npz', VQGAN_1K)``. ``params_from_torch`` also reads
the ``.ckpt`` directly (importing torch lazily). Nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
  """taming ``ddconfig`` + quantizer sizes. Defaults: ``vqgan_imagenet_f16_1024`` (256px -> 16x16)."""
  ch: int = 128
  ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  attn_resolutions: tuple[int, ...] = (16,)
  resolution: int = 256
  in_channels: int = 3
  out_ch: int = 3
  z_channels: int = 256
  embed_dim: int = 256
  n_embed: int = 1024
  num_groups: int = 32     # GroupNorm groups (taming: always 32); smaller only for tests

  def __post_init__(self):
    object.__setattr__(self, 'ch_mult', tuple(int(m) for m in self.ch_mult))
    object.__setattr__(self, 'attn_resolutions', tuple(int(r) for r in self.attn_resolutions))
    for width in {self.ch * m for m in self.ch_mult} | {self.ch}:
      if width % self.num_groups:
        raise ValueError(f'VQGANConfig: channel width {width} (ch={self.ch} x ch_mult='
                         f'{self.ch_mult}) is not divisible by num_groups={self.num_groups}')

  @property
  def num_resolutions(self) -> int:
    return len(self.ch_mult)

  @property
  def downsample_factor(self) -> int:
    """Pixels per code along each side (16 for the f16 models)."""
    return 2 ** (self.num_resolutions - 1)


VQGAN_1K = VQGANConfig(n_embed=1024)
VQGAN_16K = VQGANConfig(n_embed=16384)


def config_from_taming_yaml_dict(d: Mapping[str, Any]) -> VQGANConfig:
  """VQGANConfig from taming's yaml (the whole file, ``model``, or ``model.params``) as a dict."""
  if 'model' in d:
    d = d['model']
  if 'params' in d and 'ddconfig' not in d:
    d = d['params']
  if 'ddconfig' not in d:
    raise ValueError(f'taming yaml: no model.params.ddconfig (top-level keys: {sorted(d)})')
  dd = dict(d['ddconfig'])
  if dd.pop('double_z', False):
    raise ValueError('taming yaml: ddconfig.double_z=True is not a VQGAN (VQModel uses False)')
  dd.pop('dropout', None)  # inference only
  for key, default in (('resamp_with_conv', True), ('give_pre_end', False), ('tanh_out', False)):
    if dd.pop(key, default) != default:
      raise ValueError(f'taming yaml: ddconfig.{key}={d["ddconfig"][key]!r} is not supported')
  fields = {f.name for f in dataclasses.fields(VQGANConfig)} - {'embed_dim', 'n_embed', 'num_groups'}
  unknown = sorted(set(dd) - fields)
  if unknown:
    raise ValueError(f'taming yaml: unsupported ddconfig keys {unknown}')
  for key in ('embed_dim', 'n_embed'):
    if key not in d:
      raise ValueError(f'taming yaml: model.params.{key} missing')
  return VQGANConfig(**dd, embed_dim=int(d['embed_dim']), n_embed=int(d['n_embed']))


# ---------------------------------------------------------------------------------------------
# Modules (NHWC; names mirror taming's attribute names).


def _conv(features: int, kernel: int, name: str) -> nn.Conv:
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)), name=name)


def _norm(groups: int, name: str) -> nn.GroupNorm:
  # Two-pass variance as torch does: the fast E[x^2]-E[x]^2 form loses digits on large activations.
  return nn.GroupNorm(num_groups=groups, epsilon=1e-6, use_fast_variance=False, name=name)


class ResnetBlock(nn.Module):
  """norm1 -> swish -> conv1 -> norm2 -> swish -> conv2, plus a 1x1 shortcut when widths differ."""
  out_channels: int
  num_groups: int = 32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = nn.swish(_norm(self.num_groups, 'norm1')(x))
    h = _conv(self.out_channels, 3, 'conv1')(h)
    h = nn.swish(_norm(self.num_groups, 'norm2')(h))
    h = _conv(self.out_channels, 3, 'conv2')(h)
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, 'nin_shortcut')(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over all spatial positions, 1x1 q/k/v/proj_out, residual."""
  num_groups: int = 32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, hgt, wid, c = x.shape
    h = _norm(self.num_groups, 'norm')(x)
    q = _conv(c, 1, 'q')(h).reshape(b, hgt * wid, c)
    k = _conv(c, 1, 'k')(h).reshape(b, hgt * wid, c)
    v = _conv(c, 1, 'v')(h).reshape(b, hgt * wid, c)
    w = jax.nn.softmax(jnp.einsum('bic,bjc->bij', q, k) * (c ** -0.5), axis=-1)
    h = jnp.einsum('bij,bjc->bic', w, v).reshape(b, hgt, wid, c)
    return x + _conv(c, 1, 'proj_out')(h)


class Downsample(nn.Module):
  """Zero-pad one row/column at the bottom/right, then a 3x3 stride-2 conv without padding."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return nn.Conv(x.shape[-1], (3, 3), strides=(2, 2), padding='VALID', name='conv')(x)


class Upsample(nn.Module):
  """Nearest-neighbour x2, then a 3x3 conv."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv(x.shape[-1], 3, 'conv')(x)


class MidBlock(nn.Module):
  """block_1 -> attn_1 -> block_2 at the lowest resolution."""
  channels: int
  num_groups: int = 32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = ResnetBlock(self.channels, self.num_groups, name='block_1')(x)
    x = AttnBlock(self.num_groups, name='attn_1')(x)
    return ResnetBlock(self.channels, self.num_groups, name='block_2')(x)


class Level(nn.Module):
  """One resolution level: ``num_blocks`` ResnetBlocks (each followed by attention if ``attn``)
  and an optional resampler (``downsample`` or ``upsample``). Named ``down_{i}`` / ``up_{i}``."""
  channels: int
  num_blocks: int
  attn: bool
  resample: str | None  # 'downsample', 'upsample' or None
  num_groups: int = 32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    for j in range(self.num_blocks):
      x = ResnetBlock(self.channels, self.num_groups, name=f'block_{j}')(x)
      if self.attn:
        x = AttnBlock(self.num_groups, name=f'attn_{j}')(x)
    if self.resample == 'downsample':
      x = Downsample(name='downsample')(x)
    elif self.resample == 'upsample':
      x = Upsample(name='upsample')(x)
    return x


class Encoder(nn.Module):
  """taming ``Encoder`` (double_z=False): images [B,H,W,in_channels] -> z [B,H/f,W/f,z_channels]."""
  config: VQGANConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    h = _conv(cfg.ch, 3, 'conv_in')(x)
    res = cfg.resolution  # attention placement follows the config, not the input size
    for i, mult in enumerate(cfg.ch_mult):
      last = i == cfg.num_resolutions - 1
      h = Level(cfg.ch * mult, cfg.num_res_blocks, res in cfg.attn_resolutions,
                None if last else 'downsample', cfg.num_groups, name=f'down_{i}')(h)
      if not last:
        res //= 2
    block_in = cfg.ch * cfg.ch_mult[-1]
    h = MidBlock(block_in, cfg.num_groups, name='mid')(h)
    h = nn.swish(_norm(cfg.num_groups, 'norm_out')(h))
    return _conv(cfg.z_channels, 3, 'conv_out')(h)


class Decoder(nn.Module):
  """taming ``Decoder``: z [B,h,w,z_channels] -> images [B,h*f,w*f,out_ch] (unbounded, ~[-1,1])."""
  config: VQGANConfig

  @nn.compact
  def __call__(self, z: Array) -> Array:
    cfg = self.config
    block_in = cfg.ch * cfg.ch_mult[-1]
    h = _conv(block_in, 3, 'conv_in')(z)
    h = MidBlock(block_in, cfg.num_groups, name='mid')(h)
    res = cfg.resolution // cfg.downsample_factor
    for i in reversed(range(cfg.num_resolutions)):
      h = Level(cfg.ch * cfg.ch_mult[i], cfg.num_res_blocks + 1, res in cfg.attn_resolutions,
                'upsample' if i != 0 else None, cfg.num_groups, name=f'up_{i}')(h)
      if i != 0:
        res *= 2
    h = nn.swish(_norm(cfg.num_groups, 'norm_out')(h))
    return _conv(cfg.out_ch, 3, 'conv_out')(h)


class VectorQuantizer(nn.Module):
  """Nearest codebook entry by squared L2 distance; straight-through gradient as in taming."""
  n_embed: int
  embed_dim: int

  def setup(self):
    self.embedding = self.param(
        'embedding', nn.initializers.uniform(2.0 / self.n_embed), (self.n_embed, self.embed_dim),
        jnp.float32)

  def __call__(self, z: Array) -> tuple[Array, Array]:
    """z [..., embed_dim] -> (quantized z (same shape), int32 indices [...])."""
    e = self.embedding
    flat = z.reshape(-1, self.embed_dim)
    dist = (jnp.sum(flat ** 2, axis=1, keepdims=True) + jnp.sum(e ** 2, axis=1)[None]
            - 2.0 * flat @ e.T)
    idx = jnp.argmin(dist, axis=1).astype(jnp.int32).reshape(z.shape[:-1])
    zq = self.lookup(idx)
    return z + jax.lax.stop_gradient(zq - z), idx

  def lookup(self, indices: Array) -> Array:
    return jnp.take(self.embedding, indices, axis=0)


class VQGAN(nn.Module):
  """taming ``VQModel`` for inference: ``encode``, ``decode_indices``, ``__call__`` (reconstruct)."""
  config: VQGANConfig

  def setup(self):
    cfg = self.config
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg)
    self.quant_conv = nn.Conv(cfg.embed_dim, (1, 1))
    self.post_quant_conv = nn.Conv(cfg.z_channels, (1, 1))
    self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim)

  def encode(self, x: Array) -> tuple[Array, Array]:
    """Images [B,H,W,C] in [-1,1] -> (quantized z [B,h,w,embed_dim], indices int32 [B,h,w])."""
    return self.quantize(self.quant_conv(self.encoder(x)))

  def decode(self, zq: Array) -> Array:
    """Quantized z [B,h,w,embed_dim] -> images [B,H,W,out_ch] (roughly [-1,1], not clipped)."""
    return self.decoder(self.post_quant_conv(zq))

  def decode_indices(self, indices: Array) -> Array:
    """Code indices [B,h,w] -> images [B,h*f,w*f,out_ch] (roughly [-1,1], not clipped)."""
    return self.decode(self.quantize.lookup(indices))

  def __call__(self, x: Array) -> Array:
    """Reconstruction of images in [-1,1]."""
    return self.decode(self.encode(x)[0])


# ---------------------------------------------------------------------------------------------
# Converter from taming's PyTorch state dict.

_LIST_PARENTS = ('down', 'up')
_LIST_CHILDREN = ('block', 'attn')


def _flax_path_to_torch(path: tuple[str, ...]) -> tuple[str, str]:
  """Flax param path -> (torch key, kind) with kind in {'conv', 'vector', 'embedding'}."""
  parts = []
  for i, name in enumerate(path[:-1]):
    m = re.fullmatch(r'([a-z]+)_(\d+)', name)
    parent = path[i - 1] if i else ''
    if m and (m.group(1) in _LIST_PARENTS
              or (m.group(1) in _LIST_CHILDREN and re.fullmatch(r'(down|up)_\d+', parent))):
      parts.extend([m.group(1), m.group(2)])
    else:
      parts.append(name)
  leaf = path[-1]
  if leaf == 'embedding':
    return '.'.join(parts + ['embedding', 'weight']), 'embedding'
  if leaf == 'kernel':
    return '.'.join(parts + ['weight']), 'conv'
  if leaf == 'scale':
    return '.'.join(parts + ['weight']), 'vector'
  if leaf == 'bias':
    return '.'.join(parts + ['bias']), 'vector'
  raise ValueError(f'no torch name for Flax param {"/".join(path)}')


@functools.lru_cache(maxsize=None)
def _param_shapes(config: VQGANConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Flax param path -> shape, from ``jax.eval_shape`` (nothing is allocated)."""
  size = config.downsample_factor
  x = jax.ShapeDtypeStruct((1, size, size, config.in_channels), jnp.float32)
  tree = jax.eval_shape(lambda x: VQGAN(config).init(jax.random.PRNGKey(0), x), x)['params']
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def _torch_shape(flax_shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
  if kind == 'conv':  # HWIO -> OIHW
    h, w, i, o = flax_shape
    return (o, i, h, w)
  return flax_shape


def torch_param_shapes(config: VQGANConfig) -> dict[str, tuple[int, ...]]:
  """Every taming state-dict key (besides ``loss.*``) this config expects, with its torch shape."""
  out = {}
  for path, shape in _param_shapes(config).items():
    key, kind = _flax_path_to_torch(path)
    out[key] = _torch_shape(shape, kind)
  return out


def _is_ignored(key: str) -> bool:
  return key.startswith('loss.')


def load_state_dict(path: str | os.PathLike, weights_only: bool = True) -> dict[str, np.ndarray]:
  """A taming state dict from ``.npz`` or a torch ``.ckpt/.pt/.pth`` (torch imported lazily).

  ``weights_only=False`` lets torch unpickle arbitrary objects: use it only for trusted files
  (older Lightning checkpoints may need it)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'VQGAN checkpoint {path} does not exist')
  ext = os.path.splitext(path)[1].lower()
  if ext == '.npz':
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  if ext in ('.ckpt', '.pt', '.pth'):
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError(f'reading {path} needs PyTorch (pip install torch), or convert it to .npz '
                        'where torch is installed (see tokenizers_jax/vqgan.py)') from e
    try:
      obj = torch.load(path, map_location='cpu', weights_only=weights_only)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'torch.load({path}, weights_only={weights_only}) failed: {e}; for a '
                       'trusted Lightning checkpoint pass weights_only=False') from e
    if isinstance(obj, Mapping) and isinstance(obj.get('state_dict'), Mapping):
      obj = obj['state_dict']
    if not isinstance(obj, Mapping):
      raise ValueError(f'{path} holds a {type(obj).__name__}, not a state dict')
    return {k: v.detach().cpu().float().numpy() for k, v in obj.items()
            if not _is_ignored(k) and hasattr(v, 'detach')}
  raise ValueError(f'VQGAN checkpoint {path}: unknown extension {ext!r} '
                   '(expected .npz, .ckpt, .pt or .pth)')


def params_from_torch(state_dict: Mapping[str, Any] | str | os.PathLike,
                      config: VQGANConfig) -> dict:
  """Flax params for :class:`VQGAN` from taming's state dict (key -> array), or a path to one.

  Accepts a full Lightning checkpoint dict (``{'state_dict': {...}, ...}``); ``loss.*`` keys
  (discriminator, LPIPS) are ignored. Missing, unexpected and misshaped keys raise ``ValueError``
  naming them. Returns NumPy float32 arrays (``jax.device_put`` them where needed).
  """
  if isinstance(state_dict, (str, os.PathLike)):
    state_dict = load_state_dict(state_dict)
  if isinstance(state_dict.get('state_dict'), Mapping):
    state_dict = state_dict['state_dict']
  expected = {}
  for path, shape in _param_shapes(config).items():
    key, kind = _flax_path_to_torch(path)
    expected[key] = (path, kind, shape)
  given = {k for k in state_dict if not _is_ignored(k)}
  missing = sorted(set(expected) - given)
  unexpected = sorted(given - set(expected))
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f'missing keys {missing}')
    if unexpected:
      parts.append(f'unexpected keys {unexpected}')
    raise ValueError(f'VQGAN state dict does not match {config}: ' + '; '.join(parts))
  params: dict = {}
  bad = []
  for key, (path, kind, shape) in expected.items():
    value = state_dict[key]
    if hasattr(value, 'detach'):  # a torch tensor handed in directly
      value = value.detach().cpu().float().numpy()
    value = np.asarray(value, dtype=np.float32)
    want = _torch_shape(shape, kind)
    if value.shape != want:
      bad.append(f'{key}: expected {want}, got {value.shape}')
      continue
    if kind == 'conv':
      value = value.transpose(2, 3, 1, 0)
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  if bad:
    raise ValueError('VQGAN state dict has misshaped keys: ' + '; '.join(bad))
  return params


# ---------------------------------------------------------------------------------------------
# uint8 host API.


@functools.lru_cache(maxsize=None)
def _jitted(config: VQGANConfig):
  model = VQGAN(config)

  @jax.jit
  def enc(params, images):
    x = jnp.clip(images.astype(jnp.float32) / 127.5 - 1.0, -1.0, 1.0)
    return model.apply({'params': params}, x, method=VQGAN.encode)[1]

  @jax.jit
  def dec(params, codes):
    x = model.apply({'params': params}, codes, method=VQGAN.decode_indices)
    x = (jnp.clip(x, -1.0, 1.0) + 1.0) * 127.5
    return jnp.round(x).astype(jnp.uint8)

  return enc, dec


def encode(params: Any, images_uint8: Any, config: VQGANConfig) -> Array:
  """uint8 RGB images [B,H,W,C] -> int32 codes [B,H/f,W/f] (f = config.downsample_factor)."""
  images = jnp.asarray(images_uint8)
  if images.dtype != jnp.uint8:
    raise ValueError(f'vqgan.encode: images must be uint8 in [0, 255], got dtype {images.dtype}')
  f = config.downsample_factor
  if images.ndim != 4 or images.shape[-1] != config.in_channels:
    raise ValueError(f'vqgan.encode: images must be [B,H,W,{config.in_channels}], got '
                     f'{images.shape}')
  if images.shape[1] % f or images.shape[2] % f:
    raise ValueError(f'vqgan.encode: image size {images.shape[1]}x{images.shape[2]} is not '
                     f'divisible by the downsampling factor {f}')
  return _jitted(config)[0](params, images)


def decode(params: Any, codes: Any, config: VQGANConfig) -> Array:
  """int codes [B,h,w] -> uint8 RGB images [B,h*f,w*f,out_ch] (clipped to [-1,1] first)."""
  try:
    host = np.asarray(codes)
  except jax.errors.TracerArrayConversionError:  # called under a transformation: no host check
    host = None
  if host is not None:
    if host.ndim != 3:
      raise ValueError(f'vqgan.decode: codes must be [B,h,w], got {host.shape}')
    if host.size and (host.min() < 0 or host.max() >= config.n_embed):
      raise ValueError(f'vqgan.decode: codes in [{host.min()}, {host.max()}] are outside '
                       f'[0, {config.n_embed})')
  return _jitted(config)[1](params, jnp.asarray(codes, jnp.int32))
