// Shared by the kernel families of segloss_d2._C (region_cpu.cpp, boundary_cpu.cpp, ops.cpp).
//
// Each kernel computes, in one pass over its elements, exactly the formulas of the pure-torch
// implementation in segloss_d2/surrogate (bezier.py, ops.py, region.py, boundary.py), which
// stays the reference, the path on every other device and the fallback when this extension is
// not built. segloss_d2/surrogate/ops.py is the one place that chooses between them. Registered
// as torch.ops.segloss_d2.* for CPU tensors (schemas: ops.cpp; implementations: one
// TORCH_LIBRARY_IMPL block per family file); float32 and float64; no autograd (the callers are
// autograd.Functions that save what these kernels return).
//
// Curves arrive as flat per-piece coefficients, kCoef numbers per piece in the order of
// SEGLOSS_PIECE_COEFFICIENTS below (bezier.py, class Piece; the module exports the list as
// _C.PIECE_COEFFICIENTS and segloss_d2.surrogate.kernels checks it against Piece at load time):
//   lo, hi, inv_w, a, b, a2, c1, c2, d1, d2, y_lo
// Piece 0 owns x <= hi_0, piece k >= 1 owns lo_k < x (<= hi_k); with u = (x - lo) inv_w,
//   s = sqrt(a2 + b u),  t = u / (a + s),  g = y_lo + t (c1 + c2 t),  g' = (d1 + d2 t) / s.
//
// Everything here has internal linkage (an anonymous namespace): each family file compiles its
// own copy of the curve evaluation, so the per-CPU clones (SEGLOSS_MULTIVERSION) never cross
// translation units.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace segloss_d2 {
namespace {

// The per-piece coefficient layout, defined once: the index constants (kLo, ...), their number
// kCoef and the exported name list all come from this list.
#define SEGLOSS_PIECE_COEFFICIENTS(X) \
  X(lo, kLo) X(hi, kHi) X(inv_w, kInvW) X(a, kA) X(b, kB) X(a2, kA2) X(c1, kC1) X(c2, kC2) \
  X(d1, kD1) X(d2, kD2) X(y_lo, kYLo)

enum PieceCoefficient : int64_t {
#define SEGLOSS_INDEX(name, index) index,
  SEGLOSS_PIECE_COEFFICIENTS(SEGLOSS_INDEX)
#undef SEGLOSS_INDEX
  kCoef  // numbers per piece
};

// "lo,hi,...,y_lo," (the trailing comma is dropped on export)
constexpr const char kPieceCoefficientNames[] =
#define SEGLOSS_NAME(name, index) #name ","
    SEGLOSS_PIECE_COEFFICIENTS(SEGLOSS_NAME);
#undef SEGLOSS_NAME

constexpr int64_t kBlock = 4096;  // elements per block of the blocked reductions
constexpr int64_t kMaxPieces = 64;  // pieces held in registers/stack; more: a plain loop

// Hot loops are compiled for AVX2 and for baseline x86-64, chosen at load time by the CPU.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define SEGLOSS_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define SEGLOSS_MULTIVERSION
#endif

template <typename T>
struct Curve {
  // one array per coefficient, so the per-element piece selection is a chain of blends
  std::vector<T> lo, inv_w, a, b, a2, c1, c2, d1, d2, y_lo;
  int64_t pieces = 0;
};

template <typename T>
Curve<T> make_curve(const double* c, int64_t pieces) {
  Curve<T> out;
  out.pieces = pieces;
  for (int64_t k = 0; k < pieces; ++k, c += kCoef) {
    out.lo.push_back(static_cast<T>(c[kLo]));  // hi is implied by the next piece's lo
    out.inv_w.push_back(static_cast<T>(c[kInvW]));
    out.a.push_back(static_cast<T>(c[kA]));
    out.b.push_back(static_cast<T>(c[kB]));
    out.a2.push_back(static_cast<T>(c[kA2]));
    out.c1.push_back(static_cast<T>(c[kC1]));
    out.c2.push_back(static_cast<T>(c[kC2]));
    out.d1.push_back(static_cast<T>(c[kD1]));
    out.d2.push_back(static_cast<T>(c[kD2]));
    out.y_lo.push_back(static_cast<T>(c[kYLo]));
  }
  return out;
}

std::vector<int64_t> check_coeffs(at::ArrayRef<double> coeffs, at::ArrayRef<int64_t> pieces) {
  int64_t total = 0;
  for (int64_t p : pieces) {
    TORCH_CHECK(p >= 1, "segloss_d2: a curve needs >= 1 piece, got ", p);
    total += p;
  }
  TORCH_CHECK(static_cast<int64_t>(coeffs.size()) == total * kCoef,
              "segloss_d2: expected ", total * kCoef, " curve coefficients, got ", coeffs.size());
  return std::vector<int64_t>(pieces.begin(), pieces.end());
}

// g (and g' if GRAD) of n contiguous elements; NP > 0: the number of pieces, known at compile
// time (the selection unrolls into blends and the loop vectorizes); NP == 0: any.
template <typename T, int NP, bool GRAD>
SEGLOSS_MULTIVERSION void eval_pieces(const T* __restrict x, T* __restrict g, T* __restrict d,
                                      int64_t n, const Curve<T>& cv) {
  // the coefficients in local arrays of compile-time size (NP == 0: up to kMaxPieces at run
  // time), so that selecting the owning piece compiles to register blends
  constexpr int64_t kMax = NP > 0 ? NP : kMaxPieces;
  const int64_t np = NP > 0 ? NP : cv.pieces;
  T lo[kMax], iw[kMax], a[kMax], b[kMax], a2[kMax], c1[kMax], c2[kMax], d1[kMax], d2[kMax],
      y0[kMax];
  for (int64_t k = 0; k < np; ++k) {
    lo[k] = cv.lo[k], iw[k] = cv.inv_w[k], a[k] = cv.a[k], b[k] = cv.b[k], a2[k] = cv.a2[k];
    c1[k] = cv.c1[k], c2[k] = cv.c2[k], d1[k] = cv.d1[k], d2[k] = cv.d2[k], y0[k] = cv.y_lo[k];
  }
  for (int64_t i = 0; i < n; ++i) {
    const T xi = x[i];
    T l = lo[0], w = iw[0], pa = a[0], pb = b[0], pa2 = a2[0];
    T pc1 = c1[0], pc2 = c2[0], pd1 = d1[0], pd2 = d2[0], py = y0[0];
    for (int64_t k = 1; k < np; ++k) {
      const bool m = xi > lo[k];
      l = m ? lo[k] : l;
      w = m ? iw[k] : w;
      pa = m ? a[k] : pa;
      pb = m ? b[k] : pb;
      pa2 = m ? a2[k] : pa2;
      pc1 = m ? c1[k] : pc1;
      pc2 = m ? c2[k] : pc2;
      pd1 = m ? d1[k] : pd1;
      pd2 = m ? d2[k] : pd2;
      py = m ? y0[k] : py;
    }
    const T u = (xi - l) * w;
    const T s = std::sqrt(pa2 + pb * u);
    const T t = u / (pa + s);
    g[i] = py + t * (pc1 + pc2 * t);
    if (GRAD) d[i] = (pd1 + pd2 * t) / s;
  }
}

// Any number of pieces, straight from the coefficient vectors (not vectorized).
template <typename T, bool GRAD>
void eval_many_pieces(const T* x, T* g, T* d, int64_t n, const Curve<T>& cv) {
  for (int64_t i = 0; i < n; ++i) {
    int64_t k = 0;
    while (k + 1 < cv.pieces && x[i] > cv.lo[k + 1]) ++k;
    const T u = (x[i] - cv.lo[k]) * cv.inv_w[k];
    const T s = std::sqrt(cv.a2[k] + cv.b[k] * u);
    const T t = u / (cv.a[k] + s);
    g[i] = cv.y_lo[k] + t * (cv.c1[k] + cv.c2[k] * t);
    if (GRAD) d[i] = (cv.d1[k] + cv.d2[k] * t) / s;
  }
}

template <typename T, bool GRAD>
void eval_curve_(const T* x, T* g, T* d, int64_t n, const Curve<T>& cv) {
  if (cv.pieces > kMaxPieces) return eval_many_pieces<T, GRAD>(x, g, d, n, cv);
  switch (cv.pieces) {
    case 1: return eval_pieces<T, 1, GRAD>(x, g, d, n, cv);
    case 2: return eval_pieces<T, 2, GRAD>(x, g, d, n, cv);
    case 3: return eval_pieces<T, 3, GRAD>(x, g, d, n, cv);
    default: return eval_pieces<T, 0, GRAD>(x, g, d, n, cv);
  }
}

// g (and g' where d != nullptr) of n contiguous elements
template <typename T>
void eval_curve(const T* x, T* g, T* d, int64_t n, const Curve<T>& cv) {
  if (d != nullptr) return eval_curve_<T, true>(x, g, d, n, cv);
  return eval_curve_<T, false>(x, g, d, n, cv);
}

at::Tensor empty_like_or_none(const at::Tensor& x, bool wanted) {
  return wanted ? at::empty_like(x) : at::empty({0}, x.options());
}

void check_float_cpu(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), "segloss_d2: ", name, " must be a CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "segloss_d2: ", name, " must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous(), "segloss_d2: ", name, " must be contiguous");
}

}  // namespace
}  // namespace segloss_d2
