// Host interface of the tensor-core 3x3 convolution (conv3x3_igemm.cu).
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime.h>

#include <vector>

#include "conv3x3_igemm_index.cuh"

namespace csd_fast::igemm {

// Whether the tensor-core kernel can run this convolution: a bf16 or fp16 CUDA input on
// an sm_80+ device, in_channels a multiple of 8 (16-byte copies), and pixel and column
// counts that fit the kernel's 32-bit indices. Shapes are the caller's to check.
bool supported(const at::Tensor& input, int64_t in_channels, int64_t cols);

// The view of input[:, :in_channels] the kernel reads: the input itself where channels
// are unit-stride and every 16-byte chunk is aligned, else a channels-last copy.
at::Tensor nhwc_prefix(const at::Tensor& input, int64_t in_channels);

// weight[:cols, :in_channels] of a full-size (O, I, 3, 3) weight, to be packed; with
// upscale s > 1, columns are ordered for the pixel shuffle (see shuffle_dest).
struct PackRequest {
  const at::Tensor* weight;
  int64_t cols, in_channels, channels, upscale;
};
// The packed [9, cols, in_channels] weights, all made by one launch on `stream`.
std::vector<at::Tensor> pack_weights(const std::vector<PackRequest>& requests,
                                     cudaStream_t stream);

// Runs one convolution; p's pointers come from tensors of `dtype` (bf16 or fp16).
void conv3x3(const Conv3x3Params& p, at::ScalarType dtype, cudaStream_t stream);

}  // namespace csd_fast::igemm
