// Fused causal softmax attention for XLA:CPU, forward and backward, float32.
//
// Why: XLA:CPU cannot fuse a matmul, a softmax and a second matmul, so attention there is a chain
// of small batched GEMMs with the [queries x keys] score blocks written to memory and read back
// several times; on 2 cores it ran at about a fifth of the matmul rate. Here every 64 x 64 score
// tile lives in the caches: the forward pass is the online-softmax (flash) recipe and saves only
// the per-row log-sum-exp, the backward pass recomputes each tile's probabilities from it.
//
// Layouts are the model's own, [batch, length, heads, head_dim] for q/k/v/out and their
// gradients, [batch, heads, length] for the log-sum-exp; k/v may have fewer heads than q (grouped
// key/value heads, query head h reads key/value head h / (heads / kv_heads)). Work is split over
// (batch, key/value head) pairs, so each thread owns its dk/dv and needs no atomics.
//
// Built on first use by toto_jax/native.py with the machine's C++ compiler; see there.

#include <sched.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kTile = 64;  // queries and keys per tile
constexpr int kLanes = 16;

typedef float vf __attribute__((vector_size(kLanes * sizeof(float)), aligned(4)));
typedef int32_t vi __attribute__((vector_size(kLanes * sizeof(int32_t)), aligned(4)));

typedef float vf8 __attribute__((vector_size(8 * sizeof(float)), aligned(4)));
typedef float vf4 __attribute__((vector_size(4 * sizeof(float)), aligned(4)));

inline vf load(const float* p) { return *reinterpret_cast<const vf*>(p); }
inline void store(float* p, vf v) { *reinterpret_cast<vf*>(p) = v; }

// Horizontal max and sum in log2(lanes) steps (a scalar loop is a 16-step dependency chain).
template <typename Op>
inline float reduce(vf v, Op op) {
  vf8 a = op(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7),
             __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
  vf4 b = op(__builtin_shufflevector(a, a, 0, 1, 2, 3), __builtin_shufflevector(a, a, 4, 5, 6, 7));
  return op(op(b[0], b[1]), op(b[2], b[3]));
}
inline float hmax(vf v) {
  return reduce(v, [](auto x, auto y) { return x > y ? x : y; });
}
inline float hsum(vf v) {
  return reduce(v, [](auto x, auto y) { return x + y; });
}

// exp(x) for a vector, relative error ~2e-7 (Cephes' expf): exactly 0 below -87.3 and for -inf,
// so masked scores give exactly zero probability; NaN stays NaN.
inline vf vexp(vf x) {
  const vi underflow = x < -87.3f, nan = x != x;
  x = underflow ? (vf){} - 87.3f : x;
  x = x > 88.3f ? (vf){} + 88.3f : x;
  vf t = x * 1.44269504088896341f;
  t = t + (t >= 0.0f ? (vf){} + 0.5f : (vf){} - 0.5f);
  const vi n = __builtin_convertvector(nan ? (vf){} : t, vi);  // round half away from zero
  const vf fn = __builtin_convertvector(n, vf);
  const vf r = x - fn * 0.693359375f + fn * 2.12194440e-4f;  // x - n ln2 in two parts
  vf p = (vf){} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const vi bits = (n + 127) << 23;
  vf two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  const vf result = underflow ? (vf){} : p * two_n;
  return nan ? x : result;
}

// C[4 x 16*NV] (+)= A[4 x K] B[K x 16*NV], row-major with the given row strides; with
// TRANSPOSED_A, A is stored as its transpose [K x 4] (so P^T dO needs no transposed copy of P).
template <int NV, bool TRANSPOSED_A>
inline void tile(int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc,
                 bool accumulate) {
  vf c[4][NV];
  for (int r = 0; r < 4; ++r)
    for (int j = 0; j < NV; ++j) c[r][j] = accumulate ? load(C + r * ldc + j * kLanes) : (vf){};
  for (int k = 0; k < K; ++k) {
    vf b[NV];
    for (int j = 0; j < NV; ++j) b[j] = load(B + k * ldb + j * kLanes);
    for (int r = 0; r < 4; ++r) {
      const float a = TRANSPOSED_A ? A[k * lda + r] : A[r * lda + k];
      for (int j = 0; j < NV; ++j) c[r][j] += a * b[j];
    }
  }
  for (int r = 0; r < 4; ++r)
    for (int j = 0; j < NV; ++j) store(C + r * ldc + j * kLanes, c[r][j]);
}

// C[M x N] (+)= op(A) B with op(A) = A [M x K] or, with TRANSPOSED_A, A^T for A [K x M]; M a
// multiple of 4, N of 16. One core runs this at about the 2048^2 matmul rate of one core.
template <bool TRANSPOSED_A = false>
void gemm(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc,
          bool accumulate) {
  for (int i = 0; i < M; i += 4) {
    const float* a = TRANSPOSED_A ? A + i : A + i * lda;
    int j = 0;
    for (; j + 4 * kLanes <= N; j += 4 * kLanes)
      tile<4, TRANSPOSED_A>(K, a, lda, B + j, ldb, C + i * ldc + j, ldc, accumulate);
    for (; j + 2 * kLanes <= N; j += 2 * kLanes)
      tile<2, TRANSPOSED_A>(K, a, lda, B + j, ldb, C + i * ldc + j, ldc, accumulate);
    for (; j < N; j += kLanes)
      tile<1, TRANSPOSED_A>(K, a, lda, B + j, ldb, C + i * ldc + j, ldc, accumulate);
  }
}

struct Aligned {  // an uninitialised float buffer on a 64-byte boundary
  explicit Aligned(size_t n)
      : size(n), data(static_cast<float*>(std::aligned_alloc(64, (n * 4 + 63) / 64 * 64))) {}
  ~Aligned() { std::free(data); }
  void zero() { std::memset(data, 0, size * sizeof(float)); }
  size_t size;
  float* data;
};

struct Shape {
  int64_t batch, length, heads, kv_heads, dim;
  int64_t padded_length() const { return (length + kTile - 1) / kTile * kTile; }
  int64_t padded_dim() const { return (dim + kLanes - 1) / kLanes * kLanes; }
  int64_t tiles() const { return padded_length() / kTile; }
};

// Copies head `h` of x [batch, length, heads_x, dim] (batch b) into rows of `dst` [Tp x Dp],
// multiplied by `scale`, with zeros in the padding.
void pack_rows(const float* x, int64_t heads_x, int64_t b, int64_t h, const Shape& s, float scale,
               float* dst) {
  const int64_t dp = s.padded_dim();
  for (int64_t t = 0; t < s.length; ++t) {
    const float* src = x + ((b * s.length + t) * heads_x + h) * s.dim;
    for (int64_t d = 0; d < s.dim; ++d) dst[t * dp + d] = src[d] * scale;
    std::fill(dst + t * dp + s.dim, dst + (t + 1) * dp, 0.0f);
  }
  std::fill(dst + s.length * dp, dst + s.padded_length() * dp, 0.0f);
}

// Head `h` transposed one key tile at a time: dst[tile][d][key in tile], each tile contiguous,
// with zeros in the padding.
void pack_transposed_tiles(const float* x, int64_t heads_x, int64_t b, int64_t h, const Shape& s,
                           float* dst) {
  const int64_t dp = s.padded_dim(), tp = s.padded_length();
  if (tp != s.length || dp != s.dim) std::fill(dst, dst + tp * dp, 0.0f);
  for (int64_t t = 0; t < s.length; ++t) {
    const float* src = x + ((b * s.length + t) * heads_x + h) * s.dim;
    float* tile_base = dst + (t / kTile) * dp * kTile + (t % kTile);
    for (int64_t d = 0; d < s.dim; ++d) tile_base[d * kTile] = src[d];
  }
}

void unpack_rows(const float* src, int64_t heads_x, int64_t b, int64_t h, const Shape& s,
                 float* x) {
  const int64_t dp = s.padded_dim();
  for (int64_t t = 0; t < s.length; ++t) {
    float* dst = x + ((b * s.length + t) * heads_x + h) * s.dim;
    std::memcpy(dst, src + t * dp, s.dim * sizeof(float));
  }
}

// Scores of one tile, S = Q_i K_j^T with q packed already multiplied by 1/sqrt(head_dim); the
// future masked to -inf on the diagonal tile.
void scores(const float* q_rows, const float* kt_tile, int dp, bool diagonal, float* s) {
  gemm(kTile, kTile, dp, q_rows, dp, kt_tile, kTile, s, kTile, false);
  if (!diagonal) return;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int r = 0; r < kTile; ++r)
    for (int c = r + 1; c < kTile; ++c) s[r * kTile + c] = neg_inf;
}

// Runs fn(unit) for unit in [0, units) on up to one thread per available core.
template <typename F>
void parallel_for(int64_t units, F fn) {
  cpu_set_t set;
  int cores = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(cores, units));
  auto work = [&](int64_t first) {
    for (int64_t u = first; u < units; u += threads) fn(u);
  };
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& th : pool) th.join();
}

void forward(const float* q, const float* k, const float* v, float* out, float* lse,
             const Shape& s) {
  const int64_t tp = s.padded_length(), dp = s.padded_dim(), tiles = s.tiles();
  const int64_t group = s.heads / s.kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.dim));
  parallel_for(s.batch * s.kv_heads, [&](int64_t unit) {
    const int64_t b = unit / s.kv_heads, kvh = unit % s.kv_heads;
    Aligned kt(tp * dp), vr(tp * dp), qr(tp * dp), o(tp * dp), st(kTile * kTile);
    float row_max[kTile], row_sum[kTile];
    pack_transposed_tiles(k, s.kv_heads, b, kvh, s, kt.data);
    pack_rows(v, s.kv_heads, b, kvh, s, 1.0f, vr.data);
    for (int64_t g = 0; g < group; ++g) {
      const int64_t h = kvh * group + g;
      pack_rows(q, s.heads, b, h, s, scale, qr.data);
      for (int64_t i = 0; i < tiles; ++i) {
        float* oi = o.data + i * kTile * dp;
        std::fill(row_max, row_max + kTile, -std::numeric_limits<float>::infinity());
        std::fill(row_sum, row_sum + kTile, 0.0f);
        for (int64_t j = 0; j <= i; ++j) {
          scores(qr.data + i * kTile * dp, kt.data + j * dp * kTile, dp, i == j, st.data);
          for (int r = 0; r < kTile; ++r) {
            float* row = st.data + r * kTile;
            vf m = load(row);
            for (int c = kLanes; c < kTile; c += kLanes) {
              vf x = load(row + c);
              m = x > m ? x : m;
            }
            const float new_max = std::max(row_max[r], hmax(m));
            const float correction =
                j == 0 ? 0.0f : (new_max == row_max[r] ? 1.0f : std::exp(row_max[r] - new_max));
            vf sum = {};
            for (int c = 0; c < kTile; c += kLanes) {
              vf p = vexp(load(row + c) - new_max);
              store(row + c, p);
              sum += p;
            }
            row_sum[r] = row_sum[r] * correction + hsum(sum);
            row_max[r] = new_max;
            float* orow = oi + r * dp;
            if (j == 0)
              std::memset(orow, 0, dp * sizeof(float));
            else if (correction != 1.0f)
              for (int c = 0; c < dp; c += kLanes) store(orow + c, load(orow + c) * correction);
          }
          gemm(kTile, dp, kTile, st.data, kTile, vr.data + j * kTile * dp, dp, oi, dp, true);
        }
        for (int r = 0; r < kTile; ++r) {
          const int64_t t = i * kTile + r;
          const float inv = 1.0f / row_sum[r];
          float* orow = oi + r * dp;
          for (int c = 0; c < dp; c += kLanes) store(orow + c, load(orow + c) * inv);
          if (t < s.length)
            lse[(b * s.heads + h) * s.length + t] = row_max[r] + std::log(row_sum[r]);
        }
      }
      unpack_rows(o.data, s.heads, b, h, s, out);
    }
  });
}

void backward(const float* q, const float* k, const float* v, const float* out, const float* lse,
              const float* d_out, float* dq, float* dk, float* dv, const Shape& s) {
  const int64_t tp = s.padded_length(), dp = s.padded_dim(), tiles = s.tiles();
  const int64_t group = s.heads / s.kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.dim));
  parallel_for(s.batch * s.kv_heads, [&](int64_t unit) {
    const int64_t b = unit / s.kv_heads, kvh = unit % s.kv_heads;
    Aligned kr(tp * dp), kt(tp * dp), vt(tp * dp), qr(tp * dp), dor(tp * dp), dqr(tp * dp),
        dkr(tp * dp), dvr(tp * dp), p(kTile * kTile), dp_tile(kTile * kTile);
    std::vector<float> row_lse(tp, 0.0f), delta(tp, 0.0f);
    dkr.zero();
    dvr.zero();
    pack_rows(k, s.kv_heads, b, kvh, s, 1.0f, kr.data);
    pack_transposed_tiles(k, s.kv_heads, b, kvh, s, kt.data);
    pack_transposed_tiles(v, s.kv_heads, b, kvh, s, vt.data);
    for (int64_t g = 0; g < group; ++g) {
      const int64_t h = kvh * group + g;
      pack_rows(q, s.heads, b, h, s, scale, qr.data);  // dK = dS^T (scale Q)
      pack_rows(d_out, s.heads, b, h, s, 1.0f, dor.data);
      for (int64_t t = 0; t < s.length; ++t) {
        row_lse[t] = lse[(b * s.heads + h) * s.length + t];
        // delta = rowsum(dO * O), the softmax backward's correction; O is read once, in place.
        const float* o_row = out + ((b * s.length + t) * s.heads + h) * s.dim;
        float acc = 0.0f;
        for (int64_t d = 0; d < s.dim; ++d) acc += dor.data[t * dp + d] * o_row[d];
        delta[t] = acc;
      }
      dqr.zero();
      for (int64_t j = 0; j < tiles; ++j) {
        for (int64_t i = j; i < tiles; ++i) {
          const float* qi = qr.data + i * kTile * dp;
          const float* doi = dor.data + i * kTile * dp;
          scores(qi, kt.data + j * dp * kTile, dp, i == j, p.data);
          gemm(kTile, kTile, dp, doi, dp, vt.data + j * dp * kTile, kTile, dp_tile.data, kTile,
               false);
          for (int r = 0; r < kTile; ++r) {
            const float m = row_lse[i * kTile + r], dl = delta[i * kTile + r];
            float* prow = p.data + r * kTile;
            float* dprow = dp_tile.data + r * kTile;
            for (int c = 0; c < kTile; c += kLanes) {
              vf pr = vexp(load(prow + c) - m);
              store(prow + c, pr);
              store(dprow + c, pr * (load(dprow + c) - dl));  // dS
            }
          }
          gemm<true>(kTile, dp, kTile, p.data, kTile, doi, dp, dvr.data + j * kTile * dp, dp, true);
          gemm<true>(kTile, dp, kTile, dp_tile.data, kTile, qi, dp, dkr.data + j * kTile * dp, dp,
                     true);
          gemm(kTile, dp, kTile, dp_tile.data, kTile, kr.data + j * kTile * dp, dp,
               dqr.data + i * kTile * dp, dp, true);
        }
      }
      for (int64_t x = 0; x < tp * dp; x += kLanes) store(dqr.data + x, load(dqr.data + x) * scale);
      unpack_rows(dqr.data, s.heads, b, h, s, dq);
    }
    unpack_rows(dkr.data, s.kv_heads, b, kvh, s, dk);
    unpack_rows(dvr.data, s.kv_heads, b, kvh, s, dv);
  });
}

ffi::Error shape_of(const ffi::Buffer<ffi::F32>& q, const ffi::Buffer<ffi::F32>& k, Shape* s) {
  auto qd = q.dimensions(), kd = k.dimensions();
  if (qd.size() != 4 || kd.size() != 4)
    return ffi::Error::InvalidArgument(
        "causal_attention: q and k must be [batch, length, heads, dim]");
  *s = Shape{qd[0], qd[1], qd[2], kd[2], qd[3]};
  if (kd[0] != s->batch || kd[1] != s->length || kd[3] != s->dim || s->kv_heads == 0 ||
      s->heads % s->kv_heads != 0)
    return ffi::Error::InvalidArgument("causal_attention: k/v shape does not match q");
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                   ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> lse) {
  Shape s;
  if (auto e = shape_of(q, k, &s); e.failure()) return e;
  forward(q.typed_data(), k.typed_data(), v.typed_data(), out->typed_data(), lse->typed_data(), s);
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                    ffi::Buffer<ffi::F32> out, ffi::Buffer<ffi::F32> lse,
                    ffi::Buffer<ffi::F32> d_out, ffi::ResultBuffer<ffi::F32> dq,
                    ffi::ResultBuffer<ffi::F32> dk, ffi::ResultBuffer<ffi::F32> dv) {
  Shape s;
  if (auto e = shape_of(q, k, &s); e.failure()) return e;
  backward(q.typed_data(), k.typed_data(), v.typed_data(), out.typed_data(), lse.typed_data(),
           d_out.typed_data(), dq->typed_data(), dk->typed_data(), dv->typed_data(), s);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(TotoCausalAttentionForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(TotoCausalAttentionBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
