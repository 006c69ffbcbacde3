// float32 CPU kernels for small-batch decode, as XLA FFI handlers (built by omni_jax/nn/cpu_kernels.py).
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
// Work is shared out over XLA's intra-op thread pool in chunks that every thread (the caller included) takes
// from one atomic counter, so a call never waits on a task that has not started.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
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

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OmniJaxPackedMatmul, PackedMatmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(OmniJaxRoutedExperts, RoutedExperts,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(OmniJaxDecodeAttention, DecodeAttention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Attr<float>("scale")
                                  .Ret<ffi::Buffer<ffi::F32>>());
