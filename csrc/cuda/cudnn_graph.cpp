// cuDNN graph-API convolutions with fused epilogues (see cudnn_graph.h).
//
// cuDNN's runtime-fusion engines run conv -> bias -> ReLU / residual add at the speed of
// the convolution alone (its output is consumed in registers), where ATen's
// convolution writes the conv result and then reads it back for each pointwise pass.
// Graphs are described with the header-only C++ API of the nvidia-cudnn-frontend
// package and executed on ATen's per-thread cuDNN handle and current stream.
#include "cuda/cudnn_graph.h"

#include "sliced_conv.h"

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cudnn/Handle.h>
#include <c10/cuda/CUDAGuard.h>
#include <cudnn_frontend.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>

namespace csd_fast::cudnn_graph {
namespace {

namespace fe = cudnn_frontend;

// Tensor uids of every graph here; execution binds device pointers to them.
constexpr int64_t kX = 1, kW = 2, kB = 3, kResidual = 4, kY = 5, kMask = 6;

enum class Kind : int64_t { kFprop = 0, kDgrad = 1 };

struct Counters {
  std::atomic<int64_t> runs{0}, fallbacks{0}, built{0}, rejected{0};
};

Counters& counters() {
  static Counters c;
  return c;
}

// A built graph, or the reason no engine took it (kept so the same key fails fast).
struct Plan {
  std::shared_ptr<fe::graph::Graph> graph;
  int64_t workspace = 0;
  std::string rejected;
};

// Plans are tied to the handle that built them, and ATen's handles are per thread, so
// the cache is per thread too (as ATen's own cuDNN v8 plan cache is).
using PlanCache = std::map<std::vector<int64_t>, Plan>;
PlanCache& plan_cache() {
  thread_local PlanCache cache;
  return cache;
}

fe::DataType_t io_type(at::ScalarType t) {
  return t == at::kHalf ? fe::DataType_t::HALF : fe::DataType_t::BFLOAT16;
}

std::vector<int64_t> vec(at::IntArrayRef a) { return a.vec(); }

void append_layout(std::vector<int64_t>& key, const at::Tensor& t) {
  key.insert(key.end(), t.sizes().begin(), t.sizes().end());
  key.insert(key.end(), t.strides().begin(), t.strides().end());
}

bool aligned16(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0;
}

std::shared_ptr<fe::graph::Tensor_attributes> input_tensor(fe::graph::Graph& graph, int64_t uid,
                                                           const char* name,
                                                           const at::Tensor& t) {
  return graph.tensor(fe::graph::Tensor_attributes()
                          .set_name(name)
                          .set_uid(uid)
                          .set_dim(vec(t.sizes()))
                          .set_stride(vec(t.strides()))
                          .set_data_type(io_type(t.scalar_type())));
}

// Validates, picks engines (heuristics A, then the fallback list) and builds the plan.
Plan finish(std::shared_ptr<fe::graph::Graph> graph, cudnnHandle_t handle) {
  Plan plan;
  auto fail = [&](const char* stage, fe::error_t status) {
    plan.rejected = std::string(stage) + ": " + status.get_message();
    return plan;
  };
  auto status = graph->validate();
  if (status.is_bad()) return fail("validate", status);
  status = graph->build_operation_graph(handle);
  if (status.is_bad()) return fail("build_operation_graph", status);
  status = graph->create_execution_plans({fe::HeurMode_t::A, fe::HeurMode_t::FALLBACK});
  if (status.is_bad()) return fail("create_execution_plans", status);
  status = graph->check_support(handle);
  if (status.is_bad()) return fail("check_support", status);
  status = graph->build_plans(handle, fe::BuildPlanPolicy_t::HEURISTICS_CHOICE);
  if (status.is_bad()) return fail("build_plans", status);
  status = graph->get_workspace_size(plan.workspace);
  if (status.is_bad()) return fail("get_workspace_size", status);
  plan.graph = std::move(graph);
  return plan;
}

std::shared_ptr<fe::graph::Graph> new_graph(at::ScalarType dtype) {
  auto graph = std::make_shared<fe::graph::Graph>();
  graph->set_io_data_type(io_type(dtype))
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  return graph;
}

Plan build_fprop(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                 const at::Tensor* residual, Epilogue epilogue, const at::Tensor& y,
                 cudnnHandle_t handle) {
  auto graph = new_graph(x.scalar_type());
  auto X = input_tensor(*graph, kX, "x", x);
  auto W = input_tensor(*graph, kW, "w", w);
  const int64_t k = w.size(0);
  auto B = graph->tensor(fe::graph::Tensor_attributes()
                             .set_name("b")
                             .set_uid(kB)
                             .set_dim({1, k, 1, 1})
                             .set_stride({k, 1, k, k})
                             .set_data_type(io_type(b.scalar_type())));
  auto conv = graph->conv_fprop(
      X, W, fe::graph::Conv_fprop_attributes().set_padding({1, 1}).set_stride({1, 1}).set_dilation({1, 1}));
  auto out = graph->pointwise(conv, B,
                              fe::graph::Pointwise_attributes().set_mode(fe::PointwiseMode_t::ADD));
  if (epilogue == Epilogue::kBiasRelu) {
    out = graph->pointwise(out,
                           fe::graph::Pointwise_attributes().set_mode(fe::PointwiseMode_t::RELU_FWD));
  } else if (epilogue == Epilogue::kBiasResidual) {
    auto R = input_tensor(*graph, kResidual, "residual", *residual);
    out = graph->pointwise(out, R,
                           fe::graph::Pointwise_attributes().set_mode(fe::PointwiseMode_t::ADD));
  }
  out->set_output(true)
      .set_uid(kY)
      .set_dim(vec(y.sizes()))
      .set_stride(vec(y.strides()))
      .set_data_type(io_type(y.scalar_type()));
  return finish(std::move(graph), handle);
}

Plan build_dgrad(const at::Tensor& dy, const at::Tensor& w, const at::Tensor* relu_output,
                 const at::Tensor& dx, cudnnHandle_t handle) {
  auto graph = new_graph(dy.scalar_type());
  auto DY = input_tensor(*graph, kX, "dy", dy);
  auto W = input_tensor(*graph, kW, "w", w);
  auto grad = graph->conv_dgrad(
      DY, W, fe::graph::Conv_dgrad_attributes().set_padding({1, 1}).set_stride({1, 1}).set_dilation({1, 1}));
  grad->set_dim(vec(dx.sizes()));
  if (relu_output != nullptr) {
    auto M = input_tensor(*graph, kMask, "relu_output", *relu_output);
    grad = graph->pointwise(grad, M,
                            fe::graph::Pointwise_attributes().set_mode(fe::PointwiseMode_t::RELU_BWD));
  }
  grad->set_output(true)
      .set_uid(kY)
      .set_dim(vec(dx.sizes()))
      .set_stride(vec(dx.strides()))
      .set_data_type(io_type(dx.scalar_type()));
  return finish(std::move(graph), handle);
}

// Looks the plan up (building it on first use) and runs it; false when rejected.
template <typename Build>
bool run(std::vector<int64_t> key, const at::Tensor& like,
         std::unordered_map<int64_t, void*> pointers, Build&& build) {
  const c10::cuda::CUDAGuard guard(like.device());
  cudnnHandle_t handle = at::native::getCudnnHandle();
  AT_CUDNN_CHECK(cudnnSetStream(handle, at::cuda::getCurrentCUDAStream()));
  key.push_back(like.get_device());
  auto& cache = plan_cache();
  auto it = cache.find(key);
  if (it == cache.end()) {
    it = cache.emplace(std::move(key), build(handle)).first;
    ++(it->second.graph ? counters().built : counters().rejected);
    if (!it->second.graph && std::getenv("CSD_FAST_CUDNN_GRAPH_VERBOSE") != nullptr) {
      TORCH_WARN("csd_fast: no cuDNN engine for a fused conv graph (", it->second.rejected,
                 "); using ATen's convolution");
    }
  }
  const Plan& plan = it->second;
  if (!plan.graph) {
    ++counters().fallbacks;
    return false;
  }
  auto workspace = at::empty({std::max<int64_t>(plan.workspace, 1)},
                             like.options().dtype(at::kByte));
  auto status = plan.graph->execute(handle, pointers, workspace.mutable_data_ptr());
  TORCH_CHECK(status.is_good(), "csd_fast: cuDNN graph execution failed: ", status.get_message());
  ++counters().runs;
  return true;
}

bool all_aligned(std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors) {
    if (t != nullptr && !aligned16(*t)) return false;
  }
  return true;
}

}  // namespace

bool eligible(const at::Tensor& input) {
  const char* flag = std::getenv("CSD_FAST_CUDNN_GRAPH");
  if (flag != nullptr && std::strcmp(flag, "0") == 0) return false;
  return input.is_cuda() && (input.scalar_type() == at::kHalf ||
                             input.scalar_type() == at::kBFloat16);
}

bool conv_fprop(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                const at::Tensor* residual, Epilogue epilogue, const at::Tensor& y) {
  TORCH_INTERNAL_ASSERT((epilogue == Epilogue::kBiasResidual) == (residual != nullptr));
  if (!all_aligned({&x, &w, &b, residual, &y})) {
    ++counters().fallbacks;
    return false;
  }
  std::vector<int64_t> key{static_cast<int64_t>(Kind::kFprop), static_cast<int64_t>(epilogue),
                           static_cast<int64_t>(x.scalar_type())};
  append_layout(key, x);
  append_layout(key, w);
  append_layout(key, y);
  if (residual != nullptr) append_layout(key, *residual);
  std::unordered_map<int64_t, void*> pointers{{kX, const_cast<void*>(x.const_data_ptr())},
                                              {kW, const_cast<void*>(w.const_data_ptr())},
                                              {kB, const_cast<void*>(b.const_data_ptr())},
                                              {kY, y.data_ptr()}};
  if (residual != nullptr) pointers[kResidual] = const_cast<void*>(residual->const_data_ptr());
  return run(std::move(key), x, std::move(pointers), [&](cudnnHandle_t handle) {
    return build_fprop(x, w, b, residual, epilogue, y, handle);
  });
}

bool conv_dgrad(const at::Tensor& dy, const at::Tensor& w, const at::Tensor* relu_output,
                const at::Tensor& dx) {
  if (!all_aligned({&dy, &w, relu_output, &dx})) {
    ++counters().fallbacks;
    return false;
  }
  std::vector<int64_t> key{static_cast<int64_t>(Kind::kDgrad), relu_output != nullptr,
                           static_cast<int64_t>(dy.scalar_type())};
  append_layout(key, dy);
  append_layout(key, w);
  append_layout(key, dx);
  if (relu_output != nullptr) append_layout(key, *relu_output);
  std::unordered_map<int64_t, void*> pointers{{kX, const_cast<void*>(dy.const_data_ptr())},
                                              {kW, const_cast<void*>(w.const_data_ptr())},
                                              {kY, dx.data_ptr()}};
  if (relu_output != nullptr) pointers[kMask] = const_cast<void*>(relu_output->const_data_ptr());
  return run(std::move(key), dy, std::move(pointers), [&](cudnnHandle_t handle) {
    return build_dgrad(dy, w, relu_output, dx, handle);
  });
}

at::Tensor fused_conv3x3(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                         const at::Tensor* residual, Epilogue epilogue) {
  auto y = at::empty({x.size(0), w.size(0), x.size(2), x.size(3)},
                     x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (eligible(x) && conv_fprop(x, w, b, residual, epilogue, y)) return y;
  y = conv3x3(x, w, b);
  if (epilogue == Epilogue::kBiasRelu) y.relu_();
  if (epilogue == Epilogue::kBiasResidual) y.add_(*residual);
  return y;
}

at::Tensor fused_dgrad3x3(const at::Tensor& dy, const at::Tensor& w, const at::Tensor* relu_output,
                          int64_t in_channels) {
  auto dx = at::empty({dy.size(0), in_channels, dy.size(2), dy.size(3)},
                      dy.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (eligible(dy) && conv_dgrad(dy, w, relu_output, dx)) return dx;
  // ATen needs an input only for its shape: dx stands in for it
  dx = std::get<0>(conv3x3_backward(dy, dx, w, {true, false, false}));
  if (relu_output != nullptr) at::threshold_backward_out(dx, dx, *relu_output, 0);
  return dx;
}

std::vector<int64_t> stats() {
  auto& c = counters();
  return {c.runs.load(), c.fallbacks.load(), c.built.load(), c.rejected.load()};
}

}  // namespace csd_fast::cudnn_graph

TORCH_LIBRARY_FRAGMENT(csd_fast, m) {
  // {graphs run, calls that fell back to ATen, plans built, graphs no engine took}
  // since the process started: tells tests and benchmarks which path ran.
  m.def("cudnn_graph_stats() -> int[]", &csd_fast::cudnn_graph::stats);
}
