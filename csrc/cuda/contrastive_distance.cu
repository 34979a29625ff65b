// CUDA kernels of csd_fast::contrastive_distance, its backward, and
// csd_fast::contrastive_negative_sums (the streamed loss's per-chunk sums; at its end).
//
// A thread owns a few adjacent element positions and forms all (anchor, negative) pairs
// there, so every input value comes from device memory about once and the B x K
// difference maps never exist. The fast path keeps up to kRegisterNegatives negatives
// in registers (16-byte loads) and splits the anchors into groups when there are too
// few elements to fill the GPU; other cases (more negatives, unaligned data, the
// gradient of the negatives) take the general path, which re-reads negatives from L1.
// Forward block sums land in a small partials buffer that one deterministic reduction
// finishes.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <type_traits>

#include "contrastive_distance.h"

namespace csd_fast {
namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ T sign_of(T x) {
  return T((x > T(0)) - (x < T(0)));
}

template <typename T>
__device__ __forceinline__ T block_sum(T value, T* shared) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) shared[warp] = value;
  __syncthreads();
  value = threadIdx.x < blockDim.x / 32 ? shared[threadIdx.x] : T(0);
  if (warp == 0)
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  return value;
}

// 12 covers the reference recipe's K = 10 and keeps the fast kernels near 100 registers
// (three blocks of 256 per SM); larger K takes the general path.
constexpr int kRegisterNegatives = 12;
constexpr int kVec = 4;  // elements per thread per step: one 16-byte load for float

template <typename T>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};

template <typename scalar_t, typename opmath_t>
__device__ __forceinline__ void load_pack(const scalar_t* ptr, opmath_t (&out)[kVec]) {
  const Pack<scalar_t> pack = *reinterpret_cast<const Pack<scalar_t>*>(ptr);
#pragma unroll
  for (int j = 0; j < kVec; ++j) out[j] = opmath_t(pack.v[j]);
}

template <typename scalar_t, typename opmath_t>
__device__ __forceinline__ void store_pack(scalar_t* ptr, const opmath_t (&in)[kVec]) {
  Pack<scalar_t> pack;
#pragma unroll
  for (int j = 0; j < kVec; ++j) pack.v[j] = scalar_t(in[j]);
  *reinterpret_cast<Pack<scalar_t>*>(ptr) = pack;
}

// The K <= kRegisterNegatives negatives at one pack position, and their sources.
template <typename scalar_t, typename opmath_t>
struct RegisterNegatives {
  opmath_t value[kRegisterNegatives][kVec];
  int source[kRegisterNegatives];  // batch index the negative came from, or -1

  __device__ __forceinline__ void load(const scalar_t* negatives, const int64_t* sources,
                                       int64_t B, int64_t K, int64_t E, int64_t offset) {
#pragma unroll
    for (int k = 0; k < kRegisterNegatives; ++k) {
      if (k < K) {
        load_pack(negatives + k * E + offset, value[k]);
        const int64_t s = sources == nullptr ? -1 : sources[k];
        source[k] = (s >= 0 && s < B) ? static_cast<int>(s) : -1;
      }
    }
  }
};

// Forward, fast path. grid.x walks packs of kVec elements, grid.y picks a group of
// anchors [b0, b1).
template <typename scalar_t, typename opmath_t>
__global__ void __launch_bounds__(kThreads, 3) contrastive_distance_packed_kernel(
    const scalar_t* __restrict__ anchor, const scalar_t* __restrict__ positive,
    const scalar_t* __restrict__ negatives, const int64_t* __restrict__ source, int64_t B,
    int64_t K, int64_t E, int64_t anchors_per_group, opmath_t* __restrict__ partials) {
  const int64_t b0 = blockIdx.y * anchors_per_group;
  const int64_t b1 = b0 + anchors_per_group < B ? b0 + anchors_per_group : B;
  opmath_t pos = 0, neg = 0;
  RegisterNegatives<scalar_t, opmath_t> n;
  for (int64_t e = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * kVec; e < E;
       e += int64_t(gridDim.x) * blockDim.x * kVec) {
    n.load(negatives, source, B, K, E, e);
    for (int64_t b = b0; b < b1; ++b) {
      opmath_t a[kVec], p[kVec];
      load_pack(anchor + b * E + e, a);
      load_pack(positive + b * E + e, p);
#pragma unroll
      for (int j = 0; j < kVec; ++j) pos += ::abs(p[j] - a[j]);
#pragma unroll
      for (int k = 0; k < kRegisterNegatives; ++k) {
        if (k < K && n.source[k] != b) {
#pragma unroll
          for (int j = 0; j < kVec; ++j) neg += ::abs(n.value[k][j] - a[j]);
        }
      }
    }
  }
  __shared__ opmath_t shared[kThreads / 32];
  pos = block_sum(pos, shared);
  __syncthreads();
  neg = block_sum(neg, shared);
  if (threadIdx.x == 0) {
    const int64_t block = int64_t(blockIdx.y) * gridDim.x + blockIdx.x;
    partials[2 * block] = pos;
    partials[2 * block + 1] = neg;
  }
}

// Backward to anchor (and positive), fast path; same grid as the forward.
template <typename scalar_t, typename opmath_t>
__global__ void __launch_bounds__(kThreads, 2) contrastive_distance_backward_packed_kernel(
    const scalar_t* __restrict__ grad_pos_distance, const scalar_t* __restrict__ grad_neg_distance,
    opmath_t inv_total, const scalar_t* __restrict__ anchor, const scalar_t* __restrict__ positive,
    const scalar_t* __restrict__ negatives, const int64_t* __restrict__ source, int64_t B,
    int64_t K, int64_t E, int64_t anchors_per_group, scalar_t* __restrict__ grad_anchor,
    scalar_t* __restrict__ grad_positive) {
  const opmath_t gp = opmath_t(*grad_pos_distance) * inv_total;
  const opmath_t gn = opmath_t(*grad_neg_distance) * inv_total;
  const int64_t b0 = blockIdx.y * anchors_per_group;
  const int64_t b1 = b0 + anchors_per_group < B ? b0 + anchors_per_group : B;
  RegisterNegatives<scalar_t, opmath_t> n;
  for (int64_t e = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * kVec; e < E;
       e += int64_t(gridDim.x) * blockDim.x * kVec) {
    n.load(negatives, source, B, K, E, e);
    for (int64_t b = b0; b < b1; ++b) {
      opmath_t a[kVec], p[kVec], d[kVec], s[kVec];
      load_pack(anchor + b * E + e, a);
      load_pack(positive + b * E + e, p);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        d[j] = sign_of(a[j] - p[j]);
        s[j] = 0;
      }
#pragma unroll
      for (int k = 0; k < kRegisterNegatives; ++k) {
        if (k < K && n.source[k] != b) {
#pragma unroll
          for (int j = 0; j < kVec; ++j) s[j] += sign_of(a[j] - n.value[k][j]);
        }
      }
      opmath_t g[kVec];
#pragma unroll
      for (int j = 0; j < kVec; ++j) g[j] = gp * d[j] + gn * s[j];
      store_pack(grad_anchor + b * E + e, g);
      if (grad_positive != nullptr) {
#pragma unroll
        for (int j = 0; j < kVec; ++j) g[j] = -gp * d[j];
        store_pack(grad_positive + b * E + e, g);
      }
    }
  }
}

// Sums the per-block partials in a fixed order (deterministic), divides by B*C*H*W and
// writes both distances in the output dtype: one launch instead of four.
template <typename scalar_t, typename opmath_t>
__global__ void contrastive_distance_finish_kernel(const opmath_t* __restrict__ partials,
                                                   int64_t blocks, double inv_total,
                                                   scalar_t* __restrict__ d_pos,
                                                   scalar_t* __restrict__ d_neg) {
  double pos = 0, neg = 0;
  for (int64_t i = threadIdx.x; i < blocks; i += blockDim.x) {
    pos += partials[2 * i];
    neg += partials[2 * i + 1];
  }
  __shared__ double shared[kThreads / 32];
  pos = block_sum(pos, shared);
  __syncthreads();
  neg = block_sum(neg, shared);
  if (threadIdx.x == 0) {
    *d_pos = scalar_t(pos * inv_total);
    *d_neg = scalar_t(neg * inv_total);
  }
}

template <typename scalar_t, typename opmath_t>
__global__ void contrastive_distance_kernel(const scalar_t* __restrict__ anchor,
                                            const scalar_t* __restrict__ positive,
                                            const scalar_t* __restrict__ negatives,
                                            const int64_t* __restrict__ source, int64_t B,
                                            int64_t K, int64_t E, opmath_t* __restrict__ partials) {
  opmath_t pos = 0, neg = 0;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < E;
       e += int64_t(gridDim.x) * blockDim.x) {
    for (int64_t b = 0; b < B; ++b) {
      const opmath_t a = anchor[b * E + e];
      pos += ::abs(opmath_t(positive[b * E + e]) - a);
      for (int64_t k = 0; k < K; ++k)
        if (source == nullptr || source[k] != b) neg += ::abs(opmath_t(negatives[k * E + e]) - a);
    }
  }
  __shared__ opmath_t shared[kThreads / 32];
  pos = block_sum(pos, shared);
  __syncthreads();
  neg = block_sum(neg, shared);
  if (threadIdx.x == 0) {
    partials[2 * blockIdx.x] = pos;
    partials[2 * blockIdx.x + 1] = neg;
  }
}

template <typename scalar_t, typename opmath_t>
__global__ void contrastive_distance_backward_kernel(
    const scalar_t* __restrict__ grad_pos_distance, const scalar_t* __restrict__ grad_neg_distance,
    opmath_t inv_total, const scalar_t* __restrict__ anchor, const scalar_t* __restrict__ positive,
    const scalar_t* __restrict__ negatives, const int64_t* __restrict__ source, int64_t B,
    int64_t K, int64_t E, scalar_t* __restrict__ grad_anchor, scalar_t* __restrict__ grad_positive,
    scalar_t* __restrict__ grad_negatives) {
  const opmath_t gp = opmath_t(*grad_pos_distance) * inv_total;
  const opmath_t gn = opmath_t(*grad_neg_distance) * inv_total;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < E;
       e += int64_t(gridDim.x) * blockDim.x) {
    for (int64_t b = 0; b < B; ++b) {
      const opmath_t a = anchor[b * E + e];
      const opmath_t d = sign_of(a - opmath_t(positive[b * E + e]));
      opmath_t s = 0;
      for (int64_t k = 0; k < K; ++k)
        if (source == nullptr || source[k] != b) s += sign_of(a - opmath_t(negatives[k * E + e]));
      grad_anchor[b * E + e] = scalar_t(gp * d + gn * s);
      if (grad_positive != nullptr) grad_positive[b * E + e] = scalar_t(-gp * d);
    }
    if (grad_negatives != nullptr) {
      for (int64_t k = 0; k < K; ++k) {
        const opmath_t n = negatives[k * E + e];
        opmath_t s = 0;
        for (int64_t b = 0; b < B; ++b)
          if (source == nullptr || source[k] != b) s += sign_of(n - opmath_t(anchor[b * E + e]));
        grad_negatives[k * E + e] = scalar_t(gn * s);
      }
    }
  }
}

// Grid of the fast path: enough blocks over packs to fill the GPU, and the anchors cut
// into groups (each group re-reads the negatives, from L2) when packs alone cannot.
struct PackedPlan {
  bool usable;
  dim3 grid;
  int64_t anchors_per_group;
};

PackedPlan plan_packed(const ContrastiveInputs& in, bool negatives_grad) {
  const auto ptr_aligned = [](const at::Tensor& t) {
    return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % (t.element_size() * kVec) == 0;
  };
  PackedPlan plan{};
  plan.usable = !negatives_grad && in.count <= kRegisterNegatives && in.elements % kVec == 0 &&
                in.anchor.scalar_type() != at::kDouble && ptr_aligned(in.anchor) &&
                ptr_aligned(in.positive) && ptr_aligned(in.negatives);
  if (!plan.usable) return plan;
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t packs = in.elements / kVec;
  const int64_t blocks = (packs + kThreads - 1) / kThreads;
  const int64_t wanted_threads = sms * 2048;
  int64_t groups = std::min<int64_t>(in.batch, std::max<int64_t>(1, wanted_threads / (blocks * kThreads)));
  plan.anchors_per_group = (in.batch + groups - 1) / groups;
  groups = (in.batch + plan.anchors_per_group - 1) / plan.anchors_per_group;
  plan.grid = dim3(static_cast<unsigned>(std::min<int64_t>(blocks, sms * 16)), static_cast<unsigned>(groups));
  return plan;
}

int64_t grid_for(int64_t elements, int64_t max_blocks_per_sm) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t needed = (elements + kThreads - 1) / kThreads;
  return std::max<int64_t>(1, std::min(needed, sms * max_blocks_per_sm));
}

std::tuple<at::Tensor, at::Tensor> contrastive_distance_cuda(
    const at::Tensor& anchor, const at::Tensor& positive, const at::Tensor& negatives,
    const std::optional<at::Tensor>& negative_source) {
  const auto in = prepare_contrastive_inputs(anchor, positive, negatives, negative_source,
                                             c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(anchor.device());
  const int64_t B = in.batch, K = in.count, E = in.elements;
  const PackedPlan plan = plan_packed(in, /*negatives_grad=*/false);
  const int64_t blocks = plan.usable ? int64_t(plan.grid.x) * plan.grid.y : grid_for(E, 8);
  const auto opmath_dtype = anchor.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto partials = at::empty({blocks, 2}, anchor.options().dtype(opmath_dtype));
  auto d_pos = at::empty({}, anchor.options());
  auto d_neg = at::empty({}, anchor.options());
  const int64_t* source = in.source.defined() ? in.source.const_data_ptr<int64_t>() : nullptr;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, anchor.scalar_type(),
                                  "contrastive_distance_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const auto* a = in.anchor.const_data_ptr<scalar_t>();
    const auto* p = in.positive.const_data_ptr<scalar_t>();
    const auto* n = in.negatives.const_data_ptr<scalar_t>();
    auto* out = partials.mutable_data_ptr<opmath_t>();
    if constexpr (!std::is_same_v<scalar_t, double>) {
      if (plan.usable) {
        contrastive_distance_packed_kernel<scalar_t, opmath_t><<<plan.grid, kThreads, 0, stream>>>(
            a, p, n, source, B, K, E, plan.anchors_per_group, out);
      }
    }
    if (!plan.usable) {
      contrastive_distance_kernel<scalar_t, opmath_t><<<blocks, kThreads, 0, stream>>>(
          a, p, n, source, B, K, E, out);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    contrastive_distance_finish_kernel<scalar_t, opmath_t><<<1, kThreads, 0, stream>>>(
        out, blocks, 1.0 / (static_cast<double>(B) * static_cast<double>(E)),
        d_pos.mutable_data_ptr<scalar_t>(), d_neg.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {d_pos, d_neg};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_distance_backward_cuda(
    const at::Tensor& grad_positive_distance, const at::Tensor& grad_negative_distance,
    const at::Tensor& anchor, const at::Tensor& positive, const at::Tensor& negatives,
    const std::optional<at::Tensor>& negative_source, bool positive_requires_grad,
    bool negatives_requires_grad) {
  const auto in = prepare_contrastive_inputs(anchor, positive, negatives, negative_source,
                                             c10::DeviceType::CUDA);
  check_grad_scalar(grad_positive_distance, anchor, "grad_positive_distance");
  check_grad_scalar(grad_negative_distance, anchor, "grad_negative_distance");
  const c10::cuda::CUDAGuard guard(anchor.device());
  const int64_t B = in.batch, K = in.count, E = in.elements;
  const auto grad_pos = grad_positive_distance.to(anchor.scalar_type()).contiguous();
  const auto grad_neg = grad_negative_distance.to(anchor.scalar_type()).contiguous();
  auto grad_anchor = at::empty_like(in.anchor);
  auto grad_positive = positive_requires_grad ? at::empty_like(in.positive)
                                              : at::empty({0}, anchor.options());
  auto grad_negatives = negatives_requires_grad ? at::empty_like(in.negatives)
                                                : at::empty({0}, anchor.options());
  const int64_t* source = in.source.defined() ? in.source.const_data_ptr<int64_t>() : nullptr;
  const double total = static_cast<double>(B) * static_cast<double>(E);
  const PackedPlan plan = plan_packed(in, negatives_requires_grad);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, anchor.scalar_type(),
                                  "contrastive_distance_backward_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const auto inv_total = static_cast<opmath_t>(1.0 / total);
    const auto* gp = grad_pos.const_data_ptr<scalar_t>();
    const auto* gn = grad_neg.const_data_ptr<scalar_t>();
    const auto* a = in.anchor.const_data_ptr<scalar_t>();
    const auto* p = in.positive.const_data_ptr<scalar_t>();
    const auto* n = in.negatives.const_data_ptr<scalar_t>();
    auto* ga = grad_anchor.mutable_data_ptr<scalar_t>();
    auto* gpos = positive_requires_grad ? grad_positive.mutable_data_ptr<scalar_t>() : nullptr;
    if constexpr (!std::is_same_v<scalar_t, double>) {
      if (plan.usable) {
        contrastive_distance_backward_packed_kernel<scalar_t, opmath_t>
            <<<plan.grid, kThreads, 0, stream>>>(gp, gn, inv_total, a, p, n, source, B, K, E,
                                                 plan.anchors_per_group, ga, gpos);
      }
    }
    if (!plan.usable) {
      contrastive_distance_backward_kernel<scalar_t, opmath_t>
          <<<grid_for(E, 16), kThreads, 0, stream>>>(
              gp, gn, inv_total, a, p, n, source, B, K, E, ga, gpos,
              negatives_requires_grad ? grad_negatives.mutable_data_ptr<scalar_t>() : nullptr);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_anchor, grad_positive, grad_negatives};
}

// contrastive_negative_sums. grid.y is the anchor b, grid.x walks its elements: a thread
// reads A_b[e] once and the chunk's K negatives at e (coalesced across the warp), writes
// the sign sum at e and keeps its distance partial; each block leaves one partial per
// anchor, which the finish kernel adds in a fixed order (deterministic, no atomics).
template <typename scalar_t, typename opmath_t>
__global__ void contrastive_negative_sums_kernel(const scalar_t* __restrict__ anchor,
                                                 const scalar_t* __restrict__ negatives,
                                                 const int64_t* __restrict__ source, int64_t K,
                                                 int64_t E, opmath_t* __restrict__ sign_sum,
                                                 opmath_t* __restrict__ partials) {
  const int64_t b = blockIdx.y;
  opmath_t dist = 0;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < E;
       e += int64_t(gridDim.x) * blockDim.x) {
    const opmath_t a = anchor[b * E + e];
    opmath_t signs = 0;
    for (int64_t k = 0; k < K; ++k) {
      if (source == nullptr || source[k] != b) {
        const opmath_t d = a - opmath_t(negatives[k * E + e]);
        dist += ::abs(d);
        signs += sign_of(d);
      }
    }
    sign_sum[b * E + e] = signs;
  }
  __shared__ opmath_t shared[kThreads / 32];
  dist = block_sum(dist, shared);
  if (threadIdx.x == 0) partials[b * gridDim.x + blockIdx.x] = dist;
}

// One block per anchor: its row of `blocks` partials summed in double, in a fixed order.
template <typename opmath_t>
__global__ void contrastive_negative_sums_finish_kernel(const opmath_t* __restrict__ partials,
                                                        int64_t blocks,
                                                        opmath_t* __restrict__ distance_sums) {
  double sum = 0;
  for (int64_t i = threadIdx.x; i < blocks; i += blockDim.x)
    sum += partials[blockIdx.x * blocks + i];
  __shared__ double shared[kThreads / 32];
  sum = block_sum(sum, shared);
  if (threadIdx.x == 0) distance_sums[blockIdx.x] = opmath_t(sum);
}

std::tuple<at::Tensor, at::Tensor> contrastive_negative_sums_cuda(
    const at::Tensor& anchor, const at::Tensor& negatives,
    const std::optional<at::Tensor>& negative_source) {
  const auto in = prepare_negative_sums_inputs(anchor, negatives, negative_source,
                                               c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(anchor.device());
  const int64_t B = in.batch, K = in.count, E = in.elements;
  TORCH_CHECK(B <= 65535,
              "contrastive_negative_sums: at most 65535 anchors per call on CUDA, got ", B);
  const auto sum_dtype = accumulation_dtype(anchor);
  const auto sum_options = anchor.options().dtype(sum_dtype);
  auto sign_sum = at::empty(in.anchor.sizes(), sum_options.memory_format(in.format));
  auto distance_sums = at::empty({B}, sum_options);
  // about 16 blocks per SM over all anchors, at most one block per kThreads elements
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t blocks = std::max<int64_t>(
      1, std::min<int64_t>((E + kThreads - 1) / kThreads, (sms * 16 + B - 1) / B));
  auto partials = at::empty({B, blocks}, sum_options);
  const int64_t* source = in.source.defined() ? in.source.const_data_ptr<int64_t>() : nullptr;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, anchor.scalar_type(),
                                  "contrastive_negative_sums_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    contrastive_negative_sums_kernel<scalar_t, opmath_t>
        <<<dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(B)), kThreads, 0, stream>>>(
            in.anchor.const_data_ptr<scalar_t>(), in.negatives.const_data_ptr<scalar_t>(), source,
            K, E, sign_sum.mutable_data_ptr<opmath_t>(), partials.mutable_data_ptr<opmath_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    contrastive_negative_sums_finish_kernel<opmath_t>
        <<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
            partials.const_data_ptr<opmath_t>(), blocks, distance_sums.mutable_data_ptr<opmath_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {distance_sums, sign_sum};
}

}  // namespace

TORCH_LIBRARY_IMPL(csd_fast, CUDA, m) {
  m.impl("contrastive_distance", &contrastive_distance_cuda);
  m.impl("contrastive_distance_backward", &contrastive_distance_backward_cuda);
  m.impl("contrastive_negative_sums", &contrastive_negative_sums_cuda);
}

}  // namespace csd_fast
