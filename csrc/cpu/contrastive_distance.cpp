// CPU kernels of csd_fast::contrastive_distance, its backward, and
// csd_fast::contrastive_negative_sums (the streamed loss's per-chunk sums).
//
// One pass over memory: the element range is cut into fixed chunks; each chunk reads
// its slice of every anchor, positive and negative once (they stay in cache while all
// B x K pairs of the slice are formed), so the B x K difference maps never exist.
// Chunk partial sums are added in chunk order, so results do not depend on the
// number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "contrastive_distance.h"

namespace csd_fast {
namespace {

constexpr int64_t kChunk = 1024;

// Rows [0, rows) of a (rows, elements) tensor, restricted to [start, start + len) and
// seen in the compute type: pointers into the tensor itself, or into a converted copy
// for half and bfloat16.
template <typename scalar_t, typename opmath_t>
class ChunkRows {
 public:
  ChunkRows(const scalar_t* base, int64_t rows, int64_t elements)
      : base_(base), rows_(rows), elements_(elements) {
    if constexpr (!std::is_same_v<scalar_t, opmath_t>) scratch_.resize(rows * kChunk);
  }
  void load(int64_t start, int64_t len) {
    start_ = start;
    len_ = len;
    if constexpr (!std::is_same_v<scalar_t, opmath_t>) {
      for (int64_t r = 0; r < rows_; ++r)
        at::vec::convert(base_ + r * elements_ + start, scratch_.data() + r * len, len);
    }
  }
  const opmath_t* row(int64_t r) const {
    if constexpr (std::is_same_v<scalar_t, opmath_t>) {
      return base_ + r * elements_ + start_;
    } else {
      return scratch_.data() + r * len_;
    }
  }

 private:
  const scalar_t* base_;
  int64_t rows_, elements_, start_ = 0, len_ = 0;
  std::vector<opmath_t> scratch_;
};

template <typename T>
T sum_abs_diff(const T* x, const T* y, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  Vec acc(T(0));
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size())
    acc += (Vec::loadu(x + i) - Vec::loadu(y + i)).abs();
  T sum = at::vec::vec_reduce_all<T>([](Vec& a, Vec& b) { return a + b; }, acc);
  for (; i < n; ++i) sum += std::abs(x[i] - y[i]);
  return sum;
}

// out[i] (+)= scale * sign(x[i] - y[i])
template <typename T>
void add_scaled_sign(T* out, const T* x, const T* y, T scale, int64_t n, bool accumulate) {
  using Vec = at::vec::Vectorized<T>;
  const Vec zero(T(0)), pos(scale), neg(-scale);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    const Vec d = Vec::loadu(x + i) - Vec::loadu(y + i);
    Vec s = ((d > zero) & pos) + ((d < zero) & neg);
    if (accumulate) s += Vec::loadu(out + i);
    s.store(out + i);
  }
  for (; i < n; ++i) {
    const T d = x[i] - y[i];
    const T s = d > 0 ? scale : (d < 0 ? -scale : T(0));
    out[i] = accumulate ? out[i] + s : s;
  }
}

inline bool excluded(const int64_t* source, int64_t k, int64_t b) {
  return source != nullptr && source[k] == b;
}

// sum |x[i] - y[i]|, and sign(x[i] - y[i]) added to signs[i]: one pass for both
template <typename T>
T sum_abs_diff_add_sign(const T* x, const T* y, T* signs, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  const Vec zero(T(0)), one(T(1)), minus_one(T(-1));
  Vec acc(T(0));
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    const Vec d = Vec::loadu(x + i) - Vec::loadu(y + i);
    acc += d.abs();
    (Vec::loadu(signs + i) + ((d > zero) & one) + ((d < zero) & minus_one)).store(signs + i);
  }
  T sum = at::vec::vec_reduce_all<T>([](Vec& a, Vec& b) { return a + b; }, acc);
  for (; i < n; ++i) {
    const T d = x[i] - y[i];
    sum += std::abs(d);
    signs[i] += d > 0 ? T(1) : (d < 0 ? T(-1) : T(0));
  }
  return sum;
}

std::tuple<at::Tensor, at::Tensor> contrastive_distance_cpu(
    const at::Tensor& anchor, const at::Tensor& positive, const at::Tensor& negatives,
    const std::optional<at::Tensor>& negative_source) {
  const auto in = prepare_contrastive_inputs(anchor, positive, negatives, negative_source,
                                             c10::DeviceType::CPU);
  const int64_t B = in.batch, K = in.count, E = in.elements;
  const int64_t chunks = (E + kChunk - 1) / kChunk;
  std::vector<double> pos_partial(chunks), neg_partial(chunks);
  const int64_t* source = in.source.defined() ? in.source.data_ptr<int64_t>() : nullptr;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.anchor.scalar_type(),
                                  "contrastive_distance_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      ChunkRows<scalar_t, opmath_t> a(in.anchor.const_data_ptr<scalar_t>(), B, E);
      ChunkRows<scalar_t, opmath_t> p(in.positive.const_data_ptr<scalar_t>(), B, E);
      ChunkRows<scalar_t, opmath_t> n(in.negatives.const_data_ptr<scalar_t>(), K, E);
      for (int64_t c = begin; c < end; ++c) {
        const int64_t start = c * kChunk, len = std::min(kChunk, E - start);
        a.load(start, len);
        p.load(start, len);
        n.load(start, len);
        double pos = 0, neg = 0;
        for (int64_t b = 0; b < B; ++b) {
          pos += sum_abs_diff(p.row(b), a.row(b), len);
          for (int64_t k = 0; k < K; ++k)
            if (!excluded(source, k, b)) neg += sum_abs_diff(n.row(k), a.row(b), len);
        }
        pos_partial[c] = pos;
        neg_partial[c] = neg;
      }
    });
  });
  double pos = 0, neg = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    pos += pos_partial[c];
    neg += neg_partial[c];
  }
  const double total = static_cast<double>(B) * static_cast<double>(E);
  const auto options = anchor.options();
  return {at::scalar_tensor(pos / total, options), at::scalar_tensor(neg / total, options)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_distance_backward_cpu(
    const at::Tensor& grad_positive_distance, const at::Tensor& grad_negative_distance,
    const at::Tensor& anchor, const at::Tensor& positive, const at::Tensor& negatives,
    const std::optional<at::Tensor>& negative_source, bool positive_requires_grad,
    bool negatives_requires_grad) {
  const auto in = prepare_contrastive_inputs(anchor, positive, negatives, negative_source,
                                             c10::DeviceType::CPU);
  check_grad_scalar(grad_positive_distance, anchor, "grad_positive_distance");
  check_grad_scalar(grad_negative_distance, anchor, "grad_negative_distance");
  const int64_t B = in.batch, K = in.count, E = in.elements;
  const int64_t chunks = (E + kChunk - 1) / kChunk;
  const double total = static_cast<double>(B) * static_cast<double>(E);
  const double g_pos = grad_positive_distance.item<double>() / total;
  const double g_neg = grad_negative_distance.item<double>() / total;
  const int64_t* source = in.source.defined() ? in.source.data_ptr<int64_t>() : nullptr;

  auto grad_anchor = at::empty_like(in.anchor);
  auto grad_positive = positive_requires_grad ? at::empty_like(in.positive)
                                              : at::empty({0}, anchor.options());
  auto grad_negatives = negatives_requires_grad ? at::empty_like(in.negatives)
                                                : at::empty({0}, anchor.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.anchor.scalar_type(),
                                  "contrastive_distance_backward_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const opmath_t gp = static_cast<opmath_t>(g_pos), gn = static_cast<opmath_t>(g_neg);
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      ChunkRows<scalar_t, opmath_t> a(in.anchor.const_data_ptr<scalar_t>(), B, E);
      ChunkRows<scalar_t, opmath_t> p(in.positive.const_data_ptr<scalar_t>(), B, E);
      ChunkRows<scalar_t, opmath_t> n(in.negatives.const_data_ptr<scalar_t>(), K, E);
      std::vector<opmath_t> out(kChunk);
      auto store = [&](const at::Tensor& dst, int64_t row, int64_t start, int64_t len) {
        at::vec::convert(out.data(), dst.data_ptr<scalar_t>() + row * E + start, len);
      };
      for (int64_t c = begin; c < end; ++c) {
        const int64_t start = c * kChunk, len = std::min(kChunk, E - start);
        a.load(start, len);
        p.load(start, len);
        n.load(start, len);
        for (int64_t b = 0; b < B; ++b) {
          add_scaled_sign(out.data(), a.row(b), p.row(b), gp, len, false);
          for (int64_t k = 0; k < K; ++k)
            if (!excluded(source, k, b)) add_scaled_sign(out.data(), a.row(b), n.row(k), gn, len, true);
          store(grad_anchor, b, start, len);
          if (positive_requires_grad) {
            add_scaled_sign(out.data(), p.row(b), a.row(b), gp, len, false);
            store(grad_positive, b, start, len);
          }
        }
        if (negatives_requires_grad) {
          for (int64_t k = 0; k < K; ++k) {
            std::fill(out.begin(), out.begin() + len, opmath_t(0));
            for (int64_t b = 0; b < B; ++b)
              if (!excluded(source, k, b)) add_scaled_sign(out.data(), n.row(k), a.row(b), gn, len, true);
            store(grad_negatives, k, start, len);
          }
        }
      }
    });
  });
  return {grad_anchor, grad_positive, grad_negatives};
}

// Per anchor b, the distance sum sum_k sum_e |N_k - A_b| and the sign sum
// sum_k sign(A_b - N_k) over the pairs not excluded. Element chunks run in parallel, each
// writing its slice of the sign sums and one partial distance per anchor; the partials
// are added in chunk order, so results do not depend on the number of threads.
std::tuple<at::Tensor, at::Tensor> contrastive_negative_sums_cpu(
    const at::Tensor& anchor, const at::Tensor& negatives,
    const std::optional<at::Tensor>& negative_source) {
  const auto in = prepare_negative_sums_inputs(anchor, negatives, negative_source,
                                               c10::DeviceType::CPU);
  const int64_t B = in.batch, K = in.count, E = in.elements;
  const int64_t chunks = (E + kChunk - 1) / kChunk;
  const auto sum_dtype = accumulation_dtype(anchor);
  auto sign_sum = at::empty(in.anchor.sizes(),
                            anchor.options().dtype(sum_dtype).memory_format(in.format));
  std::vector<double> partial(chunks * B);
  const int64_t* source = in.source.defined() ? in.source.data_ptr<int64_t>() : nullptr;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.anchor.scalar_type(),
                                  "contrastive_negative_sums_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    opmath_t* signs = sign_sum.data_ptr<opmath_t>();
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      ChunkRows<scalar_t, opmath_t> a(in.anchor.const_data_ptr<scalar_t>(), B, E);
      ChunkRows<scalar_t, opmath_t> n(in.negatives.const_data_ptr<scalar_t>(), K, E);
      for (int64_t c = begin; c < end; ++c) {
        const int64_t start = c * kChunk, len = std::min(kChunk, E - start);
        a.load(start, len);
        n.load(start, len);
        for (int64_t b = 0; b < B; ++b) {
          opmath_t* out = signs + b * E + start;
          std::fill(out, out + len, opmath_t(0));
          double dist = 0;
          for (int64_t k = 0; k < K; ++k)
            if (!excluded(source, k, b))
              dist += sum_abs_diff_add_sign(a.row(b), n.row(k), out, len);
          partial[c * B + b] = dist;
        }
      }
    });
  });
  auto distance_sums = at::empty({B}, anchor.options().dtype(at::kDouble));
  double* sums = distance_sums.data_ptr<double>();
  for (int64_t b = 0; b < B; ++b) {
    sums[b] = 0;
    for (int64_t c = 0; c < chunks; ++c) sums[b] += partial[c * B + b];
  }
  return {distance_sums.to(sum_dtype), sign_sum};
}

}  // namespace

TORCH_LIBRARY_IMPL(csd_fast, CPU, m) {
  m.impl("contrastive_distance", &contrastive_distance_cpu);
  m.impl("contrastive_distance_backward", &contrastive_distance_backward_cpu);
  m.impl("contrastive_negative_sums", &contrastive_negative_sums_cpu);
}

}  // namespace csd_fast
