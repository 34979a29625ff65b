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
