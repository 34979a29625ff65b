// Channel-sliced 3x3 convolutions of the EDSR body, shared by every device.
//
// All three ops run a 3x3, stride-1, zero-padded convolution over input channels
// [:in_channels] with the weight prefix weight[:out, :in_channels] and bias[:out] of a
// full-size layer, the way one set of EDSR weights serves every width. They compute in
// channels-last (NHWC), where oneDNN and cuDNN are fastest, and return the layout the
// caller gave: channels-last input gives channels-last output, anything else NCHW.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>

namespace csd_fast {

void check_sliced_conv(const char* op, const at::Tensor& input, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, int64_t out_channels,
                       int64_t in_channels);

// sliced_conv3x3's checks (the slice, the epilogue's residual or relu); returns whether
// a residual is given.
bool check_sliced_conv3x3(const at::Tensor& input, const at::Tensor& weight,
                          const at::Tensor& bias, int64_t out_channels, int64_t in_channels,
                          bool relu, const std::optional<at::Tensor>& residual);

// The upsampler's checks; returns the weight rows it uses, channels * s * s.
int64_t check_conv_pixel_shuffle(const char* op, const at::Tensor& input,
                                 const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 int64_t channels, int64_t in_channels, int64_t upscale_factor);

// The layout outputs and input gradients are returned in.
at::MemoryFormat caller_format(const at::Tensor& input);

// The ATen compositions (oneDNN on CPU, cuDNN on CUDA). The CPU kernels are these;
// the CUDA kernels fall back to them where no tensor-core kernel applies.
at::Tensor sliced_conv3x3_composite(const at::Tensor& input, const at::Tensor& weight,
                                    const at::Tensor& bias, int64_t out_channels,
                                    int64_t in_channels, bool relu,
                                    const std::optional<at::Tensor>& residual, double res_scale);
std::tuple<at::Tensor, at::Tensor, at::Tensor> sliced_conv3x3_backward_composite(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& output, int64_t out_channels, int64_t in_channels, bool relu,
    double res_scale, std::array<bool, 3> output_mask);

std::tuple<at::Tensor, at::Tensor> residual_block_composite(
    const at::Tensor& input, const at::Tensor& weight1, const at::Tensor& bias1,
    const at::Tensor& weight2, const at::Tensor& bias2, int64_t channels, double res_scale);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
residual_block_backward_composite(const at::Tensor& grad_output, const at::Tensor& input,
                                  const at::Tensor& hidden, const at::Tensor& weight1,
                                  const at::Tensor& weight2, int64_t channels, double res_scale,
                                  std::array<bool, 5> output_mask);

at::Tensor conv3x3_pixel_shuffle_composite(const at::Tensor& input, const at::Tensor& weight,
                                           const at::Tensor& bias, int64_t channels,
                                           int64_t in_channels, int64_t upscale_factor);
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv3x3_pixel_shuffle_backward_composite(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    int64_t channels, int64_t in_channels, int64_t upscale_factor,
    std::array<bool, 3> output_mask);

}  // namespace csd_fast
