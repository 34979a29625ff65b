// Index math of the implicit-GEMM 3x3 convolution (conv3x3_igemm.cu), kept apart from
// the kernel so each mapping reads as one small function. Everything here is host and
// device code: the kernel runs it, and a host emulation of the kernel can run the very
// same functions.
//
// The GEMM: row m = output pixel (n, h, w) in NHWC order, column = output channel (in
// the packed weight's order), k = (3x3 tap, input channel). One k-step is one tap and
// kBlockK consecutive input channels, taps innermost, so consecutive steps re-read
// nearly the same input lines (from L1).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define CSD_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define CSD_HOST_DEVICE inline
#endif

namespace csd_fast::igemm {

constexpr int kBlockM = 128;  // output pixels per block
constexpr int kBlockK = 32;   // input channels per k-step
constexpr int kThreads = 128;
constexpr int kStages = 3;    // cp.async pipeline depth
constexpr int kChunk = 8;     // bf16/fp16 elements per 16-byte copy
constexpr int kChunksPerRow = kBlockK / kChunk;
constexpr int kRowBytes = kBlockK * 2;
constexpr int kTaps = 9;
// Each thread copies one chunk column of kARowsPerThread pixel rows of the input tile.
constexpr int kARowsPerPass = kThreads / kChunksPerRow;
constexpr int kARowsPerThread = kBlockM / kARowsPerPass;
static_assert(kChunksPerRow == 4, "smem_offset's swizzle assumes 64-byte tile rows");
static_assert(kBlockM % kARowsPerPass == 0, "input tile rows must split evenly");

enum Epilogue : int { kEpilogueNone = 0, kEpilogueRelu = 1, kEpilogueResidual = 2 };

// Element strides of an (N, C, H, W) tensor, whatever its memory layout.
struct Strides4 {
  int64_t n, c, h, w;
};

// One launch. Tensors are raw pointers to bf16 or fp16 (the launcher checks them).
struct Conv3x3Params {
  const void* input;  // (N, >= in_channels, H, W) with unit channel stride
  Strides4 in;        // in.n, in.h, in.w multiples of kChunk, pointer 16-byte aligned
  int batch, height, width, in_channels;  // in_channels % kChunk == 0
  const void* weight;  // packed [kTaps][cols][in_channels], see pack_source
  const void* bias;    // original row order: read at ShuffleDest::bias_row
  int cols;            // GEMM columns: out_channels, or channels * s * s with a shuffle
  int channels;        // output channels (cols / s^2)
  int upscale;         // pixel-shuffle factor s; 1: no shuffle
  int epilogue;        // Epilogue
  float res_scale;     // kEpilogueResidual: out = residual + res_scale * (conv + bias)
  const void* residual;  // (N, cols, H, W), any strides (kEpilogueResidual only)
  Strides4 res;
  void* output;  // (N, channels, H * s, W * s), any strides, 4-byte aligned
  Strides4 out;
};

CSD_HOST_DEVICE int ceil_div(int a, int b) { return (a + b - 1) / b; }
CSD_HOST_DEVICE int pixels_of(const Conv3x3Params& p) { return p.batch * p.height * p.width; }
CSD_HOST_DEVICE int k_steps_of(const Conv3x3Params& p) {
  return kTaps * ceil_div(p.in_channels, kBlockK);
}

// Block b covers pixels [m0, m0 + kBlockM) and columns [col0, col0 + block_n). The
// column tiles of one pixel tile are neighbours in launch order, so the input tile they
// all read is still in L2.
struct Tile {
  int m0, col0;
};
CSD_HOST_DEVICE Tile tile_of_block(int block, int col_tiles, int block_n) {
  return {(block / col_tiles) * kBlockM, (block % col_tiles) * block_n};
}

struct Pixel {
  int n, h, w;
};
CSD_HOST_DEVICE Pixel pixel_of(int m, int height, int width) {
  const int plane = height * width;
  const int n = m / plane, rest = m - n * plane;
  const int h = rest / width;
  return {n, h, rest - h * width};
}

// k-step s: tap (dh, dw) in {-1, 0, 1}^2 and first input channel c0.
struct KStep {
  int tap, dh, dw, c0;
};
CSD_HOST_DEVICE KStep k_step(int step) {
  const int channel_block = step / kTaps, tap = step - channel_block * kTaps;
  return {tap, tap / 3 - 1, tap % 3 - 1, channel_block * kBlockK};
}

// A pixel row of the input tile, resolved once per block.
struct PixelRow {
  int64_t base;  // element offset of input[n, 0, h, w]
  int h, w;
  bool valid;  // m < N*H*W
};
CSD_HOST_DEVICE PixelRow pixel_row(const Conv3x3Params& p, int m) {
  if (m >= pixels_of(p)) return {0, 0, 0, false};
  const Pixel px = pixel_of(m, p.height, p.width);
  return {px.n * p.in.n + px.h * p.in.h + px.w * p.in.w, px.h, px.w, true};
}

// Element offset of the 16-byte chunk `chunk` (channels c0 + 8*chunk ...) of a pixel
// row at this k-step's tap, or -1 where the conv reads zero padding (outside the image,
// beyond in_channels, or beyond the last pixel).
CSD_HOST_DEVICE int64_t a_chunk_source(const Conv3x3Params& p, const PixelRow& row,
                                       const KStep& k, int chunk) {
  const int c = k.c0 + chunk * kChunk;
  const int h = row.h + k.dh, w = row.w + k.dw;
  if (!row.valid || c >= p.in_channels || h < 0 || h >= p.height || w < 0 || w >= p.width)
    return -1;
  return row.base + k.dh * p.in.h + k.dw * p.in.w + c;
}

// The same for the packed weight: GEMM column col, this k-step's tap and channels.
CSD_HOST_DEVICE int64_t b_chunk_source(const Conv3x3Params& p, int col, const KStep& k,
                                       int chunk) {
  const int c = k.c0 + chunk * kChunk;
  if (col >= p.cols || c >= p.in_channels) return -1;
  return (static_cast<int64_t>(k.tap) * p.cols + col) * p.in_channels + c;
}

// Byte offset of chunk `chunk` of tile row `row` in shared memory. Rows are 64 bytes;
// XOR-ing the chunk with bits 1-2 of the row puts the 8 rows an ldmatrix phase reads
// (same logical chunk) into 8 different 16-byte bank groups: no bank conflicts.
CSD_HOST_DEVICE int smem_offset(int row, int chunk) {
  return row * kRowBytes + ((chunk ^ ((row >> 1) & 3)) << 4);
}

// ldmatrix.x4 row addresses. A (16 rows x 16 k of a row-major tile): lanes 0-15 give
// rows 0-15 at k 0-7, lanes 16-31 rows 0-15 at k 8-15, so registers 0-3 are the m16n8k16
// A fragment a0-a3. B (stored n-major): lanes 0-7 n 0-7 k 0-7, 8-15 n 0-7 k 8-15,
// 16-23 n 8-15 k 0-7, 24-31 n 8-15 k 8-15: registers {0, 1} are the B fragment of
// columns 0-7, {2, 3} of columns 8-15. kk picks the 16-wide half of a 32-wide k-step.
CSD_HOST_DEVICE int a_frag_row(int lane) { return lane & 15; }
CSD_HOST_DEVICE int a_frag_chunk(int lane, int kk) { return 2 * kk + (lane >> 4); }
CSD_HOST_DEVICE int b_frag_row(int lane) { return ((lane >> 4) << 3) + (lane & 7); }
CSD_HOST_DEVICE int b_frag_chunk(int lane, int kk) { return 2 * kk + ((lane >> 3) & 1); }

// Position of accumulator element e (0-3) of a 16x8 tile in this lane: rows lane/4 and
// lane/4 + 8, columns 2*(lane%4) and 2*(lane%4) + 1.
CSD_HOST_DEVICE int acc_row(int lane, int e) { return (lane >> 2) + 8 * (e >> 1); }
CSD_HOST_DEVICE int acc_col(int lane, int e) { return 2 * (lane & 3) + (e & 1); }

// Where GEMM column col lands. Packed columns run sub-pixel-major, col = (i*s + j) *
// channels + c, so neighbouring columns are neighbouring channels of one output pixel
// (contiguous in NHWC). PyTorch's pixel_shuffle takes conv channel c*s*s + i*s + j to
// output channel c at sub-pixel (i, j); that row of the original weight and bias is
// bias_row. With s = 1 this is the identity (c = bias_row = col).
struct ShuffleDest {
  int channel, i, j, bias_row;
};
CSD_HOST_DEVICE ShuffleDest shuffle_dest(int col, int channels, int s) {
  const int sub = col / channels;  // i * s + j
  const int c = col - sub * channels;
  return {c, sub / s, sub - (sub / s) * s, c * s * s + sub};
}

// Element offset of output (or residual) value (n, d.channel, h*s + d.i, w*s + d.j).
CSD_HOST_DEVICE int64_t dest_offset(const Strides4& st, const Pixel& px, const ShuffleDest& d,
                                    int s) {
  return px.n * st.n + d.channel * st.c + (static_cast<int64_t>(px.h) * s + d.i) * st.h +
         (static_cast<int64_t>(px.w) * s + d.j) * st.w;
}

// Weight packing: packed[tap][col][c] = weight[bias_row(col), c, tap / 3, tap % 3] for
// the prefix the call uses. The original (O, I, 3, 3) layout puts neighbouring input
// channels 9 elements apart, which no 16-byte copy can read in place; the packed copy
// (9 * cols * in_channels elements, a few hundred KB at most) is made once per call.
struct WeightPack {
  const void* src;
  int64_t s0, s1, s2, s3;  // the weight's strides: any layout
  void* dst;
  int cols, in_channels, channels, upscale;
};
CSD_HOST_DEVICE int64_t pack_size(const WeightPack& w) {
  return static_cast<int64_t>(kTaps) * w.cols * w.in_channels;
}
CSD_HOST_DEVICE int64_t pack_source(const WeightPack& w, int64_t index) {
  const int c = static_cast<int>(index % w.in_channels);
  const int64_t rest = index / w.in_channels;
  const int col = static_cast<int>(rest % w.cols);
  const int tap = static_cast<int>(rest / w.cols);
  const int row = shuffle_dest(col, w.channels, w.upscale).bias_row;
  return row * w.s0 + c * w.s1 + (tap / 3) * w.s2 + (tap % 3) * w.s3;
}

// The fused epilogue of one accumulator: + bias, then relu or residual + res_scale * v.
// relu keeps NaN (as torch.relu does): only v < 0 becomes 0.
template <typename scalar_t>
CSD_HOST_DEVICE float epilogue_value(const Conv3x3Params& p, float acc, const Pixel& px,
                                     const ShuffleDest& d) {
  float v = acc + static_cast<float>(static_cast<const scalar_t*>(p.bias)[d.bias_row]);
  if (p.epilogue == kEpilogueRelu) {
    v = v < 0.f ? 0.f : v;
  } else if (p.epilogue == kEpilogueResidual) {
    const auto* res = static_cast<const scalar_t*>(p.residual);
    v = static_cast<float>(res[dest_offset(p.res, px, d, 1)]) + p.res_scale * v;
  }
  return v;
}

template <typename scalar_t>
struct alignas(2 * sizeof(scalar_t)) Pair {
  scalar_t x, y;
};

// Applies the epilogue to columns col and col + 1 of pixel m and stores them: as one
// 4-byte store when both land side by side (channels-last output, same sub-pixel),
// else one by one. Columns >= cols are the tile's padding and are dropped.
template <typename scalar_t>
CSD_HOST_DEVICE void store_pair(const Conv3x3Params& p, int m, int col, float v0, float v1) {
  if (col >= p.cols) return;
  auto* out = static_cast<scalar_t*>(p.output);
  const Pixel px = pixel_of(m, p.height, p.width);
  const ShuffleDest d0 = shuffle_dest(col, p.channels, p.upscale);
  const int64_t o0 = dest_offset(p.out, px, d0, p.upscale);
  const scalar_t r0 = static_cast<scalar_t>(epilogue_value<scalar_t>(p, v0, px, d0));
  if (col + 1 >= p.cols) {
    out[o0] = r0;
    return;
  }
  const ShuffleDest d1 = shuffle_dest(col + 1, p.channels, p.upscale);
  const int64_t o1 = dest_offset(p.out, px, d1, p.upscale);
  const scalar_t r1 = static_cast<scalar_t>(epilogue_value<scalar_t>(p, v1, px, d1));
  if (o1 == o0 + 1 && (o0 & 1) == 0) {
    *reinterpret_cast<Pair<scalar_t>*>(out + o0) = Pair<scalar_t>{r0, r1};
  } else {
    out[o0] = r0;
    out[o1] = r1;
  }
}

}  // namespace csd_fast::igemm
