// Pixel shuffle between two channels-last layouts, as whole-run memcpy.
//
// The upsampler's weight rows are permuted so its convolution emits, per pixel, the
// s*s*C values in (i, j, c) order; pixel (h, w)'s run for sub-row i, s*C values long,
// is then exactly output row h*s+i at columns w*s .. w*s+s-1. So the shuffle is one
// memcpy of s*C elements per (n, h, i, w). ATen's strided copy does the same
// permutation element by element and measured about 2x slower on 256-channel maps.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstring>

#include "sliced_conv.h"

namespace csd_fast {

void pixel_shuffle_nhwc_cpu(const at::Tensor& unshuffled, const at::Tensor& shuffled, int64_t s,
                            bool to_shuffled) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  TORCH_CHECK(unshuffled.is_contiguous(cl) && shuffled.is_contiguous(cl),
              "pixel_shuffle_nhwc_cpu: both tensors must be channels-last contiguous");
  const int64_t n = unshuffled.size(0), h = unshuffled.size(2), w = unshuffled.size(3);
  const int64_t c = shuffled.size(1);
  TORCH_CHECK(unshuffled.size(1) == c * s * s && shuffled.size(2) == h * s &&
                  shuffled.size(3) == w * s && shuffled.size(0) == n,
              "pixel_shuffle_nhwc_cpu: shapes ", unshuffled.sizes(), " and ", shuffled.sizes(),
              " do not match upscale factor ", s);
  const int64_t run = s * c * unshuffled.element_size();  // bytes per (n, h, i, w)
  auto* src_base = static_cast<char*>(unshuffled.data_ptr());
  auto* dst_base = static_cast<char*>(shuffled.data_ptr());
  // one task per output row (n, h, i): W runs, contiguous on the shuffled side
  at::parallel_for(0, n * h * s, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t i = row % s, nh = row / s;
      char* pixels = src_base + nh * w * s * run + i * run;  // pixel stride s*s*C = s*run
      char* line = dst_base + row * w * run;
      for (int64_t x = 0; x < w; ++x) {
        if (to_shuffled) {
          std::memcpy(line + x * run, pixels + x * s * run, run);
        } else {
          std::memcpy(pixels + x * s * run, line + x * run, run);
        }
      }
    }
  });
}

}  // namespace csd_fast
