// csd_fast::contrastive_distance and contrastive_negative_sums: their schemas. The checks
// the CPU and CUDA kernels share are in contrastive_distance.h, the kernels in cpu/ and cuda/.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(csd_fast, m) {
  // Contrastive distances of one feature layer. anchor and positive are (B, C, H, W),
  // negatives (K, C, H, W) shared by every anchor. Returns
  //   mean |positive - anchor|                              over B*C*H*W elements,
  //   sum_k sum_{b,c,h,w} |negatives_k - anchor_b| / (B*C*H*W)
  // where the pair (b, k) is skipped when negative_source[k] == b (negative_source
  // names the batch item each negative was made from; -1 or None: skip nothing).
  m.def(
      "contrastive_distance(Tensor anchor, Tensor positive, Tensor negatives, "
      "Tensor? negative_source) -> (Tensor, Tensor)");
  // Gradients of the two distances. grad_positive and grad_negatives are only
  // computed when asked; otherwise they come back as empty tensors.
  m.def(
      "contrastive_distance_backward(Tensor grad_positive_distance, "
      "Tensor grad_negative_distance, Tensor anchor, Tensor positive, "
      "Tensor negatives, Tensor? negative_source, bool positive_requires_grad, "
      "bool negatives_requires_grad) -> (Tensor, Tensor, Tensor)");
  // One chunk of negatives' share of the streamed contrastive loss (no autograd: its
  // outputs are the statistics the loss's backward reads). anchor (B, C, H, W), negatives
  // (K, C, H, W), the same skip rule as above. Returns, in float (double for double
  // features),
  //   distance_sums (B,):   sum_k sum_{c,h,w} |negatives_k - anchor_b|
  //   sign_sum (B, C, H, W): sum_k sign(anchor_b - negatives_k), in the anchor's layout
  // over the pairs (b, k) not skipped.
  m.def(
      "contrastive_negative_sums(Tensor anchor, Tensor negatives, Tensor? negative_source) "
      "-> (Tensor, Tensor)");
}
