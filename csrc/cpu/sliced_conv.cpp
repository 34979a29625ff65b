// CPU kernels of the sliced-conv ops: the channels-last oneDNN compositions of
// sliced_conv.cpp. oneDNN reaches the CPU's GEMM peak; what is left to win on CPU is
// layout and the passes around the convolution, which those compositions remove.
#include <torch/library.h>

#include "sliced_conv.h"

TORCH_LIBRARY_IMPL(csd_fast, CPU, m) {
  m.impl("sliced_conv3x3", &csd_fast::sliced_conv3x3_composite);
  m.impl("sliced_conv3x3_backward", &csd_fast::sliced_conv3x3_backward_composite);
  m.impl("residual_block", &csd_fast::residual_block_composite);
  m.impl("residual_block_backward", &csd_fast::residual_block_backward_composite);
  m.impl("conv3x3_pixel_shuffle", &csd_fast::conv3x3_pixel_shuffle_composite);
  m.impl("conv3x3_pixel_shuffle_backward", &csd_fast::conv3x3_pixel_shuffle_backward_composite);
}
