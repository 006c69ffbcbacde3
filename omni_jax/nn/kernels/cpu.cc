// float32 CPU kernels, as XLA FFI handlers (built by omni_jax/nn/cpu_kernels.py).
//
// PackedMatmul: y = x @ W with W stored as column panels, panels[g, k, j] = W[k, 32 g + j]. Each panel is one
// contiguous K x 32 block, so a matmul streams the weights once, front to back, with no per-call packing copy
// (what a GEMM library does to an unpacked W, and why small-M matmuls read weights at a fraction of memory
// bandwidth). Rows of x go 8 at a time: 8 x 32 accumulators in registers, one weight load per 8 FMAs.
//
// RoutedExperts: a SwiGLU mixture of experts over packed expert kernels that reads only the experts some
// token picked (each once, for all its tokens), where a dense or ragged dispatch on CPU reads all of them.
//
// DecodeAttention: one query token per row against one layer of a stacked KV cache (L, b, s, kh, d), read in
// place (no per-layer slice or transpose), over the row's valid slots [start[b], stop), slot by slot with
// all the heads of a task together (a contiguous read; ~1.8x faster than a pass per head at 1500 slots).
//
// SegmentAttention: attention inside segments (the vision encoder's images and frame groups), query chunk c
// reading keys [at, at + span) only. A task is 8 query rows of one head: their logits over the whole span stay
// in cache between the key pass and the value pass (XLA writes them to memory and reads them back three
// times), and 32-key groups holding no key of the rows' segments are skipped. q, k and v are read in place from
// the fused projection's output (t 3 h d), and the rotary (optional) is applied as the query rows are read and
// the keys packed: XLA writes no sliced or rotated copies of them.
//
// Work is shared out over XLA's intra-op thread pool in chunks that every thread (the caller included) takes
// from one atomic counter, so a call never waits on a task that has not started.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v16 __attribute__((vector_size(64), aligned(4)));

// Calls body(i) for i in [0, n), spread over the pool; returns when all are done.
template <typename Body>
void parallel_for(ffi::ThreadPool& pool, int64_t n, int64_t per_thread, Body body) {
  struct Work {
    Work(Body body, int64_t n, int64_t chunk) : body(body), n(n), chunk(chunk), chunks((n + chunk - 1) / chunk) {}
    Body body;
    int64_t n, chunk, chunks;
    std::atomic<int64_t> next{0}, done{0};
    void run() {
      for (int64_t c; (c = next.fetch_add(1)) < chunks;) {
        for (int64_t i = c * chunk; i < std::min(n, (c + 1) * chunk); ++i) body(i);
        done.fetch_add(1, std::memory_order_release);
      }
    }
  };
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t chunk = std::max<int64_t>(1, n / (per_thread * threads));
  auto work = std::make_shared<Work>(body, n, chunk);
  for (int64_t t = 1; t < std::min(threads, work->chunks); ++t) pool.Schedule([work] { work->run(); });
  work->run();
  while (work->done.load(std::memory_order_acquire) < work->chunks) std::this_thread::yield();
}

// ---------------------------------------------------------------- packed matmul

constexpr int64_t kPanel = 32;     // columns per panel
constexpr int64_t kRows = 8;       // rows of x per register block
constexpr int64_t kRowTile = 256;  // rows of x kept in cache while panels stream past
constexpr int kVectors = kPanel / 16;

struct Matmul {
  const float* x;  // m k
  const float* w;  // g k 32
  float* y;        // m n
  int64_t m, k, n;
};

// Rows [row, row + R) of y, columns [32 g, 32 g + 32) clipped to n.
template <int R>
void block(const Matmul& p, int64_t row, int64_t g) {
  const float* x = p.x + row * p.k;
  const float* w = p.w + g * p.k * kPanel;
  v16 acc[R][kVectors];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < kVectors; ++j) acc[r][j] = v16{};
  for (int64_t k = 0; k < p.k; ++k) {
    const v16* wk = reinterpret_cast<const v16*>(w + k * kPanel);
    for (int r = 0; r < R; ++r) {
      const float xr = x[r * p.k + k];
      for (int j = 0; j < kVectors; ++j) acc[r][j] += xr * wk[j];
    }
  }
  const int64_t col = g * kPanel, width = std::min(kPanel, p.n - col);
  for (int r = 0; r < R; ++r) {
    float* y = p.y + (row + r) * p.n + col;
    if (width == kPanel) {
      for (int j = 0; j < kVectors; ++j) reinterpret_cast<v16*>(y)[j] = acc[r][j];
    } else {
      for (int64_t c = 0; c < width; ++c) y[c] = acc[r][c / 16][c % 16];
    }
  }
}

void rows_block(const Matmul& p, int64_t row, int64_t g) {
  switch (std::min(kRows, p.m - row)) {
    case 8: return block<8>(p, row, g);
    case 7: return block<7>(p, row, g);
    case 6: return block<6>(p, row, g);
    case 5: return block<5>(p, row, g);
    case 4: return block<4>(p, row, g);
    case 3: return block<3>(p, row, g);
    case 2: return block<2>(p, row, g);
    default: return block<1>(p, row, g);
  }
}

// Panel g of y for rows [first, last), a register block of rows at a time.
void panel_rows(const Matmul& p, int64_t g, int64_t first, int64_t last) {
  for (int64_t row = first; row < last; row += kRows) rows_block(p, row, g);
}

ffi::Error PackedMatmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                        ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || wd.size() != 3 || yd.size() != 2 || wd[2] != kPanel || xd[1] != wd[1] ||
      yd[0] != xd[0] || yd[1] > wd[0] * kPanel || yd[1] <= (wd[0] - 1) * kPanel)
    return ffi::Error::InvalidArgument("packed_matmul: want x (m, k), panels (ceil(n/32), k, 32), y (m, n)");
  const Matmul p{x.typed_data(), w.typed_data(), y->typed_data(), xd[0], xd[1], yd[1]};
  if (p.m == 0 || p.n == 0) return ffi::Error::Success();
  const int64_t tiles = (p.m + kRowTile - 1) / kRowTile, groups = wd[0];
  // Row tiles outermost (each tile's rows stay in cache), panels split across threads within a tile.
  for (int64_t tile = 0; tile < tiles; ++tile) {
    const int64_t first = tile * kRowTile, last = std::min(p.m, first + kRowTile);
    parallel_for(pool, groups, 4, [&p, first, last](int64_t g) { panel_rows(p, g, first, last); });
  }
  return ffi::Error::Success();
}

// ---------------------------------------------------------------- routed experts

float silu(float x) { return x / (1.f + std::exp(-x)); }

ffi::Error RoutedExperts(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> gate_up,
                         ffi::Buffer<ffi::F32> down, ffi::Buffer<ffi::S32> experts, ffi::Buffer<ffi::F32> weights,
                         ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), gd = gate_up.dimensions(), dd = down.dimensions(), ed = experts.dimensions();
  const int64_t n = xd.size() == 2 ? xd[0] : 0, d = xd.size() == 2 ? xd[1] : 0;
  const int64_t f = dd.size() == 4 ? dd[2] : 0, top = ed.size() == 2 ? ed[1] : 0;
  if (xd.size() != 2 || gd.size() != 4 || dd.size() != 4 || ed.size() != 2 || gd[0] != dd[0] || gd[2] != d ||
      gd[1] != (2 * f + kPanel - 1) / kPanel || dd[1] != (d + kPanel - 1) / kPanel || gd[3] != kPanel ||
      dd[3] != kPanel || ed[0] != n || weights.element_count() != n * top || y->element_count() != n * d)
    return ffi::Error::InvalidArgument(
        "routed_experts: want x (n, d), gate_up panels (E, ceil(2f/32), d, 32), down panels (E, ceil(d/32), f, "
        "32), experts and weights (n, k), y (n, d)");
  const int64_t count = gd[0];
  const int32_t* picked = experts.typed_data();
  for (int64_t i = 0; i < n * top; ++i)
    if (picked[i] < 0 || picked[i] >= count) return ffi::Error::InvalidArgument("routed_experts: expert id out of range");

  // token-expert pairs grouped by expert (counting sort, pair order kept within an expert)
  std::vector<int64_t> first(count + 1, 0), pairs(n * top);
  for (int64_t i = 0; i < n * top; ++i) ++first[picked[i] + 1];
  for (int64_t e = 0; e < count; ++e) first[e + 1] += first[e];
  std::vector<int64_t> fill(first.begin(), first.end() - 1);
  for (int64_t i = 0; i < n * top; ++i) pairs[fill[picked[i]]++] = i;
  std::vector<int64_t> hit;
  for (int64_t e = 0; e < count; ++e)
    if (first[e + 1] > first[e]) hit.push_back(e);

  std::vector<float> out(n * top * d);  // each pair's weighted expert output
  const float *xs = x.typed_data(), *gu = gate_up.typed_data(), *dn = down.typed_data(), *ws = weights.typed_data();
  parallel_for(pool, hit.size(), 1, [&](int64_t h) {
    const int64_t e = hit[h], rows = first[e + 1] - first[e];
    std::vector<float> in(rows * d), mid(rows * 2 * f), act(rows * f), res(rows * d);
    for (int64_t r = 0; r < rows; ++r) std::copy_n(xs + pairs[first[e] + r] / top * d, d, &in[r * d]);
    const Matmul up{in.data(), gu + e * gd[1] * d * kPanel, mid.data(), rows, d, 2 * f};
    for (int64_t g = 0; g < gd[1]; ++g) panel_rows(up, g, 0, rows);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < f; ++i) act[r * f + i] = silu(mid[r * 2 * f + i]) * mid[r * 2 * f + f + i];
    const Matmul back{act.data(), dn + e * dd[1] * f * kPanel, res.data(), rows, f, d};
    for (int64_t g = 0; g < dd[1]; ++g) panel_rows(back, g, 0, rows);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t pair = pairs[first[e] + r];
      for (int64_t i = 0; i < d; ++i) out[pair * d + i] = ws[pair] * res[r * d + i];
    }
  });
  float* ys = y->typed_data();
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < d; ++i) {
      float sum = 0.f;
      for (int64_t j = 0; j < top; ++j) sum += out[(t * top + j) * d + i];
      ys[t * d + i] = sum;
    }
  return ffi::Error::Success();
}

// ---------------------------------------------------------------- decode attention

struct Attention {
  const float* q;  // b h d
  const float* k;  // L b s kh d
  const float* v;  // L b s kh d
  const int32_t* start;  // b
  float* out;      // b h d
  int64_t b, h, kh, s, d, layer, stop;
  float scale;
};

float dot(const float* a, const float* b, int64_t d) {
  v16 acc = v16{};
  int64_t i = 0;
  for (; i + 16 <= d; i += 16) acc += *reinterpret_cast<const v16*>(a + i) * *reinterpret_cast<const v16*>(b + i);
  float sum = 0.f;
  for (int j = 0; j < 16; ++j) sum += acc[j];
  for (; i < d; ++i) sum += a[i] * b[i];
  return sum;
}

// y += w * x over d floats (restrict: y stays in L1 while x streams past).
inline void axpy(float* __restrict__ y, const float* __restrict__ x, float w, int64_t d) {
  for (int64_t i = 0; i < d; ++i) y[i] += w * x[i];
}

// Query heads of kv heads [h0, h1) in row `row`: softmax(q k^T * scale) v over slots [start, stop), in one
// pass over the keys and one over the values, slot by slot (a slot's heads are contiguous, so both passes
// stream memory front to back); the values are summed with unnormalised weights, divided by the total once.
void attend(const Attention& p, int64_t row, int64_t h0, int64_t h1, std::vector<float>& buf) {
  const int64_t groups = p.h / p.kh, first = std::clamp<int64_t>(p.start[row], 0, p.stop - 1);
  const int64_t n = p.stop - first, slot_stride = p.kh * p.d, heads = (h1 - h0) * groups;
  const int64_t offset = ((p.layer * p.b + row) * p.s + first) * slot_stride + h0 * p.d;
  const float *k = p.k + offset, *v = p.v + offset, *q = p.q + (row * p.h + h0 * groups) * p.d;
  buf.resize(heads * (n + p.d + 1));
  float *logits = buf.data(), *acc = logits + heads * n, *total = acc + heads * p.d;  // heads n, heads d, heads
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < heads; ++i) logits[i * n + j] = dot(q + i * p.d, k + j * slot_stride + i / groups * p.d, p.d) * p.scale;
  for (int64_t i = 0; i < heads; ++i) {
    float* row_logits = logits + i * n;
    const float top = *std::max_element(row_logits, row_logits + n);
    total[i] = 0.f;
    for (int64_t j = 0; j < n; ++j) total[i] += row_logits[j] = std::exp(row_logits[j] - top);
  }
  std::fill(acc, acc + heads * p.d, 0.f);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < heads; ++i) axpy(acc + i * p.d, v + j * slot_stride + i / groups * p.d, logits[i * n + j], p.d);
  float* out = p.out + (row * p.h + h0 * groups) * p.d;
  for (int64_t i = 0; i < heads; ++i)
    for (int64_t e = 0; e < p.d; ++e) out[i * p.d + e] = acc[i * p.d + e] / total[i];
}

ffi::Error DecodeAttention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                           ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> layer, ffi::Buffer<ffi::S32> start,
                           ffi::Buffer<ffi::S32> stop, float scale, ffi::ResultBuffer<ffi::F32> out) {
  const auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions(), od = out->dimensions();
  if (qd.size() != 3 || kd.size() != 5 || kd[1] != qd[0] || kd[4] != qd[2] || qd[1] % kd[3] != 0 ||
      !std::equal(kd.begin(), kd.end(), vd.begin(), vd.end()) || start.element_count() != qd[0] ||
      !std::equal(qd.begin(), qd.end(), od.begin(), od.end()))
    return ffi::Error::InvalidArgument("decode_attention: want q (b, h, d), caches (L, b, s, kh, d), start (b,)");
  const Attention p{q.typed_data(), k.typed_data(), v.typed_data(), start.typed_data(), out->typed_data(),
                    qd[0], qd[1], kd[3], kd[2], qd[2], layer.typed_data()[0], stop.typed_data()[0], scale};
  if (p.layer < 0 || p.layer >= kd[0] || p.stop < 1 || p.stop > p.s)
    return ffi::Error::InvalidArgument("decode_attention: layer or stop out of range");
  // a task per row (all its heads) when the rows keep every thread busy, else per row and kv head
  const int64_t split = p.b >= std::max<int64_t>(1, pool.num_threads()) ? 1 : p.kh;
  parallel_for(pool, p.b * split, 1, [&p, split](int64_t i) {
    thread_local std::vector<float> buf;
    const int64_t h0 = i % split * (p.kh / split);
    attend(p, i / split, h0, h0 + p.kh / split, buf);
  });
  return ffi::Error::Success();
}

// ---------------------------------------------------------------- segment attention

typedef int32_t vi16 __attribute__((vector_size(64), aligned(4)));

constexpr int64_t kKeys = 32;      // keys per logits register block (2 vectors)
constexpr int64_t kQueryRows = 8;  // query rows per task (one register block)

struct Segments {
  const float* q;            // t 3 h d: the packed q, k, v (q read in place)
  const float* cos;          // t d: the rotary's cos and sin (rotate-half layout), or null: no rotary
  const float* sin;
  float scale;               // of the logits
  const float* kt;           // h d tp: keys transposed, zero from t on (tp = t + kKeys)
  const float* v;            // h tp dp: values, zero from t on and from d on (dp = 16 ceil(d / 16))
  const int32_t* seg;        // t
  const int32_t* first;      // chunks: each query chunk's first key block
  float* out;                // t h d
  int64_t t, h, d, tp, dp, block, span, rows;  // span: keys a chunk reads; rows: query rows per chunk
  // the first key chunk c reads: its first block's, clipped so that the span fits
  int64_t at(int64_t c) const { return std::clamp<int64_t>(int64_t(first[c]) * block, 0, t - span); }
};

// Row x (d floats) of token j with the rotary applied (when cos is not null) and times `scale` -> out:
// x cos + rotate_half(x) sin, rotate_half(x) = [-x2, x1].
void rotate(const float* x, const float* cos, const float* sin, int64_t j, int64_t d, float scale,
            float* __restrict__ out) {
  if (cos == nullptr) {
    for (int64_t e = 0; e < d; ++e) out[e] = x[e] * scale;
    return;
  }
  const float *c = cos + j * d, *s = sin + j * d;
  const int64_t half = d / 2;
  for (int64_t e = 0; e < half; ++e) out[e] = (x[e] * c[e] - x[e + half] * s[e]) * scale;
  for (int64_t e = half; e < d; ++e) out[e] = (x[e] * c[e] + x[e - half] * s[e]) * scale;
}

// exp(x) for x <= 0: Cephes' expf polynomial on x - n ln 2 (within 2 ulp), n rounded by adding 1.5 * 2^23,
// which leaves n in the low mantissa bits; 0 below -87.3, where float32 underflows.
inline v16 exp_nonpositive(v16 x) {
  constexpr float kRound = 12582912.f;  // 1.5 * 2^23
  const vi16 under = x < -87.3f;
  x = under ? v16{} - 87.3f : x;
  const v16 t = x * 1.44269504088896341f + kRound, n = t - kRound;
  x = x - n * 0.693359375f - n * -2.12194440e-4f;
  v16 y = 1.9875691500e-4f * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * (x * x) + x + 1.f;
  const vi16 bits = (vi16)t - (0x4b400000 - 127);  // n + 127
  const v16 scale = (v16)(bits << 23);
  return under ? v16{} : y * scale;
}

// Logits of the tile's 8 query rows (q[r]: d floats each) against keys [0, 32) of kt (d rows, stride tp)
// -> l (8 x 32, row stride w).
void tile_logits(const float* const* q, const float* kt, int64_t d, int64_t tp, float* l, int64_t w) {
  v16 acc[kQueryRows][2];
  for (int r = 0; r < kQueryRows; ++r) acc[r][0] = acc[r][1] = v16{};
  for (int64_t e = 0; e < d; ++e) {
    const v16* k = reinterpret_cast<const v16*>(kt + e * tp);
    const v16 k0 = k[0], k1 = k[1];
    for (int r = 0; r < kQueryRows; ++r) {
      const float x = q[r][e];
      acc[r][0] += x * k0;
      acc[r][1] += x * k1;
    }
  }
  for (int r = 0; r < kQueryRows; ++r) {
    reinterpret_cast<v16*>(l + r * w)[0] = acc[r][0];
    reinterpret_cast<v16*>(l + r * w)[1] = acc[r][1];
  }
}

// out (8 rows x N vectors, row stride out_stride) = sum over the hit key groups of the weights l (8 x
// groups*32, row stride w) times the value rows v (row stride dp).
template <int N>
void tile_values(const float* l, int64_t w, const float* v, int64_t dp, const std::vector<char>& hit, float* out,
                 int64_t out_stride) {
  v16 acc[kQueryRows][N];
  for (int r = 0; r < kQueryRows; ++r)
    for (int n = 0; n < N; ++n) acc[r][n] = v16{};
  for (size_t g = 0; g < hit.size(); ++g) {
    if (!hit[g]) continue;
    for (int64_t j = g * kKeys; j < int64_t(g + 1) * kKeys; ++j) {
      const v16* vj = reinterpret_cast<const v16*>(v + j * dp);
      v16 vals[N];
      for (int n = 0; n < N; ++n) vals[n] = vj[n];
      for (int r = 0; r < kQueryRows; ++r) {
        const float p = l[r * w + j];
        for (int n = 0; n < N; ++n) acc[r][n] += p * vals[n];
      }
    }
  }
  for (int r = 0; r < kQueryRows; ++r)
    for (int n = 0; n < N; ++n) reinterpret_cast<v16*>(out + r * out_stride)[n] = acc[r][n];
}

constexpr int32_t kMixed = INT32_MIN;  // a key group's summary: its keys are not all of one segment

// The segment all keys of each group of a chunk's span share (kMixed if they do not, or the group runs past
// the span): summary[c * groups + g].
std::vector<int32_t> group_segments(const Segments& p, int64_t chunks, int64_t groups) {
  std::vector<int32_t> summary(chunks * groups, kMixed);
  for (int64_t c = 0; c < chunks; ++c) {
    const int32_t* sk = p.seg + p.at(c);
    for (int64_t g = 0; g < groups && (g + 1) * kKeys <= p.span; ++g)
      if (std::all_of(sk + g * kKeys, sk + (g + 1) * kKeys, [&](int32_t x) { return x == sk[g * kKeys]; }))
        summary[c * groups + g] = sk[g * kKeys];
  }
  return summary;
}

// Query rows [r0, r0 + 8) of chunk c (clipped to the chunk and to t), head hh: softmax over the chunk's key
// span of the logits of keys in the row's segment. Key groups holding no key of the tile's segments are
// skipped; a row with no key of its segment in the span weighs the span's keys alike (as a masked softmax).
void segment_tile(const Segments& p, int64_t c, int64_t hh, int64_t r0, const int32_t* summary,
                  std::vector<float>& buf, std::vector<char>& hit) {
  const int64_t end = std::min(p.t, (c + 1) * p.rows), nr = std::min(kQueryRows, end - r0);
  if (nr <= 0) return;
  const int64_t at = p.at(c);
  const int64_t groups = (p.span + kKeys - 1) / kKeys, w = groups * kKeys;
  buf.resize(kQueryRows * (w + p.dp + p.d));
  float *l = buf.data(), *acc = l + kQueryRows * w, *rows = acc + kQueryRows * p.dp;  // 8 w, 8 dp, 8 d
  int32_t segq[kQueryRows];
  const float* q[kQueryRows];  // the rows of the tile, rotated and scaled (zeros past its end)
  for (int64_t r = 0; r < kQueryRows; ++r) {
    segq[r] = r < nr ? p.seg[r0 + r] : kMixed;
    q[r] = rows + r * p.d;
    if (r < nr) {
      rotate(p.q + ((r0 + r) * 3 * p.h + hh) * p.d, p.cos, p.sin, r0 + r, p.d, p.scale, rows + r * p.d);
    } else {
      std::fill(rows + r * p.d, rows + (r + 1) * p.d, 0.f);
    }
  }
  const int32_t* sk = p.seg + at;
  const float* kt = p.kt + hh * p.d * p.tp + at;
  hit.assign(groups, 0);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t j0 = g * kKeys, j1 = std::min(p.span, j0 + kKeys);
    const int32_t shared = summary[g];
    for (int64_t r = 0; r < nr; ++r) {
      if (shared != kMixed) {
        hit[g] |= segq[r] == shared;
      } else {
        for (int64_t j = j0; j < j1; ++j) hit[g] |= sk[j] == segq[r];
      }
    }
    if (!hit[g]) continue;
    tile_logits(q, kt + j0, p.d, p.tp, l + j0, w);
    for (int64_t r = 0; r < kQueryRows; ++r) {
      float* lr = l + r * w;
      if (shared != kMixed) {
        if (segq[r] != shared) std::fill(lr + j0, lr + j0 + kKeys, -INFINITY);
        continue;
      }
      for (int64_t j = j0; j < j0 + kKeys; ++j)
        if (j >= j1 || sk[j] != segq[r]) lr[j] = -INFINITY;
    }
  }
  float total[kQueryRows];
  for (int64_t r = 0; r < kQueryRows; ++r) {
    float* lr = l + r * w;
    v16 tops = v16{} - INFINITY;
    for (int64_t g = 0; g < groups; ++g) {
      if (!hit[g]) continue;
      for (int64_t j = g * kKeys; j < (g + 1) * kKeys; j += 16) {
        const v16 x = *reinterpret_cast<const v16*>(lr + j);
        tops = x > tops ? x : tops;
      }
    }
    float top = tops[0];
    for (int i = 1; i < 16; ++i) top = std::max(top, tops[i]);
    v16 sum = v16{};
    for (int64_t g = 0; g < groups; ++g) {
      if (!hit[g]) continue;
      for (int64_t j = g * kKeys; j < (g + 1) * kKeys; j += 16) {
        v16* x = reinterpret_cast<v16*>(lr + j);
        *x = top == -INFINITY ? v16{} : exp_nonpositive(*x - top);
        sum += *x;
      }
    }
    total[r] = 0.f;
    for (int i = 0; i < 16; ++i) total[r] += sum[i];
  }
  const float* v = p.v + (hh * p.tp + at) * p.dp;
  int64_t col = 0;
  for (; col + 32 <= p.dp; col += 32) tile_values<2>(l, w, v + col, p.dp, hit, acc + col, p.dp);
  if (col < p.dp) tile_values<1>(l, w, v + col, p.dp, hit, acc + col, p.dp);
  for (int64_t r = 0; r < nr; ++r) {
    float* out = p.out + ((r0 + r) * p.h + hh) * p.d;
    if (total[r] > 0.f) {
      const float inverse = 1.f / total[r];
      const float* __restrict row = acc + r * p.dp;
      for (int64_t e = 0; e < p.d; ++e) out[e] = row[e] * inverse;
      continue;
    }
    std::fill(out, out + p.d, 0.f);  // no key of its segment: the mean of the span's values
    for (int64_t j = 0; j < p.span; ++j)
      for (int64_t e = 0; e < p.d; ++e) out[e] += v[j * p.dp + e];
    for (int64_t e = 0; e < p.d; ++e) out[e] /= float(p.span);
  }
}

// Keys (rotated when cos is not null) and values of qkv (t 3 h d) -> kt (h d tp) and vp (h tp dp), zero past t
// and past d, over the pool.
void pack_keys_values(ffi::ThreadPool& pool, const float* qkv, const float* cos, const float* sin, int64_t t,
                      int64_t h, int64_t d, int64_t tp, int64_t dp, float* kt, float* vp) {
  const float *k = qkv + h * d, *v = qkv + 2 * h * d;  // row j of head hh: (j * 3 h + hh) d
  constexpr int64_t kSlab = 256;  // rows per task
  const int64_t slabs = (tp + kSlab - 1) / kSlab;
  parallel_for(pool, h * slabs, 1, [=](int64_t i) {
    const int64_t hh = i / slabs, j0 = i % slabs * kSlab, j1 = std::min(tp, j0 + kSlab);
    std::vector<float> key(d);
    for (int64_t j = j0; j < j1; ++j) {
      float* row = vp + (hh * tp + j) * dp;
      if (j < t) std::copy_n(v + (j * 3 * h + hh) * d, d, row);
      std::fill(row + (j < t ? d : 0), row + dp, 0.f);
      if (j < t) rotate(k + (j * 3 * h + hh) * d, cos, sin, j, d, 1.f, key.data());
      for (int64_t e = 0; e < d; ++e) kt[(hh * d + e) * tp + j] = j < t ? key[e] : 0.f;
    }
  });
}

ffi::Error SegmentAttention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv, ffi::Buffer<ffi::S32> seg,
                            ffi::Buffer<ffi::S32> first, ffi::Buffer<ffi::F32> cos, ffi::Buffer<ffi::F32> sin,
                            int64_t block, int64_t span, int64_t rows, float scale,
                            ffi::ResultBuffer<ffi::F32> out) {
  const auto xd = qkv.dimensions(), od = out->dimensions();
  if (xd.size() != 4 || xd[1] != 3 || od.size() != 3 || od[0] != xd[0] || od[1] != xd[2] || od[2] != xd[3] ||
      seg.element_count() != xd[0])
    return ffi::Error::InvalidArgument("segment_attention: want qkv (t, 3, h, d), out (t, h, d), segments (t,)");
  const int64_t t = xd[0], h = xd[2], d = xd[3], tp = t + kKeys, dp = (d + 15) / 16 * 16;
  const bool rotary = cos.element_count() > 0;
  if (cos.element_count() != sin.element_count() || (rotary && (cos.element_count() != t * d || d % 2)))
    return ffi::Error::InvalidArgument("segment_attention: cos and sin must both be (t, d) with d even, or empty");
  const float *cs = rotary ? cos.typed_data() : nullptr, *sn = rotary ? sin.typed_data() : nullptr;
  const int64_t chunks = (t + rows - 1) / rows;
  if (block < 1 || span < 1 || span > t || rows < 1 || first.element_count() != chunks)
    return ffi::Error::InvalidArgument("segment_attention: bad block, span or rows, or a first block per chunk");
  // packed keys and values: in the one buffer kept between calls (page faults on a fresh one cost ~5 % of
  // a call) when it is free and they fit in 64 MB, else in one for this call only
  constexpr int64_t kKeptFloats = 1 << 24;
  static std::mutex kept_lock;
  static std::vector<float> kept;
  std::unique_lock<std::mutex> hold(kept_lock, std::try_to_lock);
  std::vector<float> own;
  std::vector<float>& packed = hold.owns_lock() && h * tp * (d + dp) <= kKeptFloats ? kept : own;
  packed.resize(h * tp * (d + dp));
  float *kt = packed.data(), *vp = kt + h * d * tp;
  pack_keys_values(pool, qkv.typed_data(), cs, sn, t, h, d, tp, dp, kt, vp);
  const Segments p{qkv.typed_data(), cs, sn, scale, kt, vp, seg.typed_data(), first.typed_data(),
                   out->typed_data(), t, h, d, tp, dp, block, span, rows};
  const int64_t tiles = (rows + kQueryRows - 1) / kQueryRows, groups = (span + kKeys - 1) / kKeys;
  const std::vector<int32_t> summary = group_segments(p, chunks, groups);
  parallel_for(pool, chunks * p.h * tiles, 16, [&](int64_t i) {
    thread_local std::vector<float> buf;
    thread_local std::vector<char> hit;
    const int64_t tile = i % tiles, hh = i / tiles % p.h, c = i / tiles / p.h;
    segment_tile(p, c, hh, c * p.rows + tile * kQueryRows, &summary[c * groups], buf, hit);
  });
  return ffi::Error::Success();
}

// The start of a handler's binding: XLA's thread pool, then buffer arguments of the given types (Binding has
// no public move: each step hands a prvalue on).
template <ffi::DataType T, ffi::DataType... Ts>
struct Buffers {
  template <typename B>
  static auto add(B binding) {
    if constexpr (sizeof...(Ts) == 0) {
      return std::move(binding).template Arg<ffi::Buffer<T>>();
    } else {
      return Buffers<Ts...>::add(std::move(binding).template Arg<ffi::Buffer<T>>());
    }
  }
};
template <ffi::DataType... Ts>
auto pool_and_buffers() { return Buffers<Ts...>::add(ffi::Ffi::Bind().Ctx<ffi::ThreadPool>()); }

using ffi::F32;
using ffi::S32;

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OmniJaxPackedMatmul, PackedMatmul,
                              (pool_and_buffers<F32, F32>().Ret<ffi::Buffer<F32>>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(OmniJaxRoutedExperts, RoutedExperts,
                              (pool_and_buffers<F32, F32, F32, S32, F32>().Ret<ffi::Buffer<F32>>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(OmniJaxDecodeAttention, DecodeAttention,
                              (pool_and_buffers<F32, F32, F32, S32, S32, S32>()
                                   .Attr<float>("scale")
                                   .Ret<ffi::Buffer<F32>>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(OmniJaxSegmentAttention, SegmentAttention,
                              (pool_and_buffers<F32, S32, S32, F32, F32>()
                                   .Attr<int64_t>("block")
                                   .Attr<int64_t>("span")
                                   .Attr<int64_t>("rows")
                                   .Attr<float>("scale")
                                   .Ret<ffi::Buffer<F32>>()));
