// cuDNN graphs of the fused 3x3 convolutions, described with the header-only C++ API of
// the nvidia-cudnn-frontend package (see cudnn_plans.h).
//
// This file is host code only: it describes graphs and asks cuDNN for plans, which
// costs microseconds once per shape, never per call. The frontend's templates make it
// by far the slowest file of the extension to compile, so they are compiled with less
// optimisation than the rest (the pragma below, after ATen's headers so that ATen's
// inline functions keep the optimisation every other file gives them); nothing here is
// on a hot path.
#include "cuda/cudnn_plans.h"

#include <ATen/Context.h>

#pragma GCC optimize("O1")

#include <cudnn_frontend.h>

#include <algorithm>
#include <exception>
#include <limits>

namespace csd_fast::cudnn_graph {

namespace fe = cudnn_frontend;

class Plan {
 public:
  explicit Plan(std::shared_ptr<fe::graph::Graph> g) : graph(std::move(g)) {}
  std::shared_ptr<fe::graph::Graph> graph;
};

namespace {

using TensorPtr = std::shared_ptr<fe::graph::Tensor_attributes>;

fe::DataType_t io_type(at::ScalarType t) {
  return t == at::kHalf ? fe::DataType_t::HALF : fe::DataType_t::BFLOAT16;
}

// The tensor's sizes and strides, with each size-1 dim given the stride a dense layout
// would give it: such a stride addresses nothing, torch leaves it at whatever the
// producer made, and it must not split one graph into several plan-cache keys.
Geometry geometry(const at::Tensor& t) {
  Geometry g{t.sizes().vec(), t.strides().vec()};
  if (t.dim() != 4) return g;
  const bool nhwc = t.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  const std::vector<int64_t> inner_first = nhwc ? std::vector<int64_t>{1, 3, 2, 0}
                                                : std::vector<int64_t>{3, 2, 1, 0};
  int64_t dense = 1;
  for (int64_t d : inner_first) {
    if (g.sizes[d] == 1) g.strides[d] = dense;
    dense = std::max(dense, g.strides[d] * g.sizes[d]);
  }
  return g;
}

int64_t numel(const Geometry& g) {
  int64_t n = 1;
  for (int64_t s : g.sizes) n *= s;
  return n;
}

std::string dims(const std::vector<int64_t>& sizes) {
  std::string text;
  for (int64_t s : sizes) text += (text.empty() ? "" : "x") + std::to_string(s);
  return text;
}

TensorPtr declare(fe::graph::Graph& graph, int64_t uid, const char* name, const Geometry& g,
                  at::ScalarType dtype) {
  return graph.tensor(fe::graph::Tensor_attributes()
                          .set_name(name)
                          .set_uid(uid)
                          .set_dim(g.sizes)
                          .set_stride(g.strides)
                          .set_data_type(io_type(dtype)));
}

TensorPtr add(fe::graph::Graph& graph, const TensorPtr& a, const TensorPtr& b) {
  return graph.pointwise(a, b, fe::graph::Pointwise_attributes().set_mode(fe::PointwiseMode_t::ADD));
}

// conv -> epilogue (Epilogue's comments give each order)
TensorPtr describe_fprop(fe::graph::Graph& graph, const GraphSpec& s) {
  auto x = declare(graph, kX, "x", s.x, s.dtype);
  auto w = declare(graph, kW, "w", s.w, s.dtype);
  const int64_t k = s.w.sizes[0];
  auto b = declare(graph, kB, "b", Geometry{{1, k, 1, 1}, {k, 1, k, k}}, s.dtype);
  auto out = graph.conv_fprop(
      x, w, fe::graph::Conv_fprop_attributes().set_padding({1, 1}).set_stride({1, 1}).set_dilation({1, 1}));
  switch (static_cast<Epilogue>(s.epilogue)) {
    case Epilogue::kBias:
      return add(graph, out, b);
    case Epilogue::kBiasRelu:
      return graph.pointwise(add(graph, out, b),
                             fe::graph::Pointwise_attributes().set_mode(fe::PointwiseMode_t::RELU_FWD));
    case Epilogue::kResidualBias:
      return add(graph, add(graph, out, declare(graph, kResidual, "residual", s.side, s.dtype)), b);
  }
  TORCH_CHECK(false, "csd_fast: unknown conv epilogue ", s.epilogue);
}

TensorPtr describe_dgrad(fe::graph::Graph& graph, const GraphSpec& s) {
  auto dy = declare(graph, kX, "dy", s.x, s.dtype);
  auto w = declare(graph, kW, "w", s.w, s.dtype);
  auto grad = graph.conv_dgrad(
      dy, w, fe::graph::Conv_dgrad_attributes().set_padding({1, 1}).set_stride({1, 1}).set_dilation({1, 1}));
  grad->set_dim(s.y.sizes);
  if (!s.has_side) return grad;
  return graph.pointwise(grad, declare(graph, kMask, "relu_output", s.side, s.dtype),
                         fe::graph::Pointwise_attributes().set_mode(fe::PointwiseMode_t::RELU_BWD));
}

std::shared_ptr<fe::graph::Graph> graph_of(const GraphSpec& s) {
  auto graph = std::make_shared<fe::graph::Graph>();
  graph->set_io_data_type(io_type(s.dtype))
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  auto out = s.kind == Kind::kFprop ? describe_fprop(*graph, s) : describe_dgrad(*graph, s);
  out->set_output(true)
      .set_uid(kY)
      .set_dim(s.y.sizes)
      .set_stride(s.y.strides)
      .set_data_type(io_type(s.dtype));
  return graph;
}

// Up to the engines the heuristics list: validate, lower to cuDNN's operation graph,
// ask heuristics A (then the fallback list), drop the engines the spec may not run, and
// check that one remains. Dropped always: engines that down-convert their inputs (as
// ATen's cuDNN path does), and any needing more than `max_workspace`; unless the spec
// allows them, run-time-compiled ones; under deterministic algorithms, non-deterministic
// ones. handle == nullptr: deviceless.
fe::error_t choose_engines(fe::graph::Graph& graph, const GraphSpec& spec, cudnnHandle_t handle,
                           std::string& stage, int64_t max_workspace = kMaxWorkspace) {
  stage = "validate";
  auto status = graph.validate();
  if (status.is_bad()) return status;
  stage = "build_operation_graph";
  status = handle ? graph.build_operation_graph(handle) : graph.build_operation_graph();
  if (status.is_bad()) return status;
  stage = "create_execution_plans";
  status = graph.create_execution_plans({fe::HeurMode_t::A, fe::HeurMode_t::FALLBACK});
  if (status.is_bad()) return status;
  if (!spec.allows_runtime_compilation()) {
    graph.deselect_behavior_notes({fe::BehaviorNote_t::RUNTIME_COMPILATION});
  }
  std::vector<fe::NumericalNote_t> numerics{fe::NumericalNote_t::DOWN_CONVERT_INPUTS};
  if (spec.deterministic) numerics.push_back(fe::NumericalNote_t::NONDETERMINISTIC);
  graph.deselect_numeric_notes(numerics);
  graph.deselect_workspace_greater_than(max_workspace);
  stage = "check_support";
  return handle ? graph.check_support(handle) : graph.check_support();
}

bool runtime_compiled(const fe::graph::Graph& graph) {
  std::vector<fe::BehaviorNote_t> notes;
  auto status = graph.get_behavior_notes(notes);
  return status.is_good() && std::find(notes.begin(), notes.end(),
                                       fe::BehaviorNote_t::RUNTIME_COMPILATION) != notes.end();
}

void describe_choice(const fe::graph::Graph& graph, PlanInfo& info) {
  (void)graph.get_plan_name(info.engine);
  (void)graph.get_workspace_size(info.workspace);
  info.runtime_compiled = runtime_compiled(graph);
}

std::string failure(const std::string& stage, fe::error_t& status) {
  return stage + ": " + status.get_message();
}

// "eng9|eng2|...": the engines that a deviceless plan's failure message says were dropped
// because compiling them at run time needs the GPU's driver; "" when none were.
std::string runtime_compiled_candidates(const std::string& message) {
  const std::string tag = "{\"engineId\":";
  std::string engines;
  for (size_t at = message.find(tag); at != std::string::npos;) {
    const size_t next = message.find(tag, at + tag.size());
    const std::string block = message.substr(at, next == std::string::npos ? next : next - at);
    if (block.find("RUNTIME_PREREQUISITE_MISSING") != std::string::npos) {
      const size_t digits = tag.size();
      const size_t end = block.find_first_not_of("0123456789", digits);
      engines += (engines.empty() ? "eng" : "|eng") + block.substr(digits, end - digits);
    }
    at = next;
  }
  return engines;
}

int32_t sm_version(const std::string& device_json) {
  const auto props = nlohmann::json::parse(device_json, nullptr, false);
  TORCH_CHECK(!props.is_discarded() && props.contains("deviceVer"),
              "cudnn engine query: the device description must be a JSON object with "
              "deviceVer (e.g. 900 for sm_90)");
  return props["deviceVer"].get<int32_t>() / 10;
}

}  // namespace

std::vector<int64_t> GraphSpec::key() const {
  std::vector<int64_t> key{static_cast<int64_t>(kind), epilogue, static_cast<int64_t>(dtype),
                           has_side, deterministic};
  for (const Geometry* g : {&x, &w, &y, &side}) {
    key.push_back(static_cast<int64_t>(g->sizes.size()));
    key.insert(key.end(), g->sizes.begin(), g->sizes.end());
    key.insert(key.end(), g->strides.begin(), g->strides.end());
  }
  return key;
}

// Graphs no cuDNN engine is asked for:
// - a tensor of 2^31 or more elements: the engines index with 32 bits unless proven
//   otherwise, and ATen splits such a convolution by batch;
// - a channel count that is not a multiple of 8 (but the image's 3 channels of the head's
//   input and the tail's output): cuDNN pads such tensors through staging engines whose
//   workspace grows with the image (12 MB at 270x480 for 19 channels, 0.5 GB for a 4K
//   tail at that width).
std::string GraphSpec::aten_route() const {
  for (const Geometry* g : {&x, &y, &side}) {
    if (numel(*g) >= (int64_t{1} << 31)) {
      return "a tensor of " + dims(g->sizes) + " has 2^31 or more elements";
    }
  }
  const int64_t k = w.sizes[0], c = w.sizes[1];
  const auto odd = [](int64_t channels) { return channels != 3 && channels % 8 != 0; };
  if (odd(c) || odd(k)) {
    return std::to_string(c) + " -> " + std::to_string(k) +
           " channels: a count not a multiple of 8 takes staging engines";
  }
  return "";
}

std::string describe(const GraphSpec& s) {
  static const char* epilogues[] = {"bias", "bias+relu", "residual+bias"};
  std::string text = s.kind == Kind::kFprop ? std::string("fprop ") + epilogues[s.epilogue]
                                            : std::string(s.has_side ? "dgrad+relu-backward" : "dgrad");
  text += std::string(" ") + c10::toString(s.dtype) + " " + dims(s.x.sizes) + " * " +
          dims(s.w.sizes) + " -> " + dims(s.y.sizes);
  return text + (s.deterministic ? " (deterministic)" : "");
}

GraphSpec fprop_spec(const at::Tensor& x, const at::Tensor& w, const at::Tensor* residual,
                     Epilogue epilogue, const at::Tensor& y) {
  TORCH_INTERNAL_ASSERT((epilogue == Epilogue::kResidualBias) == (residual != nullptr));
  GraphSpec s{Kind::kFprop, static_cast<int64_t>(epilogue), x.scalar_type(), geometry(x),
              geometry(w), geometry(y)};
  if (residual != nullptr) {
    s.has_side = true;
    s.side = geometry(*residual);
  }
  s.deterministic = at::globalContext().deterministicAlgorithms();
  return s;
}

GraphSpec dgrad_spec(const at::Tensor& dy, const at::Tensor& w, const at::Tensor* relu_output,
                     const at::Tensor& dx) {
  GraphSpec s{Kind::kDgrad, relu_output != nullptr, dy.scalar_type(), geometry(dy), geometry(w),
              geometry(dx)};
  if (relu_output != nullptr) {
    s.has_side = true;
    s.side = geometry(*relu_output);
  }
  s.deterministic = at::globalContext().deterministicAlgorithms();
  return s;
}

std::shared_ptr<Plan> build_plan(const GraphSpec& spec, cudnnHandle_t handle,
                                 bool all_candidates, PlanInfo& info) {
  std::string stage = "describe";
  try {
    auto graph = graph_of(spec);
    auto status = choose_engines(*graph, spec, handle, stage);
    if (status.is_good()) {
      stage = "build_plans";
      status = graph->build_plans(handle, all_candidates ? fe::BuildPlanPolicy_t::ALL
                                                         : fe::BuildPlanPolicy_t::HEURISTICS_CHOICE);
    }
    if (status.is_bad()) {
      info.error = failure(stage, status);
      return nullptr;
    }
    describe_choice(*graph, info);
    return std::make_shared<Plan>(std::move(graph));
  } catch (const std::exception& e) {  // the frontend's JSON and cuDNN's errors may throw
    info.error = stage + ": " + e.what();
    return nullptr;
  }
}

int64_t workspace_size(const Plan& plan, bool autotuning) {
  if (autotuning) return plan.graph->get_autotune_workspace_size();
  int64_t bytes = 0;
  auto status = plan.graph->get_workspace_size(bytes);
  return status.is_good() ? bytes : -1;
}

std::string autotune(Plan& plan, cudnnHandle_t handle, std::unordered_map<int64_t, void*>& pointers,
                     void* workspace) {
  auto status = plan.graph->autotune(handle, pointers, workspace);
  return status.is_good() ? "" : "autotune: " + status.get_message();
}

std::string execute(Plan& plan, cudnnHandle_t handle, std::unordered_map<int64_t, void*>& pointers,
                    void* workspace) {
  auto status = plan.graph->execute(handle, pointers, workspace);
  return status.is_good() ? "" : "execute: " + status.get_message();
}

namespace {

// The engine on a described device, planned under `max_workspace`.
PlanInfo plan_deviceless(const GraphSpec& spec, const std::shared_ptr<fe::DeviceProperties>& props,
                         int32_t sm, int64_t max_workspace) {
  PlanInfo info;
  auto graph = graph_of(spec);
  graph->set_device_properties(props);
  graph->set_sm_version(sm);
  std::string stage;
  auto status = choose_engines(*graph, spec, nullptr, stage, max_workspace);
  if (status.is_bad()) {
    info.error = failure(stage, status);
    if (spec.allows_runtime_compilation()) {
      // Without a GPU cuDNN cannot even finalise a run-time-compiled engine's config; it
      // names each one it dropped for that reason.
      info.engine = runtime_compiled_candidates(info.error);
      if (!info.engine.empty()) {
        info.runtime_compiled = true;
        info.error.clear();
      }
    }
    return info;
  }
  status = graph->build_plans(fe::BuildPlanPolicy_t::HEURISTICS_CHOICE);
  if (status.is_bad()) {
    info.error = failure("build_plans", status);
    return info;
  }
  describe_choice(*graph, info);
  return info;
}

}  // namespace

PlanInfo plan_for_device(const GraphSpec& spec, const std::string& device_json) {
  PlanInfo info;
  info.aten_route = spec.aten_route();
  if (!info.aten_route.empty()) return info;
  const int32_t sm = sm_version(device_json);
  auto props = std::make_shared<fe::DeviceProperties>();
  std::vector<uint8_t> bytes(device_json.begin(), device_json.end());
  auto status = props->deserialize(bytes);
  TORCH_CHECK(status.is_good(), "cudnn engine query: cannot read the device description: ",
              status.get_message());
  info = plan_deviceless(spec, props, sm, kMaxWorkspace);
  if (!info.error.empty()) {
    // Is the workspace cap what left no engine? Then the op runs ATen's convolution.
    const auto uncapped = plan_deviceless(spec, props, sm, std::numeric_limits<int64_t>::max());
    if (uncapped.error.empty()) {
      info = PlanInfo{};
      info.aten_route = "every engine needs more than " + std::to_string(kMaxWorkspace >> 20) +
                        " MB of workspace (" + uncapped.engine.substr(0, uncapped.engine.find('_')) +
                        ": " + std::to_string(uncapped.workspace >> 20) + " MB)";
    }
  }
  return info;
}

}  // namespace csd_fast::cudnn_graph
