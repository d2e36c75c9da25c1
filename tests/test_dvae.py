"""The dVAE against a NumPy re-implementation of the released (PyTorch, NCHW) computation.

No torch here: random state dicts with the released key names and OIHW layout stand in for the
released weights, at tiny widths (n_hid 8, vocab 16) but the released structure (4 groups of 2
blocks) so every code path (identity and 1x1 id paths, pooling, upsampling, post_gain) is covered.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenizers_jax import dvae

SMALL_ENC = dict(group_count=4, n_hid=8, n_blk_per_group=2, input_channels=3, vocab_size=16)
SMALL_DEC = dict(group_count=4, n_init=12, n_hid=8, n_blk_per_group=2, output_channels=3,
                 vocab_size=16)


# ----------------------------------------------------------------------------------------------
# Reference: the released layout and computation, written independently of the module under test

def released_layout(kind: str, group_count: int, n_hid: int, n_blk_per_group: int,
                    vocab_size: int, input_channels: int = 3, n_init: int = 128,
                    output_channels: int = 3) -> dict[str, tuple]:
  """Key -> OIHW shape, following dall_e's Encoder/Decoder constructors."""
  if kind == 'encoder':
    shapes = {'blocks.input.w': (n_hid, input_channels, 7, 7)}
    widths = [n_hid * 2 ** g for g in range(group_count)]
    n_in, ks, out = n_hid, (3, 3, 3, 1), (vocab_size, widths[-1], 1, 1)
  else:
    shapes = {'blocks.input.w': (n_init, vocab_size, 1, 1)}
    widths = [n_hid * 2 ** (group_count - 1 - g) for g in range(group_count)]
    n_in, ks, out = n_init, (1, 3, 3, 3), (2 * output_channels, widths[-1], 1, 1)
  for g, n_out in enumerate(widths):
    for b in range(n_blk_per_group):
      pre = f'blocks.group_{g + 1}.block_{b + 1}'
      if n_in != n_out:
        shapes[f'{pre}.id_path.w'] = (n_out, n_in, 1, 1)
      chans = [n_in, n_out // 4, n_out // 4, n_out // 4, n_out]
      for i, k in enumerate(ks):
        shapes[f'{pre}.res_path.conv_{i + 1}.w'] = (chans[i + 1], chans[i], k, k)
      n_in = n_out
  shapes['blocks.output.conv.w'] = out
  shapes.update({k[:-1] + 'b': (s[0],) for k, s in list(shapes.items())})
  return shapes


def random_state_dict(layout: dict[str, tuple], seed: int) -> dict[str, np.ndarray]:
  """std 1/sqrt(fan_in) weights, random biases; the residual branches' last convs are scaled up
  so that they matter next to the identity path despite post_gain."""
  rng = np.random.default_rng(seed)
  sd = {}
  for key, shape in layout.items():
    if key.endswith('.w'):
      w = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
      if '.conv_4.' in key:
        w *= 16.0
      sd[key] = w.astype(np.float32)
    else:
      sd[key] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
  return sd


def np_conv(x, w, b):
  """NCHW x, OIHW w, zero 'same' padding (k - 1) // 2, stride 1."""
  k = w.shape[-1]
  p = (k - 1) // 2
  h, wd = x.shape[2:]
  xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
  out = np.zeros((x.shape[0], w.shape[0], h, wd))
  for dy in range(k):
    for dx in range(k):
      out += np.einsum('nchw,oc->nohw', xp[:, :, dy:dy + h, dx:dx + wd], w[:, :, dy, dx])
  return out + b[None, :, None, None]


def relu(x):
  return np.maximum(x, 0)


def ref_block(sd, pre, x, post_gain):
  ident = np_conv(x, sd[f'{pre}.id_path.w'], sd[f'{pre}.id_path.b']) \
      if f'{pre}.id_path.w' in sd else x
  h = x
  for i in range(1, 5):
    h = np_conv(relu(h), sd[f'{pre}.res_path.conv_{i}.w'], sd[f'{pre}.res_path.conv_{i}.b'])
  return ident + post_gain * h


def ref_net(sd, x, group_count, n_blk_per_group, between):
  post_gain = 1.0 / (group_count * n_blk_per_group) ** 2   # 1 / n_layers**2, n_layers = all blocks
  x = np_conv(x, sd['blocks.input.w'], sd['blocks.input.b'])
  for g in range(1, group_count + 1):
    for b in range(1, n_blk_per_group + 1):
      x = ref_block(sd, f'blocks.group_{g}.block_{b}', x, post_gain)
    if g < group_count:
      x = between(x)
  return np_conv(relu(x), sd['blocks.output.conv.w'], sd['blocks.output.conv.b'])


def maxpool2(x):
  n, c, h, w = x.shape
  return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def upsample2(x):
  return x.repeat(2, axis=2).repeat(2, axis=3)


def ref_encoder(sd, x_nhwc, group_count=4, n_blk_per_group=2):
  x = np.asarray(x_nhwc, np.float64).transpose(0, 3, 1, 2)
  return ref_net(sd, x, group_count, n_blk_per_group, maxpool2).transpose(0, 2, 3, 1)


def ref_decoder(sd, z_nhwc, group_count=4, n_blk_per_group=2):
  z = np.asarray(z_nhwc, np.float64).transpose(0, 3, 1, 2)
  return ref_net(sd, z, group_count, n_blk_per_group, upsample2).transpose(0, 2, 3, 1)


def assert_close(actual, expected, rtol=1e-4):
  expected = np.asarray(expected)
  np.testing.assert_allclose(np.asarray(actual), expected, rtol=rtol,
                             atol=rtol * np.abs(expected).max())


@pytest.fixture(scope='module')
def enc_sd():
  return random_state_dict(released_layout('encoder', **SMALL_ENC), seed=0)


@pytest.fixture(scope='module')
def dec_sd():
  return random_state_dict(released_layout('decoder', **SMALL_DEC), seed=1)


@pytest.fixture(scope='module')
def images():
  return np.random.default_rng(2).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)


@pytest.fixture(scope='module')
def codes():
  return np.random.default_rng(3).integers(0, 16, (2, 2, 2), dtype=np.int32)


# ----------------------------------------------------------------------------------------------
# Layout and loading

def test_layout_matches_released_at_default_and_small_sizes():
  assert dvae.state_dict_shapes(dvae.Encoder()) == released_layout('encoder', 4, 256, 2, 8192)
  assert dvae.state_dict_shapes(dvae.Decoder()) == released_layout('decoder', 4, 256, 2, 8192)
  assert (dvae.state_dict_shapes(dvae.Encoder(**SMALL_ENC))
          == released_layout('encoder', **SMALL_ENC))
  assert (dvae.state_dict_shapes(dvae.Decoder(**SMALL_DEC))
          == released_layout('decoder', **SMALL_DEC))
  enc = released_layout('encoder', 4, 256, 2, 8192)
  assert enc['blocks.group_2.block_1.id_path.w'] == (512, 256, 1, 1)
  assert 'blocks.group_1.block_1.id_path.w' not in enc
  assert enc['blocks.output.conv.w'] == (8192, 2048, 1, 1)
  dec = released_layout('decoder', 4, 256, 2, 8192)
  assert dec['blocks.group_1.block_1.id_path.w'] == (2048, 128, 1, 1)
  assert dec['blocks.output.conv.w'] == (6, 256, 1, 1)


@pytest.mark.parametrize('kind', ['encoder', 'decoder'])
def test_released_sizes_round_trip_through_loader(kind):
  """A released-shaped (all-zero, no memory: broadcast views) state dict loads into params with
  exactly the tree and shapes of the default module's init (eval_shape: no compute)."""
  module = dvae.Encoder() if kind == 'encoder' else dvae.Decoder()
  x = jax.ShapeDtypeStruct((1, 8, 8, 3) if kind == 'encoder' else (1, 1, 1, 8192), jnp.float32)
  abstract = jax.eval_shape(module.init, jax.random.key(0), x)['params']
  layout = released_layout(kind, 4, 256, 2, 8192)
  sd = {k: np.broadcast_to(np.float32(0), s) for k, s in layout.items()}
  loader = dvae.encoder_from_state_dict if kind == 'encoder' else dvae.decoder_from_state_dict
  inferred, params = loader(sd)
  assert inferred == module
  got = jax.tree.map(lambda a: (a.shape, a.dtype), params)
  want = jax.tree.map(lambda a: (a.shape, a.dtype), abstract)
  assert got == want
  assert params['output']['conv']['kernel'].shape[-1] == (8192 if kind == 'encoder' else 6)
  assert dvae.params_to_state_dict(params).keys() == layout.keys()


def test_encoder_matches_reference(enc_sd, images):
  params = dvae.load_encoder(enc_sd)
  x = dvae.map_pixels(images.astype(np.float32) / 255)
  logits = jax.jit(dvae.Encoder(**SMALL_ENC).apply)({'params': params}, x)
  ref = ref_encoder(enc_sd, x)
  assert logits.shape == (2, 2, 2, 16) and logits.dtype == jnp.float32
  assert_close(logits, ref)
  # encode: uint8 in, argmax of the same logits out; the module is inferred from the params
  codes = dvae.encode(params, images)
  assert codes.dtype == jnp.int32 and codes.shape == (2, 2, 2)
  np.testing.assert_array_equal(codes, ref.argmax(-1))
  np.testing.assert_array_equal(dvae.encode({'encoder': params}, images), codes)


def test_decoder_matches_reference_and_gather_equals_one_hot(dec_sd, codes):
  params = dvae.load_decoder(dec_sd)
  module = dvae.Decoder(**SMALL_DEC)
  one_hot = jax.nn.one_hot(codes, 16, dtype=jnp.float32)
  apply = jax.jit(module.apply)
  stats = apply({'params': params}, one_hot)
  ref = ref_decoder(dec_sd, one_hot)
  assert stats.shape == (2, 16, 16, 6) and stats.dtype == jnp.float32
  assert_close(stats, ref)
  # soft codes go through the same conv path
  soft = jax.nn.softmax(jnp.asarray(np.random.default_rng(4).standard_normal((2, 2, 2, 16)),
                                    jnp.float32))
  assert_close(apply({'params': params}, soft), ref_decoder(dec_sd, soft))
  # integer codes: the gather path
  assert_close(apply({'params': params}, jnp.asarray(codes)), stats, rtol=1e-5)
  images = dvae.decode({'decoder': params}, codes)
  assert images.dtype == jnp.uint8 and images.shape == (2, 16, 16, 3)
  expected = np.round(np.clip((1 / (1 + np.exp(-ref[..., :3])) - 0.1) / 0.8, 0, 1) * 255)
  assert np.abs(np.asarray(images, np.int32) - expected).max() <= 1


def test_inferred_non_default_sizes(images):
  """encoder_from_state_dict reads group count, blocks per group, widths and vocab off the
  weights, and encode picks them up from the params alone."""
  sizes = dict(group_count=2, n_hid=4, n_blk_per_group=1, vocab_size=10, input_channels=3)
  sd = random_state_dict(released_layout('encoder', **sizes), seed=5)
  module, params = dvae.encoder_from_state_dict(sd)
  assert module == dvae.Encoder(**sizes)
  ref = ref_encoder(sd, dvae.map_pixels(images / 255.0), group_count=2, n_blk_per_group=1)
  np.testing.assert_array_equal(dvae.encode(params, images), ref.argmax(-1))
  dec_sizes = dict(group_count=3, n_init=5, n_hid=4, n_blk_per_group=3, output_channels=2,
                   vocab_size=7)
  dec, _ = dvae.decoder_from_state_dict(
      random_state_dict(released_layout('decoder', **dec_sizes), seed=6))
  assert dec == dvae.Decoder(**dec_sizes)


def test_dvae_bundle_and_jit_cache(enc_sd, dec_sd, images, codes):
  model = dvae.DVAE.load(enc_sd, dec_sd)
  assert model.encoder == dvae.Encoder(**SMALL_ENC)
  before = dvae._encode_jit._cache_size()
  np.testing.assert_array_equal(model.encode(images),
                                dvae.encode(dvae.load_encoder(enc_sd), images))
  assert dvae._encode_jit._cache_size() <= before + 1   # one entry per module config and shape
  np.testing.assert_array_equal(model.decode(codes), dvae.decode(dvae.load_decoder(dec_sd), codes))
  assert dvae.DVAE.load(decoder=dec_sd).encoder is None


def test_map_unmap_pixels():
  x = np.linspace(0, 1, 11, dtype=np.float32)
  np.testing.assert_allclose(dvae.map_pixels(x)[[0, -1]], [0.1, 0.9], rtol=1e-6)
  np.testing.assert_allclose(dvae.unmap_pixels(dvae.map_pixels(x)), x, atol=1e-6)
  np.testing.assert_array_equal(dvae.unmap_pixels(np.array([0.0, 1.0], np.float32)), [0, 1])


def test_params_to_state_dict_inverts_loading(enc_sd):
  back = dvae.params_to_state_dict(dvae.load_encoder(enc_sd))
  assert back.keys() == enc_sd.keys()
  for k in enc_sd:
    np.testing.assert_array_equal(back[k], enc_sd[k], err_msg=k)


def test_npz_path_and_atomic_writer(tmp_path, enc_sd):
  path = tmp_path / 'encoder.npz'
  dvae.save_npz(enc_sd, path)
  assert sorted(os.listdir(tmp_path)) == ['encoder.npz']   # no temporary file left behind
  want = dvae.load_encoder(enc_sd)
  for source in (path, str(path)):
    jax.tree.map(np.testing.assert_array_equal, dvae.load_encoder(source), want)
  dvae.save_npz({k: v for k, v in enc_sd.items() if k != 'blocks.output.conv.w'}, path)
  with pytest.raises(ValueError, match='missing key blocks.output.conv.w'):
    dvae.load_encoder(path)


def test_prefixes(enc_sd, dec_sd):
  want = dvae.load_encoder(enc_sd)
  got = dvae.load_encoder({'module.' + k: v for k, v in enc_sd.items()})
  jax.tree.map(np.testing.assert_array_equal, got, want)
  both = {**{'encoder.' + k: v for k, v in enc_sd.items()},
          **{'decoder.' + k: v for k, v in dec_sd.items()}}
  jax.tree.map(np.testing.assert_array_equal, dvae.load_encoder(both), want)
  jax.tree.map(np.testing.assert_array_equal, dvae.load_decoder(both), dvae.load_decoder(dec_sd))
  with pytest.raises(ValueError, match='several prefixes'):
    dvae.load_encoder({**{'a.' + k: v for k, v in enc_sd.items()}, 'b.blocks.input.w': 0})


def test_state_dict_errors(enc_sd, tmp_path):
  key = 'blocks.group_2.block_1.res_path.conv_3.w'
  with pytest.raises(ValueError, match=f'missing key {key}'):
    dvae.load_encoder({k: v for k, v in enc_sd.items() if k != key})
  bad = dict(enc_sd, **{'blocks.group_1.block_2.res_path.conv_2.w': np.zeros((2, 2, 1, 1))})
  with pytest.raises(ValueError, match=r'blocks\.group_1\.block_2\.res_path\.conv_2\.w has shape '
                     r'\(2, 2, 1, 1\), expected \(2, 2, 3, 3\)'):
    dvae.load_encoder(bad)
  with pytest.raises(ValueError, match='unexpected key blocks.group_1.block_1.extra.w'):
    dvae.load_encoder(dict(enc_sd, **{'blocks.group_1.block_1.extra.w': np.zeros(1)}))
  with pytest.raises(ValueError, match='unexpected key step'):
    dvae.load_encoder(dict(enc_sd, step=np.zeros(())))
  with pytest.raises(ValueError, match='blocks.input.b has dtype'):
    dvae.load_encoder(dict(enc_sd, **{'blocks.input.b': np.array(['x'])}))
  with pytest.raises(TypeError, match='got int'):
    dvae.load_encoder(42)
  missing = tmp_path / 'nope.npz'
  with pytest.raises(FileNotFoundError, match=str(missing)):
    dvae.load_decoder(missing)
  garbage = tmp_path / 'garbage.npz'
  garbage.write_bytes(b'not a zip file')
  with pytest.raises(ValueError, match=f'could not read {garbage}'):
    dvae.load_encoder(garbage)
  other = tmp_path / 'weights.txt'
  other.write_text('')
  with pytest.raises(ValueError, match='unsupported weights file extension'):
    dvae.load_encoder(other)


def test_torch_files_without_torch(tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, 'torch', None)   # `import torch` now fails; nothing imports it
  pt = tmp_path / 'encoder.pkl'
  pt.write_bytes(b'\x80')
  with pytest.raises(ImportError, match=r'convert it to \.npz'):
    dvae.load_encoder(pt)
  assert dvae.main(['convert', str(pt), str(tmp_path / 'out.npz')]) == 1
  assert 'needs torch' in capsys.readouterr().err
  assert dvae.main(['convert', str(tmp_path / 'absent.pkl'), str(tmp_path / 'out.npz')]) == 1
  assert 'absent.pkl' in capsys.readouterr().err
  assert not (tmp_path / 'out.npz').exists()


def test_encode_decode_input_errors(enc_sd, dec_sd, images):
  enc, dec = dvae.load_encoder(enc_sd), dvae.load_decoder(dec_sd)
  with pytest.raises(TypeError, match='uint8'):
    dvae.encode(enc, images.astype(np.float32))
  with pytest.raises(ValueError, match='multiples of 8'):
    dvae.encode(enc, images[:, :12])
  with pytest.raises(ValueError, match=r'\[0, 16\)'):
    dvae.decode(dec, np.full((1, 2, 2), 16, np.int32))
  with pytest.raises(TypeError, match='integer codes'):
    dvae.decode(dec, np.zeros((1, 2, 2), np.float32))
  with pytest.raises(ValueError, match='for a dVAE encoder'):
    dvae.encode(dec, images)   # decoder params where encoder params belong
