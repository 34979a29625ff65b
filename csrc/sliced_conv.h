// What the three channel-sliced conv ops share across devices: their input checks, the
// packed-weight cache, and the ATen pieces their compositions are built from.
//
// Every op runs a 3x3, stride-1, zero-padded convolution over input channels
// [:in_channels] with the prefix weight[:out, :in_channels] and bias[:out] of a full-size
// layer, the way one set of EDSR weights serves every width. They compute in
// channels-last (NHWC), where oneDNN and cuDNN are fastest, and return the layout the
// caller gave: channels-last input gives channels-last output, anything else NCHW.
//
// Weights and biases come in the input's dtype, or in float32 for a bfloat16/float16
// input (a mixed-precision model's master weights): the packed prefix is cast once and
// cached, and gradients come back in the weight's dtype.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

namespace csd_fast {

constexpr auto kChannelsLast = at::MemoryFormat::ChannelsLast;

// ---- checks (sliced_conv_common.cpp) --------------------------------------------------

void check_sliced_conv(const char* op, const at::Tensor& input, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, int64_t out_channels,
                       int64_t in_channels);

// sliced_conv3x3's checks (the slice, the epilogue's residual or relu); returns whether
// a residual is given.
bool check_sliced_conv3x3(const at::Tensor& input, const at::Tensor& weight,
                          const at::Tensor& bias, int64_t out_channels, int64_t in_channels,
                          bool relu, const std::optional<at::Tensor>& residual);

void check_residual_block(const char* op, const at::Tensor& input, const at::Tensor& weight1,
                          const std::optional<at::Tensor>& bias1, const at::Tensor& weight2,
                          const std::optional<at::Tensor>& bias2, int64_t channels);

// The upsampler's checks; returns the weight rows it uses, channels * s * s.
int64_t check_conv_pixel_shuffle(const char* op, const at::Tensor& input,
                                 const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 int64_t channels, int64_t in_channels, int64_t upscale_factor);

void check_grad_output(const char* op, const at::Tensor& grad, const at::Tensor& input,
                       at::IntArrayRef expected);

// The layout outputs and input gradients are returned in.
at::MemoryFormat caller_format(const at::Tensor& input);

// ---- packed weights (weight_cache.cpp) ------------------------------------------------

// How a weight (or bias) prefix is packed for a convolution: rows [:out_channels],
// input channels [:in_channels], multiplied by `scale` (res_scale folded into the conv),
// cast to `dtype`, weights channels-last contiguous. With shuffle = s > 1 the rows
// c*s*s + i*s + j of an upsampler are reordered to (i*s + j)*C + c, so that each
// sub-pixel phase (i, j) owns a contiguous block of C rows.
struct PackSpec {
  int64_t out_channels;
  int64_t in_channels;
  double scale;
  int64_t shuffle;
  at::ScalarType dtype;
};

// The packed (out, in, 3, 3) weight and (out,) bias. While the cache is on, kept per
// source tensor and spec and repacked when the source's version counter moves (an
// in-place update through autograd-visible ops); changes made through `.data` bypass
// that counter, which is why the cache is off unless a caller switches it on.
at::Tensor packed_weight(const at::Tensor& weight, const PackSpec& spec);
at::Tensor packed_bias(const at::Tensor& bias, const PackSpec& spec);
// Returns the previous state; switching off drops every entry.
bool set_weight_cache_enabled(bool enabled);
bool weight_cache_enabled();
void clear_weight_cache();
// {hits, misses, entries}
std::vector<int64_t> weight_cache_stats();

// The gradient of a packed weight or bias (rows in packed order, scaled) as the gradient
// of the source prefix, (out, in, 3, 3) or (out,), in the source's dtype; an empty
// tensor where grad_packed is undefined (not asked for).
at::Tensor unpack_grad(const at::Tensor& grad_packed, const at::Tensor& source,
                       const PackSpec& spec);

// ---- ATen pieces of the compositions (sliced_conv_common.cpp) -------------------------

// input[:, :in_channels] as an NHWC tensor (a view when it already is one).
at::Tensor input_prefix_nhwc(const at::Tensor& input, int64_t in_channels);

at::Tensor conv3x3(const at::Tensor& x, const at::Tensor& weight,
                   const std::optional<at::Tensor>& bias);

// grad_input (mask[0]) and grad_weight / grad_bias (mask[1], mask[2]) of conv3x3; each
// undefined when not asked for.
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv3x3_backward(const at::Tensor& grad,
                                                                const at::Tensor& x,
                                                                const at::Tensor& weight,
                                                                std::array<bool, 3> mask);

// The gradient of the channel prefix, placed in a tensor of the input's full shape.
at::Tensor full_input_grad(const at::Tensor& grad_prefix, const at::Tensor& input);

// The pixel shuffle of an (N, s*s*C, H, W) conv output whose channels are in sub-pixel
// order (i, j, c) (PackSpec::shuffle), as one channels-last (N, C, s*H, s*W) copy: in
// NHWC memory the conv output is [n, h, w, i, (j, c)] and the shuffled image
// [n, h, i, w, (j, c)], so the copy moves contiguous runs of s*C values.
at::Tensor pixel_shuffle_phase_order(const at::Tensor& conv, int64_t upscale_factor);

// ---- residual_block's pieces both devices use (residual_block.cpp) -------------------

// How the block packs conv1 (scale 1) and conv2 (scale res_scale).
PackSpec block_spec(const at::Tensor& input, int64_t channels, double scale);
void check_residual_block_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                   const at::Tensor& hidden, const at::Tensor& weight1,
                                   const at::Tensor& weight2, int64_t channels);
// The op's five results from the packed convolutions' gradients (undefined: not asked
// for): grad_x (NHWC, the block's channels) placed in the input's full shape, weight and
// bias gradients unpacked to their prefixes.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> residual_block_grads(
    const at::Tensor& input, const at::Tensor& weight1, const at::Tensor& weight2,
    int64_t channels, double res_scale, const at::Tensor& grad_x, const at::Tensor& grad_w1,
    const at::Tensor& grad_b1, const at::Tensor& grad_w2, const at::Tensor& grad_b2);

// ---- the compositions (one per op file): CPU's kernels, CUDA's fallbacks --------------

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

// ---- the CPU's banded forwards (cpu/banded_conv.cpp) --------------------------------

// Output rows [r0, r1) of conv3x3 over an NHWC image (N = 1) of `height` rows, of
// which `piece` holds rows [piece_first_row, piece_first_row + piece.size(2)); reads
// rows r0-1 .. r1 (zero padding only at the image's edges): the same values as those
// rows of the whole-image conv.
at::Tensor conv3x3_rows(const at::Tensor& piece, int64_t piece_first_row, int64_t height,
                        const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        int64_t r0, int64_t r1);
// Rows per band (0: from a cache budget); returns the previous setting.
int64_t set_cpu_band_rows(int64_t rows);

}  // namespace csd_fast
