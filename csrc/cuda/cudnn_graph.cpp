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
#include <deque>
#include <list>
#include <map>
#include <mutex>
#include <set>

namespace csd_fast::cudnn_graph {
namespace {

// An evaluation over many image sizes builds a few plans per size; beyond this many the
// least recently used go (a training run needs some dozens), except those a captured
// CUDA graph has recorded: the graph replays their kernels (and a run-time-compiled
// engine's module) long after the call, so they live as long as the thread.
constexpr size_t kMaxPlans = 256;

struct Counters {
  std::atomic<int64_t> runs{0}, fallbacks{0}, built{0}, rejected{0}, runtime_compiled{0},
      routed{0}, failed{0};
};

Counters& counters() {
  static Counters c;
  return c;
}

struct CachedPlan {
  std::shared_ptr<Plan> plan;  // null: this graph runs ATen's convolution
  int64_t workspace = 0;
  bool autotune_pending = false;
  bool pinned = false;  // recorded by a CUDA-graph capture: never evicted
};

using Key = std::vector<int64_t>;

// Plans are tied to the handle that built them, and ATen's handles are per thread, so
// the cache is per thread too (as ATen's own cuDNN plan cache is). Least recently used
// first out.
class PlanCache {
 public:
  CachedPlan* find(const Key& key) {
    auto it = index_.find(key);
    if (it == index_.end()) return nullptr;
    order_.splice(order_.begin(), order_, it->second);
    return &it->second->second;
  }

  size_t size() const { return order_.size(); }

  CachedPlan& insert(Key key, CachedPlan plan) {
    order_.emplace_front(key, std::move(plan));
    index_[std::move(key)] = order_.begin();
    auto it = order_.end();
    while (order_.size() > kMaxPlans) {
      --it;
      if (it == order_.begin()) break;  // the entry just inserted stays
      if (it->second.pinned) continue;
      index_.erase(it->first);
      it = order_.erase(it);
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

// The keys any thread has planned, oldest first: autograd runs CUDA backward ops on a
// thread of its own, whose plans a test on the main thread must see too. The newest
// kLoggedKeys are kept, so a server meeting endless image sizes does not grow it.
constexpr size_t kLoggedKeys = 4096;

struct KeyLog {
  std::mutex mutex;
  std::set<Key> seen;
  std::deque<Key> order;

  void add(const Key& key) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!seen.insert(key).second) return;
    order.push_back(key);
    if (order.size() > kLoggedKeys) {
      seen.erase(order.front());
      order.pop_front();
    }
  }
};

KeyLog& key_log() {
  static KeyLog* log = new KeyLog();  // never destroyed: other threads may outlive statics
  return *log;
}

bool env_off(const char* name) {
  const char* flag = std::getenv(name);
  return flag != nullptr && std::strcmp(flag, "0") == 0;
}

// CSD_FAST_CUDNN_FAULT=build|workspace|autotune|execute makes that step fail, so that
// tests reach every fallback on a GPU where cuDNN itself never fails.
bool injected(const char* step) {
  const char* fault = std::getenv("CSD_FAST_CUDNN_FAULT");
  return fault != nullptr && std::strcmp(fault, step) == 0;
}

// The injected failure of this step, or what the step itself says ("" on success).
template <typename Step>
std::string unless_injected(const char* step, Step&& run_step) {
  if (injected(step)) return std::string(step) + ": injected fault (CSD_FAST_CUDNN_FAULT)";
  return run_step();
}

bool capturing() {
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
}

CachedPlan build(const GraphSpec& spec, cudnnHandle_t handle) {
  if (!spec.aten_route().empty()) {
    ++counters().routed;
    return {};
  }
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
  // first call, as ATen does for its own convolutions; not for a graph whose candidates
  // are compiled at run time (each an NVRTC compile: the heuristics' first choice is
  // built alone), and never while a CUDA graph is being captured.
  const bool tune = at::globalContext().benchmarkCuDNN() && !capturing() &&
                    !spec.allows_runtime_compilation();
  PlanInfo info;
  CachedPlan entry;
  info.error = unless_injected("build", [&] {
    entry.plan = build_plan(spec, handle, tune, info);
    return info.error;
  });
  if (entry.plan) entry.workspace = workspace_size(*entry.plan, tune);
  if (entry.plan && entry.workspace < 0) {
    info.error = "the plan's workspace size is unknown";
    entry.plan.reset();
  }
  if (!entry.plan) {
    ++counters().rejected;
    if (std::getenv("CSD_FAST_CUDNN_GRAPH_VERBOSE") != nullptr) {
      TORCH_WARN("csd_fast: no cuDNN engine for ", describe(spec), " (", info.error,
                 "); using ATen's convolution");
    }
    return entry;
  }
  ++counters().built;
  if (info.runtime_compiled) ++counters().runtime_compiled;
  entry.autotune_pending = tune;
  return entry;
}

// A plan that failed where it should have run: the graph runs ATen's convolution from
// now on, said once.
void reject(CachedPlan& entry, const GraphSpec& spec, const std::string& reason) {
  entry.plan.reset();
  entry.autotune_pending = false;
  ++counters().failed;
  TORCH_WARN("csd_fast: cuDNN failed on ", describe(spec), " (", reason,
             "); this graph runs ATen's convolution from now on");
}

// Runs an entry's plan (autotuning it first where pending): "" on success, else why not.
std::string try_plan(CachedPlan& entry, cudnnHandle_t handle, const at::Tensor& like,
                     std::unordered_map<int64_t, void*>& pointers) {
  at::Tensor workspace;
  const std::string no_memory = unless_injected("workspace", [&]() -> std::string {
    try {
      workspace = at::empty({std::max<int64_t>(entry.workspace, 1)}, like.options().dtype(at::kByte));
      return "";
    } catch (const c10::OutOfMemoryError& e) {
      return "workspace of " + std::to_string(entry.workspace) + " bytes: " +
             e.what_without_backtrace();
    }
  });
  if (!no_memory.empty()) return no_memory;
  if (entry.autotune_pending) {
    const std::string error = unless_injected("autotune", [&] {
      return autotune(*entry.plan, handle, pointers, workspace.mutable_data_ptr());
    });
    if (!error.empty()) return error;
    entry.autotune_pending = false;
    entry.workspace = workspace_size(*entry.plan, false);
    if (entry.workspace < 0) return "the tuned plan's workspace size is unknown";
  }
  return unless_injected("execute", [&] {
    return execute(*entry.plan, handle, pointers, workspace.mutable_data_ptr());
  });
}

// Looks the plan up (building it on first use) and runs it; false when the graph runs
// ATen's convolution instead.
bool run(const GraphSpec& spec, const at::Tensor& like,
         std::unordered_map<int64_t, void*> pointers) {
  const c10::cuda::CUDAGuard guard(like.device());
  cudnnHandle_t handle = at::native::getCudnnHandle();
  AT_CUDNN_CHECK(cudnnSetStream(handle, at::cuda::getCurrentCUDAStream()));
  auto key = spec.key();
  key.push_back(like.get_device());
  auto& cache = plan_cache();
  CachedPlan* entry = cache.find(key);
  const bool in_capture = capturing();
  if (entry == nullptr) {
    // Planning synchronises, and a run-time-compiled engine loads a module: neither may
    // happen inside a capture, and a plan built there would be recorded unwarmed.
    TORCH_CHECK(!in_capture, "csd_fast: no cuDNN plan yet for ", describe(spec),
                " and a CUDA graph is being captured; run the same forward (and backward) "
                "once eagerly, outside the capture, before capturing it");
    key_log().add(key);
    entry = &cache.insert(std::move(key), build(spec, handle));
  }
  if (entry->plan) {
    const std::string error = try_plan(*entry, handle, like, pointers);
    if (!error.empty()) reject(*entry, spec, error);
  }
  if (!entry->plan) {
    ++counters().fallbacks;
    return false;
  }
  if (in_capture) entry->pinned = true;
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

std::vector<std::vector<int64_t>> plan_keys() {
  auto& log = key_log();
  std::lock_guard<std::mutex> lock(log.mutex);
  return {log.order.begin(), log.order.end()};
}

int64_t plan_cache_size() { return static_cast<int64_t>(plan_cache().size()); }

std::vector<int64_t> stats() {
  auto& c = counters();
  return {c.runs.load(),     c.fallbacks.load(),        c.built.load(), c.rejected.load(),
          c.runtime_compiled.load(), c.routed.load(), c.failed.load()};
}

}  // namespace csd_fast::cudnn_graph
