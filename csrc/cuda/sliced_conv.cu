// CUDA kernels of the sliced-conv ops.
//
// Forward passes run the tensor-core implicit-GEMM convolution (conv3x3_igemm.cu) where
// it applies (igemm::supported: bf16/fp16 on sm_80+, in_channels a multiple of 8) and
// the cuDNN compositions of sliced_conv.cpp otherwise: fp32, fp64, EDSR's 3-channel
// head, older GPUs. Both paths check their inputs the same way and return the same
// layouts (outputs follow caller_format(input); residual_block's hidden is channels-last).
// Backward passes are the cuDNN compositions.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "conv3x3_igemm.cuh"
#include "sliced_conv.h"

namespace csd_fast {
namespace {

igemm::Strides4 strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

at::Tensor empty_output(const at::Tensor& input, at::IntArrayRef sizes, at::MemoryFormat format) {
  return at::empty(sizes, input.options().memory_format(format));
}

// One launch's parameters: x is an igemm::nhwc_prefix view, packed from
// igemm::pack_weights, bias the full (contiguous) bias, out any layout.
igemm::Conv3x3Params conv_params(const at::Tensor& x, const at::Tensor& packed,
                                 const at::Tensor& bias, int64_t channels, int64_t upscale,
                                 at::Tensor& out) {
  igemm::Conv3x3Params p{};
  p.input = x.const_data_ptr();
  p.in = strides_of(x);
  p.batch = static_cast<int>(x.size(0));
  p.in_channels = static_cast<int>(x.size(1));
  p.height = static_cast<int>(x.size(2));
  p.width = static_cast<int>(x.size(3));
  p.weight = packed.const_data_ptr();
  p.bias = bias.const_data_ptr();
  p.cols = static_cast<int>(packed.size(1));
  p.channels = static_cast<int>(channels);
  p.upscale = static_cast<int>(upscale);
  p.epilogue = igemm::kEpilogueNone;
  p.res_scale = 1.f;
  p.output = out.mutable_data_ptr();
  p.out = strides_of(out);
  return p;
}

void set_residual(igemm::Conv3x3Params& p, const at::Tensor& residual, double res_scale) {
  p.epilogue = igemm::kEpilogueResidual;
  p.residual = residual.const_data_ptr();
  p.res = strides_of(residual);
  p.res_scale = static_cast<float>(res_scale);
}

at::Tensor sliced_conv3x3_cuda(const at::Tensor& input, const at::Tensor& weight,
                               const at::Tensor& bias, int64_t out_channels, int64_t in_channels,
                               bool relu, const std::optional<at::Tensor>& residual,
                               double res_scale) {
  const bool has_residual =
      check_sliced_conv3x3(input, weight, bias, out_channels, in_channels, relu, residual);
  if (!igemm::supported(input, in_channels, out_channels)) {
    return sliced_conv3x3_composite(input, weight, bias, out_channels, in_channels, relu,
                                    residual, res_scale);
  }
  const c10::cuda::CUDAGuard guard(input.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const auto x = igemm::nhwc_prefix(input, in_channels);
  const auto packed =
      igemm::pack_weights({{&weight, out_channels, in_channels, out_channels, 1}}, stream);
  const auto b = bias.contiguous();
  auto out = empty_output(input, {input.size(0), out_channels, input.size(2), input.size(3)},
                          caller_format(input));
  auto p = conv_params(x, packed[0], b, out_channels, 1, out);
  if (relu) p.epilogue = igemm::kEpilogueRelu;
  if (has_residual) set_residual(p, *residual, res_scale);
  igemm::conv3x3(p, input.scalar_type(), stream);
  return out;
}

// Two launches: conv1 + bias + relu into hidden (channels-last, kept for backward),
// then conv2 + bias scaled and added to the block's input in conv2's epilogue.
std::tuple<at::Tensor, at::Tensor> residual_block_cuda(const at::Tensor& input,
                                                       const at::Tensor& weight1,
                                                       const at::Tensor& bias1,
                                                       const at::Tensor& weight2,
                                                       const at::Tensor& bias2, int64_t channels,
                                                       double res_scale) {
  constexpr const char* op = "residual_block";
  check_sliced_conv(op, input, weight1, bias1, channels, channels);
  check_sliced_conv(op, input, weight2, bias2, channels, channels);
  if (!igemm::supported(input, channels, channels)) {
    return residual_block_composite(input, weight1, bias1, weight2, bias2, channels, res_scale);
  }
  const c10::cuda::CUDAGuard guard(input.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t c = channels;
  const auto x = igemm::nhwc_prefix(input, c);
  const auto packed =
      igemm::pack_weights({{&weight1, c, c, c, 1}, {&weight2, c, c, c, 1}}, stream);
  const auto b1 = bias1.contiguous(), b2 = bias2.contiguous();
  const std::vector<int64_t> sizes{input.size(0), c, input.size(2), input.size(3)};
  auto hidden = empty_output(input, sizes, at::MemoryFormat::ChannelsLast);
  auto p1 = conv_params(x, packed[0], b1, c, 1, hidden);
  p1.epilogue = igemm::kEpilogueRelu;
  igemm::conv3x3(p1, input.scalar_type(), stream);

  auto out = empty_output(input, sizes, caller_format(input));
  auto p2 = conv_params(hidden, packed[1], b2, c, 1, out);
  set_residual(p2, x, res_scale);
  igemm::conv3x3(p2, input.scalar_type(), stream);
  return {out, hidden};
}

// The shuffle happens in the store: column (i*s + j)*channels + c of the packed weight
// is written to output channel c at pixel (h*s + i, w*s + j).
at::Tensor conv3x3_pixel_shuffle_cuda(const at::Tensor& input, const at::Tensor& weight,
                                      const at::Tensor& bias, int64_t channels,
                                      int64_t in_channels, int64_t upscale_factor) {
  const int64_t s = upscale_factor;
  const int64_t rows = check_conv_pixel_shuffle("conv3x3_pixel_shuffle", input, weight, bias,
                                                channels, in_channels, s);
  if (!igemm::supported(input, in_channels, rows)) {
    return conv3x3_pixel_shuffle_composite(input, weight, bias, channels, in_channels, s);
  }
  const c10::cuda::CUDAGuard guard(input.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const auto x = igemm::nhwc_prefix(input, in_channels);
  const auto packed = igemm::pack_weights({{&weight, rows, in_channels, channels, s}}, stream);
  const auto b = bias.contiguous();
  auto out = empty_output(input, {input.size(0), channels, input.size(2) * s, input.size(3) * s},
                          caller_format(input));
  const auto p = conv_params(x, packed[0], b, channels, s, out);
  igemm::conv3x3(p, input.scalar_type(), stream);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(csd_fast, CUDA, m) {
  m.impl("sliced_conv3x3", &sliced_conv3x3_cuda);
  m.impl("sliced_conv3x3_backward", &sliced_conv3x3_backward_composite);
  m.impl("residual_block", &residual_block_cuda);
  m.impl("residual_block_backward", &residual_block_backward_composite);
  m.impl("conv3x3_pixel_shuffle", &conv3x3_pixel_shuffle_cuda);
  m.impl("conv3x3_pixel_shuffle_backward", &conv3x3_pixel_shuffle_backward_composite);
}

}  // namespace csd_fast
