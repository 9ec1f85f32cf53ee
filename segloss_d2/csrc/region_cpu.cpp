// Region kernels of segloss_d2._C: the curve elementwise (bezier) and the dense per-class sums of
// the region surrogates (region_dense: mIoU, fwIoU, BIoU's union term). Python side:
// segloss_d2/surrogate/ops.py (dispatch), region.py (the metrics). Shared code: surrogate.h.
#include <atomic>

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

// ---------------------------------------------------------------------------------------------
// region_backward(probs (N, C, L), labels (N, L) int64 in [0, C), weight (N, L) or None,
//                 grad_dense (C,), grad_and (C,), grad_or (C,), and_coeffs, or_coeffs, softmax)
//   -> (N, C, L)
// The gradient of the region sums (python: region._RegionSums) with respect to p,
//   dL/dp[n, c, l] = w[n, l] (g_O'(p) grad_dense[c]
//                             + [labels[n, l] = c] (g_A'(p) grad_and[c] + g_O'(p) grad_or[c])),
// or, with softmax (p = softmax(x) over C), with respect to x, through the softmax's backward in
// the same pass: dL/dx = p (dL/dp - Σ_c p dL/dp), so dL/dp is never written. The slopes are
// recomputed from p (nothing full-size is saved by the forward). or_coeffs empty: no g_O terms.
// Classes whose grad_dense is 0 skip the dense curve (those outside region's "present" set).
constexpr int64_t kPixels = 256;  // pixels per task: C rows of them stay in cache

template <typename T>
SEGLOSS_MULTIVERSION void add_product(T* __restrict acc, const T* __restrict a,
                                      const T* __restrict b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += a[i] * b[i];
}

template <typename T>
SEGLOSS_MULTIVERSION void softmax_rows(T* __restrict out, const T* __restrict row,
                                       const T* __restrict p, const T* __restrict acc,
                                       int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = p[i] * (row[i] - acc[i]);
}

at::Tensor region_backward(const at::Tensor& probs, const at::Tensor& labels,
                           const c10::optional<at::Tensor>& weight_opt,
                           const at::Tensor& grad_dense, const at::Tensor& grad_and,
                           const at::Tensor& grad_or, at::ArrayRef<double> and_coeffs,
                           at::ArrayRef<double> or_coeffs, bool softmax) {
  check_float_cpu(probs, "probs");
  TORCH_CHECK(probs.dim() == 3, "segloss_d2: probs must be (N, C, L), got ", probs.sizes());
  const int64_t n = probs.size(0), c = probs.size(1), len = probs.size(2);
  TORCH_CHECK(labels.scalar_type() == at::kLong && labels.is_contiguous() &&
                  labels.numel() == n * len,
              "segloss_d2: labels must be contiguous int64 with N * L elements");
  for (const at::Tensor* v : {&grad_dense, &grad_and, &grad_or})
    TORCH_CHECK(v->scalar_type() == probs.scalar_type() && v->is_contiguous() &&
                    v->numel() == c,
                "segloss_d2: the gradients of the sums must be (C,) like probs");
  at::Tensor weight;
  if (weight_opt.has_value() && weight_opt->defined()) {
    weight = *weight_opt;
    check_float_cpu(weight, "weight");
    TORCH_CHECK(weight.scalar_type() == probs.scalar_type() && weight.numel() == n * len,
                "segloss_d2: weight must be (N, L) like probs");
  }
  const int64_t and_pieces = static_cast<int64_t>(and_coeffs.size()) / kCoef;
  check_coeffs(and_coeffs, {and_pieces});
  const bool has_or = !or_coeffs.empty();
  const int64_t or_pieces = static_cast<int64_t>(or_coeffs.size()) / kCoef;
  if (has_or) check_coeffs(or_coeffs, {or_pieces});
  at::Tensor out = at::empty_like(probs);
  const int64_t blocks = (len + kPixels - 1) / kPixels;
  AT_DISPATCH_FLOATING_TYPES(probs.scalar_type(), "segloss_d2::region_backward", [&] {
    const Curve<scalar_t> cv_and = make_curve<scalar_t>(and_coeffs.data(), and_pieces);
    const Curve<scalar_t> cv_or =
        has_or ? make_curve<scalar_t>(or_coeffs.data(), or_pieces) : Curve<scalar_t>();
    const scalar_t* p = probs.data_ptr<scalar_t>();
    const int64_t* lab = labels.data_ptr<int64_t>();
    const scalar_t* w = weight.defined() ? weight.data_ptr<scalar_t>() : nullptr;
    const scalar_t* gd = grad_dense.data_ptr<scalar_t>();
    const scalar_t* ga = grad_and.data_ptr<scalar_t>();
    const scalar_t* go = grad_or.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    std::atomic<bool> bad_label{false};
    at::parallel_for(0, n * blocks, 1, [&](int64_t begin, int64_t end) {
      // gp: dL/dp of the task's pixels, class by class (C x kPixels); acc: Σ_c p dL/dp
      std::vector<scalar_t> gp(static_cast<size_t>(c * kPixels)), scratch(kPixels),
          slope_and(kPixels), slope_or(kPixels), p_lab(kPixels), acc(kPixels);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t in = task / blocks, start = (task % blocks) * kPixels;
        const int64_t size = std::min(kPixels, len - start);
        const scalar_t* pn = p + in * c * len + start;
        const int64_t* ln = lab + in * len + start;
        // the dense term, class by class
        for (int64_t k = 0; k < c; ++k) {
          scalar_t* row = gp.data() + k * kPixels;
          if (has_or && gd[k] != 0) {
            eval_curve(pn + k * len, scratch.data(), row, size, cv_or);
            for (int64_t i = 0; i < size; ++i) row[i] *= gd[k];
          } else {
            std::fill(row, row + size, scalar_t(0));
          }
        }
        // the label pixels' terms
        bool bad = false;
        for (int64_t i = 0; i < size; ++i) bad |= ln[i] < 0 || ln[i] >= c;
        if (bad) {  // reported after the loop; nothing read out of bounds
          bad_label = true;
          continue;
        }
        for (int64_t i = 0; i < size; ++i) p_lab[i] = pn[ln[i] * len + i];
        eval_curve(p_lab.data(), scratch.data(), slope_and.data(), size, cv_and);
        if (has_or) eval_curve(p_lab.data(), scratch.data(), slope_or.data(), size, cv_or);
        for (int64_t i = 0; i < size; ++i) {
          const int64_t k = ln[i];
          scalar_t v = slope_and[i] * ga[k];
          if (has_or) v += slope_or[i] * go[k];
          gp[k * kPixels + i] += v;
        }
        // the pixel weights, then (softmax) through the softmax's backward
        const scalar_t* wn = w ? w + in * len + start : nullptr;
        scalar_t* on = o + in * c * len + start;
        if (!softmax) {
          for (int64_t k = 0; k < c; ++k) {
            scalar_t* row = gp.data() + k * kPixels;
            if (wn)
              for (int64_t i = 0; i < size; ++i) on[k * len + i] = row[i] * wn[i];
            else
              std::copy(row, row + size, on + k * len);
          }
          continue;
        }
        std::fill(acc.begin(), acc.begin() + size, scalar_t(0));
        for (int64_t k = 0; k < c; ++k) {
          scalar_t* row = gp.data() + k * kPixels;
          if (wn)
            for (int64_t i = 0; i < size; ++i) row[i] *= wn[i];
          add_product(acc.data(), row, pn + k * len, size);
        }
        for (int64_t k = 0; k < c; ++k)
          softmax_rows(on + k * len, gp.data() + k * kPixels, pn + k * len, acc.data(), size);
      }
    });
    TORCH_CHECK(!bad_label, "segloss_d2: region_backward labels must lie in [0, ", c, ")");
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(segloss_d2, CPU, m) {
  m.impl("bezier", &bezier);
  m.impl("region_dense", &region_dense);
  m.impl("region_backward", &region_backward);
}

}  // namespace segloss_d2
