// CUDA kernels of the sliced-conv ops. Until the tensor-core kernels land these are
// the cuDNN compositions of sliced_conv.cpp (channels-last, res_scale folded into the
// weight, in-place epilogues).
#include <torch/library.h>

#include "sliced_conv.h"

TORCH_LIBRARY_IMPL(csd_fast, CUDA, m) {
  m.impl("sliced_conv3x3", &csd_fast::sliced_conv3x3_composite);
  m.impl("sliced_conv3x3_backward", &csd_fast::sliced_conv3x3_backward_composite);
  m.impl("residual_block", &csd_fast::residual_block_composite);
  m.impl("residual_block_backward", &csd_fast::residual_block_backward_composite);
  m.impl("conv3x3_pixel_shuffle", &csd_fast::conv3x3_pixel_shuffle_composite);
  m.impl("conv3x3_pixel_shuffle_backward", &csd_fast::conv3x3_pixel_shuffle_backward_composite);
}
