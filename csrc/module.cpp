// The csd_fast library and the Python module that loads it.
//
// Each op's schema sits in its own file beside its device-independent code
// (contrastive_distance.cpp, sliced_conv3x3.cpp, residual_block.cpp,
// conv3x3_pixel_shuffle.cpp; the CPU-only residual_block_inference and set_cpu_band_rows
// in cpu/banded_conv.cpp); kernels live in cpu/ and cuda/; fake kernels and autograd
// are registered from Python (csd_fast/ops), so the ops also run under torch.compile.
#include <Python.h>
#include <torch/library.h>

#include "sliced_conv.h"

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
  // The packed-weight cache of the conv ops (weight_cache.cpp, off by default): switch
  // it on or off (returns the previous state; off drops every entry), drop every entry,
  // and its {hits, misses, entries} since the last clear.
  m.def("set_weight_cache_enabled(bool enabled) -> bool", &csd_fast::set_weight_cache_enabled);
  m.def("weight_cache_enabled() -> bool", &csd_fast::weight_cache_enabled);
  m.def("clear_weight_cache() -> ()", &csd_fast::clear_weight_cache);
  m.def("weight_cache_stats() -> int[]", &csd_fast::weight_cache_stats);
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
