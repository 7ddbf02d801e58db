// Depthwise 2-D convolution kernels for XLA:CPU, called through the XLA FFI.
//
// XLA:CPU has no fast depthwise convolution: the grouped convolution is a
// generic loop, and the shifted multiply-adds that mobilenet/depthwise.py
// builds from XLA ops pay for a padded copy of the input and compute the
// kernel gradient as a reduction whose inner loop is not vectorised. These
// three kernels do the same arithmetic directly on NHWC float32 arrays, with
// the channel axis (contiguous in memory) as the vectorised inner loop:
//
//   forward        y[n, p, q, c]  = sum_{i, j} x[n, p*sh - pt + i, q*sw - pl + j, c] * k[i, j, c]
//   input grad     dx[n, a, b, c] = sum of g[n, p, q, c] * k[i, j, c] over the (p, q, i, j)
//                                   with p*sh - pt + i = a and q*sw - pl + j = b
//   kernel grad    dk[i, j, c]    = sum_{n, p, q} g[n, p, q, c] * x[n, p*sh - pt + i, q*sw - pl + j, c]
//
// (x outside its bounds is zero: the padding.) Work is split over output rows
// and run on XLA's intra-op thread pool. Each kernel-gradient chunk sums into
// its own buffer; the chunks are added in a fixed order, so results do not
// depend on the thread schedule.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Runs body(begin, end) over [0, total) in `chunks` contiguous pieces, on the
// calling thread and the pool's. The caller works too and waits only for
// pieces that a pool thread has started, so a busy pool cannot deadlock it;
// a pool task that starts after the last piece is taken returns at once
// (the shared state outlives the call for such late tasks).
void ParallelFor(ffi::ThreadPool& pool, int64_t total, int64_t chunks,
                 const std::function<void(int64_t, int64_t)>& body) {
  chunks = std::max<int64_t>(1, std::min(chunks, total));
  if (chunks == 1) {
    if (total > 0) body(0, total);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto state = std::make_shared<State>();
  const auto* fn = &body;
  auto work = [state, fn, total, chunks]() {
    for (int64_t c; (c = state->next.fetch_add(1)) < chunks;) {
      (*fn)(c * total / chunks, (c + 1) * total / chunks);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), chunks - 1);
  for (int64_t t = 0; t < helpers; ++t) {
    auto task = work;  // Schedule takes ownership of its own copy.
    pool.Schedule(std::move(task));
  }
  work();
  while (state->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
}

int64_t Chunks(ffi::ThreadPool& pool, int64_t rows) {
  return std::min<int64_t>(rows, 4 * std::max<int64_t>(1, pool.num_threads() + 1));
}

struct Geometry {
  int64_t n, h, w, c;    // input
  int64_t ho, wo;        // output
  int64_t kh, kw;        // window
  int64_t sh, sw;        // strides
  int64_t pt, pl;        // padding before (top, left)
};

// The channel loops, kept out of line: inlined into the loops over taps and pixels,
// GCC vectorises across those with gathers instead (several times slower).
__attribute__((noinline)) void Multiply(float* __restrict out, const float* __restrict a,
                                        const float* __restrict b, int64_t n) {
  for (int64_t c = 0; c < n; ++c) out[c] = a[c] * b[c];
}

__attribute__((noinline)) void MultiplyAdd(float* __restrict out, const float* __restrict a,
                                           const float* __restrict b, int64_t n) {
  for (int64_t c = 0; c < n; ++c) out[c] += a[c] * b[c];
}

// out[0:C] = sum over the taps t of a[t][0:C] * b[t][0:C]. The output row (at most a
// few KiB) stays in L1 while each tap streams over it.
inline void DotTaps(const float* const* a, const float* const* b, int taps, int64_t channels,
                    float* out) {
  if (taps == 0) {
    std::fill(out, out + channels, 0.0f);
    return;
  }
  Multiply(out, a[0], b[0], channels);
  for (int t = 1; t < taps; ++t) MultiplyAdd(out, a[t], b[t], channels);
}

void Forward(const Geometry& g, const float* x, const float* k, float* y, int64_t row_begin,
             int64_t row_end) {
  std::vector<const float*> xs(g.kh * g.kw), ks(g.kh * g.kw);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / g.ho, p = row % g.ho;
    for (int64_t q = 0; q < g.wo; ++q) {
      int taps = 0;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t a = p * g.sh - g.pt + i;
        if (a < 0 || a >= g.h) continue;
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t b = q * g.sw - g.pl + j;
          if (b < 0 || b >= g.w) continue;
          xs[taps] = x + ((n * g.h + a) * g.w + b) * g.c;
          ks[taps] = k + (i * g.kw + j) * g.c;
          ++taps;
        }
      }
      DotTaps(xs.data(), ks.data(), taps, g.c, y + ((n * g.ho + p) * g.wo + q) * g.c);
    }
  }
}

void InputGrad(const Geometry& g, const float* dy, const float* k, float* dx,
               int64_t row_begin, int64_t row_end) {
  std::vector<const float*> gs(g.kh * g.kw), ks(g.kh * g.kw);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / g.h, a = row % g.h;
    for (int64_t b = 0; b < g.w; ++b) {
      int taps = 0;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t ps = a + g.pt - i;  // p * sh
        if (ps < 0 || ps % g.sh != 0 || ps / g.sh >= g.ho) continue;
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t qs = b + g.pl - j;  // q * sw
          if (qs < 0 || qs % g.sw != 0 || qs / g.sw >= g.wo) continue;
          gs[taps] = dy + ((n * g.ho + ps / g.sh) * g.wo + qs / g.sw) * g.c;
          ks[taps] = k + (i * g.kw + j) * g.c;
          ++taps;
        }
      }
      DotTaps(gs.data(), ks.data(), taps, g.c, dx + ((n * g.h + a) * g.w + b) * g.c);
    }
  }
}

// Adds sum_{rows, q} dy * x-under-tap into acc[(i * kw + j) * C + c].
void KernelGrad(const Geometry& g, const float* x, const float* dy, float* acc,
                int64_t row_begin, int64_t row_end) {
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / g.ho, p = row % g.ho;
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t a = p * g.sh - g.pt + i;
      if (a < 0 || a >= g.h) continue;
      for (int64_t j = 0; j < g.kw; ++j) {
        float* out = acc + (i * g.kw + j) * g.c;
        for (int64_t q = 0; q < g.wo; ++q) {
          const int64_t b = q * g.sw - g.pl + j;
          if (b < 0 || b >= g.w) continue;
          MultiplyAdd(out, dy + ((n * g.ho + p) * g.wo + q) * g.c,
                      x + ((n * g.h + a) * g.w + b) * g.c, g.c);
        }
      }
    }
  }
}

Geometry MakeGeometry(ffi::Span<const int64_t> input, ffi::Span<const int64_t> output,
                      ffi::Span<const int64_t> window, int64_t sh, int64_t sw, int64_t pt,
                      int64_t pl) {
  return Geometry{input[0],  input[1], input[2], input[3], output[1], output[2],
                  window[0], window[1], sh,      sw,       pt,        pl};
}

ffi::Error CheckGeometry(const Geometry& g) {
  if (g.sh < 1 || g.sw < 1) return ffi::Error::InvalidArgument("depthwise: strides must be >= 1");
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32, 4> x,
                       ffi::Buffer<ffi::F32, 3> k, ffi::ResultBuffer<ffi::F32, 4> y,
                       int64_t stride_h, int64_t stride_w, int64_t pad_top, int64_t pad_left) {
  const Geometry g = MakeGeometry(x.dimensions(), y->dimensions(), k.dimensions(), stride_h,
                                  stride_w, pad_top, pad_left);
  if (auto error = CheckGeometry(g); error.failure()) return error;
  const float* xp = x.typed_data();
  const float* kp = k.typed_data();
  float* yp = y->typed_data();
  const int64_t rows = g.n * g.ho;
  ParallelFor(pool, rows, Chunks(pool, rows),
              [&](int64_t begin, int64_t end) { Forward(g, xp, kp, yp, begin, end); });
  return ffi::Error::Success();
}

ffi::Error InputGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32, 4> dy,
                         ffi::Buffer<ffi::F32, 3> k, ffi::ResultBuffer<ffi::F32, 4> dx,
                         int64_t stride_h, int64_t stride_w, int64_t pad_top,
                         int64_t pad_left) {
  const Geometry g = MakeGeometry(dx->dimensions(), dy.dimensions(), k.dimensions(), stride_h,
                                  stride_w, pad_top, pad_left);
  if (auto error = CheckGeometry(g); error.failure()) return error;
  const float* gp = dy.typed_data();
  const float* kp = k.typed_data();
  float* dxp = dx->typed_data();
  const int64_t rows = g.n * g.h;
  ParallelFor(pool, rows, Chunks(pool, rows),
              [&](int64_t begin, int64_t end) { InputGrad(g, gp, kp, dxp, begin, end); });
  return ffi::Error::Success();
}

ffi::Error KernelGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32, 4> x,
                          ffi::Buffer<ffi::F32, 4> dy, ffi::ResultBuffer<ffi::F32, 3> dk,
                          int64_t stride_h, int64_t stride_w, int64_t pad_top,
                          int64_t pad_left) {
  const Geometry g = MakeGeometry(x.dimensions(), dy.dimensions(), dk->dimensions(), stride_h,
                                  stride_w, pad_top, pad_left);
  if (auto error = CheckGeometry(g); error.failure()) return error;
  const float* xp = x.typed_data();
  const float* gp = dy.typed_data();
  float* dkp = dk->typed_data();
  const int64_t size = g.kh * g.kw * g.c;
  const int64_t rows = g.n * g.ho;
  const int64_t chunks = std::max<int64_t>(1, Chunks(pool, rows));  // Chunks is <= rows.
  std::vector<float> partial(chunks * size, 0.0f);
  // One partial sum per chunk (not per thread): the sum's order is fixed.
  ParallelFor(pool, chunks, chunks, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c)
      KernelGrad(g, xp, gp, partial.data() + c * size, c * rows / chunks,
                 (c + 1) * rows / chunks);
  });
  std::fill(dkp, dkp + size, 0.0f);
  for (int64_t c = 0; c < chunks; ++c)
    for (int64_t e = 0; e < size; ++e) dkp[e] += partial[c * size + e];
  return ffi::Error::Success();
}

}  // namespace

// Aliases keep the commas of template arguments out of the macro arguments.
using Image = ffi::Buffer<ffi::F32, 4>;
using Taps = ffi::Buffer<ffi::F32, 3>;

#define JRELU6_DEPTHWISE_BINDING(First, Second, Result)                             \
  ffi::Ffi::Bind()                                                                  \
      .Ctx<ffi::ThreadPool>()                                                       \
      .Arg<First>()                                                                 \
      .Arg<Second>()                                                                \
      .Ret<Result>()                                                                \
      .Attr<int64_t>("stride_h")                                                    \
      .Attr<int64_t>("stride_w")                                                    \
      .Attr<int64_t>("pad_top")                                                     \
      .Attr<int64_t>("pad_left")

XLA_FFI_DEFINE_HANDLER_SYMBOL(Jrelu6DepthwiseForward, ForwardImpl,
                              JRELU6_DEPTHWISE_BINDING(Image, Taps, Image));
XLA_FFI_DEFINE_HANDLER_SYMBOL(Jrelu6DepthwiseInputGrad, InputGradImpl,
                              JRELU6_DEPTHWISE_BINDING(Image, Taps, Image));
XLA_FFI_DEFINE_HANDLER_SYMBOL(Jrelu6DepthwiseKernelGrad, KernelGradImpl,
                              JRELU6_DEPTHWISE_BINDING(Image, Image, Taps));
