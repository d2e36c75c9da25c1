"""The DALL-E discrete VAE (dVAE) tokenizer in Flax Linen, and a converter for its released weights.

The computation is the released ``dall_e`` package's, in NHWC:

* :class:`Encoder`: pixels mapped by :func:`map_pixels` -> 7x7 conv to ``n_hid`` -> ``group_count``
  groups of ``n_blk_per_group`` residual blocks with widths 1x, 2x, 4x, 8x ``n_hid`` and a 2x2
  max-pool after every group but the last -> ReLU, 1x1 conv to ``vocab_size`` logits (stride 8 for
  the released 4 groups). A block is ``id_path(x) + post_gain * res_path(x)``: ``id_path`` is a 1x1
  conv where the width changes (identity otherwise), ``res_path`` is ReLU-conv four times (3x3,
  3x3, 3x3, 1x1; hidden width = width / 4) and
  ``post_gain = 1 / (group_count * n_blk_per_group)**2`` (1/64 released: the released code divides
  by the square of the total number of blocks).
* :class:`Decoder`: one-hot codes -> 1x1 conv to ``n_init`` -> groups with widths 8x, 4x, 2x, 1x
  ``n_hid`` and nearest x2 upsampling after every group but the last (blocks whose convs are 1x1,
  3x3, 3x3, 3x3) -> ReLU, 1x1 conv to ``2 * output_channels``: the first 3 channels are the
  logit-Laplace mean logits (the image is their sigmoid), the last 3 the scale.

Using released weights (nothing here downloads anything; point at local files)::

  from tokenizers_jax import dvae
  model = dvae.DVAE.load('encoder.npz', 'decoder.npz')
  codes = model.encode(images_uint8)        # [B, H, W, 3] uint8 -> [B, H/8, W/8] int32
  recon = model.decode(codes)               # -> [B, H, W, 3] uint8

or with the plain functions: ``enc = dvae.load_encoder('encoder.npz')`` (Flax params for
``Encoder()``), ``dvae.encode(enc, images)``;
``dvae.decode(dvae.load_decoder('decoder.npz'), codes)``. :func:`encode` / :func:`decode` take the
encoder's (decoder's) own params or a dict holding them under ``'encoder'`` (``'decoder'``); the
module's sizes are read off the params' shapes unless a module is passed, so non-default sizes need
nothing extra.

Converting the released ``encoder.pkl`` / ``decoder.pkl`` to ``.npz`` (once, in an environment with
``torch`` and the ``dall_e`` package, ``pip install torch DALL-E``). The files are pickled torch
*modules*, so unpickling them imports ``dall_e`` and runs pickle code: convert only files you
trust::

  python -m tokenizers_jax.dvae convert encoder.pkl encoder.npz
  python -m tokenizers_jax.dvae convert decoder.pkl decoder.npz

which does the equivalent of::

  import numpy as np, torch
  module = torch.load('encoder.pkl', map_location='cpu', weights_only=False)   # needs dall_e
  np.savez('encoder.npz', **{k: v.numpy() for k, v in module.state_dict().items()})

(written atomically: a temporary name in the same directory, then ``os.replace``). The
:func:`load_encoder` / :func:`load_decoder` loaders read such an ``.npz``, a dict of arrays, or a
``torch.save``-d *state dict* (``.pt``/``.pth``/``.pkl``/``.bin``, read with ``weights_only=True``;
torch is imported only then).
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LOGIT_LAPLACE_EPS = 0.1
TORCH_SUFFIXES = ('.pt', '.pth', '.pkl', '.bin', '.ckpt')


# ----------------------------------------------------------------------------------------------
# Pixels

def map_pixels(x):
  """[0, 1] pixels -> [eps, 1 - eps], the range the encoder was trained on."""
  return (1 - 2 * LOGIT_LAPLACE_EPS) * x + LOGIT_LAPLACE_EPS


def unmap_pixels(x):
  """Inverse of :func:`map_pixels`, clipped to [0, 1]."""
  return jnp.clip((x - LOGIT_LAPLACE_EPS) / (1 - 2 * LOGIT_LAPLACE_EPS), 0, 1)


# ----------------------------------------------------------------------------------------------
# Modules

class Conv2d(nn.Module):
  """A 'same'-padded (``(k - 1) // 2`` each side) convolution with bias; HWIO ``kernel``.

  Initialised as ``dall_e``'s ``Conv2d``: normal weights with std ``1 / sqrt(fan_in)``, zero bias.
  ``in_features`` fixes the kernel's input width where it cannot be read off an input (the
  decoder's embedding path, :meth:`embed`).
  """
  features: int
  kernel_size: int
  in_features: int | None = None
  precision: str | None = None

  @nn.compact
  def _params(self, in_features: int):
    k = self.kernel_size
    kernel = self.param('kernel', nn.initializers.variance_scaling(1.0, 'fan_in', 'normal'),
                        (k, k, in_features, self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    return kernel, bias

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel, bias = self._params(self.in_features or x.shape[-1])
    pad = (self.kernel_size - 1) // 2
    y = jax.lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding=((pad, pad), (pad, pad)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=self.precision)
    return y + bias

  def embed(self, codes: jax.Array) -> jax.Array:
    """For a 1x1 conv: ``self(one_hot(codes))`` as a row gather of the kernel."""
    if self.kernel_size != 1 or self.in_features is None:
      raise ValueError('Conv2d.embed needs a 1x1 conv with in_features set')
    kernel, bias = self._params(self.in_features)
    return jnp.take(kernel[0, 0], codes, axis=0) + bias


class _ResPath(nn.Module):
  """ReLU -> conv_i for each kernel size, widths ``hidden, ..., hidden, n_out``."""
  hidden: int
  n_out: int
  kernel_sizes: tuple[int, ...]
  precision: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n = len(self.kernel_sizes)
    for i, k in enumerate(self.kernel_sizes):
      width = self.n_out if i == n - 1 else self.hidden
      x = Conv2d(width, k, precision=self.precision, name=f'conv_{i + 1}')(nn.relu(x))
    return x


class ResBlock(nn.Module):
  """``id_path(x) + post_gain * res_path(x)``; ``id_path`` is a 1x1 conv only where the width
  changes. ``kernel_sizes`` = (3, 3, 3, 1) for the encoder, (1, 3, 3, 3) for the decoder."""
  n_out: int
  post_gain: float
  kernel_sizes: tuple[int, ...]
  precision: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.shape[-1] != self.n_out:
      identity = Conv2d(self.n_out, 1, precision=self.precision, name='id_path')(x)
    else:
      identity = x
    res = _ResPath(self.n_out // 4, self.n_out, self.kernel_sizes, self.precision,
                   name='res_path')(x)
    return identity + self.post_gain * res


class _Output(nn.Module):
  """ReLU then a 1x1 conv named ``conv`` (the released ``blocks.output``)."""
  features: int
  precision: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return Conv2d(self.features, 1, precision=self.precision, name='conv')(nn.relu(x))


class _Group(nn.Module):
  """``n_blk`` blocks named ``block_1..`` of one width (the released ``blocks.group_g``)."""
  n_blk: int
  width: int
  post_gain: float
  kernel_sizes: tuple[int, ...]
  precision: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for b in range(self.n_blk):
      x = ResBlock(self.width, self.post_gain, self.kernel_sizes, self.precision,
                   name=f'block_{b + 1}')(x)
    return x


class Encoder(nn.Module):
  """NHWC mapped pixels ``[B, H, W, input_channels]`` -> logits ``[B, H/8, W/8, vocab_size]``
  (stride ``2**(group_count - 1)``). Param tree: ``input``, ``group_g/block_b/{id_path,res_path}``,
  ``output/conv``, each conv ``{kernel (HWIO), bias}``: the released key names without ``blocks.``.
  """
  group_count: int = 4
  n_hid: int = 256
  n_blk_per_group: int = 2
  input_channels: int = 3
  vocab_size: int = 8192
  precision: str | None = None  # e.g. 'highest' for full float32 convs on TPU/GPU

  @property
  def downsample(self) -> int:
    return 2 ** (self.group_count - 1)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.shape[-1] != self.input_channels:
      raise ValueError(f'Encoder expects {self.input_channels} input channels (NHWC), got shape '
                       f'{x.shape}')
    post_gain = 1.0 / (self.group_count * self.n_blk_per_group) ** 2
    x = Conv2d(self.n_hid, 7, precision=self.precision, name='input')(x.astype(jnp.float32))
    for g in range(self.group_count):
      x = _Group(self.n_blk_per_group, 2 ** g * self.n_hid, post_gain, (3, 3, 3, 1),
                 self.precision, name=f'group_{g + 1}')(x)
      if g < self.group_count - 1:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    return _Output(self.vocab_size, self.precision, name='output')(x)


class Decoder(nn.Module):
  """Codes -> ``[B, 8h, 8w, 2 * output_channels]`` float32, the released decoder's output
  (channels ``[:3]`` logit-Laplace mean logits, ``[3:]`` scale).

  ``z`` is either one-hot (or soft) codes ``[B, h, w, vocab_size]`` (float) or integer codes
  ``[B, h, w]``; the latter takes a row gather of the 1x1 input conv's kernel instead of a matmul
  with a one-hot (same result, far cheaper for the 8192-way vocabulary).
  """
  group_count: int = 4
  n_init: int = 128
  n_hid: int = 256
  n_blk_per_group: int = 2
  output_channels: int = 3
  vocab_size: int = 8192
  precision: str | None = None

  @property
  def upsample(self) -> int:
    return 2 ** (self.group_count - 1)

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    inp = Conv2d(self.n_init, 1, in_features=self.vocab_size, precision=self.precision,
                 name='input')
    if jnp.issubdtype(z.dtype, jnp.integer) and z.ndim == 3:
      x = inp.embed(z)
    else:
      if z.shape[-1] != self.vocab_size:
        raise ValueError(f'Decoder expects one-hot codes with {self.vocab_size} channels (NHWC) '
                         f'or integer codes [B, h, w], got shape {z.shape} {z.dtype}')
      x = inp(z.astype(jnp.float32))
    post_gain = 1.0 / (self.group_count * self.n_blk_per_group) ** 2
    for g in range(self.group_count):
      width = 2 ** (self.group_count - 1 - g) * self.n_hid
      x = _Group(self.n_blk_per_group, width, post_gain, (1, 3, 3, 3), self.precision,
                 name=f'group_{g + 1}')(x)
      if g < self.group_count - 1:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _Output(2 * self.output_channels, self.precision, name='output')(x)


# ----------------------------------------------------------------------------------------------
# Released state-dict layout

def _block_shapes(prefix: str, n_in: int, n_out: int, kernel_sizes) -> dict[str, tuple]:
  shapes = {}
  if n_in != n_out:
    shapes[f'{prefix}.id_path.w'] = (n_out, n_in, 1, 1)
    shapes[f'{prefix}.id_path.b'] = (n_out,)
  hidden = n_out // 4
  widths = [n_in] + [hidden] * (len(kernel_sizes) - 1) + [n_out]
  for i, k in enumerate(kernel_sizes):
    shapes[f'{prefix}.res_path.conv_{i + 1}.w'] = (widths[i + 1], widths[i], k, k)
    shapes[f'{prefix}.res_path.conv_{i + 1}.b'] = (widths[i + 1],)
  return shapes


def state_dict_shapes(module: Encoder | Decoder) -> dict[str, tuple[int, ...]]:
  """The released PyTorch state-dict keys and shapes (weights OIHW) for ``module``'s sizes."""
  encoder = isinstance(module, Encoder)
  if not encoder and not isinstance(module, Decoder):
    raise TypeError(f'expected an Encoder or Decoder, got {type(module).__name__}')
  g_count, n_blk, n_hid = module.group_count, module.n_blk_per_group, module.n_hid
  if encoder:
    shapes = {'blocks.input.w': (n_hid, module.input_channels, 7, 7), 'blocks.input.b': (n_hid,)}
    widths = [2 ** g * n_hid for g in range(g_count)]
    n_in, kernel_sizes = n_hid, (3, 3, 3, 1)
    out_shape = (module.vocab_size, widths[-1], 1, 1)
  else:
    shapes = {'blocks.input.w': (module.n_init, module.vocab_size, 1, 1),
              'blocks.input.b': (module.n_init,)}
    widths = [2 ** (g_count - 1 - g) * n_hid for g in range(g_count)]
    n_in, kernel_sizes = module.n_init, (1, 3, 3, 3)
    out_shape = (2 * module.output_channels, widths[-1], 1, 1)
  for g, width in enumerate(widths):
    for b in range(n_blk):
      shapes.update(_block_shapes(f'blocks.group_{g + 1}.block_{b + 1}', n_in, width,
                                  kernel_sizes))
      n_in = width
  shapes['blocks.output.conv.w'] = out_shape
  shapes['blocks.output.conv.b'] = out_shape[:1]
  return shapes


def _kind_name(kind: type) -> str:
  return 'encoder' if kind is Encoder else 'decoder'


def _infer_module(kind: type, shapes: Mapping[str, tuple], source: str) -> Encoder | Decoder:
  """Module sizes from ``{torch key: OIHW shape}``; missing anchors are named."""
  name = _kind_name(kind)
  for key in ('blocks.input.w', 'blocks.output.conv.w'):
    if key not in shapes:
      raise ValueError(f'{source}: missing key {key} (not a dVAE {name} state dict?)')
    if len(shapes[key]) != 4:
      raise ValueError(f'{source}: {key} should be a 4-d OIHW conv weight, got shape '
                       f'{tuple(shapes[key])}')
  groups = [int(m.group(1)) for k in shapes if (m := re.match(r'blocks\.group_(\d+)\.', k))]
  blocks = [int(m.group(1)) for k in shapes
            if (m := re.match(r'blocks\.group_\d+\.block_(\d+)\.', k))]
  if not groups or not blocks:
    raise ValueError(f'{source}: no blocks.group_<g>.block_<b>.* keys (not a dVAE {name} state '
                     f'dict?)')
  inp, out = shapes['blocks.input.w'], shapes['blocks.output.conv.w']
  if kind is Encoder:
    return Encoder(group_count=max(groups), n_hid=inp[0], n_blk_per_group=max(blocks),
                   input_channels=inp[1], vocab_size=out[0])
  if out[0] % 2:
    raise ValueError(f'{source}: blocks.output.conv.w has {out[0]} output channels; the decoder '
                     f'outputs 2 per image channel (mean and scale), so it must be even')
  return Decoder(group_count=max(groups), n_init=inp[0], n_hid=out[1],
                 n_blk_per_group=max(blocks), output_channels=out[0] // 2, vocab_size=inp[1])


def _check_shapes(module, shapes: Mapping[str, tuple], source: str) -> None:
  expected = state_dict_shapes(module)
  name = _kind_name(type(module))

  def listing(keys):
    keys = sorted(keys)
    more = f' (and {len(keys) - 5} more)' if len(keys) > 5 else ''
    return ', '.join(keys[:5]) + more

  missing = set(expected) - set(shapes)
  if missing:
    word = 'key' if len(missing) == 1 else 'keys'
    raise ValueError(f'{source}: missing {word} {listing(missing)} for a dVAE {name} with '
                     f'{_describe(module)}')
  unexpected = set(shapes) - set(expected)
  if unexpected:
    word = 'key' if len(unexpected) == 1 else 'keys'
    raise ValueError(f'{source}: unexpected {word} {listing(unexpected)} for a dVAE {name} with '
                     f'{_describe(module)}')
  for key, shape in expected.items():
    if tuple(shapes[key]) != shape:
      raise ValueError(f'{source}: {key} has shape {tuple(shapes[key])}, expected {shape} for a '
                       f'dVAE {name} with {_describe(module)}')


def _describe(module) -> str:
  fields = ['group_count', 'n_hid', 'n_blk_per_group', 'vocab_size']
  fields += ['input_channels'] if isinstance(module, Encoder) else ['n_init', 'output_channels']
  return ', '.join(f'{f}={getattr(module, f)}' for f in fields)


# ----------------------------------------------------------------------------------------------
# Reading state dicts

def _read_path(path: str | os.PathLike) -> dict[str, Any]:
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'dVAE weights file not found: {path}')
  suffix = os.path.splitext(path)[1].lower()
  if suffix == '.npz':
    try:
      with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
    except Exception as e:  # zipfile / pickle / format errors all mean "cannot read this"
      raise ValueError(f'could not read {path} as an .npz of arrays: '
                       f'{type(e).__name__}: {e}') from e
  if suffix in TORCH_SUFFIXES:
    try:
      import torch  # lazily: only torch-saved files need it
    except ImportError as e:
      raise ImportError(f'reading {path} needs torch, which is not installed; convert it to .npz '
                        f'once where torch is available (python -m tokenizers_jax.dvae convert '
                        f'{path} OUT.npz) and load the .npz') from e
    try:
      obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
      first_line = str(e).strip().splitlines()[0] if str(e).strip() else ''
      raise ValueError(f'could not read {path} as a torch state dict (torch.load with '
                       f'weights_only=True); a pickled dall_e module (the released '
                       f'encoder.pkl/decoder.pkl) must be converted first: python -m '
                       f'tokenizers_jax.dvae convert {path} OUT.npz '
                       f'[{type(e).__name__}: {first_line}]') from e
    if not isinstance(obj, Mapping):
      raise ValueError(f'{path} holds a {type(obj).__name__}, not a state dict; convert it with '
                       f'python -m tokenizers_jax.dvae convert {path} OUT.npz')
    return {k: (v.detach().cpu().float().numpy() if hasattr(v, 'detach') else v)
            for k, v in obj.items()}
  raise ValueError(f'{path}: unsupported weights file extension {suffix!r}; expected .npz or a '
                   f'torch file ({", ".join(TORCH_SUFFIXES)})')


def _strip_prefix(state_dict: Mapping[str, Any], kind: type, source: str) -> dict[str, Any]:
  """Drops a common prefix before ``blocks.`` (``module.``, ``encoder.``, ...); where keys of
  several modules are mixed, keeps those whose prefix names the wanted one (``encoder.``)."""
  by_prefix: dict[str, dict[str, Any]] = {}
  stray = []
  for key, value in state_dict.items():
    if not isinstance(key, str):
      raise TypeError(f'{source}: state-dict keys must be strings, got {key!r}')
    m = re.match(r'^(|.*?\.)blocks\.', key)
    if m is None:
      stray.append(key)
      continue
    by_prefix.setdefault(m.group(1), {})[key[len(m.group(1)):]] = value
  name = _kind_name(kind)
  if len(by_prefix) > 1:
    wanted = [p for p in by_prefix if p.rstrip('.').split('.')[-1] == name]
    if len(wanted) != 1:
      raise ValueError(f'{source}: keys under several prefixes {sorted(by_prefix)}; pass the '
                       f'{name} state dict alone')
    return by_prefix[wanted[0]]
  if stray:
    raise ValueError(f'{source}: unexpected key {sorted(stray)[0]} (dVAE keys look like '
                     f'blocks.input.w)' + (f' and {len(stray) - 1} more' if len(stray) > 1 else ''))
  return next(iter(by_prefix.values()), {})


def _as_float32(key: str, value, source: str) -> np.ndarray:
  arr = np.asarray(value)
  if arr.dtype.kind in 'bOSUMm':
    raise ValueError(f'{source}: {key} has dtype {arr.dtype}, expected floating-point weights')
  return arr.astype(np.float32, copy=False)


def _to_params(state_dict: Mapping[str, np.ndarray]) -> dict:
  """Released keys -> nested Flax params: ``blocks.`` dropped, ``w`` (OIHW) -> ``kernel`` (HWIO),
  ``b`` -> ``bias``."""
  params: dict = {}
  for key, value in state_dict.items():
    *path, leaf = key.split('.')[1:]
    node = params
    for p in path:
      node = node.setdefault(p, {})
    if leaf == 'w':
      node['kernel'] = value.transpose(2, 3, 1, 0)
    else:
      node['bias'] = value
  return params


def _from_state_dict(kind: type, source) -> tuple[Encoder | Decoder, dict]:
  if isinstance(source, (str, os.PathLike)):
    name = os.fspath(source)
    state_dict = _read_path(source)
  elif isinstance(source, Mapping):
    name, state_dict = f'{_kind_name(kind)} state dict', source
  else:
    raise TypeError(f'load_{_kind_name(kind)} expects a dict of arrays keyed like '
                    f'blocks.input.w or a path to an .npz/torch file, got {type(source).__name__}')
  state_dict = _strip_prefix(state_dict, kind, name)
  arrays = {k: _as_float32(k, v, name) for k, v in state_dict.items()}
  shapes = {k: v.shape for k, v in arrays.items()}
  module = _infer_module(kind, shapes, name)
  _check_shapes(module, shapes, name)
  return module, _to_params(arrays)


def encoder_from_state_dict(state_dict: Mapping[str, Any] | str | os.PathLike
                            ) -> tuple[Encoder, dict]:
  """(``Encoder`` with the sizes read off the weights, its Flax params) from a released-layout
  state dict of arrays or a path to one (``.npz``, or a torch state dict)."""
  return _from_state_dict(Encoder, state_dict)


def decoder_from_state_dict(state_dict: Mapping[str, Any] | str | os.PathLike
                            ) -> tuple[Decoder, dict]:
  """(``Decoder`` with the sizes read off the weights, its Flax params); see
  :func:`encoder_from_state_dict`."""
  return _from_state_dict(Decoder, state_dict)


def load_encoder(state_dict: Mapping[str, Any] | str | os.PathLike) -> dict:
  """Flax encoder params (NumPy float32, HWIO kernels) from released weights; use them with
  ``Encoder()`` for the released sizes, or get the module too from
  :func:`encoder_from_state_dict`."""
  return encoder_from_state_dict(state_dict)[1]


def load_decoder(state_dict: Mapping[str, Any] | str | os.PathLike) -> dict:
  """Flax decoder params from released weights; see :func:`load_encoder`."""
  return decoder_from_state_dict(state_dict)[1]


def params_to_state_dict(params: Mapping) -> dict[str, np.ndarray]:
  """Flax dVAE params -> the released key layout (OIHW weights), the inverse of loading."""
  flat = {}

  def walk(node, path):
    for k, v in node.items():
      if isinstance(v, Mapping):
        walk(v, path + [k])
      elif k == 'kernel':
        flat['.'.join(['blocks'] + path + ['w'])] = np.asarray(v).transpose(3, 2, 0, 1)
      elif k == 'bias':
        flat['.'.join(['blocks'] + path + ['b'])] = np.asarray(v)
      else:
        raise ValueError(f'unexpected dVAE param {"/".join(path + [k])}')
  walk(params, [])
  return flat


def _module_for(kind: type, params: Mapping) -> Encoder | Decoder:
  """The module whose sizes match ``params`` (only shapes are read)."""
  try:
    shapes = {k: tuple(v.shape) for k, v in params_to_state_dict(params).items()}
  except AttributeError as e:
    raise TypeError(f'{_kind_name(kind)} params must be a nested dict of arrays') from e
  module = _infer_module(kind, shapes, f'{_kind_name(kind)} params')
  _check_shapes(module, shapes, f'{_kind_name(kind)} params')
  return module


def _select(params, kind: type) -> Mapping:
  name = _kind_name(kind)
  if isinstance(params, DVAE):
    return getattr(params, f'{name}_params')
  if not isinstance(params, Mapping):
    raise TypeError(f'expected {name} params (a dict), got {type(params).__name__}')
  if name in params:
    return params[name]
  if set(params) == {'params'}:
    return params['params']
  return params


# ----------------------------------------------------------------------------------------------
# Tokenizing

@functools.partial(jax.jit, static_argnums=0)
def _encode_jit(module: Encoder, params, images):
  x = map_pixels(images.astype(jnp.float32) / 255.0)
  logits = module.apply({'params': params}, x)
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=0)
def _decode_jit(module: Decoder, params, codes):
  stats = module.apply({'params': params}, codes)
  pixels = unmap_pixels(jax.nn.sigmoid(stats[..., :3]))
  return jnp.round(pixels * 255.0).astype(jnp.uint8)


def encode(params, images, encoder: Encoder | None = None) -> jax.Array:
  """uint8 NHWC RGB ``[B, H, W, 3]`` -> int32 codes ``[B, H/8, W/8]`` (argmax of the logits).

  ``params``: the encoder's Flax params (:func:`load_encoder`), or a dict with an ``'encoder'``
  entry, or a :class:`DVAE`. ``encoder``: the module; by default one with the sizes of ``params``.
  Jitted once per module configuration and input shape.
  """
  params = _select(params, Encoder)
  module = encoder if encoder is not None else _module_for(Encoder, params)
  if getattr(images, 'dtype', None) != np.uint8:
    raise TypeError(f'encode expects uint8 images, got {getattr(images, "dtype", type(images))}')
  if images.ndim != 4 or images.shape[-1] != module.input_channels:
    raise ValueError(f'encode expects images [B, H, W, {module.input_channels}], got shape '
                     f'{images.shape}')
  f = module.downsample
  if images.shape[1] % f or images.shape[2] % f:
    raise ValueError(f'image height and width must be multiples of {f}, got {images.shape[1:3]}')
  return _encode_jit(module, params, images)


def decode(params, codes, decoder: Decoder | None = None) -> jax.Array:
  """int codes ``[B, h, w]`` -> uint8 RGB ``[B, 8h, 8w, 3]``: sigmoid of the mean logits,
  :func:`unmap_pixels`, times 255 rounded (the released demo truncates instead; at most 1 apart).

  ``params``: the decoder's Flax params, a dict with a ``'decoder'`` entry, or a :class:`DVAE`.
  The input conv is a row gather of its kernel (equal to the one-hot path). Codes given as a
  concrete array are range-checked; out-of-range codes under an outer ``jit`` are clamped.
  """
  params = _select(params, Decoder)
  module = decoder if decoder is not None else _module_for(Decoder, params)
  if not jnp.issubdtype(getattr(codes, 'dtype', np.float32), jnp.integer):
    raise TypeError(f'decode expects integer codes, got {getattr(codes, "dtype", type(codes))}')
  if codes.ndim != 3:
    raise ValueError(f'decode expects codes [B, h, w], got shape {codes.shape}')
  if not isinstance(codes, jax.core.Tracer) and codes.size:
    lo, hi = int(codes.min()), int(codes.max())
    if lo < 0 or hi >= module.vocab_size:
      raise ValueError(f'codes must lie in [0, {module.vocab_size}), got min {lo} max {hi}')
  return _decode_jit(module, params, codes)


class DVAE(NamedTuple):
  """Both halves with their params: ``DVAE.load('encoder.npz', 'decoder.npz')``, ``.encode``,
  ``.decode``. Either half may be ``None`` (an encoder-only tokenization job)."""
  encoder: Encoder | None
  encoder_params: dict | None
  decoder: Decoder | None
  decoder_params: dict | None

  @classmethod
  def load(cls, encoder=None, decoder=None) -> DVAE:
    """From state dicts or paths (either may be ``None``)."""
    enc = encoder_from_state_dict(encoder) if encoder is not None else (None, None)
    dec = decoder_from_state_dict(decoder) if decoder is not None else (None, None)
    return cls(*enc, *dec)

  def encode(self, images) -> jax.Array:
    if self.encoder is None:
      raise ValueError('this DVAE has no encoder loaded')
    return encode(self.encoder_params, images, self.encoder)

  def decode(self, codes) -> jax.Array:
    if self.decoder is None:
      raise ValueError('this DVAE has no decoder loaded')
    return decode(self.decoder_params, codes, self.decoder)


# ----------------------------------------------------------------------------------------------
# Converting released files

def save_npz(state_dict: Mapping[str, Any], path: str | os.PathLike) -> None:
  """Writes ``{key: array}`` to ``path`` as ``.npz``, atomically (temporary file in the same
  directory, then ``os.replace``), so ``path`` is either absent, the old file or complete."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, **{k: np.asarray(v) for k, v in state_dict.items()})
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def convert(in_path: str | os.PathLike, out_path: str | os.PathLike) -> str:
  """Released ``encoder.pkl``/``decoder.pkl`` (a pickled ``dall_e`` module; needs torch and
  ``dall_e``) or a torch state dict -> ``.npz``. Runs pickle code: convert only trusted files.
  Returns a one-line description of what was written."""
  in_path, out_path = os.fspath(in_path), os.fspath(out_path)
  if not os.path.isfile(in_path):
    raise FileNotFoundError(f'input file not found: {in_path}')
  try:
    import torch
  except ImportError as e:
    raise ImportError('converting needs torch (and the dall_e package for the released .pkl '
                      'files): pip install torch DALL-E') from e
  try:
    import dall_e  # noqa: F401  (the released pickles reference dall_e.encoder / dall_e.decoder)
  except ImportError:
    pass  # a plain state dict needs no dall_e; a released pickle fails below with a clear error
  try:
    obj = torch.load(in_path, map_location='cpu', weights_only=False)
  except ModuleNotFoundError as e:
    raise ImportError(f'{in_path} needs the module {e.name!r} to unpickle; the released dVAE files '
                      f'need the dall_e package: pip install DALL-E') from e
  if isinstance(obj, torch.nn.Module):
    obj = obj.state_dict()
  if not isinstance(obj, Mapping):
    raise ValueError(f'{in_path} holds a {type(obj).__name__}, neither a torch module nor a '
                     f'state dict')
  arrays = {k: v.detach().cpu().numpy() for k, v in obj.items() if hasattr(v, 'detach')}
  save_npz(arrays, out_path)
  return f'wrote {out_path}: {len(arrays)} arrays ({_identify(arrays)})'


def _identify(state_dict: Mapping[str, Any]) -> str:
  for kind in (Encoder, Decoder):
    try:
      module, _ = _from_state_dict(kind, state_dict)
    except (ValueError, TypeError):
      continue
    return f'dVAE {_kind_name(kind)}: {_describe(module)}'
  return 'not a recognised dVAE encoder or decoder'


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m tokenizers_jax.dvae',
                                   description='DALL-E dVAE weight tools.')
  sub = parser.add_subparsers(dest='command', required=True)
  conv = sub.add_parser('convert', help='released encoder.pkl/decoder.pkl (or a torch state '
                        'dict) -> .npz')
  conv.add_argument('input')
  conv.add_argument('output')
  args = parser.parse_args(argv)
  try:
    print(convert(args.input, args.output))
  except (ImportError, OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
