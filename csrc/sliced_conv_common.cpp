// Input checks and ATen building blocks shared by the three sliced-conv ops on every device.
#include <ATen/ATen.h>

#include "sliced_conv.h"

namespace csd_fast {

namespace {

bool is_half_like(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

// A parameter may be in the input's dtype, or float32 master weights of a half/bf16 input.
bool parameter_dtype_ok(at::ScalarType param, at::ScalarType input) {
  return param == input || (param == at::kFloat && is_half_like(input));
}

}  // namespace

void check_sliced_conv(const char* op, const at::Tensor& input, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, int64_t out_channels,
                       int64_t in_channels) {
  TORCH_CHECK(input.dim() == 4, op, ": input must be 4-D (N, C, H, W), got ", input.dim(),
              "-D of shape ", input.sizes());
  TORCH_CHECK(input.numel() > 0, op, ": input is empty (shape ", input.sizes(), ")");
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), op,
              ": expected a floating-point input, got ", input.scalar_type());
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3, op,
              ": weight must be (out, in, 3, 3), got shape ", weight.sizes());
  TORCH_CHECK(parameter_dtype_ok(weight.scalar_type(), input.scalar_type()), op,
              ": weight dtype ", weight.scalar_type(), " does not go with the input's ",
              input.scalar_type(), " (use the input's dtype, or float32 weights for a "
              "bfloat16/float16 input)");
  TORCH_CHECK(weight.device() == input.device(), op, ": weight is on ", weight.device(),
              " but the input is on ", input.device());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op,
                ": bias must be 1-D with one value per weight row (", weight.size(0),
                "), got shape ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == weight.scalar_type() && bias->device() == input.device(),
                op, ": bias must be ", weight.scalar_type(), " (the weight's dtype) on ",
                input.device(), ", got ", bias->scalar_type(), " on ", bias->device());
  }
  TORCH_CHECK(out_channels >= 1 && out_channels <= weight.size(0), op, ": out_channels ",
              out_channels, " is outside the weight's 1..", weight.size(0), " rows");
  TORCH_CHECK(in_channels >= 1 && in_channels <= weight.size(1), op, ": in_channels ",
              in_channels, " is outside the weight's 1..", weight.size(1), " input channels");
  TORCH_CHECK(in_channels <= input.size(1), op, ": in_channels ", in_channels,
              " exceeds the input's ", input.size(1), " channels");
}

bool check_sliced_conv3x3(const at::Tensor& input, const at::Tensor& weight,
                          const at::Tensor& bias, int64_t out_channels, int64_t in_channels,
                          bool relu, const std::optional<at::Tensor>& residual) {
  constexpr const char* op = "sliced_conv3x3";
  check_sliced_conv(op, input, weight, bias, out_channels, in_channels);
  if (!residual.has_value() || !residual->defined()) return false;
  TORCH_CHECK(!relu, op,
              ": relu and residual cannot be combined (the epilogue is relu(conv) or "
              "residual + res_scale * conv)");
  const std::vector<int64_t> expected{input.size(0), out_channels, input.size(2), input.size(3)};
  TORCH_CHECK(residual->sizes() == at::IntArrayRef(expected), op,
              ": residual must have the output's shape ", expected, ", got ", residual->sizes());
  TORCH_CHECK(residual->scalar_type() == input.scalar_type() &&
                  residual->device() == input.device(),
              op, ": residual must be ", input.scalar_type(), " on ", input.device(), ", got ",
              residual->scalar_type(), " on ", residual->device());
  return true;
}

void check_residual_block(const char* op, const at::Tensor& input, const at::Tensor& weight1,
                          const std::optional<at::Tensor>& bias1, const at::Tensor& weight2,
                          const std::optional<at::Tensor>& bias2, int64_t channels) {
  check_sliced_conv(op, input, weight1, bias1, channels, channels);
  check_sliced_conv(op, input, weight2, bias2, channels, channels);
}

int64_t check_conv_pixel_shuffle(const char* op, const at::Tensor& input,
                                 const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 int64_t channels, int64_t in_channels, int64_t upscale_factor) {
  TORCH_CHECK(upscale_factor >= 1, op, ": upscale_factor must be >= 1, got ", upscale_factor);
  TORCH_CHECK(channels >= 1, op, ": channels must be >= 1, got ", channels);
  const int64_t rows = channels * upscale_factor * upscale_factor;
  check_sliced_conv(op, input, weight, bias, rows, in_channels);
  return rows;
}

void check_grad_output(const char* op, const at::Tensor& grad, const at::Tensor& input,
                       at::IntArrayRef expected) {
  TORCH_CHECK(grad.sizes() == expected, op, ": grad_output must have the output's shape ",
              expected, ", got ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == input.scalar_type() && grad.device() == input.device(), op,
              ": grad_output must be ", input.scalar_type(), " on ", input.device(), ", got ",
              grad.scalar_type(), " on ", grad.device());
}

at::MemoryFormat caller_format(const at::Tensor& input) {
  return input.is_contiguous(kChannelsLast) && !input.is_contiguous() ? kChannelsLast
                                                                       : at::MemoryFormat::Contiguous;
}

at::Tensor input_prefix_nhwc(const at::Tensor& input, int64_t in_channels) {
  return input.narrow(1, 0, in_channels).contiguous(kChannelsLast);
}

at::Tensor conv3x3(const at::Tensor& x, const at::Tensor& weight,
                   const std::optional<at::Tensor>& bias) {
  return at::convolution(x, weight, bias, {1, 1}, {1, 1}, {1, 1}, false, {0, 0}, 1);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv3x3_backward(const at::Tensor& grad,
                                                                const at::Tensor& x,
                                                                const at::Tensor& weight,
                                                                std::array<bool, 3> mask) {
  // Two calls: oneDNN runs the input and the weight gradients faster channels-last apart.
  at::Tensor grad_input, grad_weight, grad_bias;
  const std::vector<int64_t> bias_sizes{weight.size(0)};
  if (mask[0]) {
    grad_input = std::get<0>(at::convolution_backward(grad, x, weight, bias_sizes, {1, 1}, {1, 1},
                                                      {1, 1}, false, {0, 0}, 1,
                                                      {true, false, false}));
  }
  if (mask[1] || mask[2]) {
    auto grads = at::convolution_backward(grad, x, weight, bias_sizes, {1, 1}, {1, 1}, {1, 1},
                                          false, {0, 0}, 1, {false, mask[1], mask[2]});
    grad_weight = std::get<1>(grads);
    grad_bias = std::get<2>(grads);
  }
  return {grad_input, grad_weight, grad_bias};
}

at::Tensor full_input_grad(const at::Tensor& grad_prefix, const at::Tensor& input) {
  const auto format = caller_format(input);
  if (grad_prefix.size(1) == input.size(1)) return grad_prefix.contiguous(format);
  auto full = at::zeros(input.sizes(), grad_prefix.options().memory_format(format));
  full.narrow(1, 0, grad_prefix.size(1)).copy_(grad_prefix);
  return full;
}

}  // namespace csd_fast
