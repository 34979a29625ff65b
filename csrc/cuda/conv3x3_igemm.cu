// Tensor-core 3x3 convolution (stride 1, zero padding 1) over NHWC bf16/fp16 as an
// implicit GEMM, with bias and a fused epilogue (relu, residual + res_scale * conv, or
// a pixel-shuffle store), fp32 accumulation.
//
// A block computes kBlockM = 128 output pixels x BlockN (16, 32 or 64) columns with four
// warps and mma.sync m16n8k16. Each k-step brings one 3x3 tap x 32 input channels of the
// input tile and the matching packed-weight tile into shared memory with cp.async
// (zero-filled where the conv reads padding), kStages deep, and the warps read their
// fragments with ldmatrix from XOR-swizzled rows. The epilogue goes straight from the
// accumulators to global memory (index math in conv3x3_igemm_index.cuh).
#include "conv3x3_igemm.cuh"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "mma_sm80.cuh"

namespace csd_fast::igemm {
namespace {

// kBlockM pixels x BlockN columns per block; the four warps as WarpsM x (4 / WarpsM),
// each computing a kWarpM x kWarpN tile of 16x8 MMA tiles.
template <int BlockN, int WarpsM>
struct TileConfig {
  static constexpr int kBlockN = BlockN;
  static constexpr int kWarpsM = WarpsM;
  static constexpr int kWarpsN = kThreads / 32 / WarpsM;
  static constexpr int kWarpM = kBlockM / WarpsM;
  static constexpr int kWarpN = BlockN / kWarpsN;
  static constexpr int kMmaM = kWarpM / 16;
  static constexpr int kMmaN = kWarpN / 8;
  static constexpr int kAStageBytes = kBlockM * kRowBytes;
  static constexpr int kBStageBytes = BlockN * kRowBytes;
  static constexpr int kStageBytes = kAStageBytes + kBStageBytes;
  static_assert(kWarpsM * kWarpsN * 32 == kThreads, "four warps per block");
  static_assert(kWarpM % 16 == 0 && kWarpN % 16 == 0, "ldmatrix.x4 reads 16x16 tiles");
  static_assert(kStages * kStageBytes <= 48 * 1024, "static shared memory limit");
};

using NarrowTile = TileConfig<16, 4>;  // 3 or 16 output channels (EDSR's tail)
using MediumTile = TileConfig<32, 4>;
using WideTile = TileConfig<64, 2>;

// Four blocks per SM (16 warps) fit both the registers (ptxas: 128 on the wide tile, no
// spills on sm_80/sm_90) and the shared memory (4 x 36 KB).
template <typename scalar_t, typename Config>
__global__ void __launch_bounds__(kThreads, 4) conv3x3_igemm_kernel(const Conv3x3Params p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  __shared__ __align__(128) unsigned char smem[kStages * Config::kStageBytes];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int warp_m = warp % Config::kWarpsM, warp_n = warp / Config::kWarpsM;
  const Tile tile =
      tile_of_block(blockIdx.x, ceil_div(p.cols, Config::kBlockN), Config::kBlockN);
  const int k_steps = k_steps_of(p);
  const uint32_t smem_base = shared_address(smem);
  const auto* input = static_cast<const scalar_t*>(p.input);
  const auto* weight = static_cast<const scalar_t*>(p.weight);

  // This thread copies chunk a_chunk of input-tile rows a_row0 + i * kARowsPerPass.
  const int a_chunk = tid % kChunksPerRow, a_row0 = tid / kChunksPerRow;
  PixelRow rows[kARowsPerThread];
#pragma unroll
  for (int i = 0; i < kARowsPerThread; ++i)
    rows[i] = pixel_row(p, tile.m0 + a_row0 + i * kARowsPerPass);

  const auto load_stage = [&](int stage, int step) {
    const KStep k = k_step(step);
    const uint32_t a_smem = smem_base + stage * Config::kStageBytes;
    const uint32_t b_smem = a_smem + Config::kAStageBytes;
#pragma unroll
    for (int i = 0; i < kARowsPerThread; ++i) {
      const int64_t src = a_chunk_source(p, rows[i], k, a_chunk);
      cp_async_16_ca(a_smem + smem_offset(a_row0 + i * kARowsPerPass, a_chunk),
                     input + (src < 0 ? 0 : src), src >= 0);
    }
    for (int i = tid; i < Config::kBlockN * kChunksPerRow; i += kThreads) {
      const int row = i / kChunksPerRow, chunk = i % kChunksPerRow;
      const int64_t src = b_chunk_source(p, tile.col0 + row, k, chunk);
      cp_async_16_cg(b_smem + smem_offset(row, chunk), weight + (src < 0 ? 0 : src), src >= 0);
    }
  };

  float acc[Config::kMmaM][Config::kMmaN][4];
#pragma unroll
  for (int mi = 0; mi < Config::kMmaM; ++mi)
#pragma unroll
    for (int ni = 0; ni < Config::kMmaN; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;

  // One commit group per k-step (empty past the end), so waiting for all but the
  // newest kStages - 2 groups means step `step` has landed.
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_steps) load_stage(s, s);
    cp_async_commit();
  }
  for (int step = 0; step < k_steps; ++step) {
    cp_async_wait<kStages - 2>();
    // Makes every thread's copies of this step visible, and guarantees all warps are
    // done reading the stage the next prefetch overwrites (read in step - 1).
    __syncthreads();
    const int next = step + kStages - 1;
    if (next < k_steps) load_stage(next % kStages, next);
    cp_async_commit();

    const uint32_t a_smem = smem_base + (step % kStages) * Config::kStageBytes;
    const uint32_t b_smem = a_smem + Config::kAStageBytes;
#pragma unroll
    for (int kk = 0; kk < kBlockK / 16; ++kk) {
      uint32_t a[Config::kMmaM][4], b[Config::kMmaN][2];
#pragma unroll
      for (int mi = 0; mi < Config::kMmaM; ++mi) {
        const int row = warp_m * Config::kWarpM + mi * 16 + a_frag_row(lane);
        ldmatrix_x4(a[mi], a_smem + smem_offset(row, a_frag_chunk(lane, kk)));
      }
#pragma unroll
      for (int nj = 0; nj < Config::kMmaN / 2; ++nj) {
        const int row = warp_n * Config::kWarpN + nj * 16 + b_frag_row(lane);
        uint32_t r[4];
        ldmatrix_x4(r, b_smem + smem_offset(row, b_frag_chunk(lane, kk)));
        b[2 * nj][0] = r[0];
        b[2 * nj][1] = r[1];
        b[2 * nj + 1][0] = r[2];
        b[2 * nj + 1][1] = r[3];
      }
#pragma unroll
      for (int mi = 0; mi < Config::kMmaM; ++mi)
#pragma unroll
        for (int ni = 0; ni < Config::kMmaN; ++ni) Mma<scalar_t>::run(acc[mi][ni], a[mi], b[ni]);
    }
  }
  cp_async_wait<0>();  // only empty groups can be left; never exit with copies in flight

  const int pixels = pixels_of(p);
#pragma unroll
  for (int mi = 0; mi < Config::kMmaM; ++mi) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int m = tile.m0 + warp_m * Config::kWarpM + mi * 16 + acc_row(lane, 2 * half);
      if (m >= pixels) continue;
#pragma unroll
      for (int ni = 0; ni < Config::kMmaN; ++ni) {
        const int col = tile.col0 + warp_n * Config::kWarpN + ni * 8 + acc_col(lane, 0);
        store_pair<scalar_t>(p, m, col, acc[mi][ni][2 * half], acc[mi][ni][2 * half + 1]);
      }
    }
  }
#else
  __trap();  // the host launches this only on sm_80+ (see supported())
#endif
}

// Up to two weight packs per launch (a residual block's two convs); blockIdx.y picks
// one. bf16 and fp16 are both copied as 16-bit words.
struct WeightPacks {
  WeightPack pack[2];
};

__global__ void pack_weights_kernel(const WeightPacks packs) {
  // a select, not packs.pack[blockIdx.y]: indexing the parameter would copy it to local memory
  const WeightPack w = blockIdx.y == 0 ? packs.pack[0] : packs.pack[1];
  const auto* src = static_cast<const uint16_t*>(w.src);
  auto* dst = static_cast<uint16_t*>(w.dst);
  const int64_t total = pack_size(w);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = src[pack_source(w, i)];
}

template <typename scalar_t, typename Config>
void launch(const Conv3x3Params& p, cudaStream_t stream) {
  const int64_t blocks = int64_t(ceil_div(pixels_of(p), kBlockM)) * ceil_div(p.cols, Config::kBlockN);
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(),
              "conv3x3_igemm: too many tiles for one launch (", blocks, ")");
  conv3x3_igemm_kernel<scalar_t, Config>
      <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The narrowest tile that covers the columns: EDSR's tail (3 columns) would waste 61 of
// every 64 MMA columns on the wide tile.
template <typename scalar_t>
void launch_for_columns(const Conv3x3Params& p, cudaStream_t stream) {
  if (p.cols <= NarrowTile::kBlockN) {
    launch<scalar_t, NarrowTile>(p, stream);
  } else if (p.cols <= MediumTile::kBlockN) {
    launch<scalar_t, MediumTile>(p, stream);
  } else {
    launch<scalar_t, WideTile>(p, stream);
  }
}

bool aligned(const void* ptr, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % bytes == 0;
}

// A stride only matters along a dimension of size > 1.
bool chunk_aligned_stride(const at::Tensor& t, int64_t dim) {
  return t.size(dim) == 1 || t.stride(dim) % kChunk == 0;
}

}  // namespace

bool supported(const at::Tensor& input, int64_t in_channels, int64_t cols) {
  const auto dtype = input.scalar_type();
  if (!input.is_cuda() || (dtype != at::kBFloat16 && dtype != at::kHalf)) return false;
  if (input.dim() != 4 || in_channels < kChunk || in_channels % kChunk != 0 || cols < 1)
    return false;
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  const int64_t pixels = input.size(0) * input.size(2) * input.size(3);
  // m and col run one tile past the end; the grid is one launch of 32-bit block indices
  if (pixels > kMax - kBlockM || cols > kMax - 64 || in_channels > kMax - kBlockK) return false;
  if ((pixels + kBlockM - 1) / kBlockM * ((cols + 15) / 16) > kMax) return false;
  return at::cuda::getDeviceProperties(input.device().index())->major >= 8;
}

at::Tensor nhwc_prefix(const at::Tensor& input, int64_t in_channels) {
  auto x = input.narrow(1, 0, in_channels);
  if (x.stride(1) == 1 && aligned(x.const_data_ptr(), 16) && chunk_aligned_stride(x, 0) &&
      chunk_aligned_stride(x, 2) && chunk_aligned_stride(x, 3))
    return x;
  return x.contiguous(at::MemoryFormat::ChannelsLast);
}

std::vector<at::Tensor> pack_weights(const std::vector<PackRequest>& requests,
                                     cudaStream_t stream) {
  TORCH_CHECK(!requests.empty() && requests.size() <= 2,
              "conv3x3_igemm: packs 1 or 2 weights per launch, got ", requests.size());
  WeightPacks packs{};
  std::vector<at::Tensor> packed;
  int64_t largest = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    const PackRequest& r = requests[i];
    const at::Tensor& w = *r.weight;
    TORCH_CHECK(w.is_cuda() && w.dim() == 4 && w.size(2) == 3 && w.size(3) == 3 &&
                    (w.scalar_type() == at::kBFloat16 || w.scalar_type() == at::kHalf),
                "conv3x3_igemm: expected a bf16/fp16 CUDA (O, I, 3, 3) weight, got ",
                w.scalar_type(), " ", w.sizes(), " on ", w.device());
    TORCH_CHECK(r.upscale >= 1 && r.channels * r.upscale * r.upscale == r.cols &&
                    r.cols <= w.size(0) && r.in_channels <= w.size(1),
                "conv3x3_igemm: the weight prefix [", r.cols, ", ", r.in_channels,
                "] (channels ", r.channels, ", upscale ", r.upscale,
                ") does not fit weight of shape ", w.sizes());
    auto buffer = at::empty({kTaps, r.cols, r.in_channels}, w.options());
    packs.pack[i] = WeightPack{w.const_data_ptr(),
                               w.stride(0),
                               w.stride(1),
                               w.stride(2),
                               w.stride(3),
                               buffer.mutable_data_ptr(),
                               static_cast<int>(r.cols),
                               static_cast<int>(r.in_channels),
                               static_cast<int>(r.channels),
                               static_cast<int>(r.upscale)};
    largest = std::max(largest, buffer.numel());
    packed.push_back(std::move(buffer));
  }
  constexpr int kPackThreads = 256;
  const int64_t blocks = std::min<int64_t>((largest + kPackThreads - 1) / kPackThreads, 1024);
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(requests.size()));
  pack_weights_kernel<<<grid, kPackThreads, 0, stream>>>(packs);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return packed;
}

void conv3x3(const Conv3x3Params& p, at::ScalarType dtype, cudaStream_t stream) {
  TORCH_CHECK(p.batch >= 1 && p.height >= 1 && p.width >= 1 && p.in_channels >= kChunk &&
                  p.in_channels % kChunk == 0 && p.cols >= 1,
              "conv3x3_igemm: bad problem: batch ", p.batch, ", ", p.height, "x", p.width,
              ", in_channels ", p.in_channels, " (a multiple of ", kChunk, "), cols ", p.cols);
  // as nhwc_prefix: a stride only matters along a dimension of size > 1
  const auto chunk_stride = [](int size, int64_t stride) { return size == 1 || stride % kChunk == 0; };
  TORCH_CHECK(p.in.c == 1 && chunk_stride(p.batch, p.in.n) && chunk_stride(p.height, p.in.h) &&
                  chunk_stride(p.width, p.in.w) && aligned(p.input, 16) && aligned(p.weight, 16),
              "conv3x3_igemm: the input must be an NHWC view with 16-byte aligned pixels "
              "(strides n ", p.in.n, ", c ", p.in.c, ", h ", p.in.h, ", w ", p.in.w, ")");
  TORCH_CHECK(p.upscale >= 1 && p.channels >= 1 && p.cols == p.channels * p.upscale * p.upscale,
              "conv3x3_igemm: cols ", p.cols, " must be channels ", p.channels, " x upscale^2 ",
              p.upscale);
  TORCH_CHECK(p.epilogue == kEpilogueNone || p.epilogue == kEpilogueRelu ||
                  (p.epilogue == kEpilogueResidual && p.residual != nullptr && p.upscale == 1),
              "conv3x3_igemm: unknown epilogue ", p.epilogue,
              " (a residual needs its tensor and no pixel shuffle)");
  TORCH_CHECK(aligned(p.output, 4) && p.bias != nullptr, "conv3x3_igemm: output or bias");
  switch (dtype) {
    case at::kBFloat16:
      launch_for_columns<c10::BFloat16>(p, stream);
      break;
    case at::kHalf:
      launch_for_columns<c10::Half>(p, stream);
      break;
    default:
      TORCH_CHECK(false, "conv3x3_igemm: expected bf16 or fp16, got ", dtype);
  }
}

}  // namespace csd_fast::igemm
