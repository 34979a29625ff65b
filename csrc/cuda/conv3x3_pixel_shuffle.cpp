// CUDA kernels of csd_fast::conv3x3_pixel_shuffle. Forward: one fused cuDNN graph
// (conv -> bias) over the packed weight, whose rows are in sub-pixel order (i, j, c), then
// one copy into the shuffled channels-last layout, in which every (i, j) block of C
// channels is a contiguous run (pixel_shuffle_phase_order). A conv writing the shuffled
// layout itself, through strided phase views, needs a workspace as large as its output
// on every cuDNN engine: cuDNN stages it and copies anyway. Backward: the composition.
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
  auto conv = cudnn_graph::fused_conv3x3(input_prefix_nhwc(input, in_channels),
                                         packed_weight(weight, spec), packed_bias(bias, spec),
                                         nullptr, cudnn_graph::Epilogue::kBias);
  return pixel_shuffle_phase_order(conv, s).contiguous(caller_format(input));
}

}  // namespace
}  // namespace csd_fast

TORCH_LIBRARY_IMPL(csd_fast, CUDA, m) {
  m.impl("conv3x3_pixel_shuffle", &csd_fast::conv3x3_pixel_shuffle_cuda);
  m.impl("conv3x3_pixel_shuffle_backward", &csd_fast::conv3x3_pixel_shuffle_backward_composite);
}
