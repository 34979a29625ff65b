// csd_fast::sliced_conv3x3: its schema and its ATen composition (CPU's kernel, CUDA's
// fallback where no fused cuDNN graph applies).
//
// The composition wins over a plain module by layout and by removing passes: the conv
// runs channels-last, bias rides inside it, ReLU and the residual add run in place on
// its result, and res_scale is folded into the packed weight and bias instead of
// costing a pass over the feature map.
#include <torch/library.h>

#include "sliced_conv.h"

namespace csd_fast {

namespace {

PackSpec conv_spec(const at::Tensor& input, int64_t out_channels, int64_t in_channels,
                   double scale) {
  return {out_channels, in_channels, scale, 1, input.scalar_type()};
}

}  // namespace

at::Tensor sliced_conv3x3_composite(const at::Tensor& input, const at::Tensor& weight,
                                    const at::Tensor& bias, int64_t out_channels,
                                    int64_t in_channels, bool relu,
                                    const std::optional<at::Tensor>& residual, double res_scale) {
  const bool has_residual =
      check_sliced_conv3x3(input, weight, bias, out_channels, in_channels, relu, residual);
  const auto spec = conv_spec(input, out_channels, in_channels, has_residual ? res_scale : 1.0);
  auto out = conv3x3(input_prefix_nhwc(input, in_channels), packed_weight(weight, spec),
                     packed_bias(bias, spec));
  if (relu) out.relu_();
  if (has_residual) out.add_(*residual);
  return out.contiguous(caller_format(input));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sliced_conv3x3_backward_composite(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& output, int64_t out_channels, int64_t in_channels, bool relu,
    double res_scale, std::array<bool, 3> output_mask) {
  constexpr const char* op = "sliced_conv3x3_backward";
  check_sliced_conv(op, input, weight, std::nullopt, out_channels, in_channels);
  check_grad_output(op, grad_output, input,
                    {input.size(0), out_channels, input.size(2), input.size(3)});
  auto grad = grad_output.contiguous(kChannelsLast);
  if (relu) {
    TORCH_CHECK(output.has_value() && output->sizes() == grad.sizes(), op,
                ": relu needs the forward output (its ReLU mask)");
    grad = at::threshold_backward(grad, output->contiguous(kChannelsLast), 0);
  }
  const auto spec = conv_spec(input, out_channels, in_channels, res_scale);
  auto [grad_x, grad_w, grad_b] = conv3x3_backward(grad, input_prefix_nhwc(input, in_channels),
                                                   packed_weight(weight, spec), output_mask);
  return {grad_x.defined() ? full_input_grad(grad_x, input) : input.new_empty({0}),
          unpack_grad(grad_w, weight, spec), unpack_grad(grad_b, weight, spec)};
}

}  // namespace csd_fast

TORCH_LIBRARY_FRAGMENT(csd_fast, m) {
  // 3x3 convolution (stride 1, zero padding 1) over input channels [:in_channels] with
  // weight[:out_channels, :in_channels] and bias[:out_channels] of a full-size layer,
  // then the epilogue: relu(conv), or residual + res_scale * conv when residual is
  // given (the two cannot be combined).
  m.def(
      "sliced_conv3x3(Tensor input, Tensor weight, Tensor bias, int out_channels, "
      "int in_channels, bool relu, Tensor? residual, float res_scale) -> Tensor");
  // Gradients of sliced_conv3x3: grad_input has the input's full shape (zero beyond
  // in_channels); grad_weight (out, in, 3, 3) and grad_bias (out,) are the prefix's, in
  // the weight's dtype. output is the forward result (needed when relu); res_scale is
  // the factor the convolution was multiplied by (1 without residual). Unrequested:
  // empty tensors.
  m.def(
      "sliced_conv3x3_backward(Tensor grad_output, Tensor input, Tensor weight, "
      "Tensor? output, int out_channels, int in_channels, bool relu, float res_scale, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

// The composition is the CPU kernel: oneDNN runs the convolutions at the CPU's GEMM peak,
// so there is no CPU-specific code. CUDA registers its own kernels (cuda/sliced_conv3x3.cpp).
TORCH_LIBRARY_IMPL(csd_fast, CPU, m) {
  m.impl("sliced_conv3x3", &csd_fast::sliced_conv3x3_composite);
  m.impl("sliced_conv3x3_backward", &csd_fast::sliced_conv3x3_backward_composite);
}
