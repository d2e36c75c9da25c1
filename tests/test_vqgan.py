"""VQGAN: Flax modules + converter against a NumPy reference of taming's computation (no torch)."""

from __future__ import annotations

import numpy as np
import pytest

from tokenizers_jax import vqgan

SMALL = vqgan.VQGANConfig(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                          resolution=16, z_channels=8, embed_dim=8, n_embed=16, num_groups=4)


# --- taming's state-dict layout, written from its constructors (torch shapes) ------------------

def taming_shapes(c: vqgan.VQGANConfig) -> dict[str, tuple[int, ...]]:
  shapes = {}

  def conv(name, cin, cout, k):
    shapes[f'{name}.weight'] = (cout, cin, k, k)
    shapes[f'{name}.bias'] = (cout,)

  def norm(name, ch):
    shapes[f'{name}.weight'] = (ch,)
    shapes[f'{name}.bias'] = (ch,)

  def resnet(name, cin, cout):
    norm(f'{name}.norm1', cin)
    conv(f'{name}.conv1', cin, cout, 3)
    norm(f'{name}.norm2', cout)
    conv(f'{name}.conv2', cout, cout, 3)
    if cin != cout:
      conv(f'{name}.nin_shortcut', cin, cout, 1)

  def attn(name, ch):
    norm(f'{name}.norm', ch)
    for part in ('q', 'k', 'v', 'proj_out'):
      conv(f'{name}.{part}', ch, ch, 1)

  n = len(c.ch_mult)
  in_mult = (1,) + c.ch_mult
  conv('encoder.conv_in', c.in_channels, c.ch, 3)
  res = c.resolution
  for i in range(n):
    cin, cout = c.ch * in_mult[i], c.ch * c.ch_mult[i]
    for j in range(c.num_res_blocks):
      resnet(f'encoder.down.{i}.block.{j}', cin, cout)
      cin = cout
      if res in c.attn_resolutions:
        attn(f'encoder.down.{i}.attn.{j}', cout)
    if i != n - 1:
      conv(f'encoder.down.{i}.downsample.conv', cout, cout, 3)
      res //= 2
  top = c.ch * c.ch_mult[-1]
  for part in ('encoder', 'decoder'):
    resnet(f'{part}.mid.block_1', top, top)
    attn(f'{part}.mid.attn_1', top)
    resnet(f'{part}.mid.block_2', top, top)
  norm('encoder.norm_out', top)
  conv('encoder.conv_out', top, c.z_channels, 3)
  conv('decoder.conv_in', c.z_channels, top, 3)
  cin, res = top, c.resolution // 2 ** (n - 1)
  for i in reversed(range(n)):
    cout = c.ch * c.ch_mult[i]
    for j in range(c.num_res_blocks + 1):
      resnet(f'decoder.up.{i}.block.{j}', cin, cout)
      cin = cout
      if res in c.attn_resolutions:
        attn(f'decoder.up.{i}.attn.{j}', cout)
    if i != 0:
      conv(f'decoder.up.{i}.upsample.conv', cout, cout, 3)
      res *= 2
  norm('decoder.norm_out', cin)
  conv('decoder.conv_out', cin, c.out_ch, 3)
  conv('quant_conv', c.z_channels, c.embed_dim, 1)
  conv('post_quant_conv', c.embed_dim, c.z_channels, 1)
  shapes['quantize.embedding.weight'] = (c.n_embed, c.embed_dim)
  return shapes


def random_state_dict(c: vqgan.VQGANConfig, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  sd = {}
  for key, shape in taming_shapes(c).items():
    if key == 'quantize.embedding.weight':
      v = rng.normal(size=shape)
    elif len(shape) == 4:
      v = rng.normal(size=shape) / np.sqrt(np.prod(shape[1:]))
    elif key.endswith('.weight'):  # GroupNorm scale
      v = 1.0 + 0.2 * rng.normal(size=shape)
    else:
      v = 0.1 * rng.normal(size=shape)
    sd[key] = v.astype(np.float32)
  return sd


# --- NumPy reference of taming's forward pass (NHWC, float64, torch weight layouts) ------------

def ref_conv(x, sd, name, stride=1, pad=None):
  w, b = sd[f'{name}.weight'].astype(np.float64), sd[f'{name}.bias'].astype(np.float64)
  k = w.shape[-1]
  p = k // 2 if pad is None else pad
  if p:
    x = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  hout = (x.shape[1] - k) // stride + 1
  wout = (x.shape[2] - k) // stride + 1
  out = np.zeros((x.shape[0], hout, wout, w.shape[0]))
  for dy in range(k):
    for dx in range(k):
      patch = x[:, dy:dy + stride * hout:stride, dx:dx + stride * wout:stride]
      out += np.einsum('bhwi,oi->bhwo', patch, w[:, :, dy, dx])
  return out + b


def ref_norm(x, sd, name, groups):
  b, h, w, c = x.shape
  g = x.reshape(b, h, w, groups, c // groups)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = g.var(axis=(1, 2, 4), keepdims=True)
  g = ((g - mean) / np.sqrt(var + 1e-6)).reshape(x.shape)
  return g * sd[f'{name}.weight'] + sd[f'{name}.bias']


def swish(x):
  return x / (1.0 + np.exp(-x))


def ref_resnet(x, sd, name, groups):
  h = ref_conv(swish(ref_norm(x, sd, f'{name}.norm1', groups)), sd, f'{name}.conv1')
  h = ref_conv(swish(ref_norm(h, sd, f'{name}.norm2', groups)), sd, f'{name}.conv2')
  if f'{name}.nin_shortcut.weight' in sd:
    x = ref_conv(x, sd, f'{name}.nin_shortcut')
  return x + h


def ref_attn(x, sd, name, groups):
  b, hh, ww, c = x.shape
  h = ref_norm(x, sd, f'{name}.norm', groups)
  q, k, v = (ref_conv(h, sd, f'{name}.{p}').reshape(b, hh * ww, c) for p in 'qkv')
  logits = np.einsum('bic,bjc->bij', q, k) * c ** -0.5
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  out = np.einsum('bij,bjc->bic', w, v).reshape(x.shape)
  return x + ref_conv(out, sd, f'{name}.proj_out')


def ref_mid(h, sd, part, g):
  h = ref_resnet(h, sd, f'{part}.mid.block_1', g)
  h = ref_attn(h, sd, f'{part}.mid.attn_1', g)
  return ref_resnet(h, sd, f'{part}.mid.block_2', g)


def ref_encode(x, sd, c):
  g, n = c.num_groups, len(c.ch_mult)
  h = ref_conv(x, sd, 'encoder.conv_in')
  for i in range(n):
    for j in range(c.num_res_blocks):
      h = ref_resnet(h, sd, f'encoder.down.{i}.block.{j}', g)
      if f'encoder.down.{i}.attn.{j}.q.weight' in sd:
        h = ref_attn(h, sd, f'encoder.down.{i}.attn.{j}', g)
    if i != n - 1:
      h = np.pad(h, ((0, 0), (0, 1), (0, 1), (0, 0)))
      h = ref_conv(h, sd, f'encoder.down.{i}.downsample.conv', stride=2, pad=0)
  h = ref_mid(h, sd, 'encoder', g)
  h = ref_conv(swish(ref_norm(h, sd, 'encoder.norm_out', g)), sd, 'encoder.conv_out')
  z = ref_conv(h, sd, 'quant_conv')
  e = sd['quantize.embedding.weight'].astype(np.float64)
  d = ((z[..., None, :] - e) ** 2).sum(-1)
  idx = d.argmin(-1)
  srt = np.sort(d, axis=-1)
  return e[idx], idx, np.min(srt[..., 1] - srt[..., 0])


def ref_decode(idx, sd, c):
  g, n = c.num_groups, len(c.ch_mult)
  z = sd['quantize.embedding.weight'].astype(np.float64)[idx]
  h = ref_conv(ref_conv(z, sd, 'post_quant_conv'), sd, 'decoder.conv_in')
  h = ref_mid(h, sd, 'decoder', g)
  for i in reversed(range(n)):
    for j in range(c.num_res_blocks + 1):
      h = ref_resnet(h, sd, f'decoder.up.{i}.block.{j}', g)
      if f'decoder.up.{i}.attn.{j}.q.weight' in sd:
        h = ref_attn(h, sd, f'decoder.up.{i}.attn.{j}', g)
    if i != 0:
      h = np.repeat(np.repeat(h, 2, axis=1), 2, axis=2)
      h = ref_conv(h, sd, f'decoder.up.{i}.upsample.conv')
  return ref_conv(swish(ref_norm(h, sd, 'decoder.norm_out', g)), sd, 'decoder.conv_out')


# --- tests ---------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def small():
  sd = random_state_dict(SMALL)
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, size=(2, 16, 24, 3), dtype=np.uint8)  # non-square: H != W
  x = images.astype(np.float64) / 127.5 - 1.0
  zq, idx, gap = ref_encode(x, sd, SMALL)
  assert gap > 1e-3, 'reference VQ has a near tie; pick another seed'
  return dict(sd=sd, images=images, x=x, zq=zq, idx=idx, dec=ref_decode(idx, sd, SMALL),
              params=vqgan.params_from_torch(sd, SMALL))


def test_layout_matches_taming_for_released_configs():
  for config in (vqgan.VQGAN_1K, vqgan.VQGAN_16K, SMALL):
    assert vqgan.torch_param_shapes(config) == taming_shapes(config)
  assert vqgan.VQGAN_16K.n_embed == 16384 and vqgan.VQGAN_1K.n_embed == 1024
  assert vqgan.VQGAN_1K.downsample_factor == 16
  # Attention only at 16x16 (encoder level 4, decoder up.4), as in taming's f16 models.
  keys = vqgan.torch_param_shapes(vqgan.VQGAN_1K)
  assert 'encoder.down.4.attn.1.q.weight' in keys and 'encoder.down.3.attn.0.q.weight' not in keys
  assert 'decoder.up.4.attn.2.q.weight' in keys and 'decoder.up.0.attn.0.q.weight' not in keys
  # up.{i} is level i: up.1 (width 128) follows up.2 (width 256) in the forward pass.
  assert keys['decoder.up.1.block.0.conv1.weight'] == (128, 256, 3, 3)
  assert keys['decoder.up.1.block.0.nin_shortcut.weight'] == (128, 256, 1, 1)
  assert 'decoder.up.0.upsample.conv.weight' not in keys


def test_converter_covers_released_configs_without_allocating():
  import jax
  for config in (vqgan.VQGAN_1K, vqgan.VQGAN_16K):
    zero = np.zeros((), np.float32)
    sd = {k: np.broadcast_to(zero, s) for k, s in taming_shapes(config).items()}
    sd['loss.discriminator.main.0.weight'] = np.zeros((64, 3, 4, 4), np.float32)
    params = vqgan.params_from_torch({'state_dict': sd, 'epoch': 3}, config)
    x = jax.ShapeDtypeStruct((1, 16, 16, 3), np.float32)
    want = jax.eval_shape(lambda x: vqgan.VQGAN(config).init(jax.random.PRNGKey(0), x), x)
    got = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), params)
    assert got == jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), want['params'])


def test_matches_numpy_reference(small):
  import jax
  model = vqgan.VQGAN(SMALL)
  params = small['params']
  zq, idx = jax.jit(lambda p, x: model.apply({'params': p}, x, method=vqgan.VQGAN.encode))(
      params, small['x'].astype(np.float32))
  assert idx.shape == (2, 8, 12) and idx.dtype == np.int32
  np.testing.assert_array_equal(np.asarray(idx), small['idx'])
  assert len(np.unique(small['idx'])) > 3  # the codebook is really searched
  np.testing.assert_allclose(np.asarray(zq), small['zq'], rtol=1e-5, atol=1e-5)
  dec = jax.jit(lambda p, i: model.apply({'params': p}, i, method=vqgan.VQGAN.decode_indices))(
      params, small['idx'])
  assert dec.shape == (2, 16, 24, 3)
  np.testing.assert_allclose(np.asarray(dec), small['dec'], rtol=1e-4, atol=1e-4)


def test_uint8_encode_decode(small):
  codes = vqgan.encode(small['params'], small['images'], SMALL)
  np.testing.assert_array_equal(np.asarray(codes), small['idx'])
  images = np.asarray(vqgan.decode(small['params'], codes, SMALL))
  assert images.dtype == np.uint8 and images.shape == (2, 16, 24, 3)
  want = np.round((np.clip(small['dec'], -1, 1) + 1) * 127.5)
  assert np.abs(images.astype(np.int32) - want).max() <= 1
  with pytest.raises(ValueError, match='uint8'):
    vqgan.encode(small['params'], small['x'], SMALL)
  with pytest.raises(ValueError, match='15x24'):
    vqgan.encode(small['params'], small['images'][:, :15], SMALL)
  with pytest.raises(ValueError, match='outside'):
    vqgan.decode(small['params'], np.full((1, 2, 2), 16), SMALL)


def test_npz_path_and_errors(small, tmp_path):
  sd = small['sd']
  path = tmp_path / 'vqgan.npz'
  np.savez(path, **sd)
  params = vqgan.params_from_torch(str(path), SMALL)
  np.testing.assert_array_equal(params['encoder']['down_0']['block_0']['conv1']['kernel'],
                                sd['encoder.down.0.block.0.conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params['decoder']['up_1']['attn_0']['norm']['scale'],
                                sd['decoder.up.1.attn.0.norm.weight'])
  np.testing.assert_array_equal(params['quantize']['embedding'], sd['quantize.embedding.weight'])

  missing = dict(sd)
  del missing['decoder.up.1.upsample.conv.bias']
  with pytest.raises(ValueError, match=r'missing.*decoder\.up\.1\.upsample\.conv\.bias'):
    vqgan.params_from_torch(missing, SMALL)
  extra = dict(sd, **{'encoder.down.0.block.0.temb_proj.weight': np.zeros((8, 512), np.float32),
                      'loss.perceptual_loss.net.slice1.0.weight': np.zeros(3, np.float32)})
  with pytest.raises(ValueError, match=r'unexpected.*temb_proj') as e:
    vqgan.params_from_torch(extra, SMALL)
  assert 'loss.' not in str(e.value)
  bad = dict(sd, **{'encoder.conv_in.weight': np.zeros((8, 3, 5, 5), np.float32)})
  with pytest.raises(ValueError, match=r'encoder\.conv_in\.weight: expected \(8, 3, 3, 3\), '
                                       r'got \(8, 3, 5, 5\)'):
    vqgan.params_from_torch(bad, SMALL)
  with pytest.raises(FileNotFoundError, match='nowhere.ckpt'):
    vqgan.params_from_torch(str(tmp_path / 'nowhere.ckpt'), SMALL)


def test_config_from_taming_yaml():
  yaml_dict = {'model': {'target': 'taming.models.vqgan.VQModel', 'params': {
      'embed_dim': 256, 'n_embed': 16384, 'ddconfig': {
          'double_z': False, 'z_channels': 256, 'resolution': 256, 'in_channels': 3,
          'out_ch': 3, 'ch': 128, 'ch_mult': [1, 1, 2, 2, 4], 'num_res_blocks': 2,
          'attn_resolutions': [16], 'dropout': 0.0},
      'lossconfig': {'target': 'taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator'}}}}
  assert vqgan.config_from_taming_yaml_dict(yaml_dict) == vqgan.VQGAN_16K
  yaml_dict['model']['params']['ddconfig']['double_z'] = True
  with pytest.raises(ValueError, match='double_z'):
    vqgan.config_from_taming_yaml_dict(yaml_dict)
