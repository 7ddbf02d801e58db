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
// and run on XLA's intra-op thread pool.
//
// Two rules make the results those of lax.conv, bit for bit wherever the
// machine is:
//
// * Determinism. Every forward and input-gradient element is summed by one
//   thread in a fixed tap order. The kernel gradient sums over the rows in
//   up to 16 pieces, each into its own buffer, then adds the pieces in order:
//   the split depends on the shape alone, not on the thread pool's size, so 1,
//   2 or 64 threads give the same bits.
// * Padding takes part. lax.conv multiplies the padding (and, in the input
//   gradient, the holes between strided outputs) like any other zero, so an
//   inf or NaN that meets only padding gives NaN (0 * inf), not a finite
//   value. The kernels skip padding taps while that changes nothing (a finite
//   kernel, a finite output-gradient pixel) and multiply a row of zeros in
//   their place otherwise.

#include <algorithm>
#include <cstring>
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

// The kernel gradient's pieces, a function of the shape alone so that its summation
// order is too: up to 16 (enough to keep 16 threads busy), each of at least 64 output
// pixels (so that clearing and adding up its partial sum, kh * kw * C floats, costs at
// most 1/64 of its multiply-adds).
int64_t KernelGradChunks(int64_t rows, int64_t row_pixels) {
  return std::clamp<int64_t>(std::min(rows, rows * row_pixels / 64), 1, 16);
}

// Whether no element is inf or NaN (all exponent bits set). On the bits, as an integer
// OR-reduction: it vectorises, where a loop of std::isfinite does not.
bool AllFinite(const float* v, int64_t n) {
  uint32_t non_finite = 0;
  for (int64_t e = 0; e < n; ++e) {
    uint32_t bits;
    std::memcpy(&bits, v + e, sizeof bits);
    non_finite |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  return non_finite == 0;
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

// `zeros` (C zeros) stands for the padding where it must be multiplied (a kernel that
// is not finite); null where padding taps can be skipped.
void Forward(const Geometry& g, const float* x, const float* k, const float* zeros, float* y,
             int64_t row_begin, int64_t row_end) {
  std::vector<const float*> xs(g.kh * g.kw), ks(g.kh * g.kw);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / g.ho, p = row % g.ho;
    for (int64_t q = 0; q < g.wo; ++q) {
      int taps = 0;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t a = p * g.sh - g.pt + i;
        const bool row_inside = a >= 0 && a < g.h;
        if (!row_inside && zeros == nullptr) continue;
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t b = q * g.sw - g.pl + j;
          const bool inside = row_inside && b >= 0 && b < g.w;
          if (!inside && zeros == nullptr) continue;
          xs[taps] = inside ? x + ((n * g.h + a) * g.w + b) * g.c : zeros;
          ks[taps] = k + (i * g.kw + j) * g.c;
          ++taps;
        }
      }
      DotTaps(xs.data(), ks.data(), taps, g.c, y + ((n * g.ho + p) * g.wo + q) * g.c);
    }
  }
}

// As lax.conv's transpose: a tap that falls on padding or between strided outputs
// multiplies a zero (`zeros`, when the kernel is not finite; else it is skipped).
void InputGrad(const Geometry& g, const float* dy, const float* k, const float* zeros,
               float* dx, int64_t row_begin, int64_t row_end) {
  std::vector<const float*> gs(g.kh * g.kw), ks(g.kh * g.kw);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / g.h, a = row % g.h;
    for (int64_t b = 0; b < g.w; ++b) {
      int taps = 0;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t ps = a + g.pt - i;  // p * sh
        const bool row_inside = ps >= 0 && ps % g.sh == 0 && ps / g.sh < g.ho;
        if (!row_inside && zeros == nullptr) continue;
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t qs = b + g.pl - j;  // q * sw
          const bool inside = row_inside && qs >= 0 && qs % g.sw == 0 && qs / g.sw < g.wo;
          if (!inside && zeros == nullptr) continue;
          gs[taps] = inside ? dy + ((n * g.ho + ps / g.sh) * g.wo + qs / g.sw) * g.c : zeros;
          ks[taps] = k + (i * g.kw + j) * g.c;
          ++taps;
        }
      }
      DotTaps(gs.data(), ks.data(), taps, g.c, dx + ((n * g.h + a) * g.w + b) * g.c);
    }
  }
}

// Adds sum_{rows, q} dy * x-under-tap into acc[(i * kw + j) * C + c]. A padding tap
// adds dy * 0: nothing where that dy pixel is finite (checked only there, at the
// borders), NaN in the channels where it is not.
void KernelGrad(const Geometry& g, const float* x, const float* dy, const float* zeros,
                float* acc, int64_t row_begin, int64_t row_end) {
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / g.ho, p = row % g.ho;
    const float* dy_row = dy + (n * g.ho + p) * g.wo * g.c;
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t a = p * g.sh - g.pt + i;
      const bool row_inside = a >= 0 && a < g.h;
      for (int64_t j = 0; j < g.kw; ++j) {
        float* out = acc + (i * g.kw + j) * g.c;
        for (int64_t q = 0; q < g.wo; ++q) {
          const int64_t b = q * g.sw - g.pl + j;
          const float* dy_pixel = dy_row + q * g.c;
          if (row_inside && b >= 0 && b < g.w) {
            MultiplyAdd(out, dy_pixel, x + ((n * g.h + a) * g.w + b) * g.c, g.c);
          } else if (!AllFinite(dy_pixel, g.c)) {
            MultiplyAdd(out, dy_pixel, zeros, g.c);
          }
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
  const std::vector<float> zeros(g.c, 0.0f);
  const float* pad = AllFinite(kp, g.kh * g.kw * g.c) ? nullptr : zeros.data();
  const int64_t rows = g.n * g.ho;
  ParallelFor(pool, rows, Chunks(pool, rows),
              [&](int64_t begin, int64_t end) { Forward(g, xp, kp, pad, yp, begin, end); });
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
  const std::vector<float> zeros(g.c, 0.0f);
  const float* pad = AllFinite(kp, g.kh * g.kw * g.c) ? nullptr : zeros.data();
  const int64_t rows = g.n * g.h;
  ParallelFor(pool, rows, Chunks(pool, rows),
              [&](int64_t begin, int64_t end) { InputGrad(g, gp, kp, pad, dxp, begin, end); });
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
  // One partial sum per chunk (not per thread), the chunks set by the shape alone:
  // the sum's order is fixed whatever the pool's size and schedule.
  const int64_t chunks = KernelGradChunks(rows, g.wo);
  std::vector<float> partial(chunks * size, 0.0f);
  const std::vector<float> zeros(g.c, 0.0f);
  ParallelFor(pool, chunks, chunks, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c)
      KernelGrad(g, xp, gp, zeros.data(), partial.data() + c * size, c * rows / chunks,
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
