// CUDA kernels of csd_fast::residual_block: two fused cuDNN graphs forward
// (conv1 -> bias -> ReLU into hidden; conv2 -> + x -> bias, res_scale folded into the
// packed conv2), and backward the input gradient of conv2 with hidden's ReLU mask
// fused into its dgrad (an engine cuDNN compiles at run time, once per training shape);
// weight and bias gradients from ATen's cuDNN convolution.
#include <torch/library.h>

#include "cuda/cudnn_graph.h"
#include "sliced_conv.h"

namespace csd_fast {
namespace {

using cudnn_graph::Epilogue;

std::tuple<at::Tensor, at::Tensor> residual_block_cuda(const at::Tensor& input,
                                                       const at::Tensor& weight1,
                                                       const at::Tensor& bias1,
                                                       const at::Tensor& weight2,
                                                       const at::Tensor& bias2, int64_t channels,
                                                       double res_scale) {
  check_residual_block("residual_block", input, weight1, bias1, weight2, bias2, channels);
  if (!cudnn_graph::eligible(input)) {
    return residual_block_composite(input, weight1, bias1, weight2, bias2, channels, res_scale);
  }
  const auto spec1 = block_spec(input, channels, 1.0);
  const auto spec2 = block_spec(input, channels, res_scale);
  const auto x = input_prefix_nhwc(input, channels);
  auto hidden = cudnn_graph::fused_conv3x3(x, packed_weight(weight1, spec1),
                                           packed_bias(bias1, spec1), nullptr, Epilogue::kBiasRelu);
  auto out = cudnn_graph::fused_conv3x3(hidden, packed_weight(weight2, spec2),
                                        packed_bias(bias2, spec2), &x, Epilogue::kResidualBias);
  return {out.contiguous(caller_format(input)), hidden};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> residual_block_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& hidden,
    const at::Tensor& weight1, const at::Tensor& weight2, int64_t channels, double res_scale,
    std::array<bool, 5> output_mask) {
  if (!cudnn_graph::eligible(input)) {
    return residual_block_backward_composite(grad_output, input, hidden, weight1, weight2,
                                             channels, res_scale, output_mask);
  }
  check_residual_block_backward(grad_output, input, hidden, weight1, weight2, channels);
  const auto spec1 = block_spec(input, channels, 1.0);
  const auto spec2 = block_spec(input, channels, res_scale);
  const auto grad = grad_output.contiguous(kChannelsLast);
  const auto h = hidden.contiguous(kChannelsLast);
  const auto w1 = packed_weight(weight1, spec1);
  const auto w2 = packed_weight(weight2, spec2);
  at::Tensor grad_x, grad_w1, grad_b1, grad_w2, grad_b2;
  if (output_mask[3] || output_mask[4]) {
    std::tie(std::ignore, grad_w2, grad_b2) =
        conv3x3_backward(grad, h, w2, {false, output_mask[3], output_mask[4]});
  }
  if (output_mask[0] || output_mask[1] || output_mask[2]) {
    // gradient at conv1's output: conv2's dgrad through hidden's ReLU, in one graph
    const auto grad_h = cudnn_graph::fused_dgrad3x3(grad, w2, &h, channels);
    const auto x = input_prefix_nhwc(input, channels);
    if (output_mask[1] || output_mask[2]) {
      std::tie(std::ignore, grad_w1, grad_b1) =
          conv3x3_backward(grad_h, x, w1, {false, output_mask[1], output_mask[2]});
    }
    if (output_mask[0]) {
      grad_x = cudnn_graph::fused_dgrad3x3(grad_h, w1, nullptr, channels);
      grad_x.add_(grad);
    }
  }
  return residual_block_grads(input, weight1, weight2, channels, res_scale, grad_x, grad_w1,
                              grad_b1, grad_w2, grad_b2);
}

}  // namespace
}  // namespace csd_fast

TORCH_LIBRARY_IMPL(csd_fast, CUDA, m) {
  m.impl("residual_block", &csd_fast::residual_block_cuda);
  m.impl("residual_block_backward", &csd_fast::residual_block_backward_cuda);
}
