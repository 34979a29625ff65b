// CPU forward kernels that run a convolution over bands of image rows, so that what a
// band produces is consumed while it is still in cache instead of making a round trip
// through memory as a whole-image tensor.
//
// conv3x3_pixel_shuffle: at 1080p output the upsampler's conv writes a 0.5 GB map
// (256 channels at 540x960 for the 64-channel student) that ATen's pixel shuffle then
// reads back and rewrites; each fresh whole-image buffer also costs its page faults.
// Here the conv runs with its weight rows in sub-pixel order (i, j, c) over a band of
// rows, into a buffer of a few MB that is reused, and each band is scattered into the
// shuffled output at once: in NHWC memory a shuffled output row (h*s + i) is, for each
// w, the contiguous run band[h, w, i*s*C : (i+1)*s*C], so the scatter is a sequence of
// s*C-element memcpys.
//
// A band of rows [r0, r1) of a 3x3, zero-padded conv reads input rows r0-1 .. r1; an
// inner band gets those halo rows from the image and no vertical padding, so every
// output row is computed once, by the same oneDNN primitive as the whole-image conv
// computes it (the summation per output element does not depend on the band).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>

#include "sliced_conv.h"

namespace csd_fast {

namespace {

// 0: rows per band from the byte budgets below; otherwise a fixed count (tests use small ones to
// cross band edges on small images).
std::atomic<int64_t> band_rows_override{0};

// Bytes a band may hold: a few MB stay in the L3 (32 MB on the Zen 5 measured, 1 MB of
// L2 per core) and still give oneDNN thousands of pixels per call to spread over its
// threads. The residual block's band gets more, because each band recomputes two hidden
// rows (at 8 MB, some 20 rows of the 64-channel student at 480 wide in float32: conv1
// does 10% extra work; at 4 MB it was 18%, and measured slower). Measured, not derived:
// benchmarks/RESULTS.md, group video.
constexpr int64_t kShuffleBandBytes = int64_t{4} << 20;
constexpr int64_t kBlockBandBytes = int64_t{8} << 20;

int64_t band_rows(int64_t height, int64_t row_bytes, int64_t budget) {
  const int64_t fixed = band_rows_override.load();
  const int64_t rows = fixed > 0 ? fixed : budget / std::max<int64_t>(row_bytes, 1);
  return std::clamp<int64_t>(rows, 1, height);
}

}  // namespace

int64_t set_cpu_band_rows(int64_t rows) {
  TORCH_CHECK(rows >= 0, "set_cpu_band_rows: rows must be >= 0 (0: automatic), got ", rows);
  return band_rows_override.exchange(rows);
}

at::Tensor conv3x3_rows(const at::Tensor& piece, int64_t piece_first_row, int64_t height,
                        const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        int64_t r0, int64_t r1) {
  const bool top_halo = r0 > 0, bottom_halo = r1 < height;
  // input rows [r0 - top_halo, r1 + bottom_halo), as rows of the piece
  const int64_t first = r0 - top_halo - piece_first_row;
  const int64_t last = r1 + bottom_halo - piece_first_row;
  TORCH_INTERNAL_ASSERT(first >= 0 && last <= piece.size(2), "conv3x3_rows: rows ", r0, "..",
                        r1, " need input rows outside the ", piece.size(2), " given");
  const auto rows_in = piece.narrow(2, first, last - first);
  if (top_halo && bottom_halo) {
    return at::convolution(rows_in, weight, bias, {1, 1}, {0, 1}, {1, 1}, false, {0, 0}, 1);
  }
  // at an image edge the zero padding is real; the halo row on the other side, if
  // any, comes out as one extra (wrongly padded) row, dropped here
  const auto out =
      at::convolution(rows_in, weight, bias, {1, 1}, {1, 1}, {1, 1}, false, {0, 0}, 1);
  return out.narrow(2, top_halo, r1 - r0);
}

at::Tensor conv3x3_pixel_shuffle_cpu(const at::Tensor& input, const at::Tensor& weight,
                                     const at::Tensor& bias, int64_t channels,
                                     int64_t in_channels, int64_t upscale_factor) {
  const int64_t s = upscale_factor;
  const int64_t rows = check_conv_pixel_shuffle("conv3x3_pixel_shuffle", input, weight, bias,
                                                channels, in_channels, s);
  const PackSpec spec{rows, in_channels, 1.0, s, input.scalar_type()};
  const auto w = packed_weight(weight, spec);
  const auto b = packed_bias(bias, spec);
  const auto x = input_prefix_nhwc(input, in_channels);
  const int64_t n = x.size(0), h = x.size(2), width = x.size(3), c = channels;
  auto out = at::empty({n, c, h * s, width * s}, x.options().memory_format(kChannelsLast));
  const int64_t item = x.element_size();
  const int64_t band = band_rows(h, width * rows * item, kShuffleBandBytes);
  const int64_t run = s * c * item;              // bytes of one (j, c) run
  const int64_t out_row = width * s * c * item;  // bytes of one output row
  auto* out_base = static_cast<char*>(out.data_ptr());
  // where an image fits in one band, the whole batch is one conv (a training batch of
  // small patches); otherwise one image at a time, band by band
  const bool whole_batch = band >= h;
  for (int64_t img = 0; img < (whole_batch ? 1 : n); ++img) {
    const auto image = whole_batch ? x : x.narrow(0, img, 1);
    char* out_image = out_base + img * out.stride(0) * item;
    for (int64_t r0 = 0; r0 < h; r0 += band) {
      const int64_t r1 = std::min(h, r0 + band);
      const auto conv = conv3x3_rows(image, 0, h, w, b, r0, r1).contiguous(kChannelsLast);
      const auto* src = static_cast<const char*>(conv.data_ptr());
      const int64_t src_row = width * rows * item;
      // the batch's images are stacked rows in NHWC memory, on both sides
      const int64_t band_rows_all = whole_batch ? n * h : r1 - r0;
      // one task per shuffled output row (source row k, sub-pixel row i)
      at::parallel_for(0, band_rows_all * s, 1, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const int64_t k = t / s, i = t % s;
          const char* from = src + k * src_row + i * run;
          char* to = out_image + ((r0 + k) * s + i) * out_row;
          for (int64_t col = 0; col < width; ++col) {
            std::memcpy(to + col * run, from + col * rows * item, run);
          }
        }
      });
    }
  }
  return out.contiguous(caller_format(input));
}

at::Tensor residual_block_inference_cpu(const at::Tensor& input, const at::Tensor& weight1,
                                        const at::Tensor& bias1, const at::Tensor& weight2,
                                        const at::Tensor& bias2, int64_t channels,
                                        double res_scale) {
  check_residual_block("residual_block_inference", input, weight1, bias1, weight2, bias2,
                       channels);
  const auto spec1 = block_spec(input, channels, 1.0);
  const auto spec2 = block_spec(input, channels, res_scale);
  const auto w1 = packed_weight(weight1, spec1), b1 = packed_bias(bias1, spec1);
  const auto w2 = packed_weight(weight2, spec2), b2 = packed_bias(bias2, spec2);
  const auto x = input_prefix_nhwc(input, channels);
  const int64_t n = x.size(0), h = x.size(2), width = x.size(3);
  auto out = at::empty(x.sizes(), x.options().memory_format(kChannelsLast));
  // a band holds its hidden rows, conv2's rows and the input rows they read
  const int64_t band = band_rows(h, 3 * width * channels * x.element_size(), kBlockBandBytes);
  const bool whole_batch = band >= h;  // as in conv3x3_pixel_shuffle_cpu
  for (int64_t img = 0; img < (whole_batch ? 1 : n); ++img) {
    const auto image = whole_batch ? x : x.narrow(0, img, 1);
    const auto out_image = whole_batch ? out : out.narrow(0, img, 1);
    for (int64_t r0 = 0; r0 < h; r0 += band) {
      const int64_t r1 = std::min(h, r0 + band);
      // conv2's rows [r0, r1) read hidden rows [h0, h1)
      const int64_t h0 = std::max<int64_t>(r0 - 1, 0), h1 = std::min(h, r1 + 1);
      auto hidden = conv3x3_rows(image, 0, h, w1, b1, h0, h1);
      hidden.relu_();
      const auto conv2 = conv3x3_rows(hidden, h0, h, w2, b2, r0, r1);
      auto target = out_image.narrow(2, r0, r1 - r0);
      at::add_out(target, conv2, image.narrow(2, r0, r1 - r0));
    }
  }
  return out.contiguous(caller_format(input));
}

}  // namespace csd_fast

TORCH_LIBRARY_FRAGMENT(csd_fast, m) {
  // Rows per band of the CPU's banded forwards (0: chosen from a cache budget); returns
  // the previous setting. For tests and tuning: results do not depend on it.
  m.def("set_cpu_band_rows(int rows) -> int", &csd_fast::set_cpu_band_rows);
  // residual_block's output alone, for inference: without `hidden` to keep for backward,
  // the CPU runs both convs band by band (no autograd; the Python wrapper takes this
  // op where no gradient is needed).
  m.def(
      "residual_block_inference(Tensor input, Tensor weight1, Tensor bias1, Tensor weight2, "
      "Tensor bias2, int channels, float res_scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(csd_fast, CPU, m) {
  m.impl("conv3x3_pixel_shuffle", &csd_fast::conv3x3_pixel_shuffle_cpu);
  m.impl("residual_block_inference", &csd_fast::residual_block_inference_cpu);
}
