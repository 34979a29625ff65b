// Op schemas of the csd_fast library and the Python module that loads them.
// Kernels live in cpu/ and cuda/ (one file per op); fake kernels and autograd are
// registered from Python (csd_fast/ops), so the ops also run under torch.compile.
#include <Python.h>
#include <torch/library.h>

#ifndef CSD_FAST_TORCH_VERSION
#define CSD_FAST_TORCH_VERSION "unknown"
#endif
#ifndef CSD_FAST_CPU_CAPABILITY
#define CSD_FAST_CPU_CAPABILITY "DEFAULT"
#endif
#ifndef CSD_FAST_CUDA_ARCHS
#define CSD_FAST_CUDA_ARCHS ""
#endif

TORCH_LIBRARY(csd_fast, m) {
  // Contrastive distances of one feature layer. anchor and positive are (B, C, H, W),
  // negatives (K, C, H, W) shared by every anchor. Returns
  //   mean |positive - anchor|                              over B*C*H*W elements,
  //   sum_k sum_{b,c,h,w} |negatives_k - anchor_b| / (B*C*H*W)
  // where the pair (b, k) is skipped when negative_source[k] == b (negative_source
  // names the batch item each negative was made from; -1 or None: skip nothing).
  m.def(
      "contrastive_distance(Tensor anchor, Tensor positive, Tensor negatives, "
      "Tensor? negative_source) -> (Tensor, Tensor)");
  // Gradients of the two distances. grad_positive and grad_negatives are only
  // computed when asked; otherwise they come back as empty tensors.
  m.def(
      "contrastive_distance_backward(Tensor grad_positive_distance, "
      "Tensor grad_negative_distance, Tensor anchor, Tensor positive, "
      "Tensor negatives, Tensor? negative_source, bool positive_requires_grad, "
      "bool negatives_requires_grad) -> (Tensor, Tensor, Tensor)");

  // 3x3 convolution (stride 1, zero padding 1) over input channels [:in_channels] with
  // weight[:out_channels, :in_channels] and bias[:out_channels] of a full-size layer,
  // then the epilogue: relu(conv), or residual + res_scale * conv when residual is
  // given (the two cannot be combined).
  m.def(
      "sliced_conv3x3(Tensor input, Tensor weight, Tensor bias, int out_channels, "
      "int in_channels, bool relu, Tensor? residual, float res_scale) -> Tensor");
  // Gradients of sliced_conv3x3: grad_input has the input's full shape (zero beyond
  // in_channels); grad_weight (out, in, 3, 3) and grad_bias (out,) are the prefix's.
  // output is the forward result (needed when relu); res_scale is the factor the
  // convolution was multiplied by (1 without residual). Unrequested: empty tensors.
  m.def(
      "sliced_conv3x3_backward(Tensor grad_output, Tensor input, Tensor weight, "
      "Tensor? output, int out_channels, int in_channels, bool relu, float res_scale, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // EDSR residual block at `channels` width: x + res_scale * conv2(relu(conv1(x))),
  // x = input[:, :channels]. Also returns hidden = relu(conv1(x)), which backward needs.
  m.def(
      "residual_block(Tensor input, Tensor weight1, Tensor bias1, Tensor weight2, "
      "Tensor bias2, int channels, float res_scale) -> (Tensor, Tensor)");
  // Gradients (input, weight1, bias1, weight2, bias2) of residual_block, weights and
  // biases as their (channels, channels, 3, 3) / (channels,) prefixes.
  m.def(
      "residual_block_backward(Tensor grad_output, Tensor input, Tensor hidden, "
      "Tensor weight1, Tensor weight2, int channels, float res_scale, bool[5] output_mask) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Upsampler stage: pixel_shuffle(conv(input[:, :in_channels]), s) with weight rows
  // [:channels * s * s], so the output is (N, channels, H * s, W * s).
  m.def(
      "conv3x3_pixel_shuffle(Tensor input, Tensor weight, Tensor bias, int channels, "
      "int in_channels, int upscale_factor) -> Tensor");
  m.def(
      "conv3x3_pixel_shuffle_backward(Tensor grad_output, Tensor input, Tensor weight, "
      "int channels, int in_channels, int upscale_factor, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
}

namespace {
PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                          "csd_fast kernels; importing registers torch.ops.csd_fast",
                          -1, nullptr};
}  // namespace

extern "C" PyObject* PyInit__C(void) {
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
#ifdef CSD_FAST_WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
  if (PyModule_AddIntConstant(module, "with_cuda", with_cuda) < 0 ||
      PyModule_AddStringConstant(module, "cuda_archs", CSD_FAST_CUDA_ARCHS) < 0 ||
      PyModule_AddStringConstant(module, "torch_version", CSD_FAST_TORCH_VERSION) < 0 ||
      PyModule_AddStringConstant(module, "cpu_capability", CSD_FAST_CPU_CAPABILITY) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
