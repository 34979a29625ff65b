// Input checks and layout shared by the CPU and CUDA contrastive-distance kernels
// (csd_fast::contrastive_distance and csd_fast::contrastive_negative_sums).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace csd_fast {

// The feature maps in one memory format, so that element e of item b sits at
// data[b * elements + e] in each of them and pairs up across tensors.
struct ContrastiveInputs {
  at::Tensor anchor, positive, negatives, source;  // positive undefined: none given;
                                                   // source undefined: skip nothing
  at::MemoryFormat format;
  int64_t batch, count, elements;
};

// Checks anchor (B, C, H, W) and negatives (K, C, H, W) and fills in their sizes and the
// contiguous negative_source; `op` names the caller in the messages.
inline ContrastiveInputs check_anchor_and_negatives(
    const char* op, const at::Tensor& anchor, const at::Tensor& negatives,
    const std::optional<at::Tensor>& negative_source, c10::DeviceType device_type) {
  TORCH_CHECK(anchor.dim() == 4, op, ": anchor must be 4-D (B, C, H, W), got ", anchor.dim(),
              "-D of shape ", anchor.sizes());
  TORCH_CHECK(negatives.dim() == 4, op, ": negatives must be 4-D (K, C, H, W), got ",
              negatives.dim(), "-D of shape ", negatives.sizes());
  TORCH_CHECK(negatives.size(0) > 0, op, ": negatives must hold K >= 1 images, got K = 0");
  TORCH_CHECK(negatives.sizes().slice(1) == anchor.sizes().slice(1), op,
              ": negatives must be (K, C, H, W) with the anchor's C, H, W ",
              anchor.sizes().slice(1), ", got ", negatives.sizes());
  TORCH_CHECK(anchor.numel() > 0, op, ": anchor is empty (shape ", anchor.sizes(), ")");
  TORCH_CHECK(at::isFloatingType(anchor.scalar_type()), op,
              ": expected floating-point features, got ", anchor.scalar_type());
  TORCH_CHECK(negatives.scalar_type() == anchor.scalar_type(), op,
              ": anchor and negatives must share one dtype, got ", anchor.scalar_type(), ", ",
              negatives.scalar_type());
  TORCH_CHECK(anchor.device().type() == device_type && negatives.device() == anchor.device(), op,
              ": anchor and negatives must be on one ", device_type, " device, got ",
              anchor.device(), ", ", negatives.device());

  ContrastiveInputs in;
  in.batch = anchor.size(0);
  in.count = negatives.size(0);
  in.elements = anchor.numel() / in.batch;
  if (negative_source.has_value() && negative_source->defined()) {
    const at::Tensor& src = *negative_source;
    TORCH_CHECK(src.dim() == 1 && src.size(0) == in.count, op,
                ": negative_source must be 1-D with one entry per negative (", in.count,
                "), got shape ", src.sizes());
    TORCH_CHECK(src.scalar_type() == at::kLong, op, ": negative_source must be int64, got ",
                src.scalar_type());
    TORCH_CHECK(src.device() == anchor.device(), op, ": negative_source must be on ",
                anchor.device(), ", got ", src.device());
    in.source = src.contiguous();
  }
  return in;
}

inline ContrastiveInputs prepare_contrastive_inputs(
    const at::Tensor& anchor, const at::Tensor& positive, const at::Tensor& negatives,
    const std::optional<at::Tensor>& negative_source, c10::DeviceType device_type) {
  const char* op = "contrastive_distance";
  TORCH_CHECK(anchor.dim() != 4 || positive.sizes() == anchor.sizes(), op,
              ": positive must have the anchor's shape ", anchor.sizes(), ", got ",
              positive.sizes());
  ContrastiveInputs in =
      check_anchor_and_negatives(op, anchor, negatives, negative_source, device_type);
  TORCH_CHECK(positive.scalar_type() == anchor.scalar_type(), op,
              ": anchor, positive and negatives must share one dtype, got ", anchor.scalar_type(),
              ", ", positive.scalar_type(), ", ", negatives.scalar_type());
  TORCH_CHECK(positive.device() == anchor.device(), op,
              ": anchor, positive and negatives must be on one ", device_type, " device, got ",
              anchor.device(), ", ", positive.device(), ", ", negatives.device());
  const auto cl = at::MemoryFormat::ChannelsLast;
  const bool all_channels_last = anchor.is_contiguous(cl) && positive.is_contiguous(cl) &&
                                 negatives.is_contiguous(cl);
  const bool all_contiguous = anchor.is_contiguous() && positive.is_contiguous() &&
                              negatives.is_contiguous();
  in.format = (all_channels_last && !all_contiguous) ? cl : at::MemoryFormat::Contiguous;
  in.anchor = anchor.contiguous(in.format);
  in.positive = positive.contiguous(in.format);
  in.negatives = negatives.contiguous(in.format);
  return in;
}

// contrastive_negative_sums: the anchor's layout decides (channels-last when it is that
// and not also contiguous), so that the anchor is never copied and its sign sum comes
// out in its own layout; a chunk of negatives in another layout is copied instead.
inline ContrastiveInputs prepare_negative_sums_inputs(
    const at::Tensor& anchor, const at::Tensor& negatives,
    const std::optional<at::Tensor>& negative_source, c10::DeviceType device_type) {
  ContrastiveInputs in = check_anchor_and_negatives("contrastive_negative_sums", anchor,
                                                    negatives, negative_source, device_type);
  const auto cl = at::MemoryFormat::ChannelsLast;
  in.format = (anchor.is_contiguous(cl) && !anchor.is_contiguous()) ? cl
                                                                     : at::MemoryFormat::Contiguous;
  in.anchor = anchor.contiguous(in.format);
  in.negatives = negatives.contiguous(in.format);
  return in;
}

// The dtype sums are kept and returned in: float for float, half and bfloat16 features.
inline at::ScalarType accumulation_dtype(const at::Tensor& anchor) {
  return anchor.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_grad_scalar(const at::Tensor& grad, const at::Tensor& anchor, const char* name) {
  TORCH_CHECK(grad.numel() == 1, "contrastive_distance_backward: ", name,
              " must hold one value, got shape ", grad.sizes());
  TORCH_CHECK(grad.device() == anchor.device(), "contrastive_distance_backward: ", name,
              " must be on ", anchor.device(), ", got ", grad.device());
}

}  // namespace csd_fast
