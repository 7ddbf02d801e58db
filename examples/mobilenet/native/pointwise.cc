// The kernel gradient of a 1x1 convolution in bfloat16, for XLA:CPU through the XLA FFI.
//
// For a bfloat16 layer y = x @ w with x (K, M) (K = batch x pixels) and the bfloat16
// cotangent g (K, N), the kernel gradient is
//
//   dw[m, n] = sum_k x[k, m] * g[k, n]      (float32 sums of bfloat16 products)
//
// a product whose summed axis is the first of both operands. XLA:CPU hands its
// bfloat16 products to YNNPACK only when the summed axis is the left operand's last,
// so it converts both operands to float32 (one pass over each, kept in memory for the
// backward) and runs its own float32 dot. This kernel reads the bfloat16 arrays as
// they are.
//
// Method: the rows are taken two at a time. A block of 256 rows of each operand is
// packed so that the pair (row 2p, row 2p+1) of a column sits in one 32-bit word;
// one AVX512-BF16 instruction (vdpbf16ps) then adds 16 columns' two products to
// 16 float32 sums, and a tile of 8 x 48 sums stays in registers for the whole block.
// Every product is exact (8-bit significands) and each addition is one float32
// rounding, row 2p + 1's before row 2p's; subnormal inputs and sums (below 1.2e-38)
// are flushed to zero, as the instruction does. A CPU without AVX512-BF16 (the
// build is for the machine's own) has no fast way to do this: there the library
// says so (Jrelu6PointwiseKernelGradBuilt() is 0, the handler refuses) and
// mobilenet/depthwise.py keeps XLA's dot.
//
// Determinism: the rows are split into up to 16 pieces, each summed into its own
// buffer and the pieces added in order; the split depends on the shape alone, so
// 1, 2 or 64 threads give the same bits. Threads also share out blocks of the output
// (rows m and columns n), which does not change any sum's order.

#include <algorithm>
#include <cstdint>
#include <vector>

#ifdef __AVX512BF16__
#include <immintrin.h>
#define JRELU6_POINTWISE_BUILT 1
#else
#define JRELU6_POINTWISE_BUILT 0
#endif

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#ifdef __AVX512BF16__

using Bf16 = uint16_t;

constexpr int64_t kLanes = 16;      // float32 sums per vector
constexpr int64_t kRows = 8;        // output rows (m) per register tile
constexpr int64_t kMaxVectors = 3;  // vectors of 16 columns (n) per register tile
constexpr int64_t kBlock = 256;     // rows of x and g (k) per packed block

// Pairs of rows k0 + 2p, k0 + 2p + 1 of columns [c0, c0 + width) of a (rows x cols)
// bfloat16 array, one 32-bit word per pair (the first row in the low half), `stride`
// words a pair; rows past `rows` and columns past the width read as zero.
void PackPairs(const Bf16* a, int64_t rows, int64_t cols, int64_t k0, int64_t pairs,
               int64_t c0, int64_t width, int64_t stride, uint32_t* out) {
  for (int64_t p = 0; p < pairs; ++p) {
    const int64_t k = k0 + 2 * p;
    const Bf16* lo = a + k * cols + c0;
    const Bf16* hi = k + 1 < rows ? lo + cols : nullptr;
    uint32_t* o = out + p * stride;
    if (hi) {
      for (int64_t c = 0; c < width; ++c) o[c] = lo[c] | (static_cast<uint32_t>(hi[c]) << 16);
    } else {
      for (int64_t c = 0; c < width; ++c) o[c] = lo[c];
    }
    std::fill(o + width, o + stride, 0u);
  }
}

using Vec = __m512;

inline Vec Load(const float* p) { return _mm512_loadu_ps(p); }
inline void Store(float* p, Vec v) { _mm512_storeu_ps(p, v); }

// acc += the two products of each lane's pair (row 2p + 1's added first).
inline Vec AddPairs(Vec acc, uint32_t a, const uint32_t* b) {
  const __m512i bv = _mm512_loadu_si512(b);
  return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_set1_epi32(static_cast<int>(a)),
                          (__m512bh)bv);
}

// sums[r][v*16 + j] += products of `pairs` packed pairs, for a tile of kRows rows of
// x (packed, `a_stride` words a pair) and V vectors of columns of g.
template <int V>
void Tile(const uint32_t* a, int64_t a_stride, const uint32_t* b, int64_t b_stride,
          int64_t pairs, float* sums, int64_t sums_stride) {
  Vec acc[kRows][V];
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = Load(sums + r * sums_stride + v * kLanes);
  for (int64_t p = 0; p < pairs; ++p) {
    const uint32_t* ap = a + p * a_stride;
    const uint32_t* bp = b + p * b_stride;
    for (int r = 0; r < kRows; ++r)
      for (int v = 0; v < V; ++v) acc[r][v] = AddPairs(acc[r][v], ap[r], bp + v * kLanes);
  }
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < V; ++v) Store(sums + r * sums_stride + v * kLanes, acc[r][v]);
}

struct Shape {
  int64_t k, m, n;
  int64_t m_pad, n_pad;  // m to a multiple of kRows, n of kLanes
};

// Adds rows [k_begin, k_end) of x.T @ g to the block [m0, m1) x [n0, n1) of `sums`
// (m_pad x n_pad float32; m0, m1 multiples of kRows, n0, n1 of kLanes).
void SumRows(const Shape& s, const Bf16* x, const Bf16* g, int64_t k_begin, int64_t k_end,
             int64_t m0, int64_t m1, int64_t n0, int64_t n1, float* sums) {
  const int64_t height = m1 - m0, width = n1 - n0;
  std::vector<uint32_t> a(kBlock / 2 * height), b(kBlock / 2 * width);
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kBlock) {
    const int64_t pairs = (std::min(k_end, k0 + kBlock) - k0 + 1) / 2;
    // Rows from k_end on belong to the next piece: pack with `rows` = k_end.
    PackPairs(x, k_end, s.m, k0, pairs, m0, std::min(s.m, m1) - m0, height, a.data());
    PackPairs(g, k_end, s.n, k0, pairs, n0, std::min(s.n, n1) - n0, width, b.data());
    for (int64_t n = 0; n < width; n += kMaxVectors * kLanes) {
      const int64_t vectors = std::min<int64_t>(kMaxVectors, (width - n) / kLanes);
      for (int64_t m = 0; m < height; m += kRows) {
        const uint32_t* ap = a.data() + m;
        const uint32_t* bp = b.data() + n;
        float* out = sums + (m0 + m) * s.n_pad + n0 + n;
        if (vectors == 3) Tile<3>(ap, height, bp, width, pairs, out, s.n_pad);
        else if (vectors == 2) Tile<2>(ap, height, bp, width, pairs, out, s.n_pad);
        else Tile<1>(ap, height, bp, width, pairs, out, s.n_pad);
      }
    }
  }
}

// The row pieces (each an even number of rows, so that no pair straddles two), a
// function of the shape alone: up to 16, each of at least 2048 rows.
int64_t RowPieces(int64_t k) { return std::clamp<int64_t>(k / 2048, 1, 16); }

#endif  // __AVX512BF16__

ffi::Error KernelGradImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer g,
                          ffi::Result<ffi::AnyBuffer> dw) {
  using ffi::DataType;
  if (x.element_type() != DataType::BF16 || g.element_type() != DataType::BF16 ||
      dw->element_type() != DataType::F32)
    return ffi::Error::InvalidArgument(
        "pointwise kernel grad: bfloat16 x and g, a float32 result");
  const auto xd = x.dimensions(), gd = g.dimensions(), wd = dw->dimensions();
  if (xd.size() != 2 || gd.size() != 2 || wd.size() != 2 || gd[0] != xd[0] ||
      wd[0] != xd[1] || wd[1] != gd[1])
    return ffi::Error::InvalidArgument(
        "pointwise kernel grad: need x (K, M), g (K, N) and a (M, N) result");
#if !JRELU6_POINTWISE_BUILT
  return ffi::Error::InvalidArgument(
      "pointwise kernel grad: built for a CPU without AVX512-BF16");
#else
  Shape s{xd[0], xd[1], gd[1], (xd[1] + kRows - 1) / kRows * kRows,
          (gd[1] + kLanes - 1) / kLanes * kLanes};
  float* result = dw->reinterpret_data<float>();
  if (s.k == 0 || s.m == 0 || s.n == 0) {
    std::fill(result, result + s.m * s.n, 0.0f);
    return ffi::Error::Success();
  }
  const int64_t pieces = RowPieces(s.k);
  // The output is split into a grid of blocks, each item one block of one piece. Each
  // item packs its own rows of x and columns of g, so the grid is chosen for the least
  // packing (rows_split * N + cols_split * M per row summed) among those with enough
  // items for the pool; how the output is split does not change any sum's order.
  const int64_t row_tiles = s.m_pad / kRows;
  const int64_t col_tiles = (s.n_pad + kMaxVectors * kLanes - 1) / (kMaxVectors * kLanes);
  const int64_t wanted = std::min(row_tiles * col_tiles,
                                  (2 * (pool.num_threads() + 1) + pieces - 1) / pieces);
  int64_t row_parts = 1, col_parts = row_tiles * col_tiles;
  for (int64_t rows = 1; rows <= row_tiles; ++rows) {
    const int64_t cols = std::min(col_tiles, (wanted + rows - 1) / rows);
    if (rows * cols >= wanted &&
        rows * s.n + cols * s.m < row_parts * s.n + col_parts * s.m) {
      row_parts = rows;
      col_parts = cols;
    }
  }
  const int64_t parts = row_parts * col_parts;
  const int64_t size = s.m_pad * s.n_pad;
  std::vector<float> partial(pieces * size, 0.0f);
  const Bf16* xs = x.reinterpret_data<Bf16>();
  const Bf16* gs = g.reinterpret_data<Bf16>();
  ParallelFor(pool, pieces * parts, pieces * parts, [&](int64_t item, int64_t) {  // One each.
    const int64_t piece = item / parts, r = item % parts / col_parts, c = item % col_parts;
    const int64_t k_begin = piece * s.k / pieces / 2 * 2;
    const int64_t k_end = piece + 1 == pieces ? s.k : (piece + 1) * s.k / pieces / 2 * 2;
    const int64_t n_tile = kMaxVectors * kLanes;
    SumRows(s, xs, gs, k_begin, k_end, r * row_tiles / row_parts * kRows,
            (r + 1) * row_tiles / row_parts * kRows, c * col_tiles / col_parts * n_tile,
            std::min(s.n_pad, (c + 1) * col_tiles / col_parts * n_tile),
            partial.data() + piece * size);
  });
  for (int64_t m = 0; m < s.m; ++m)
    for (int64_t n = 0; n < s.n; ++n) {
      float total = 0.0f;
      for (int64_t piece = 0; piece < pieces; ++piece)
        total += partial[piece * size + m * s.n_pad + n];
      result[m * s.n + n] = total;
    }
  return ffi::Error::Success();
#endif
}

}  // namespace

// Whether this build has the kernel (the CPU it was built for has AVX512-BF16).
extern "C" int Jrelu6PointwiseKernelGradBuilt() { return JRELU6_POINTWISE_BUILT; }

XLA_FFI_DEFINE_HANDLER_SYMBOL(Jrelu6PointwiseKernelGrad, KernelGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());
