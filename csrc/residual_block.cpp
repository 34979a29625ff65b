// csd_fast::residual_block: its schema and its ATen composition (CPU's kernel, CUDA's
// fallback). Two convolutions: conv1 + bias + ReLU into `hidden` (kept for backward),
// then conv2 with res_scale folded into its packed weight and bias, added in place to x.
#include <torch/library.h>

#include "sliced_conv.h"

namespace csd_fast {

PackSpec block_spec(const at::Tensor& input, int64_t channels, double scale) {
  return {channels, channels, scale, 1, input.scalar_type()};
}

void check_residual_block_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                   const at::Tensor& hidden, const at::Tensor& weight1,
                                   const at::Tensor& weight2, int64_t channels) {
  constexpr const char* op = "residual_block_backward";
  check_residual_block(op, input, weight1, std::nullopt, weight2, std::nullopt, channels);
  const std::vector<int64_t> out_shape{input.size(0), channels, input.size(2), input.size(3)};
  check_grad_output(op, grad_output, input, out_shape);
  TORCH_CHECK(hidden.sizes() == at::IntArrayRef(out_shape), op,
              ": hidden must be the forward's saved (N, channels, H, W) activation, got ",
              hidden.sizes());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> residual_block_grads(
    const at::Tensor& input, const at::Tensor& weight1, const at::Tensor& weight2,
    int64_t channels, double res_scale, const at::Tensor& grad_x, const at::Tensor& grad_w1,
    const at::Tensor& grad_b1, const at::Tensor& grad_w2, const at::Tensor& grad_b2) {
  const auto spec1 = block_spec(input, channels, 1.0);
  const auto spec2 = block_spec(input, channels, res_scale);
  return {grad_x.defined() ? full_input_grad(grad_x, input) : input.new_empty({0}),
          unpack_grad(grad_w1, weight1, spec1), unpack_grad(grad_b1, weight1, spec1),
          unpack_grad(grad_w2, weight2, spec2), unpack_grad(grad_b2, weight2, spec2)};
}

std::tuple<at::Tensor, at::Tensor> residual_block_composite(
    const at::Tensor& input, const at::Tensor& weight1, const at::Tensor& bias1,
    const at::Tensor& weight2, const at::Tensor& bias2, int64_t channels, double res_scale) {
  check_residual_block("residual_block", input, weight1, bias1, weight2, bias2, channels);
  const auto spec1 = block_spec(input, channels, 1.0);
  const auto spec2 = block_spec(input, channels, res_scale);
  const auto x = input_prefix_nhwc(input, channels);
  auto hidden = conv3x3(x, packed_weight(weight1, spec1), packed_bias(bias1, spec1));
  hidden.relu_();
  auto out = conv3x3(hidden, packed_weight(weight2, spec2), packed_bias(bias2, spec2));
  out.add_(x);
  return {out.contiguous(caller_format(input)), hidden.contiguous(kChannelsLast)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
residual_block_backward_composite(const at::Tensor& grad_output, const at::Tensor& input,
                                  const at::Tensor& hidden, const at::Tensor& weight1,
                                  const at::Tensor& weight2, int64_t channels, double res_scale,
                                  std::array<bool, 5> output_mask) {
  check_residual_block_backward(grad_output, input, hidden, weight1, weight2, channels);
  const auto spec1 = block_spec(input, channels, 1.0);
  const auto spec2 = block_spec(input, channels, res_scale);
  const auto grad = grad_output.contiguous(kChannelsLast);
  const auto h = hidden.contiguous(kChannelsLast);
  const bool need_hidden_grad = output_mask[0] || output_mask[1] || output_mask[2];

  auto [grad_h, grad_w2, grad_b2] = conv3x3_backward(
      grad, h, packed_weight(weight2, spec2), {need_hidden_grad, output_mask[3], output_mask[4]});
  at::Tensor grad_x, grad_w1, grad_b1;
  if (need_hidden_grad) {
    at::threshold_backward_out(grad_h, grad_h, h, 0);
    std::tie(grad_x, grad_w1, grad_b1) =
        conv3x3_backward(grad_h, input_prefix_nhwc(input, channels), packed_weight(weight1, spec1),
                         {output_mask[0], output_mask[1], output_mask[2]});
    if (grad_x.defined()) grad_x.add_(grad);
  }
  return residual_block_grads(input, weight1, weight2, channels, res_scale, grad_x, grad_w1,
                              grad_b1, grad_w2, grad_b2);
}

}  // namespace csd_fast

TORCH_LIBRARY_FRAGMENT(csd_fast, m) {
  // EDSR residual block at `channels` width: x + res_scale * conv2(relu(conv1(x))),
  // x = input[:, :channels]. Also returns hidden = relu(conv1(x)) (channels-last),
  // which backward needs.
  m.def(
      "residual_block(Tensor input, Tensor weight1, Tensor bias1, Tensor weight2, "
      "Tensor bias2, int channels, float res_scale) -> (Tensor, Tensor)");
  // Gradients (input, weight1, bias1, weight2, bias2) of residual_block, weights and
  // biases as their (channels, channels, 3, 3) / (channels,) prefixes.
  m.def(
      "residual_block_backward(Tensor grad_output, Tensor input, Tensor hidden, "
      "Tensor weight1, Tensor weight2, int channels, float res_scale, bool[5] output_mask) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

// The composition is the CPU kernel of this op (training keeps `hidden` for backward);
// inference takes residual_block_inference, banded (cpu/banded_conv.cpp). CUDA registers
// its own kernels (cuda/residual_block.cpp).
TORCH_LIBRARY_IMPL(csd_fast, CPU, m) {
  m.impl("residual_block", &csd_fast::residual_block_composite);
  m.impl("residual_block_backward", &csd_fast::residual_block_backward_composite);
}
