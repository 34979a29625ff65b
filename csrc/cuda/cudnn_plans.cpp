// cuDNN graphs of the fused 3x3 convolutions, described with the header-only C++ API of
// the nvidia-cudnn-frontend package (see cudnn_plans.h).
//
// This file is host code only: it describes graphs and asks cuDNN for plans, which
// costs microseconds once per shape, never per call. The frontend's templates make it
// by far the slowest file of the extension to compile, so it is compiled with less
// optimisation than the rest (the pragma below); nothing in it is on a hot path.
#pragma GCC optimize("O1")

#include "cuda/cudnn_plans.h"

#include <cudnn_frontend.h>

#include <algorithm>

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

Geometry geometry(const at::Tensor& t) { return {t.sizes().vec(), t.strides().vec()}; }

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

std::shared_ptr<fe::graph::Graph> describe(const GraphSpec& s) {
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
// ask heuristics A (then the fallback list), drop run-time-compiled engines unless the
// spec allows them, and check that one remains. handle == nullptr: deviceless.
fe::error_t choose_engines(fe::graph::Graph& graph, const GraphSpec& spec, cudnnHandle_t handle,
                           std::string& stage) {
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
                           has_side};
  for (const Geometry* g : {&x, &w, &y, &side}) {
    key.push_back(static_cast<int64_t>(g->sizes.size()));
    key.insert(key.end(), g->sizes.begin(), g->sizes.end());
    key.insert(key.end(), g->strides.begin(), g->strides.end());
  }
  return key;
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
  return s;
}

std::shared_ptr<Plan> build_plan(const GraphSpec& spec, cudnnHandle_t handle,
                                 bool all_candidates, PlanInfo& info) {
  auto graph = describe(spec);
  std::string stage;
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
}

int64_t workspace_size(const Plan& plan, bool autotuning) {
  if (autotuning) return plan.graph->get_autotune_workspace_size();
  int64_t bytes = 0;
  auto status = plan.graph->get_workspace_size(bytes);
  TORCH_CHECK(status.is_good(), "csd_fast: cuDNN workspace size: ", status.get_message());
  return bytes;
}

void autotune(Plan& plan, cudnnHandle_t handle, std::unordered_map<int64_t, void*>& pointers,
              void* workspace) {
  auto status = plan.graph->autotune(handle, pointers, workspace);
  TORCH_CHECK(status.is_good(), "csd_fast: cuDNN autotune failed: ", status.get_message());
}

void execute(Plan& plan, cudnnHandle_t handle, std::unordered_map<int64_t, void*>& pointers,
             void* workspace) {
  auto status = plan.graph->execute(handle, pointers, workspace);
  TORCH_CHECK(status.is_good(), "csd_fast: cuDNN graph execution failed: ", status.get_message());
}

PlanInfo plan_for_device(const GraphSpec& spec, const std::string& device_json) {
  PlanInfo info;
  const int32_t sm = sm_version(device_json);
  auto props = std::make_shared<fe::DeviceProperties>();
  std::vector<uint8_t> bytes(device_json.begin(), device_json.end());
  auto status = props->deserialize(bytes);
  TORCH_CHECK(status.is_good(), "cudnn engine query: cannot read the device description: ",
              status.get_message());
  auto graph = describe(spec);
  graph->set_device_properties(props);
  graph->set_sm_version(sm);
  std::string stage;
  status = choose_engines(*graph, spec, nullptr, stage);
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

}  // namespace csd_fast::cudnn_graph
