// CUDA kernels of csd_fast::contrastive_distance and its backward.
//
// A thread owns one element position e and forms all B x K pairs there: each input
// value comes from device memory once and the repeats hit L1, so the pass runs at
// memory speed and the B x K difference maps never exist. Forward block sums land in
// a small partials buffer that one deterministic reduction finishes.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

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
  const int64_t blocks = grid_for(E, 8);
  const auto opmath_dtype = anchor.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto partials = at::empty({blocks, 2}, anchor.options().dtype(opmath_dtype));
  const int64_t* source = in.source.defined() ? in.source.const_data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, anchor.scalar_type(),
                                  "contrastive_distance_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    contrastive_distance_kernel<scalar_t, opmath_t>
        <<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            in.anchor.const_data_ptr<scalar_t>(), in.positive.const_data_ptr<scalar_t>(),
            in.negatives.const_data_ptr<scalar_t>(), source, B, K, E,
            partials.mutable_data_ptr<opmath_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const double total = static_cast<double>(B) * static_cast<double>(E);
  auto sums = (partials.sum(0, /*keepdim=*/false, at::kDouble) / total).to(anchor.scalar_type());
  return {sums[0].clone(), sums[1].clone()};  // outputs of an op must not alias
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, anchor.scalar_type(),
                                  "contrastive_distance_backward_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    contrastive_distance_backward_kernel<scalar_t, opmath_t>
        <<<grid_for(E, 16), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            grad_pos.const_data_ptr<scalar_t>(), grad_neg.const_data_ptr<scalar_t>(),
            static_cast<opmath_t>(1.0 / total), in.anchor.const_data_ptr<scalar_t>(),
            in.positive.const_data_ptr<scalar_t>(), in.negatives.const_data_ptr<scalar_t>(),
            source, B, K, E, grad_anchor.mutable_data_ptr<scalar_t>(),
            positive_requires_grad ? grad_positive.mutable_data_ptr<scalar_t>() : nullptr,
            negatives_requires_grad ? grad_negatives.mutable_data_ptr<scalar_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_anchor, grad_positive, grad_negatives};
}

}  // namespace

TORCH_LIBRARY_IMPL(csd_fast, CUDA, m) {
  m.impl("contrastive_distance", &contrastive_distance_cuda);
  m.impl("contrastive_distance_backward", &contrastive_distance_backward_cuda);
}

}  // namespace csd_fast
