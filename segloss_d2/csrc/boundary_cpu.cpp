// Boundary kernels of segloss_d2._C: BF1's soft boundary with the fused 3x3 erosion
// (soft_boundary) and its backward (soft_boundary_backward_bf1), and the window maxima
// (row_window_max, window_argmax). Python side: segloss_d2/surrogate/ops.py (dispatch),
// boundary.py (the BF1 surrogate). Shared code: surrogate.h.
#include "surrogate.h"

namespace segloss_d2 {
namespace {

// ---------------------------------------------------------------------------------------------
// soft_boundary(p (N, K, H, W), coeffs of 4 curves, pieces (4,), mask=None) -> (B, sums)
// (sums: see below; the partials below are recomputed by the backward, never stored)
// e = 3x3 min-pool of p (windows cut at the border), B = g3(p) + g4(e) - g3(p) g4(e) - g1(p) g2(e),
// dB/dp = g3'(p) (1 - g4(e)) - g1'(p) g2(e), dB/de = g4'(e) (1 - g3(p)) - g1(p) g2'(e).
// Work is split in bands of rows of one plane; each band recomputes the row minima of its
// neighbour rows, so bands are independent and stay in cache.

constexpr int64_t kBandElements = 16384;

int64_t band_rows(int64_t w) { return std::max<int64_t>(1, kBandElements / std::max<int64_t>(w, 1)); }

// Row pass: m[j] = min(x[j-1], x[j], x[j+1]) (cut at the border); with ARGS, a[j] = the offset
// (-1, 0, 1) of its first minimum, as a float (so the loop vectorizes without mixed widths).
template <typename T, bool ARGS>
SEGLOSS_MULTIVERSION void row_min3(const T* __restrict x, T* __restrict m, T* __restrict a,
                                   int64_t w) {
  if (w == 1) {
    m[0] = x[0];
    if (ARGS) a[0] = 0;
    return;
  }
  m[0] = x[1] < x[0] ? x[1] : x[0];
  if (ARGS) a[0] = x[1] < x[0] ? T(1) : T(0);
  for (int64_t j = 1; j < w - 1; ++j) {
    const T left = x[j - 1], mid = x[j], right = x[j + 1];
    const bool take_left = left <= mid;  // the first minimum wins ties
    const T best = take_left ? left : mid;
    const bool take_right = right < best;
    m[j] = take_right ? right : best;
    if (ARGS) a[j] = take_right ? T(1) : (take_left ? T(-1) : T(0));
  }
  m[w - 1] = x[w - 2] <= x[w - 1] ? x[w - 2] : x[w - 1];
  if (ARGS) a[w - 1] = x[w - 2] <= x[w - 1] ? T(-1) : T(0);
}

// Column pass over three rows of row minima (+inf rows beyond the border): e = their minimum,
// with ARGS a = the offset of the first (topmost) minimum.
template <typename T, bool ARGS>
SEGLOSS_MULTIVERSION void col_min3(const T* __restrict up, const T* __restrict mid,
                                   const T* __restrict down, T* __restrict e, T* __restrict a,
                                   int64_t w) {
  for (int64_t j = 0; j < w; ++j) {
    const bool take_up = up[j] <= mid[j];
    const T best = take_up ? up[j] : mid[j];
    const bool take_down = down[j] < best;
    e[j] = take_down ? down[j] : best;
    if (ARGS) a[j] = take_down ? T(1) : (take_up ? T(-1) : T(0));
  }
}

// Row minima (and their arguments) of rows [lo, hi) of plane x into rows/args (row r at r - lo);
// then the erosion (and its column arguments) of rows [e_lo, e_hi) into e/col_args.
template <typename T, bool ARGS>
void erode_band(const T* x, int64_t h, int64_t w, int64_t lo, int64_t hi, int64_t e_lo,
                int64_t e_hi, T* rows, T* row_args, const T* inf_row, T* e, T* col_args) {
  for (int64_t r = lo; r < hi; ++r)
    row_min3<T, ARGS>(x + r * w, rows + (r - lo) * w, row_args + (r - lo) * w, w);
  for (int64_t r = e_lo; r < e_hi; ++r) {
    const T* mid = rows + (r - lo) * w;
    col_min3<T, ARGS>(r > 0 ? mid - w : inf_row, mid, r + 1 < h ? mid + w : inf_row,
                      e + (r - e_lo) * w, col_args + (r - e_lo) * w, w);
  }
}

template <typename T>
SEGLOSS_MULTIVERSION void combine_boundary(const T* __restrict g1, const T* __restrict g2,
                                           const T* __restrict g3, const T* __restrict g4,
                                           T* __restrict out, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    out[i] = g3[i] + g4[i] - g3[i] * g4[i] - g1[i] * g2[i];
}

template <typename T>
SEGLOSS_MULTIVERSION void combine_partials(const T* __restrict g1, const T* __restrict d1,
                                           const T* __restrict g2, const T* __restrict d2,
                                           const T* __restrict g3, const T* __restrict d3,
                                           const T* __restrict g4, const T* __restrict d4,
                                           T* __restrict dp, T* __restrict de, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    dp[i] = d3[i] * (T(1) - g4[i]) - d1[i] * g2[i];
    de[i] = d4[i] * (T(1) - g3[i]) - g1[i] * d2[i];
  }
}

// The four BF1 curves g1..g4 from their flat coefficients (pieces per curve in np).
template <typename T>
std::vector<Curve<T>> make_curves(at::ArrayRef<double> coeffs, const std::vector<int64_t>& np) {
  std::vector<Curve<T>> cv;
  const double* c = coeffs.data();
  for (int64_t i = 0; i < 4; ++i) {
    cv.push_back(make_curve<T>(c, np[i]));
    c += np[i] * kCoef;
  }
  return cv;
}

// Checks p (N, K, H, W) and the four curves' coefficients; returns the pieces per curve.
std::vector<int64_t> check_boundary_args(const at::Tensor& p, at::ArrayRef<double> coeffs,
                                         at::ArrayRef<int64_t> pieces) {
  check_float_cpu(p, "p");
  TORCH_CHECK(p.dim() == 4, "segloss_d2: p must be (N, K, H, W), got ", p.sizes());
  TORCH_CHECK(pieces.size() == 4, "segloss_d2: soft_boundary needs 4 curves, got ",
              pieces.size());
  return check_coeffs(coeffs, pieces);
}

// Adds Σ b and Σ b [m] of one row (n elements) to sums[0], sums[1]: eight partial sums per row
// (so the loop vectorizes), then float64 across rows.
template <typename T>
SEGLOSS_MULTIVERSION void sum_and_masked_sum(const T* __restrict b, const bool* __restrict m,
                                             int64_t n, double* sums) {
  T all[8] = {0, 0, 0, 0, 0, 0, 0, 0}, masked[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) {
      all[j] += b[i + j];
      masked[j] += m[i + j] ? b[i + j] : T(0);
    }
  for (; i < n; ++i) {
    all[0] += b[i];
    masked[0] += m[i] ? b[i] : T(0);
  }
  for (int j = 0; j < 8; ++j) {
    sums[0] += static_cast<double>(all[j]);
    sums[1] += static_cast<double>(masked[j]);
  }
}

void check_mask(const at::Tensor& mask, const at::Tensor& like) {
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.is_contiguous() &&
                  mask.device().is_cpu() && mask.sizes() == like.sizes(),
              "segloss_d2: mask must be a contiguous bool CPU tensor of shape ", like.sizes(),
              ", got ", mask.scalar_type(), " ", mask.sizes());
}

// With `mask` (bool, like p) also returns sums (N*K, 2) float64: per plane Σ B and Σ B [mask]
// (BF1's predicted-boundary size and its match with the dilated ground truth), else empty.
std::tuple<at::Tensor, at::Tensor> soft_boundary(const at::Tensor& p, at::ArrayRef<double> coeffs,
                                                 at::ArrayRef<int64_t> pieces,
                                                 const c10::optional<at::Tensor>& mask_opt) {
  const std::vector<int64_t> np = check_boundary_args(p, coeffs, pieces);
  const bool with_sums = mask_opt.has_value() && mask_opt->defined();
  if (with_sums) check_mask(*mask_opt, p);
  const int64_t h = p.size(2), w = p.size(3), planes = p.size(0) * p.size(1);
  at::Tensor soft = at::empty_like(p);
  at::Tensor sums = at::zeros({with_sums ? planes : 0, 2}, p.options().dtype(at::kDouble));
  if (p.numel() == 0) return {soft, sums};
  const int64_t band = band_rows(w), bands = (h + band - 1) / band;
  // per task partial sums, added in task order afterwards: independent of the thread count
  std::vector<double> partial(with_sums ? 2 * planes * bands : 0, 0.0);
  const bool* mask = with_sums ? mask_opt->data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "segloss_d2::soft_boundary", [&] {
    const std::vector<Curve<scalar_t>> cv = make_curves<scalar_t>(coeffs, np);
    const scalar_t* src = p.data_ptr<scalar_t>();
    scalar_t* out = soft.data_ptr<scalar_t>();
    at::parallel_for(0, planes * bands, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> rows((band + 2) * w), e(band * w), buf(4 * w);
      const std::vector<scalar_t> inf_row(w, std::numeric_limits<scalar_t>::infinity());
      scalar_t *g1 = buf.data(), *g2 = g1 + w, *g3 = g2 + w, *g4 = g3 + w;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t plane = task / bands, r0 = (task % bands) * band;
        const int64_t r1 = std::min(h, r0 + band);
        const int64_t lo = std::max<int64_t>(0, r0 - 1), hi = std::min(h, r1 + 1);
        const scalar_t* x = src + plane * h * w;
        erode_band<scalar_t, false>(x, h, w, lo, hi, r0, r1, rows.data(), nullptr,
                                    inf_row.data(), e.data(), nullptr);
        for (int64_t r = r0; r < r1; ++r) {
          const scalar_t* xr = x + r * w;
          const scalar_t* er = e.data() + (r - r0) * w;
          const int64_t off = plane * h * w + r * w;
          eval_curve(xr, g1, static_cast<scalar_t*>(nullptr), w, cv[0]);
          eval_curve(er, g2, static_cast<scalar_t*>(nullptr), w, cv[1]);
          eval_curve(xr, g3, static_cast<scalar_t*>(nullptr), w, cv[2]);
          eval_curve(er, g4, static_cast<scalar_t*>(nullptr), w, cv[3]);
          combine_boundary(g1, g2, g3, g4, out + off, w);
          if (with_sums) sum_and_masked_sum(out + off, mask + off, w, partial.data() + 2 * task);
        }
      }
    });
  });
  if (with_sums) {
    double* out_sums = sums.data_ptr<double>();
    for (int64_t plane = 0; plane < planes; ++plane)
      for (int64_t b = 0; b < bands; ++b) {
        out_sums[2 * plane] += partial[2 * (plane * bands + b)];
        out_sums[2 * plane + 1] += partial[2 * (plane * bands + b) + 1];
      }
  }
  return {soft, sums};
}

// The backward of the soft boundary: dL/dp = dL/dB d_p + MinPoolBackward(dL/dB d_e) (see
// soft_boundary_backward_bf1 below for dL/dB). The min-pool's gradient goes where max-pooling's
// backward sends it: to the first minimum of the window in row-major order, i.e. to the first
// (topmost) row whose row minimum is the window minimum, at the first column of that row holding
// it. The routing is recomputed from p band by band, and applied in gather form (each pixel
// collects from its neighbours), so bands are independent: the column pass moves
// v = dL/dB d_e from output (i, j) to row i + col_arg[i, j], the row pass from (r, j) to column
// j + row_arg[r, j].
template <typename T>
SEGLOSS_MULTIVERSION void gather_rows(const T* __restrict up, const T* __restrict aup,
                                      const T* __restrict mid, const T* __restrict amid,
                                      const T* __restrict down, const T* __restrict adown,
                                      T* __restrict out, int64_t w) {
  for (int64_t j = 0; j < w; ++j)
    out[j] = (amid[j] == T(0) ? mid[j] : T(0)) + (aup[j] == T(1) ? up[j] : T(0)) +
             (adown[j] == T(-1) ? down[j] : T(0));
}

template <typename T>
SEGLOSS_MULTIVERSION void gather_cols(const T* __restrict v, const T* __restrict a,
                                      const T* __restrict grad, const T* dp, T* out, int64_t w) {
  // `out` may alias `dp`: element j reads dp[j] before writing out[j], nothing else
  if (w == 1) {
    out[0] = grad[0] * dp[0] + v[0];
    return;
  }
  out[0] = grad[0] * dp[0] + (a[0] == T(0) ? v[0] : T(0)) + (a[1] == T(-1) ? v[1] : T(0));
  for (int64_t j = 1; j < w - 1; ++j)
    out[j] = grad[j] * dp[j] + (a[j - 1] == T(1) ? v[j - 1] : T(0)) +
             (a[j] == T(0) ? v[j] : T(0)) + (a[j + 1] == T(-1) ? v[j + 1] : T(0));
  out[w - 1] = grad[w - 1] * dp[w - 1] + (a[w - 2] == T(1) ? v[w - 2] : T(0)) +
               (a[w - 1] == T(0) ? v[w - 1] : T(0));
}

template <typename T>
SEGLOSS_MULTIVERSION void mul_rows(const T* __restrict a, const T* __restrict b, T* __restrict out,
                                   int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] * b[i];
}

// The band loop of the backward. `grad_rows(plane, lo, hi, dst)` returns dL/dB of rows [lo, hi) of
// a plane (composed in dst, which holds band + 2 rows). The partials dB/dp and dB/de of those rows
// are recomputed from p and the band's erosion (four curves and their slopes), not read.
template <typename T, typename GradRows>
void backward_bands(const at::Tensor& p, const std::vector<Curve<T>>& cv, at::Tensor& out,
                    const GradRows& grad_rows) {
  const int64_t h = p.size(2), w = p.size(3), planes = p.size(0) * p.size(1);
  const T* src = p.data_ptr<T>();
  T* res = out.data_ptr<T>();
  const int64_t band = band_rows(w), bands = (h + band - 1) / band;
  at::parallel_for(0, planes * bands, 1, [&](int64_t begin, int64_t end) {
    // rows r0-2 .. r1+2 of row minima; erosion / column args / dL/dB / partials / v for rows
    // r0-1 .. r1+1
    std::vector<T> rows((band + 4) * w), row_args((band + 4) * w);
    std::vector<T> e((band + 2) * w), col_args((band + 2) * w), v((band + 2) * w);
    std::vector<T> g_buf((band + 2) * w), dp((band + 2) * w), de((band + 2) * w), moved(w);
    std::vector<T> buf(8 * w);
    T *g1 = buf.data(), *d1 = g1 + w, *g2 = d1 + w, *d2 = g2 + w;
    T *g3 = d2 + w, *d3 = g3 + w, *g4 = d3 + w, *d4 = g4 + w;
    const std::vector<T> inf_row(w, std::numeric_limits<T>::infinity());
    const std::vector<T> zero_row(w, T(0));  // contributes nothing
    for (int64_t task = begin; task < end; ++task) {
      const int64_t plane = task / bands, r0 = (task % bands) * band;
      const int64_t r1 = std::min(h, r0 + band);
      const int64_t lo = std::max<int64_t>(0, r0 - 2), hi = std::min(h, r1 + 2);
      const int64_t e_lo = std::max<int64_t>(0, r0 - 1), e_hi = std::min(h, r1 + 1);
      const int64_t base = plane * h * w;
      erode_band<T, true>(src + base, h, w, lo, hi, e_lo, e_hi, rows.data(), row_args.data(),
                          inf_row.data(), e.data(), col_args.data());
      for (int64_t r = e_lo; r < e_hi; ++r) {  // the partials, as the forward defines them
        const T* xr = src + base + r * w;
        const T* er = e.data() + (r - e_lo) * w;
        eval_curve(xr, g1, d1, w, cv[0]);
        eval_curve(er, g2, d2, w, cv[1]);
        eval_curve(xr, g3, d3, w, cv[2]);
        eval_curve(er, g4, d4, w, cv[3]);
        combine_partials(g1, d1, g2, d2, g3, d3, g4, d4, dp.data() + (r - e_lo) * w,
                         de.data() + (r - e_lo) * w, w);
      }
      const T* g = grad_rows(plane, e_lo, e_hi, g_buf.data());  // rows e_lo .. e_hi
      mul_rows(g, de.data(), v.data(), (e_hi - e_lo) * w);
      for (int64_t r = r0; r < r1; ++r) {
        const T* vm = v.data() + (r - e_lo) * w;
        const T* am = col_args.data() + (r - e_lo) * w;
        const bool has_up = r > 0, has_down = r + 1 < h;
        gather_rows(has_up ? vm - w : zero_row.data(), has_up ? am - w : zero_row.data(), vm, am,
                    has_down ? vm + w : zero_row.data(), has_down ? am + w : zero_row.data(),
                    moved.data(), w);
        gather_cols(moved.data(), row_args.data() + (r - lo) * w, g + (r - e_lo) * w,
                    dp.data() + (r - e_lo) * w, res + base + r * w, w);
      }
    }
  });
}

// soft_boundary_backward_bf1(p, coeffs of 4 curves, pieces (4,), mask, grad_n (K,),
//   grad_match (K,), pick_index (M,) sorted, pick_grad (M,))
//   -> dL/dp = dL/dB dB/dp + MinPoolBackward(dL/dB dB/de) for
//   dL/dB = grad_n[k] + grad_match[k] [mask] + Σ_{m: pick_index[m] = i} pick_grad[m]
// (BF1's three uses of B: its size, its match with the dilated ground truth and the window maxima
// picked at ground-truth boundary pixels), composed band by band instead of stored, as are the
// partials.
at::Tensor soft_boundary_backward_bf1(const at::Tensor& p, at::ArrayRef<double> coeffs,
                                      at::ArrayRef<int64_t> pieces, const at::Tensor& mask,
                                      const at::Tensor& grad_n, const at::Tensor& grad_match,
                                      const at::Tensor& pick_index, const at::Tensor& pick_grad) {
  const std::vector<int64_t> np = check_boundary_args(p, coeffs, pieces);
  check_mask(mask, p);
  at::Tensor out = at::empty_like(p);
  const int64_t k = p.size(1), hw = p.size(2) * p.size(3), w = p.size(3);
  for (const at::Tensor* t : {&grad_n, &grad_match})
    TORCH_CHECK(t->scalar_type() == p.scalar_type() && t->dim() == 1 && t->numel() == k &&
                    t->is_contiguous(),
                "segloss_d2: grad_n and grad_match must be contiguous (K,) like p");
  TORCH_CHECK(pick_index.scalar_type() == at::kLong && pick_index.dim() == 1 &&
                  pick_index.is_contiguous() && pick_grad.scalar_type() == p.scalar_type() &&
                  pick_grad.sizes() == pick_index.sizes() && pick_grad.is_contiguous(),
              "segloss_d2: pick_index (M,) int64 and pick_grad (M,) like p, contiguous");
  const int64_t m = pick_index.numel();
  const int64_t* idx = pick_index.data_ptr<int64_t>();
  for (int64_t i = 0; i < m; ++i)
    TORCH_CHECK(idx[i] >= 0 && idx[i] < p.numel() && (i == 0 || idx[i - 1] <= idx[i]),
                "segloss_d2: pick_index must be sorted and within p, got ", idx[i], " at ", i);
  if (p.numel() == 0) return out;
  const bool* msk = mask.data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "segloss_d2::soft_boundary_backward_bf1", [&] {
    const scalar_t* gn = grad_n.data_ptr<scalar_t>();
    const scalar_t* gm = grad_match.data_ptr<scalar_t>();
    const scalar_t* pg = pick_grad.data_ptr<scalar_t>();
    backward_bands<scalar_t>(
        p, make_curves<scalar_t>(coeffs, np), out,
        [&](int64_t plane, int64_t lo, int64_t hi, scalar_t* dst) {
          const int64_t first = plane * hw + lo * w, last = plane * hw + hi * w;
          const scalar_t n_term = gn[plane % k], match_term = gm[plane % k];
          const bool* mrow = msk + first;
          for (int64_t i = 0; i < last - first; ++i)
            dst[i] = n_term + (mrow[i] ? match_term : scalar_t(0));
          for (const int64_t* at = std::lower_bound(idx, idx + m, first);
               at != idx + m && *at < last; ++at)
            dst[*at - first] += pg[at - idx];
          return static_cast<const scalar_t*>(dst);
        });
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// row_window_max(x (..., W), radius) -> max over x[..., j - r : j + r + 1] (cut at the border)
template <typename T>
SEGLOSS_MULTIVERSION void max_shift(const T* __restrict a, T* __restrict out, int64_t n,
                                    int64_t shift) {
  for (int64_t i = 0; i < n; ++i) out[i] = std::max(a[i], a[i + shift]);
}

at::Tensor row_window_max(const at::Tensor& x, int64_t radius) {
  check_float_cpu(x, "x");
  TORCH_CHECK(x.dim() >= 1 && radius >= 0, "segloss_d2: row_window_max needs radius >= 0");
  at::Tensor out = at::empty_like(x);
  if (x.numel() == 0) return out;
  const int64_t w = x.size(-1), rows = x.numel() / w, size = 2 * radius + 1;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "segloss_d2::row_window_max", [&] {
    const scalar_t* src = x.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, kBlock / w);
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      // padded row (-inf), then running maxima of doubling span, as in ops.row_window_max
      std::vector<scalar_t> a(static_cast<size_t>(w + 2 * radius)), b(a.size());
      for (int64_t r = begin; r < end; ++r) {
        std::fill(a.begin(), a.begin() + radius, -std::numeric_limits<scalar_t>::infinity());
        std::copy(src + r * w, src + (r + 1) * w, a.begin() + radius);
        std::fill(a.begin() + radius + w, a.end(), -std::numeric_limits<scalar_t>::infinity());
        int64_t span = 1, valid = w + 2 * radius;
        scalar_t* cur = a.data();
        scalar_t* nxt = b.data();
        while (span < size) {
          const int64_t shift = std::min(span, size - span);
          max_shift(cur, nxt, valid - shift, shift);
          valid -= shift;
          span += shift;
          std::swap(cur, nxt);
        }
        std::copy(cur, cur + w, dst + r * w);
      }
    });
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// window_argmax(values (N, K, H, W), n, k, h, w (M,) int64, radius) -> (M,) int64
// Flat index into values of the maximum of the (2r+1)^2 window (cut at the border) of plane
// (n, k) around (h, w): the first maximum in row-major window order, as max-pooling's backward
// routes its gradient. A direct scan per position: for sparse positions (boundary pixels) this
// reads far less than dense row maxima would.
at::Tensor window_argmax(const at::Tensor& values, const at::Tensor& n_idx,
                         const at::Tensor& k_idx, const at::Tensor& h_idx,
                         const at::Tensor& w_idx, int64_t radius) {
  check_float_cpu(values, "values");
  TORCH_CHECK(values.dim() == 4, "segloss_d2: values must be (N, K, H, W), got ", values.sizes());
  TORCH_CHECK(radius >= 0, "segloss_d2: radius must be >= 0, got ", radius);
  const int64_t m = n_idx.numel();
  for (const at::Tensor* t : {&n_idx, &k_idx, &h_idx, &w_idx})
    TORCH_CHECK(t->scalar_type() == at::kLong && t->dim() == 1 && t->numel() == m &&
                    t->is_contiguous() && t->device().is_cpu(),
                "segloss_d2: positions must be four contiguous 1-D int64 CPU tensors of one "
                "length");
  const int64_t nn = values.size(0), kk = values.size(1), h = values.size(2), w = values.size(3);
  at::Tensor index = at::empty({m}, n_idx.options());
  const int64_t *pn = n_idx.data_ptr<int64_t>(), *pk = k_idx.data_ptr<int64_t>();
  const int64_t *ph = h_idx.data_ptr<int64_t>(), *pw = w_idx.data_ptr<int64_t>();
  int64_t* out = index.data_ptr<int64_t>();
  for (int64_t i = 0; i < m; ++i)
    TORCH_CHECK(pn[i] >= 0 && pn[i] < nn && pk[i] >= 0 && pk[i] < kk && ph[i] >= 0 &&
                    ph[i] < h && pw[i] >= 0 && pw[i] < w,
                "segloss_d2: position ", i, " (", pn[i], ", ", pk[i], ", ", ph[i], ", ", pw[i],
                ") outside values of shape ", values.sizes());
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "segloss_d2::window_argmax", [&] {
    const scalar_t* v = values.data_ptr<scalar_t>();
    at::parallel_for(0, m, 256, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t plane = (pn[i] * kk + pk[i]) * h * w;
        const int64_t r0 = std::max<int64_t>(0, ph[i] - radius);
        const int64_t r1 = std::min(h, ph[i] + radius + 1);
        const int64_t c0 = std::max<int64_t>(0, pw[i] - radius);
        const int64_t c1 = std::min(w, pw[i] + radius + 1);
        int64_t best_at = plane + r0 * w + c0;
        scalar_t best = v[best_at];
        for (int64_t r = r0; r < r1; ++r) {
          const scalar_t* row = v + plane + r * w;
          for (int64_t c = c0; c < c1; ++c) {
            if (row[c] > best) {  // strictly greater: the first maximum is kept
              best = row[c];
              best_at = plane + r * w + c;
            }
          }
        }
        out[i] = best_at;
      }
    });
  });
  return index;
}

}  // namespace

TORCH_LIBRARY_IMPL(segloss_d2, CPU, m) {
  m.impl("soft_boundary", &soft_boundary);
  m.impl("soft_boundary_backward_bf1", &soft_boundary_backward_bf1);
  m.impl("row_window_max", &row_window_max);
  m.impl("window_argmax", &window_argmax);
}

}  // namespace segloss_d2
