// CUDA kernels of csd_fast::sliced_conv3x3: the forward as one fused cuDNN graph
// (conv -> bias -> ReLU, or conv -> + residual -> + bias with res_scale folded into the
// packed weight and bias); the backward is the ATen composition, whose ReLU mask precedes both the
// input and the weight gradient and so cannot ride in a dgrad epilogue.
#include <torch/library.h>

#include "cuda/cudnn_graph.h"
#include "sliced_conv.h"

namespace csd_fast {
namespace {

at::Tensor sliced_conv3x3_cuda(const at::Tensor& input, const at::Tensor& weight,
                               const at::Tensor& bias, int64_t out_channels, int64_t in_channels,
                               bool relu, const std::optional<at::Tensor>& residual,
                               double res_scale) {
  const bool has_residual =
      check_sliced_conv3x3(input, weight, bias, out_channels, in_channels, relu, residual);
  if (!cudnn_graph::eligible(input)) {
    return sliced_conv3x3_composite(input, weight, bias, out_channels, in_channels, relu,
                                    residual, res_scale);
  }
  const PackSpec spec{out_channels, in_channels, has_residual ? res_scale : 1.0, 1,
                      input.scalar_type()};
  at::Tensor skip;
  auto epilogue = relu ? cudnn_graph::Epilogue::kBiasRelu : cudnn_graph::Epilogue::kBias;
  if (has_residual) {
    skip = residual->contiguous(kChannelsLast);
    epilogue = cudnn_graph::Epilogue::kResidualBias;
  }
  auto out = cudnn_graph::fused_conv3x3(input_prefix_nhwc(input, in_channels),
                                        packed_weight(weight, spec), packed_bias(bias, spec),
                                        has_residual ? &skip : nullptr, epilogue);
  return out.contiguous(caller_format(input));
}

}  // namespace
}  // namespace csd_fast

TORCH_LIBRARY_IMPL(csd_fast, CUDA, m) {
  m.impl("sliced_conv3x3", &csd_fast::sliced_conv3x3_cuda);
  m.impl("sliced_conv3x3_backward", &csd_fast::sliced_conv3x3_backward_composite);
}
