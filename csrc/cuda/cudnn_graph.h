// Fused 3x3 convolutions on cuDNN's runtime-fusion engines, reached through the cuDNN
// graph API (cudnn_graph.cpp). The frontend's heavy headers stay in that one file.
//
// Each call builds (once per shape, stride, dtype, device and epilogue, then from a
// per-thread cache) a graph conv -> bias -> epilogue and runs it in one launch. Where no
// engine takes a graph the call returns false, remembers that for the same key, and the
// caller runs its ATen composition instead.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace csd_fast::cudnn_graph {

enum class Epilogue : int64_t {
  kBias = 0,          // y = conv + b
  kBiasRelu = 1,      // y = relu(conv + b)
  kBiasResidual = 2,  // y = conv + b + residual
};

// Whether the graph path may be tried for this input: bfloat16 or float16 on a CUDA
// device, and not switched off with CSD_FAST_CUDNN_GRAPH=0. (float32 and float64 stay
// on ATen's cuDNN convolution, which honours torch.backends.cudnn.allow_tf32.)
bool eligible(const at::Tensor& input);

// y = epilogue(conv3x3(x, w) + b): x (N, C, H, W) NHWC, w a packed (K, C, 3, 3)
// channels-last weight, b (K,), residual (kBiasResidual only) and y (N, K, H, W) with
// any strides (y may be a strided view into a larger tensor). Returns false, leaving y
// untouched, when no engine runs this graph.
bool conv_fprop(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                const at::Tensor* residual, Epilogue epilogue, const at::Tensor& y);

// dx = conv_dgrad(dy, w), multiplied by (relu_output > 0) when relu_output is given: the
// input gradient of a conv whose input was a ReLU's output, with that ReLU's backward
// fused. dy (N, K, H, W) and relu_output / dx (N, C, H, W) NHWC.
bool conv_dgrad(const at::Tensor& dy, const at::Tensor& w, const at::Tensor* relu_output,
                const at::Tensor& dx);

// conv_fprop into a new NHWC tensor, or, where no engine takes the graph, ATen's
// convolution with the same epilogue applied in place.
at::Tensor fused_conv3x3(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                         const at::Tensor* residual, Epilogue epilogue);

// dx = conv_dgrad(dy, w) [* (relu_output > 0)] into a new NHWC tensor, by the graph or
// by ATen's convolution backward and threshold_backward.
at::Tensor fused_dgrad3x3(const at::Tensor& dy, const at::Tensor& w, const at::Tensor* relu_output,
                          int64_t in_channels);

// {graphs run, calls that fell back, plans built, keys no engine took}
std::vector<int64_t> stats();

}  // namespace csd_fast::cudnn_graph
