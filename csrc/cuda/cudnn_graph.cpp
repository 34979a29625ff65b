// Running the conv ops' cuDNN graphs (see cudnn_graph.h): the plan cache, autotuning,
// the counters, and the ATen fallbacks.
//
// cuDNN's fused engines run conv -> bias -> ReLU / residual add at the speed of the
// convolution alone (its output is consumed in registers), where ATen's convolution
// writes the conv result and then reads it back for each pointwise pass.
#include "cuda/cudnn_graph.h"

#include "sliced_conv.h"

#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Exceptions.h>
#include <ATen/cudnn/Handle.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <list>
#include <map>

namespace csd_fast::cudnn_graph {
namespace {

// An evaluation over many image sizes builds a few plans per size; beyond this many the
// least recently used go (a training run needs some dozens).
constexpr size_t kMaxPlans = 256;

struct Counters {
  std::atomic<int64_t> runs{0}, fallbacks{0}, built{0}, rejected{0}, runtime_compiled{0};
};

Counters& counters() {
  static Counters c;
  return c;
}

struct CachedPlan {
  std::shared_ptr<Plan> plan;  // null: no engine takes this graph
  int64_t workspace = 0;
  bool autotune_pending = false;
};

// Plans are tied to the handle that built them, and ATen's handles are per thread, so
// the cache is per thread too (as ATen's own cuDNN plan cache is). Least recently used
// first out.
class PlanCache {
 public:
  using Key = std::vector<int64_t>;

  CachedPlan* find(const Key& key) {
    auto it = index_.find(key);
    if (it == index_.end()) return nullptr;
    order_.splice(order_.begin(), order_, it->second);
    return &it->second->second;
  }

  std::vector<Key> keys() const {
    std::vector<Key> keys;
    for (const auto& entry : order_) keys.push_back(entry.first);
    return keys;
  }

  CachedPlan& insert(Key key, CachedPlan plan) {
    order_.emplace_front(key, std::move(plan));
    index_[std::move(key)] = order_.begin();
    while (order_.size() > kMaxPlans) {
      index_.erase(order_.back().first);
      order_.pop_back();
    }
    return order_.front().second;
  }

 private:
  std::list<std::pair<Key, CachedPlan>> order_;
  std::map<Key, std::list<std::pair<Key, CachedPlan>>::iterator> index_;
};

PlanCache& plan_cache() {
  thread_local PlanCache cache;
  return cache;
}

bool env_off(const char* name) {
  const char* flag = std::getenv(name);
  return flag != nullptr && std::strcmp(flag, "0") == 0;
}

bool capturing() {
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
}

CachedPlan build(const GraphSpec& spec, cudnnHandle_t handle) {
  if (spec.allows_runtime_compilation()) {
    if (env_off("CSD_FAST_CUDNN_RUNTIME_COMPILE")) {
      ++counters().rejected;
      return {};
    }
    TORCH_WARN_ONCE(
        "csd_fast: compiling cuDNN's fused dgrad + ReLU-backward kernel with NVRTC, once per "
        "training shape and cached for the run; the first steps take longer "
        "(CSD_FAST_CUDNN_RUNTIME_COMPILE=0 uses the unfused dgrad instead)");
  }
  // With torch.backends.cudnn.benchmark on, build every candidate and time them on the
  // first call, as ATen does for its own convolutions; never while a CUDA graph is being
  // captured, where nothing may synchronise.
  const bool tune = at::globalContext().benchmarkCuDNN() && !capturing();
  PlanInfo info;
  CachedPlan entry;
  entry.plan = build_plan(spec, handle, tune, info);
  if (!entry.plan) {
    ++counters().rejected;
    if (std::getenv("CSD_FAST_CUDNN_GRAPH_VERBOSE") != nullptr) {
      TORCH_WARN("csd_fast: no cuDNN engine for a fused conv graph (", info.error,
                 "); using ATen's convolution");
    }
    return entry;
  }
  ++counters().built;
  if (info.runtime_compiled) ++counters().runtime_compiled;
  entry.autotune_pending = tune;
  entry.workspace = workspace_size(*entry.plan, tune);
  return entry;
}

// Looks the plan up (building it on first use) and runs it; false when no engine takes
// the graph.
bool run(const GraphSpec& spec, const at::Tensor& like,
         std::unordered_map<int64_t, void*> pointers) {
  const c10::cuda::CUDAGuard guard(like.device());
  cudnnHandle_t handle = at::native::getCudnnHandle();
  AT_CUDNN_CHECK(cudnnSetStream(handle, at::cuda::getCurrentCUDAStream()));
  auto key = spec.key();
  key.push_back(like.get_device());
  auto& cache = plan_cache();
  CachedPlan* entry = cache.find(key);
  if (entry == nullptr) entry = &cache.insert(std::move(key), build(spec, handle));
  if (!entry->plan) {
    ++counters().fallbacks;
    return false;
  }
  auto workspace = at::empty({std::max<int64_t>(entry->workspace, 1)},
                             like.options().dtype(at::kByte));
  if (entry->autotune_pending) {
    autotune(*entry->plan, handle, pointers, workspace.mutable_data_ptr());
    entry->autotune_pending = false;
    entry->workspace = workspace_size(*entry->plan, false);
  }
  execute(*entry->plan, handle, pointers, workspace.mutable_data_ptr());
  ++counters().runs;
  return true;
}

bool aligned16(const at::Tensor* t) {
  return t == nullptr || reinterpret_cast<uintptr_t>(t->const_data_ptr()) % 16 == 0;
}

void* pointer(const at::Tensor& t) { return const_cast<void*>(t.const_data_ptr()); }

bool conv_fprop(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                const at::Tensor* residual, Epilogue epilogue, const at::Tensor& y) {
  if (!(aligned16(&x) && aligned16(&w) && aligned16(&b) && aligned16(residual) && aligned16(&y))) {
    ++counters().fallbacks;
    return false;
  }
  std::unordered_map<int64_t, void*> pointers{
      {kX, pointer(x)}, {kW, pointer(w)}, {kB, pointer(b)}, {kY, y.data_ptr()}};
  if (residual != nullptr) pointers[kResidual] = pointer(*residual);
  return run(fprop_spec(x, w, residual, epilogue, y), x, std::move(pointers));
}

bool conv_dgrad(const at::Tensor& dy, const at::Tensor& w, const at::Tensor* relu_output,
                const at::Tensor& dx) {
  if (!(aligned16(&dy) && aligned16(&w) && aligned16(relu_output) && aligned16(&dx))) {
    ++counters().fallbacks;
    return false;
  }
  std::unordered_map<int64_t, void*> pointers{{kX, pointer(dy)}, {kW, pointer(w)}, {kY, dx.data_ptr()}};
  if (relu_output != nullptr) pointers[kMask] = pointer(*relu_output);
  return run(dgrad_spec(dy, w, relu_output, dx), dy, std::move(pointers));
}

at::Tensor nhwc_like(const at::Tensor& t, int64_t channels) {
  return at::empty({t.size(0), channels, t.size(2), t.size(3)},
                   t.options().memory_format(at::MemoryFormat::ChannelsLast));
}

}  // namespace

bool eligible(const at::Tensor& input) {
  return !env_off("CSD_FAST_CUDNN_GRAPH") && input.is_cuda() &&
         (input.scalar_type() == at::kHalf || input.scalar_type() == at::kBFloat16);
}

at::Tensor fused_conv3x3(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                         const at::Tensor* residual, Epilogue epilogue) {
  auto y = nhwc_like(x, w.size(0));
  if (eligible(x) && conv_fprop(x, w, b, residual, epilogue, y)) return y;
  y = conv3x3(x, w, b);
  if (epilogue == Epilogue::kBiasRelu) y.relu_();
  if (residual != nullptr) y.add_(*residual);
  return y;
}

at::Tensor fused_dgrad3x3(const at::Tensor& dy, const at::Tensor& w, const at::Tensor* relu_output,
                          int64_t in_channels) {
  auto dx = nhwc_like(dy, in_channels);
  if (eligible(dy) && conv_dgrad(dy, w, relu_output, dx)) return dx;
  if (relu_output != nullptr && eligible(dy) && conv_dgrad(dy, w, nullptr, dx)) {
    // the fused graph could not be built: the plain dgrad graph, then the mask
    return at::threshold_backward_out(dx, dx, *relu_output, 0);
  }
  // ATen needs an input only for its shape: dx stands in for it
  dx = std::get<0>(conv3x3_backward(dy, dx, w, {true, false, false}));
  if (relu_output != nullptr) at::threshold_backward_out(dx, dx, *relu_output, 0);
  return dx;
}

std::vector<std::vector<int64_t>> plan_keys() { return plan_cache().keys(); }

std::vector<int64_t> stats() {
  auto& c = counters();
  return {c.runs.load(), c.fallbacks.load(), c.built.load(), c.rejected.load(),
          c.runtime_compiled.load()};
}

}  // namespace csd_fast::cudnn_graph
