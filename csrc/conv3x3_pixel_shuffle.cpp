// csd_fast::conv3x3_pixel_shuffle: its schema and its ATen composition (the reference
// the kernels are checked against, and CUDA's fallback): the conv channels-last with its
// bias, then ATen's channels-last pixel shuffle. The CPU forward is banded
// (cpu/banded_conv.cpp).
#include <torch/library.h>

#include "sliced_conv.h"

namespace csd_fast {

at::Tensor conv3x3_pixel_shuffle_composite(const at::Tensor& input, const at::Tensor& weight,
                                           const at::Tensor& bias, int64_t channels,
                                           int64_t in_channels, int64_t upscale_factor) {
  const int64_t s = upscale_factor;
  const int64_t rows = check_conv_pixel_shuffle("conv3x3_pixel_shuffle", input, weight, bias,
                                                channels, in_channels, s);
  const PackSpec spec{rows, in_channels, 1.0, 1, input.scalar_type()};
  auto conv = conv3x3(input_prefix_nhwc(input, in_channels), packed_weight(weight, spec),
                      packed_bias(bias, spec));
  return at::pixel_shuffle(conv.contiguous(kChannelsLast), s).contiguous(caller_format(input));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv3x3_pixel_shuffle_backward_composite(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    int64_t channels, int64_t in_channels, int64_t upscale_factor,
    std::array<bool, 3> output_mask) {
  constexpr const char* op = "conv3x3_pixel_shuffle_backward";
  const int64_t s = upscale_factor;
  const int64_t rows =
      check_conv_pixel_shuffle(op, input, weight, std::nullopt, channels, in_channels, s);
  check_grad_output(op, grad_output, input,
                    {input.size(0), channels, input.size(2) * s, input.size(3) * s});
  const PackSpec spec{rows, in_channels, 1.0, 1, input.scalar_type()};
  const auto grad_conv = at::pixel_unshuffle(grad_output.contiguous(kChannelsLast), s)
                             .contiguous(kChannelsLast);
  auto [grad_x, grad_w, grad_b] =
      conv3x3_backward(grad_conv, input_prefix_nhwc(input, in_channels),
                       packed_weight(weight, spec), output_mask);
  return {grad_x.defined() ? full_input_grad(grad_x, input) : input.new_empty({0}),
          unpack_grad(grad_w, weight, spec), unpack_grad(grad_b, weight, spec)};
}

at::Tensor pixel_shuffle_phase_order(const at::Tensor& conv, int64_t upscale_factor) {
  const int64_t s = upscale_factor;
  TORCH_CHECK(conv.dim() == 4 && s >= 1 && conv.size(1) % (s * s) == 0,
              "pixel_shuffle_phase_order: expected (N, s*s*C, H, W) with s = ", s,
              ", got shape ", conv.sizes());
  const int64_t n = conv.size(0), c = conv.size(1) / (s * s), h = conv.size(2), w = conv.size(3);
  auto out = at::empty({n, c, h * s, w * s}, conv.options().memory_format(kChannelsLast));
  // both as their NHWC memory, split so that the copy is a permutation of (w, i)
  const auto source = conv.contiguous(kChannelsLast).permute({0, 2, 3, 1}).view({n, h, w, s, s * c});
  out.permute({0, 2, 3, 1}).view({n, h, s, w, s * c}).copy_(source.permute({0, 1, 3, 2, 4}));
  return out;
}

}  // namespace csd_fast

TORCH_LIBRARY_FRAGMENT(csd_fast, m) {
  // Upsampler stage: pixel_shuffle(conv(input[:, :in_channels]), s) with weight rows
  // [:channels * s * s], so the output is (N, channels, H * s, W * s).
  m.def(
      "conv3x3_pixel_shuffle(Tensor input, Tensor weight, Tensor bias, int channels, "
      "int in_channels, int upscale_factor) -> Tensor");
  m.def(
      "conv3x3_pixel_shuffle_backward(Tensor grad_output, Tensor input, Tensor weight, "
      "int channels, int in_channels, int upscale_factor, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
  // The pixel shuffle of a conv output whose channels are in sub-pixel order (i, j, c),
  // as the CUDA upsampler does it after its packed conv; channels-last
  // (N, C, H * s, W * s). An op so that tests check that layout on any device.
  m.def("pixel_shuffle_phase_order(Tensor conv, int upscale_factor) -> Tensor");
}

TORCH_LIBRARY_IMPL(csd_fast, CompositeExplicitAutograd, m) {
  m.impl("pixel_shuffle_phase_order", &csd_fast::pixel_shuffle_phase_order);
}

// The CPU's backward is the composition; its forward is in cpu/banded_conv.cpp. CUDA
// registers its own kernels (cuda/conv3x3_pixel_shuffle.cpp).
TORCH_LIBRARY_IMPL(csd_fast, CPU, m) {
  m.impl("conv3x3_pixel_shuffle_backward", &csd_fast::conv3x3_pixel_shuffle_backward_composite);
}
