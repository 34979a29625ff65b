// ATen compositions of the sliced-conv ops (oneDNN on CPU, cuDNN on CUDA).
//
// Against the plain PyTorch module they win by layout and by removing passes: every
// convolution runs channels-last (oneDNN's NCHW path is about 2x slower on this CPU),
// bias rides inside the convolution, ReLU and the residual add run in place on its
// result, and res_scale is folded into the small weight and bias instead of costing a
// pass over the feature map. The CUDA upsampler permutes the weight rows so the
// convolution emits (i, j, c) order and the shuffle is one strided copy with runs of
// s * channels; on the CPU ATen's channels-last shuffle kernel measured faster than
// that copy or a memcpy-per-run kernel of ours. Backward asks for input and weight
// gradients in two calls, which oneDNN runs faster channels-last than one call.
#include "sliced_conv.h"

#include <ATen/ATen.h>

namespace csd_fast {
namespace {

constexpr auto kChannelsLast = at::MemoryFormat::ChannelsLast;

at::Tensor conv3x3(const at::Tensor& x, const at::Tensor& weight,
                   const std::optional<at::Tensor>& bias) {
  return at::convolution(x, weight, bias, {1, 1}, {1, 1}, {1, 1}, false, {0, 0}, 1);
}

// grad_input (mask[0]) and grad_weight / grad_bias (mask[1], mask[2]) of conv3x3.
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv3x3_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
    std::array<bool, 3> mask) {
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

at::Tensor input_prefix_nhwc(const at::Tensor& input, int64_t in_channels) {
  return input.narrow(1, 0, in_channels).contiguous(kChannelsLast);
}

at::Tensor weight_prefix(const at::Tensor& weight, int64_t out_channels, int64_t in_channels) {
  return weight.narrow(0, 0, out_channels).narrow(1, 0, in_channels);
}

at::Tensor scaled(const at::Tensor& t, double scale) { return scale == 1.0 ? t : t * scale; }

// The gradient of the channel prefix, placed in a tensor of the input's full shape.
at::Tensor full_input_grad(const at::Tensor& grad_prefix, const at::Tensor& input) {
  const auto format = caller_format(input);
  if (grad_prefix.size(1) == input.size(1)) return grad_prefix.contiguous(format);
  auto full = at::zeros(input.sizes(), grad_prefix.options().memory_format(format));
  full.narrow(1, 0, grad_prefix.size(1)).copy_(grad_prefix);
  return full;
}

at::Tensor or_empty(const at::Tensor& t, const at::Tensor& like) {
  return t.defined() ? t : like.new_empty({0});
}

void check_grad_output(const char* op, const at::Tensor& grad, const at::Tensor& input,
                       at::IntArrayRef expected) {
  TORCH_CHECK(grad.sizes() == expected, op, ": grad_output must have the output's shape ",
              expected, ", got ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == input.scalar_type() && grad.device() == input.device(), op,
              ": grad_output must be ", input.scalar_type(), " on ", input.device(), ", got ",
              grad.scalar_type(), " on ", grad.device());
}

// View of an NHWC (N, s*s*C, H, W) tensor whose channels run in (i, j, c) order as
// (N, H, s, W, s*C), the memory order of its pixel-shuffled (N, C, H*s, W*s) NHWC image.
at::Tensor as_shuffled(const at::Tensor& unshuffled_nhwc, int64_t s) {
  const int64_t n = unshuffled_nhwc.size(0), rows = unshuffled_nhwc.size(1);
  const int64_t h = unshuffled_nhwc.size(2), w = unshuffled_nhwc.size(3);
  return unshuffled_nhwc.permute({0, 2, 3, 1})
      .view({n, h, w, s, rows / s})
      .permute({0, 1, 3, 2, 4});
}

at::Tensor shuffled_rows(const at::Tensor& shuffled_nhwc, int64_t s) {
  const int64_t n = shuffled_nhwc.size(0), c = shuffled_nhwc.size(1);
  const int64_t h = shuffled_nhwc.size(2) / s, w = shuffled_nhwc.size(3) / s;
  return shuffled_nhwc.permute({0, 2, 3, 1}).view({n, h, s, w, s * c});
}

// Upsampler weight rows c*s*s + i*s + j reordered to (i*s + j)*C + c.
at::Tensor shuffle_order(const at::Tensor& rows_first, int64_t channels, int64_t s) {
  auto sizes = rows_first.sizes().vec();
  std::vector<int64_t> split{channels, s * s};
  split.insert(split.end(), sizes.begin() + 1, sizes.end());
  return rows_first.reshape(split).transpose(0, 1).reshape(sizes);
}

at::Tensor channel_order(const at::Tensor& rows_first, int64_t channels, int64_t s) {
  auto sizes = rows_first.sizes().vec();
  std::vector<int64_t> split{s * s, channels};
  split.insert(split.end(), sizes.begin() + 1, sizes.end());
  return rows_first.reshape(split).transpose(0, 1).reshape(sizes);
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
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), op, ": weight dtype ",
              weight.scalar_type(), " differs from the input's ", input.scalar_type());
  TORCH_CHECK(weight.device() == input.device(), op, ": weight is on ", weight.device(),
              " but the input is on ", input.device());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op,
                ": bias must be 1-D with one value per weight row (", weight.size(0),
                "), got shape ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == input.scalar_type() && bias->device() == input.device(),
                op, ": bias must be ", input.scalar_type(), " on ", input.device(), ", got ",
                bias->scalar_type(), " on ", bias->device());
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

int64_t check_conv_pixel_shuffle(const char* op, const at::Tensor& input,
                                 const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 int64_t channels, int64_t in_channels, int64_t upscale_factor) {
  TORCH_CHECK(upscale_factor >= 1, op, ": upscale_factor must be >= 1, got ", upscale_factor);
  TORCH_CHECK(channels >= 1, op, ": channels must be >= 1, got ", channels);
  const int64_t rows = channels * upscale_factor * upscale_factor;
  check_sliced_conv(op, input, weight, bias, rows, in_channels);
  return rows;
}

at::MemoryFormat caller_format(const at::Tensor& input) {
  return input.is_contiguous(kChannelsLast) && !input.is_contiguous() ? kChannelsLast
                                                                       : at::MemoryFormat::Contiguous;
}

at::Tensor sliced_conv3x3_composite(const at::Tensor& input, const at::Tensor& weight,
                                    const at::Tensor& bias, int64_t out_channels,
                                    int64_t in_channels, bool relu,
                                    const std::optional<at::Tensor>& residual, double res_scale) {
  const bool has_residual =
      check_sliced_conv3x3(input, weight, bias, out_channels, in_channels, relu, residual);
  auto w = weight_prefix(weight, out_channels, in_channels);
  auto b = bias.narrow(0, 0, out_channels);
  if (has_residual) {
    w = scaled(w, res_scale);
    b = scaled(b, res_scale);
  }
  auto out = conv3x3(input_prefix_nhwc(input, in_channels), w, b);
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
  const auto x = input_prefix_nhwc(input, in_channels);
  const auto w = scaled(weight_prefix(weight, out_channels, in_channels), res_scale);
  auto [grad_x, grad_w, grad_b] = conv3x3_backward(grad, x, w, output_mask);
  if (grad_w.defined()) grad_w = grad_w.contiguous();
  // dL/dw of conv(x, s*w) is s * dL/d(s*w)
  if (grad_w.defined() && res_scale != 1.0) grad_w.mul_(res_scale);
  if (grad_b.defined() && res_scale != 1.0) grad_b.mul_(res_scale);
  return {grad_x.defined() ? full_input_grad(grad_x, input) : input.new_empty({0}),
          or_empty(grad_w, input), or_empty(grad_b, input)};
}

std::tuple<at::Tensor, at::Tensor> residual_block_composite(
    const at::Tensor& input, const at::Tensor& weight1, const at::Tensor& bias1,
    const at::Tensor& weight2, const at::Tensor& bias2, int64_t channels, double res_scale) {
  constexpr const char* op = "residual_block";
  check_sliced_conv(op, input, weight1, bias1, channels, channels);
  check_sliced_conv(op, input, weight2, bias2, channels, channels);
  const auto x = input_prefix_nhwc(input, channels);
  auto hidden = conv3x3(x, weight_prefix(weight1, channels, channels), bias1.narrow(0, 0, channels));
  hidden.relu_();
  auto out = conv3x3(hidden, scaled(weight_prefix(weight2, channels, channels), res_scale),
                     scaled(bias2.narrow(0, 0, channels), res_scale));
  out.add_(x);
  return {out.contiguous(caller_format(input)), hidden};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
residual_block_backward_composite(const at::Tensor& grad_output, const at::Tensor& input,
                                  const at::Tensor& hidden, const at::Tensor& weight1,
                                  const at::Tensor& weight2, int64_t channels, double res_scale,
                                  std::array<bool, 5> output_mask) {
  constexpr const char* op = "residual_block_backward";
  check_sliced_conv(op, input, weight1, std::nullopt, channels, channels);
  check_sliced_conv(op, input, weight2, std::nullopt, channels, channels);
  const std::vector<int64_t> out_shape{input.size(0), channels, input.size(2), input.size(3)};
  check_grad_output(op, grad_output, input, out_shape);
  TORCH_CHECK(hidden.sizes() == at::IntArrayRef(out_shape), op,
              ": hidden must be the forward's saved (N, channels, H, W) activation, got ",
              hidden.sizes());
  const auto grad = grad_output.contiguous(kChannelsLast);
  const auto h = hidden.contiguous(kChannelsLast);
  const auto w1 = weight_prefix(weight1, channels, channels);
  const auto w2 = scaled(weight_prefix(weight2, channels, channels), res_scale);
  const bool need_hidden_grad = output_mask[0] || output_mask[1] || output_mask[2];

  auto [grad_h, grad_w2, grad_b2] =
      conv3x3_backward(grad, h, w2, {need_hidden_grad, output_mask[3], output_mask[4]});
  if (grad_w2.defined()) grad_w2 = grad_w2.contiguous();
  if (grad_w2.defined() && res_scale != 1.0) grad_w2.mul_(res_scale);
  if (grad_b2.defined() && res_scale != 1.0) grad_b2.mul_(res_scale);
  at::Tensor grad_x, grad_w1, grad_b1;
  if (need_hidden_grad) {
    at::threshold_backward_out(grad_h, grad_h, h, 0);
    std::tie(grad_x, grad_w1, grad_b1) = conv3x3_backward(
        grad_h, input_prefix_nhwc(input, channels), w1,
        {output_mask[0], output_mask[1], output_mask[2]});
    if (grad_x.defined()) grad_x = full_input_grad(grad_x.add_(grad), input);
    if (grad_w1.defined()) grad_w1 = grad_w1.contiguous();
  }
  return {or_empty(grad_x, input), or_empty(grad_w1, input), or_empty(grad_b1, input),
          or_empty(grad_w2, input), or_empty(grad_b2, input)};
}

at::Tensor conv3x3_pixel_shuffle_composite(const at::Tensor& input, const at::Tensor& weight,
                                           const at::Tensor& bias, int64_t channels,
                                           int64_t in_channels, int64_t upscale_factor) {
  const int64_t s = upscale_factor;
  const int64_t rows = check_conv_pixel_shuffle("conv3x3_pixel_shuffle", input, weight, bias,
                                                channels, in_channels, s);
  const auto x = input_prefix_nhwc(input, in_channels);
  if (input.is_cpu()) {  // ATen's channels-last shuffle kernel measured fastest here
    auto conv = conv3x3(x, weight_prefix(weight, rows, in_channels), bias.narrow(0, 0, rows));
    return at::pixel_shuffle(conv.contiguous(kChannelsLast), s).contiguous(caller_format(input));
  }
  const auto w = shuffle_order(weight_prefix(weight, rows, in_channels), channels, s);
  const auto b = shuffle_order(bias.narrow(0, 0, rows), channels, s);
  const auto conv = conv3x3(x, w, b).contiguous(kChannelsLast);
  auto out = at::empty({input.size(0), channels, input.size(2) * s, input.size(3) * s},
                       conv.options().memory_format(kChannelsLast));
  shuffled_rows(out, s).copy_(as_shuffled(conv, s));
  return out.contiguous(caller_format(input));
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
  const auto grad = grad_output.contiguous(kChannelsLast);
  const auto x = input_prefix_nhwc(input, in_channels);
  if (grad.is_cpu()) {
    const auto grad_conv = at::pixel_unshuffle(grad, s).contiguous(kChannelsLast);
    auto [grad_x, grad_w, grad_b] =
        conv3x3_backward(grad_conv, x, weight_prefix(weight, rows, in_channels), output_mask);
    return {grad_x.defined() ? full_input_grad(grad_x, input) : input.new_empty({0}),
            grad_w.defined() ? grad_w.contiguous() : input.new_empty({0}),
            or_empty(grad_b, input)};
  }
  auto grad_conv = at::empty({input.size(0), rows, input.size(2), input.size(3)},
                             grad.options().memory_format(kChannelsLast));
  as_shuffled(grad_conv, s).copy_(shuffled_rows(grad, s));
  const auto w = shuffle_order(weight_prefix(weight, rows, in_channels), channels, s);
  auto [grad_x, grad_w, grad_b] = conv3x3_backward(grad_conv, x, w, output_mask);
  return {grad_x.defined() ? full_input_grad(grad_x, input) : input.new_empty({0}),
          grad_w.defined() ? channel_order(grad_w, channels, s) : input.new_empty({0}),
          grad_b.defined() ? channel_order(grad_b, channels, s) : input.new_empty({0})};
}

}  // namespace csd_fast
