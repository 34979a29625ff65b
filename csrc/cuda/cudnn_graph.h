// Fused 3x3 convolutions on cuDNN's fused engines, through the cuDNN graph API.
//
// Each call looks its graph up in a per-thread plan cache (built once per shape, stride,
// dtype, device and epilogue; the graphs themselves are described in cudnn_plans.cpp)
// and runs it in one launch. Where no engine takes a graph the call says so, remembers
// it for the same key, and the caller runs its ATen composition instead.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "cuda/cudnn_plans.h"

namespace csd_fast::cudnn_graph {

// Whether the graph path may be tried for this input: bfloat16 or float16 on a CUDA
// device, and not switched off with CSD_FAST_CUDNN_GRAPH=0. (float32 and float64 stay
// on ATen's cuDNN convolution, which honours torch.backends.cudnn.allow_tf32.)
bool eligible(const at::Tensor& input);

// y = epilogue(conv3x3(x, w), b[, residual]) into a new NHWC tensor: x (N, C, H, W) NHWC,
// w a packed (K, C, 3, 3) channels-last weight, b (K,), residual (kResidualBias only)
// (N, K, H, W) NHWC. Where no engine takes the graph, ATen's convolution with the same
// epilogue.
at::Tensor fused_conv3x3(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                         const at::Tensor* residual, Epilogue epilogue);

// dx = conv_dgrad(dy, w) [* (relu_output > 0)] into a new NHWC tensor, by one graph, or
// by ATen's convolution backward and threshold_backward where the fused graph cannot be
// built (its engine is compiled at run time, see GraphSpec).
at::Tensor fused_dgrad3x3(const at::Tensor& dy, const at::Tensor& w, const at::Tensor* relu_output,
                          int64_t in_channels);

// The keys (GraphSpec::key() and the device) of the graphs any thread has planned since
// the process started (the newest 4096), in the order first planned.
std::vector<std::vector<int64_t>> plan_keys();

// How many plans this thread's cache holds now.
int64_t plan_cache_size();

// {graphs run, calls that fell back, plans built, keys no engine took, plans whose
// engine was compiled at run time, keys routed to ATen without asking cuDNN, built
// plans that failed at their workspace, autotune or execution}
std::vector<int64_t> stats();

}  // namespace csd_fast::cudnn_graph
