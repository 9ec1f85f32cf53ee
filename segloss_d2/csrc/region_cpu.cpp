// Region kernels of segloss_d2._C: the curve elementwise (bezier) and the dense per-class sums of
// the region surrogates (region_dense: mIoU, fwIoU, BIoU's union term). Python side:
// segloss_d2/surrogate/ops.py (dispatch), region.py (the metrics). Shared code: surrogate.h.
#include "surrogate.h"

namespace segloss_d2 {
namespace {

// ---------------------------------------------------------------------------------------------
// bezier(x, coeffs, need_grad) -> (g, g' or empty): one curve, elementwise.
std::tuple<at::Tensor, at::Tensor> bezier(const at::Tensor& x, at::ArrayRef<double> coeffs,
                                          bool need_grad) {
  check_float_cpu(x, "x");
  const int64_t pieces = static_cast<int64_t>(coeffs.size()) / kCoef;
  check_coeffs(coeffs, {pieces});
  at::Tensor g = at::empty_like(x);
  at::Tensor d = empty_like_or_none(x, need_grad);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "segloss_d2::bezier", [&] {
    const Curve<scalar_t> cv = make_curve<scalar_t>(coeffs.data(), pieces);
    const scalar_t* px = x.data_ptr<scalar_t>();
    scalar_t* pg = g.data_ptr<scalar_t>();
    scalar_t* pd = need_grad ? d.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, x.numel(), kBlock, [&](int64_t begin, int64_t end) {
      eval_curve(px + begin, pg + begin, pd ? pd + begin : nullptr, end - begin, cv);
    });
  });
  return {g, d};
}

// ---------------------------------------------------------------------------------------------
// region_dense(probs (N, C, L), present (K,) int64, weight (N, L) or None, coeffs, need_grad)
//   -> (sums (N, K), slopes (N, K, L) or empty)
// sums[n, k] = Σ_l w[n, l] g(probs[n, present[k], l]); slopes = w g'(probs[n, present[k]]).
// Sums are accumulated in float64 per fixed block and added in block order: the result does not
// depend on the number of threads.
template <typename T>
SEGLOSS_MULTIVERSION double block_sum(const T* __restrict g, const T* __restrict w, int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  if (w == nullptr) {
    for (; i + 8 <= n; i += 8)
      for (int j = 0; j < 8; ++j) acc[j] += static_cast<double>(g[i + j]);
    for (; i < n; ++i) acc[0] += static_cast<double>(g[i]);
  } else {
    for (; i + 8 <= n; i += 8)
      for (int j = 0; j < 8; ++j) acc[j] += static_cast<double>(g[i + j] * w[i + j]);
    for (; i < n; ++i) acc[0] += static_cast<double>(g[i] * w[i]);
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

template <typename T>
SEGLOSS_MULTIVERSION void scale(T* __restrict d, const T* __restrict w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i] *= w[i];
}

std::tuple<at::Tensor, at::Tensor> region_dense(const at::Tensor& probs,
                                                const at::Tensor& present,
                                                const c10::optional<at::Tensor>& weight_opt,
                                                at::ArrayRef<double> coeffs, bool need_grad) {
  check_float_cpu(probs, "probs");
  TORCH_CHECK(probs.dim() == 3, "segloss_d2: probs must be (N, C, L), got ", probs.sizes());
  TORCH_CHECK(present.scalar_type() == at::kLong && present.dim() == 1,
              "segloss_d2: present must be a 1-D int64 tensor");
  const int64_t n = probs.size(0), c = probs.size(1), len = probs.size(2);
  at::Tensor classes = present.contiguous();
  const int64_t k = classes.numel();
  const int64_t* cls = classes.data_ptr<int64_t>();
  for (int64_t i = 0; i < k; ++i)
    TORCH_CHECK(cls[i] >= 0 && cls[i] < c, "segloss_d2: class ", cls[i], " outside [0, ", c, ")");
  at::Tensor weight;
  if (weight_opt.has_value() && weight_opt->defined()) {
    weight = *weight_opt;
    check_float_cpu(weight, "weight");
    TORCH_CHECK(weight.scalar_type() == probs.scalar_type() && weight.dim() == 2 &&
                    weight.size(0) == n && weight.size(1) == len,
                "segloss_d2: weight must be (N, L) like probs");
  }
  const int64_t pieces = static_cast<int64_t>(coeffs.size()) / kCoef;
  check_coeffs(coeffs, {pieces});
  at::Tensor sums = at::empty({n, k}, probs.options());
  at::Tensor slopes = need_grad ? at::empty({n, k, len}, probs.options())
                                : at::empty({0}, probs.options());
  const int64_t blocks = (len + kBlock - 1) / kBlock;
  std::vector<double> partial(static_cast<size_t>(n * k * blocks), 0.0);
  AT_DISPATCH_FLOATING_TYPES(probs.scalar_type(), "segloss_d2::region_dense", [&] {
    const Curve<scalar_t> cv = make_curve<scalar_t>(coeffs.data(), pieces);
    const scalar_t* p = probs.data_ptr<scalar_t>();
    const scalar_t* w = weight.defined() ? weight.data_ptr<scalar_t>() : nullptr;
    scalar_t* sl = need_grad ? slopes.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, n * k * blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> g(kBlock);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t row = task / blocks, start = (task % blocks) * kBlock;
        const int64_t size = std::min(kBlock, len - start);
        const int64_t in = row / k, ik = row % k;
        const scalar_t* x = p + (in * c + cls[ik]) * len + start;
        const scalar_t* wr = w ? w + in * len + start : nullptr;
        scalar_t* d = sl ? sl + row * len + start : nullptr;
        eval_curve(x, g.data(), d, size, cv);
        partial[task] = block_sum(g.data(), wr, size);
        if (d != nullptr && wr != nullptr) scale(d, wr, size);
      }
    });
    scalar_t* out = sums.data_ptr<scalar_t>();
    for (int64_t row = 0; row < n * k; ++row) {
      double total = 0.0;
      for (int64_t b = 0; b < blocks; ++b) total += partial[row * blocks + b];
      out[row] = static_cast<scalar_t>(total);
    }
  });
  return {sums, slopes};
}

}  // namespace

TORCH_LIBRARY_IMPL(segloss_d2, CPU, m) {
  m.impl("bezier", &bezier);
  m.impl("region_dense", &region_dense);
}

}  // namespace segloss_d2
