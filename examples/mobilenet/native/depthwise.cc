// Depthwise 2-D convolution kernels for XLA:CPU, called through the XLA FFI.
//
// XLA:CPU has no fast depthwise convolution: the grouped convolution is a
// generic loop, and the shifted multiply-adds that mobilenet/depthwise.py
// builds from XLA ops pay for a padded copy of the input and compute the
// kernel gradient as a reduction whose inner loop is not vectorised. These
// three kernels do the same arithmetic directly on NHWC float32 or bfloat16
// arrays, with the channel axis (contiguous in memory) as the vectorised inner
// loop:
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
//
// The image (x, dx) and the kernel are float32 or bfloat16, the same type; the
// forward's result (and so the output gradient) is of that type too, or float32
// for bfloat16 images. bfloat16 arrays are read and written as they are: each
// value is widened to float32 as it is loaded (a 16-bit shift), every sum is a
// float32 sum in the same order as for float32 arrays, and a bfloat16 result is
// rounded to the nearest bfloat16 (ties to even) once, as it is stored. That
// gives the bits of the float32 kernels run on widened copies with the results
// converted back, as XLA converts, without the copies: two passes over each
// array fewer. A float32 result of bfloat16 operands is the float32 sums as they
// are (for a float32 batch norm that follows, whose float32 cotangent comes back
// as it is). The kernel gradient, a sum over the whole batch, is returned in
// float32 whatever the inputs' type, so that devices that each hold part of the
// batch add their partial sums before anything is rounded.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#ifdef __AVX2__
#include <immintrin.h>
#endif

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

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

// The element types: float32, and bfloat16 held as the upper 16 bits of a float32.
using Bf16 = uint16_t;

inline float Widen(float v) { return v; }

inline float Widen(Bf16 v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float wide;
  std::memcpy(&wide, &bits, sizeof wide);
  return wide;
}

inline void Narrow(float v, float* out) { *out = v; }

// Round to nearest, ties to even (XLA's and ml_dtypes' conversion); a NaN stays a quiet
// NaN of the same sign. Branch-free integer arithmetic, so the store loop vectorises.
inline void Narrow(float v, Bf16* out) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  const bool nan = (bits & 0x7fffffffu) > 0x7f800000u;
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  *out = static_cast<Bf16>(nan ? ((bits >> 16) & 0x8000u) | 0x7fc0u : rounded);
}

// Whether a value is inf or NaN (all exponent bits set), on its bits.
inline uint32_t NonFinite(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
}

inline uint32_t NonFinite(Bf16 v) { return static_cast<uint32_t>((v & 0x7f80u) == 0x7f80u); }

// Whether no element is inf or NaN. An integer OR-reduction over the bits: it
// vectorises, where a loop of std::isfinite does not.
template <typename T>
bool AllFinite(const T* v, int64_t n) {
  uint32_t non_finite = 0;
  for (int64_t e = 0; e < n; ++e) non_finite |= NonFinite(v[e]);
  return non_finite == 0;
}

struct Geometry {
  int64_t n, h, w, c;    // input
  int64_t ho, wo;        // output
  int64_t kh, kw;        // window
  int64_t sh, sw;        // strides
  int64_t pt, pl;        // padding before (top, left)
};

// Eight float32 lanes: one AVX register (two SSE or NEON registers elsewhere). The
// channel loops below hold their sums in these across the taps (or, in the kernel
// gradient, across a row's pixels) and store each once, where a loop over taps of
// loops over channels would load and store the sum at every tap.
typedef float F8 __attribute__((vector_size(32)));
typedef uint32_t U8 __attribute__((vector_size(32)));
typedef uint16_t H8 __attribute__((vector_size(16)));
constexpr int64_t kLanes = 8;

inline F8 Load8(const float* p) {
  F8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline F8 Load8(const Bf16* p) {
#ifdef __AVX2__  // One zero-extending load and a shift (GCC's generic form takes six).
  const __m256i bits = _mm256_slli_epi32(
      _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16);
  return reinterpret_cast<F8>(_mm256_castsi256_ps(bits));
#else
  H8 half;
  std::memcpy(&half, p, sizeof half);
  const U8 bits = __builtin_convertvector(half, U8) << 16;
  F8 v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
#endif
}

inline void Store8(float* p, F8 v) { std::memcpy(p, &v, sizeof v); }

// Narrow's rounding, lane by lane.
inline void Store8(Bf16* p, F8 v) {
  U8 bits;
  std::memcpy(&bits, &v, sizeof bits);
  const U8 nan = (U8)((bits & 0x7fffffffu) > 0x7f800000u);  // All ones where NaN.
  const U8 rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const U8 quiet = ((bits >> 16) & 0x8000u) | 0x7fc0u;
  const H8 half = __builtin_convertvector((nan & quiet) | (~nan & rounded), H8);
  std::memcpy(p, &half, sizeof half);
}

// Sums kept in registers: blocks of kWide vectors (32 channels) give four independent
// chains of additions, where one vector's chain would wait on each addition's latency.
constexpr int kWide = 4;

// out[c:c + V * 8] = sum over the taps t of a[t] * b[t] there, in tap order.
template <int V, typename TA, typename TO>
inline void DotTapsBlock(const TA* const* a, const float* const* b, int taps, int64_t c,
                         TO* out) {
  F8 sum[V] = {};
  if (taps > 0) {
    for (int v = 0; v < V; ++v)
      sum[v] = Load8(a[0] + c + v * kLanes) * Load8(b[0] + c + v * kLanes);
  }
  for (int t = 1; t < taps; ++t) {
    for (int v = 0; v < V; ++v)
      sum[v] += Load8(a[t] + c + v * kLanes) * Load8(b[t] + c + v * kLanes);
  }
  for (int v = 0; v < V; ++v) Store8(out + c + v * kLanes, sum[v]);
}

// out[0:C] = sum over the taps t of a[t][0:C] * b[t][0:C], summed in float32 in tap
// order, rounded to TO once.
template <typename TA, typename TO>
void DotTaps(const TA* const* a, const float* const* b, int taps, int64_t channels, TO* out) {
  int64_t c = 0;
  for (; c + kWide * kLanes <= channels; c += kWide * kLanes)
    DotTapsBlock<kWide>(a, b, taps, c, out);
  for (; c + kLanes <= channels; c += kLanes) DotTapsBlock<1>(a, b, taps, c, out);
  for (; c < channels; ++c) {
    float sum = 0.0f;
    if (taps > 0) sum = Widen(a[0][c]) * b[0][c];
    for (int t = 1; t < taps; ++t) sum += Widen(a[t][c]) * b[t][c];
    Narrow(sum, out + c);
  }
}

// out[c:c + V * 8] += sum over q in [q_begin, q_end) of dy[q * C + c] times
// x[(q * sw + offset) * C + c] there, in q order.
template <int V, typename TX, typename TD>
inline void DotPixelsBlock(const TD* dy, const TX* x, int64_t q_begin, int64_t q_end,
                           int64_t sw, int64_t offset, int64_t channels, int64_t c, float* out) {
  F8 sum[V];
  for (int v = 0; v < V; ++v) sum[v] = Load8(out + c + v * kLanes);
  for (int64_t q = q_begin; q < q_end; ++q) {
    const TD* g = dy + q * channels + c;
    const TX* in = x + (q * sw + offset) * channels + c;
    for (int v = 0; v < V; ++v) sum[v] += Load8(g + v * kLanes) * Load8(in + v * kLanes);
  }
  for (int v = 0; v < V; ++v) Store8(out + c + v * kLanes, sum[v]);
}

// out[0:C] += sum over q in [q_begin, q_end) of dy[q * C + c] * x[(q * sw + offset) * C + c],
// in q order.
template <typename TX, typename TD>
void DotPixels(const TD* dy, const TX* x, int64_t q_begin, int64_t q_end, int64_t sw,
               int64_t offset, int64_t channels, float* out) {
  int64_t c = 0;
  for (; c + kWide * kLanes <= channels; c += kWide * kLanes)
    DotPixelsBlock<kWide>(dy, x, q_begin, q_end, sw, offset, channels, c, out);
  for (; c + kLanes <= channels; c += kLanes)
    DotPixelsBlock<1>(dy, x, q_begin, q_end, sw, offset, channels, c, out);
  for (; c < channels; ++c) {
    float sum = out[c];
    for (int64_t q = q_begin; q < q_end; ++q)
      sum += Widen(dy[q * channels + c]) * Widen(x[(q * sw + offset) * channels + c]);
    out[c] = sum;
  }
}

// out[0:C] += a[0:C] * b[0:C]: a padding tap's product in the kernel gradient.
template <typename TA, typename TB>
void MultiplyAdd(float* out, const TA* a, const TB* b, int64_t channels) {
  for (int64_t c = 0; c < channels; ++c) out[c] += Widen(a[c]) * Widen(b[c]);
}

// `zeros` (C zeros) stands for the padding where it must be multiplied (a kernel that
// is not finite); null where padding taps can be skipped. `k` is the kernel in float32.
template <typename T, typename TO>
void Forward(const Geometry& g, const T* x, const float* k, const T* zeros, TO* y,
             int64_t row_begin, int64_t row_end) {
  std::vector<const T*> xs(g.kh * g.kw);
  std::vector<const float*> ks(g.kh * g.kw);
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
template <typename T, typename TO>
void InputGrad(const Geometry& g, const T* dy, const float* k, const T* zeros, TO* dx,
               int64_t row_begin, int64_t row_end) {
  std::vector<const T*> gs(g.kh * g.kw);
  std::vector<const float*> ks(g.kh * g.kw);
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

// Adds sum_{rows, q} dy * x-under-tap into acc[(i * kw + j) * C + c] (float32), in row
// and then q order. A padding tap adds dy * 0: nothing where that dy pixel is finite
// (checked only there, at the borders), NaN in the channels where it is not.
template <typename TX, typename TD>
void KernelGrad(const Geometry& g, const TX* x, const TD* dy, const TX* zeros, float* acc,
                int64_t row_begin, int64_t row_end) {
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / g.ho, p = row % g.ho;
    const TD* dy_row = dy + (n * g.ho + p) * g.wo * g.c;
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t a = p * g.sh - g.pt + i;
      const bool row_inside = a >= 0 && a < g.h;
      for (int64_t j = 0; j < g.kw; ++j) {
        float* out = acc + (i * g.kw + j) * g.c;
        // The output columns q whose tap column b = q * sw - pl + j lies inside the input.
        const int64_t offset = j - g.pl;
        int64_t q_begin = 0, q_end = 0;  // Empty: every tap of this row is padding.
        if (row_inside && g.w - 1 - offset >= 0) {
          q_begin = std::min(g.wo, offset >= 0 ? 0 : (-offset + g.sw - 1) / g.sw);
          q_end = std::max(q_begin, std::min(g.wo, (g.w - 1 - offset) / g.sw + 1));
          DotPixels(dy_row, x + (n * g.h + a) * g.w * g.c, q_begin, q_end, g.sw, offset, g.c,
                    out);
        }
        for (int64_t q = 0; q < g.wo; ++q) {
          if (q >= q_begin && q < q_end) continue;
          const TD* dy_pixel = dy_row + q * g.c;
          if (!AllFinite(dy_pixel, g.c)) MultiplyAdd(out, dy_pixel, zeros, g.c);
        }
      }
    }
  }
}

// The geometry of a call whose image operands/results have rank 4 and whose kernel (or
// kernel gradient) has rank 3; an error for anything else.
ffi::Error CheckedGeometry(const ffi::AnyBuffer& input, const ffi::AnyBuffer& output,
                           const ffi::AnyBuffer& window, int64_t sh, int64_t sw, int64_t pt,
                           int64_t pl, Geometry* g) {
  if (input.dimensions().size() != 4 || output.dimensions().size() != 4 ||
      window.dimensions().size() != 3)
    return ffi::Error::InvalidArgument("depthwise: need NHWC images and a (kh, kw, C) kernel");
  if (sh < 1 || sw < 1) return ffi::Error::InvalidArgument("depthwise: strides must be >= 1");
  const auto in = input.dimensions(), out = output.dimensions(), k = window.dimensions();
  *g = Geometry{in[0], in[1], in[2], in[3], out[1], out[2], k[0], k[1], sh, sw, pt, pl};
  return ffi::Error::Success();
}

// Calls body(T{}, TY{}) with T the image's element type (float or Bf16) and TY the
// forward result's (T, or float for Bf16 images); an error for any other combination.
// The kernel taps, where a call has them, have the image's type (KernelMatches).
template <typename Body>
ffi::Error WithElementTypes(ffi::DataType image, ffi::DataType result, Body&& body) {
  using ffi::DataType;
  if (image == DataType::F32 && result == DataType::F32) return body(float{}, float{});
  if (image == DataType::BF16 && result == DataType::BF16) return body(Bf16{}, Bf16{});
  if (image == DataType::BF16 && result == DataType::F32) return body(Bf16{}, float{});
  return ffi::Error::InvalidArgument(
      "depthwise: float32 or bfloat16 images, with results of their dtype or float32");
}

ffi::Error KernelMatches(const ffi::AnyBuffer& image, const ffi::AnyBuffer& kernel) {
  if (kernel.element_type() != image.element_type())
    return ffi::Error::InvalidArgument("depthwise: the kernel must have the image's dtype");
  return ffi::Error::Success();
}

// The kernel taps in float32: the buffer itself for float32, else a widened copy.
template <typename T>
const float* WideTaps(const T* k, int64_t size, std::vector<float>& copy) {
  if constexpr (std::is_same_v<T, float>) {
    return k;
  } else {
    copy.resize(size);
    for (int64_t e = 0; e < size; ++e) copy[e] = Widen(k[e]);
    return copy.data();
  }
}

// The forward and input-gradient calls differ only in which kernel runs over which rows.
// T: the element type of `image` (what the kernel reads), TK the taps', TO the result's.
template <typename T, typename TK, typename TO, typename Kernel>
ffi::Error ByRows(ffi::ThreadPool& pool, const Geometry& g, const ffi::AnyBuffer& image,
                  const ffi::AnyBuffer& taps, ffi::Result<ffi::AnyBuffer>& out, int64_t rows,
                  Kernel kernel) {
  std::vector<float> wide;
  const float* k = WideTaps(taps.reinterpret_data<TK>(), g.kh * g.kw * g.c, wide);
  const std::vector<T> zeros(g.c, T{});
  const T* pad = AllFinite(k, g.kh * g.kw * g.c) ? nullptr : zeros.data();
  const T* in = image.reinterpret_data<T>();
  TO* result = out->reinterpret_data<TO>();
  ParallelFor(pool, rows, Chunks(pool, rows), [&](int64_t begin, int64_t end) {
    kernel(g, in, k, pad, result, begin, end);
  });
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer k,
                       ffi::Result<ffi::AnyBuffer> y, int64_t stride_h, int64_t stride_w,
                       int64_t pad_top, int64_t pad_left) {
  Geometry g;
  if (auto error = CheckedGeometry(x, *y, k, stride_h, stride_w, pad_top, pad_left, &g);
      error.failure())
    return error;
  if (auto error = KernelMatches(x, k); error.failure()) return error;
  return WithElementTypes(x.element_type(), y->element_type(),
                          [&](auto tx, auto ty) {
                            using T = decltype(tx);
                            using TY = decltype(ty);
                            return ByRows<T, T, TY>(pool, g, x, k, y, g.n * g.ho,
                                                    Forward<T, TY>);
                          });
}

ffi::Error InputGradImpl(ffi::ThreadPool pool, ffi::AnyBuffer dy, ffi::AnyBuffer k,
                         ffi::Result<ffi::AnyBuffer> dx, int64_t stride_h, int64_t stride_w,
                         int64_t pad_top, int64_t pad_left) {
  Geometry g;
  if (auto error = CheckedGeometry(*dx, dy, k, stride_h, stride_w, pad_top, pad_left, &g);
      error.failure())
    return error;
  if (auto error = KernelMatches(*dx, k); error.failure()) return error;
  return WithElementTypes(dx->element_type(), dy.element_type(),
                          [&](auto tx, auto ty) {
                            using T = decltype(tx);
                            using TY = decltype(ty);
                            return ByRows<TY, T, T>(pool, g, dy, k, dx, g.n * g.h,
                                                    InputGrad<TY, T>);
                          });
}

template <typename TX, typename TD>
ffi::Error KernelGradTyped(ffi::ThreadPool& pool, const Geometry& g, const TX* x, const TD* dy,
                           float* dk) {
  const int64_t size = g.kh * g.kw * g.c;
  const int64_t rows = g.n * g.ho;
  // One partial sum per chunk (not per thread), the chunks set by the shape alone:
  // the sum's order is fixed whatever the pool's size and schedule.
  const int64_t chunks = KernelGradChunks(rows, g.wo);
  std::vector<float> partial(chunks * size, 0.0f);
  const std::vector<TX> zeros(g.c, TX{});
  ParallelFor(pool, chunks, chunks, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c)
      KernelGrad(g, x, dy, zeros.data(), partial.data() + c * size, c * rows / chunks,
                 (c + 1) * rows / chunks);
  });
  std::fill(dk, dk + size, 0.0f);
  for (int64_t c = 0; c < chunks; ++c)
    for (int64_t e = 0; e < size; ++e) dk[e] += partial[c * size + e];
  return ffi::Error::Success();
}

ffi::Error KernelGradImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer dy,
                          ffi::Result<ffi::AnyBuffer> dk, int64_t stride_h, int64_t stride_w,
                          int64_t pad_top, int64_t pad_left) {
  Geometry g;
  if (auto error = CheckedGeometry(x, dy, *dk, stride_h, stride_w, pad_top, pad_left, &g);
      error.failure())
    return error;
  if (dk->element_type() != ffi::DataType::F32)
    return ffi::Error::InvalidArgument("depthwise: the kernel gradient is float32");
  return WithElementTypes(x.element_type(), dy.element_type(),
                          [&](auto tx, auto ty) {
                            using T = decltype(tx);
                            using TY = decltype(ty);
                            return KernelGradTyped<T, TY>(pool, g, x.reinterpret_data<T>(),
                                                          dy.reinterpret_data<TY>(),
                                                          dk->reinterpret_data<float>());
                          });
}

}  // namespace

#define JRELU6_DEPTHWISE_BINDING                                                    \
  ffi::Ffi::Bind()                                                                  \
      .Ctx<ffi::ThreadPool>()                                                       \
      .Arg<ffi::AnyBuffer>()                                                        \
      .Arg<ffi::AnyBuffer>()                                                        \
      .Ret<ffi::AnyBuffer>()                                                        \
      .Attr<int64_t>("stride_h")                                                    \
      .Attr<int64_t>("stride_w")                                                    \
      .Attr<int64_t>("pad_top")                                                     \
      .Attr<int64_t>("pad_left")

XLA_FFI_DEFINE_HANDLER_SYMBOL(Jrelu6DepthwiseForward, ForwardImpl, JRELU6_DEPTHWISE_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(Jrelu6DepthwiseInputGrad, InputGradImpl, JRELU6_DEPTHWISE_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(Jrelu6DepthwiseKernelGrad, KernelGradImpl,
                              JRELU6_DEPTHWISE_BINDING);
