// Ops that say which cuDNN graphs the conv ops build and which engines take them.
//
// cudnn_engine plans a graph for a device described by its properties, with no GPU: CI
// runs it on a CPU machine for every graph the model builds (tests/test_cudnn_engines.py),
// so a graph that would land on a run-time-compiled engine, or need a staging workspace,
// is caught before any GPU sees it. The graph comes from tensors of the ops' geometry on
// any device (meta tensors will do), through the same GraphSpec the ops use.
#include <torch/library.h>

#include <string>
#include <tuple>

#include "cuda/cudnn_graph.h"

namespace csd_fast::cudnn_graph {
namespace {

GraphSpec spec_of(const std::string& kind, const at::Tensor& x, const at::Tensor& w,
                  const std::optional<at::Tensor>& side, const at::Tensor& y, int64_t epilogue) {
  const at::Tensor* extra = side.has_value() && side->defined() ? &*side : nullptr;
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
              "cudnn graph: the fused graphs are bfloat16 or float16, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 4 && w.dim() == 4 && y.dim() == 4, "cudnn graph: x, w and y must be 4-D");
  if (kind == "dgrad") return dgrad_spec(x, w, extra, y);
  TORCH_CHECK(kind == "fprop", "cudnn graph: kind must be 'fprop' or 'dgrad', got '", kind, "'");
  TORCH_CHECK(epilogue >= 0 && epilogue <= 2, "cudnn graph: epilogue must be 0 (bias), "
              "1 (bias, ReLU) or 2 (residual, bias), got ", epilogue);
  TORCH_CHECK((epilogue == static_cast<int64_t>(Epilogue::kResidualBias)) == (extra != nullptr),
              "cudnn graph: a residual goes with epilogue 2 and only with it");
  return fprop_spec(x, w, extra, static_cast<Epilogue>(epilogue), y);
}

std::string join(const std::vector<int64_t>& key) {
  std::string text;
  for (int64_t v : key) text += (text.empty() ? "" : ",") + std::to_string(v);
  return text;
}

std::tuple<std::string, bool, int64_t, std::string, std::string> engine(
    const std::string& device_properties, const std::string& kind, const at::Tensor& x,
    const at::Tensor& w, const std::optional<at::Tensor>& side, const at::Tensor& y,
    int64_t epilogue) {
  const auto info = plan_for_device(spec_of(kind, x, w, side, y, epilogue), device_properties);
  return {info.engine, info.runtime_compiled, info.workspace, info.error, info.aten_route};
}

std::string graph_key(const std::string& kind, const at::Tensor& x, const at::Tensor& w,
                      const std::optional<at::Tensor>& side, const at::Tensor& y, int64_t epilogue) {
  return join(spec_of(kind, x, w, side, y, epilogue).key());
}

std::vector<std::string> cached_keys() {
  std::vector<std::string> keys;
  for (auto key : plan_keys()) {
    key.pop_back();  // the device
    keys.push_back(join(key));
  }
  return keys;
}

}  // namespace
}  // namespace csd_fast::cudnn_graph

TORCH_LIBRARY_FRAGMENT(csd_fast, m) {
  // {graphs run, calls that fell back to ATen, plans built, graphs no engine took, plans
  // whose engine was compiled at run time, graphs routed to ATen unasked, built plans
  // that failed} since the process started: tells tests and benchmarks which path ran.
  m.def("cudnn_graph_stats() -> int[]", &csd_fast::cudnn_graph::stats);
  // (engine, compiled at run time, workspace bytes, why none, why ATen runs it unasked)
  // for the graph of these tensors' geometry on the device described by the JSON
  // (cudnn_frontend's DeviceProperties); kind "fprop" (epilogue 0 bias, 1 bias+ReLU, 2
  // residual+bias, side the residual) or "dgrad" (side the ReLU output whose mask the
  // gradient takes). Under torch.use_deterministic_algorithms(True), the deterministic
  // engines only, as the ops would plan.
  m.def(
      "cudnn_engine(str device_properties, str kind, Tensor x, Tensor w, Tensor? side, "
      "Tensor y, int epilogue) -> (str, bool, int, str, str)",
      &csd_fast::cudnn_graph::engine);
  // The plan-cache key of that graph, and the keys of every graph planned so far in any
  // thread: what a GPU test compares to learn that the model built exactly the graphs
  // listed.
  m.def("cudnn_graph_key(str kind, Tensor x, Tensor w, Tensor? side, Tensor y, int epilogue) -> str",
        &csd_fast::cudnn_graph::graph_key);
  m.def("cudnn_plan_keys() -> str[]", &csd_fast::cudnn_graph::cached_keys);
  // The number of plans the calling thread's cache holds (bounded, see cudnn_graph.cpp).
  m.def("cudnn_plan_cache_size() -> int", &csd_fast::cudnn_graph::plan_cache_size);
}
