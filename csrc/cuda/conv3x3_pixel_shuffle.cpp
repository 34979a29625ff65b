// CUDA kernels of csd_fast::conv3x3_pixel_shuffle. Forward: the packed weight's rows are
// in sub-pixel order (i, j, c), so row phase i's s*C rows, run as one fused cuDNN graph
// (conv -> bias), write straight into a strided view of the shuffled output
// (shuffle_phase): no shuffle pass at all. Where no engine takes that strided output,
// one conv into an NHWC buffer and a phase-by-phase copy. Backward: the composition.
#include <torch/library.h>

#include "cuda/cudnn_graph.h"
#include "sliced_conv.h"

namespace csd_fast {
namespace {

at::Tensor conv3x3_pixel_shuffle_cuda(const at::Tensor& input, const at::Tensor& weight,
                                      const at::Tensor& bias, int64_t channels,
                                      int64_t in_channels, int64_t upscale_factor) {
  const int64_t s = upscale_factor;
  const int64_t rows = check_conv_pixel_shuffle("conv3x3_pixel_shuffle", input, weight, bias,
                                                channels, in_channels, s);
  if (!cudnn_graph::eligible(input)) {
    return conv3x3_pixel_shuffle_composite(input, weight, bias, channels, in_channels, s);
  }
  const PackSpec spec{rows, in_channels, 1.0, s, input.scalar_type()};
  const auto x = input_prefix_nhwc(input, in_channels);
  const auto w = packed_weight(weight, spec);
  const auto b = packed_bias(bias, spec);
  auto out = at::empty({input.size(0), channels, input.size(2) * s, input.size(3) * s},
                       input.options().memory_format(kChannelsLast));
  bool direct = true;
  for (int64_t i = 0; i < s && direct; ++i) {
    direct = cudnn_graph::conv_fprop(x, w.narrow(0, i * s * channels, s * channels),
                                     b.narrow(0, i * s * channels, s * channels), nullptr,
                                     cudnn_graph::Epilogue::kBias, shuffle_phase(out, s, i));
  }
  if (!direct) {
    out = pixel_shuffle_phases(
        cudnn_graph::fused_conv3x3(x, w, b, nullptr, cudnn_graph::Epilogue::kBias), s);
  }
  return out.contiguous(caller_format(input));
}

}  // namespace
}  // namespace csd_fast

TORCH_LIBRARY_IMPL(csd_fast, CUDA, m) {
  m.impl("conv3x3_pixel_shuffle", &csd_fast::conv3x3_pixel_shuffle_cuda);
  m.impl("conv3x3_pixel_shuffle_backward", &csd_fast::conv3x3_pixel_shuffle_backward_composite);
}
