// The boundary between the conv ops and the cuDNN frontend (cudnn_plans.cpp).
//
// A GraphSpec is everything that decides which cuDNN graph a call builds: the kind
// (forward conv or input-gradient conv), its epilogue, the dtype, every tensor's sizes
// and strides, and whether torch asks for deterministic algorithms. The ops derive it
// from their tensors; the deviceless engine query derives it from tensors of the same
// geometry on any device (meta tensors will do), so both describe the very same graph. Only cudnn_plans.cpp includes the frontend's heavy
// headers, and it holds no device code: it is compiled with little optimisation.
#pragma once

#include <ATen/ATen.h>
#include <cudnn.h>

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace csd_fast::cudnn_graph {

enum class Epilogue : int64_t {
  kBias = 0,          // y = conv + b
  kBiasRelu = 1,      // y = relu(conv + b)
  kResidualBias = 2,  // y = (conv + residual) + b: the order cuDNN's precompiled fused
                      // engines implement; (conv + b) + residual only gets engines
                      // compiled at run time
};

enum class Kind : int64_t {
  kFprop = 0,  // y = epilogue(conv3x3(x, w))
  kDgrad = 1,  // dx = conv3x3_dgrad(dy, w) [* (relu_output > 0)]
};

// Tensor uids of every graph; execution binds device pointers to them.
constexpr int64_t kX = 1, kW = 2, kB = 3, kResidual = 4, kY = 5, kMask = 6;

struct Geometry {
  std::vector<int64_t> sizes, strides;
};

// No engine may ask for more workspace than this: beyond it cuDNN's candidates are
// staging engines that copy whole tensors (their workspace grows with the image), and
// ATen's convolution does as well without the allocation.
constexpr int64_t kMaxWorkspace = 64 << 20;

struct GraphSpec {
  Kind kind;
  int64_t epilogue;  // Epilogue for kFprop; 1 when a dgrad carries the ReLU backward
  at::ScalarType dtype;
  Geometry x, w, y;  // for kDgrad: x is dy, y is dx
  bool has_side = false;
  Geometry side;  // the residual (kResidualBias) or the ReLU output (dgrad)
  bool deterministic = false;  // torch.use_deterministic_algorithms(True) at the call

  // Why this graph goes to ATen without asking cuDNN, or "" (see cudnn_plans.cpp).
  std::string aten_route() const;

  // cuDNN offers only run-time-compiled (NVRTC) engines for dgrad -> ReLU backward. It
  // is kept for training, whose shapes are few and fixed; every forward graph, which
  // inference meets at any image size, must find a precompiled engine.
  bool allows_runtime_compilation() const { return kind == Kind::kDgrad && has_side; }
  // Distinguishes every graph; the plan cache adds the device.
  std::vector<int64_t> key() const;
};

GraphSpec fprop_spec(const at::Tensor& x, const at::Tensor& w, const at::Tensor* residual,
                     Epilogue epilogue, const at::Tensor& y);
GraphSpec dgrad_spec(const at::Tensor& dy, const at::Tensor& w, const at::Tensor* relu_output,
                     const at::Tensor& dx);

// What cuDNN chose for a graph, or why it chose nothing (`error` non-empty), or why the
// graph is never offered to cuDNN (`aten_route` non-empty).
struct PlanInfo {
  std::string engine;             // e.g. "eng41_k2=4_..."
  bool runtime_compiled = false;  // the engine is compiled with NVRTC when built
  int64_t workspace = 0;          // bytes
  std::string error;
  std::string aten_route;
};

// "fprop bias+relu bf16 x 2x64x48x48 -> y 2x64x48x48": a graph named for a warning.
std::string describe(const GraphSpec& spec);

class Plan;  // a cuDNN graph with its execution plan(s), ready to run

// Builds the plan on this handle's device. With `all_candidates` every engine the
// heuristics list is built (for autotune); otherwise only the heuristics' first choice.
// Returns null, with info.error set, when no engine takes the graph. Never throws.
std::shared_ptr<Plan> build_plan(const GraphSpec& spec, cudnnHandle_t handle,
                                 bool all_candidates, PlanInfo& info);
// The bytes of workspace the plan's chosen engine (or, autotuning, its largest
// candidate) needs; -1 when cuDNN cannot say.
int64_t workspace_size(const Plan& plan, bool autotuning);
// Times every built candidate on these pointers and keeps the fastest. These two return
// cuDNN's message on failure, "" on success: the caller decides what a failure costs.
std::string autotune(Plan& plan, cudnnHandle_t handle,
                     std::unordered_map<int64_t, void*>& pointers, void* workspace);
std::string execute(Plan& plan, cudnnHandle_t handle,
                    std::unordered_map<int64_t, void*>& pointers, void* workspace);

// The engine cuDNN would pick for this graph on the device that `device_json` describes
// (cudnn_frontend's DeviceProperties as JSON), planned without a GPU.
PlanInfo plan_for_device(const GraphSpec& spec, const std::string& device_json);

}  // namespace csd_fast::cudnn_graph
