// Packed weight prefixes, cached so that a steady-state convolution costs no packing.
//
// A conv reads weight[:out, :in] of a full-size (often float32) parameter; the engines
// want it channels-last, contiguous, in the input's dtype, with res_scale folded in and,
// for an upsampler, its rows in sub-pixel order. Packing is a small copy, but at EDSR's
// widths it is a launch per conv as long as the conv itself on small maps, so the
// result is kept until its source changes.
//
// The cache is off unless switched on (set_weight_cache_enabled): a version counter sees
// every in-place update made through autograd-visible ops (an optimizer step, copy_
// under no_grad), but not one made through `.data`, which gradcheck and much user code
// (EMA updates, manual surgery) use. So caching is for a scope whose caller promises
// frozen weights, such as deployment; switching it off drops every entry.
//
// An entry is keyed by the source TensorImpl, its storage, data pointer and device, and
// holds weak references to the TensorImpl and the storage: while the entry exists
// neither address can be reused by another object, and a source or storage that died is
// seen as expired. The storage catches what keeps the TensorImpl and its version but
// swaps the memory, Module.to() and `param.data = ...`, even where the allocator hands
// back the old address. The version catches an optimizer step and load_state_dict.
//
// While a CUDA graph is being captured the cache is bypassed: the graph must record the
// packing itself, because a pack cached outside it would be replayed stale after the
// next optimizer step.
#include <ATen/ATen.h>
#include <c10/core/TensorImpl.h>
#include <c10/util/intrusive_ptr.h>

#include <atomic>
#include <mutex>
#include <unordered_map>

#include "sliced_conv.h"

#ifdef CSD_FAST_WITH_CUDA
#include <c10/cuda/CUDAGraphsC10Utils.h>
#endif

namespace csd_fast {
namespace {

// Beyond this many live entries all go (a model of EDSR's size at two widths and two
// dtypes needs a few hundred); dead ones go at every miss.
constexpr size_t kMaxEntries = 2048;

struct Key {
  const c10::TensorImpl* source;
  const c10::StorageImpl* storage;
  const void* data;
  c10::Device device;
  int64_t out_channels, in_channels, shuffle;
  double scale;
  at::ScalarType dtype;
  bool operator==(const Key& o) const {
    return source == o.source && storage == o.storage && data == o.data && device == o.device &&
           out_channels == o.out_channels && in_channels == o.in_channels &&
           shuffle == o.shuffle && scale == o.scale && dtype == o.dtype;
  }
};

struct KeyHash {
  size_t operator()(const Key& k) const {
    size_t h = std::hash<const void*>()(k.source) * 1000003u ^ std::hash<const void*>()(k.storage);
    h = h * 1000003u ^ std::hash<const void*>()(k.data);
    h = h * 1000003u ^ std::hash<c10::Device>()(k.device);
    for (int64_t v : {k.out_channels, k.in_channels, k.shuffle, static_cast<int64_t>(k.dtype)}) {
      h = h * 1000003u ^ std::hash<int64_t>()(v);
    }
    return h * 1000003u ^ std::hash<double>()(k.scale);
  }
};

using WeakImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

struct Entry {
  WeakImpl source;
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  int64_t version;
  at::Tensor packed;

  bool expired() const { return source.expired() || storage.expired(); }
};

struct Cache {
  std::atomic<bool> enabled{false};
  std::mutex mutex;
  std::unordered_map<Key, Entry, KeyHash> entries;
  int64_t hits = 0, misses = 0;
};

Cache& cache() {
  static Cache* instance = new Cache();  // never destroyed: tensors outlive static teardown
  return *instance;
}

// Rows c*s*s + i*s + j reordered to (i*s + j)*C + c (C = rows / (s*s)).
at::Tensor phase_order(const at::Tensor& rows_first, int64_t s) {
  if (s <= 1) return rows_first;
  auto sizes = rows_first.sizes().vec();
  std::vector<int64_t> split{sizes[0] / (s * s), s * s};
  split.insert(split.end(), sizes.begin() + 1, sizes.end());
  return rows_first.reshape(split).transpose(0, 1).reshape(sizes);
}

// The inverse of phase_order.
at::Tensor channel_order(const at::Tensor& phase_first, int64_t s) {
  if (s <= 1) return phase_first;
  auto sizes = phase_first.sizes().vec();
  std::vector<int64_t> split{s * s, sizes[0] / (s * s)};
  split.insert(split.end(), sizes.begin() + 1, sizes.end());
  return phase_first.reshape(split).transpose(0, 1).reshape(sizes);
}

at::Tensor pack(const at::Tensor& source, const PackSpec& spec, bool is_weight) {
  auto prefix = source.narrow(0, 0, spec.out_channels);
  if (is_weight) prefix = prefix.narrow(1, 0, spec.in_channels);
  prefix = phase_order(prefix, spec.shuffle);
  if (spec.scale != 1.0) {
    // scale in at least float32, then round once to the target dtype
    const auto math = at::promote_types(prefix.scalar_type(), at::kFloat);
    prefix = prefix.to(math) * spec.scale;
  }
  const auto format = is_weight ? kChannelsLast : at::MemoryFormat::Contiguous;
  auto packed = at::empty(prefix.sizes(), prefix.options().dtype(spec.dtype).memory_format(format));
  packed.copy_(prefix);
  return packed;
}

bool capturing_cuda_graph(const at::Tensor& source) {
#ifdef CSD_FAST_WITH_CUDA
  return source.is_cuda() &&
         c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
#else
  (void)source;
  return false;
#endif
}

at::Tensor cached_pack(const at::Tensor& source, const PackSpec& spec, bool is_weight) {
  auto& c = cache();
  // Inference tensors carry no version counter, so nothing could tell when they change.
  if (!c.enabled.load() || source.is_inference() || capturing_cuda_graph(source)) {
    return pack(source, spec, is_weight);
  }
  const Key key{source.unsafeGetTensorImpl(), source.storage().unsafeGetStorageImpl(),
                source.const_data_ptr(), source.device(),
                spec.out_channels, is_weight ? spec.in_channels : -1, spec.shuffle, spec.scale,
                spec.dtype};
  const int64_t version = source._version();
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    auto it = c.entries.find(key);
    if (it != c.entries.end() && !it->second.expired() && it->second.version == version) {
      ++c.hits;
      return it->second.packed;
    }
    // Dead sources' packs go at every miss, not at the next sweep: short-lived weights (a
    // scaled tail, an autocast cast) would otherwise hold device memory. Misses are rare
    // once a model is warm, and a cache of a few hundred entries is swept in microseconds.
    if (it != c.entries.end()) c.entries.erase(it);
    for (auto dead = c.entries.begin(); dead != c.entries.end();) {
      dead = dead->second.expired() ? c.entries.erase(dead) : std::next(dead);
    }
    ++c.misses;
  }
  auto packed = pack(source, spec, is_weight);
  std::lock_guard<std::mutex> lock(c.mutex);
  // switched off (and cleared) while this pack was made: keep nothing
  if (!c.enabled.load()) return packed;
  if (c.entries.size() >= kMaxEntries) c.entries.clear();
  c.entries.insert_or_assign(key, Entry{WeakImpl(source.getIntrusivePtr()),
                                        source.storage().getWeakStorageImpl(), version, packed});
  return packed;
}

}  // namespace

at::Tensor packed_weight(const at::Tensor& weight, const PackSpec& spec) {
  return cached_pack(weight, spec, true);
}

at::Tensor packed_bias(const at::Tensor& bias, const PackSpec& spec) {
  return cached_pack(bias, spec, false);
}

bool weight_cache_enabled() { return cache().enabled.load(); }

bool set_weight_cache_enabled(bool enabled) {
  auto& c = cache();
  const bool was = c.enabled.exchange(enabled);
  if (!enabled) clear_weight_cache();
  return was;
}

void clear_weight_cache() {
  auto& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.entries.clear();
  c.hits = c.misses = 0;
}

std::vector<int64_t> weight_cache_stats() {
  auto& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return {c.hits, c.misses, static_cast<int64_t>(c.entries.size())};
}

at::Tensor unpack_grad(const at::Tensor& grad_packed, const at::Tensor& source,
                       const PackSpec& spec) {
  if (!grad_packed.defined()) return source.new_empty({0});
  auto grad = channel_order(grad_packed, spec.shuffle).to(source.scalar_type());
  // dL/dw of conv(x, s*w) is s * dL/d(s*w)
  if (spec.scale != 1.0) grad = grad * spec.scale;
  return grad.contiguous();
}

}  // namespace csd_fast
