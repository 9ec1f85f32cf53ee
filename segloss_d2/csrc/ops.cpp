// segloss_d2._C: the op schemas (torch.ops.segloss_d2.*) and the Python module that loads them.
// Implementations: region_cpu.cpp and boundary_cpu.cpp (one TORCH_LIBRARY_IMPL block each).
// Python side: segloss_d2/surrogate/ops.py, one wrapper per op, owns dispatch and fallback.
#include <Python.h>

#include "surrogate.h"

namespace segloss_d2 {

TORCH_LIBRARY(segloss_d2, m) {
  m.def("bezier(Tensor x, float[] coeffs, bool need_grad) -> (Tensor, Tensor)");
  m.def("region_dense(Tensor probs, Tensor present, Tensor? weight, float[] coeffs, "
        "bool need_grad) -> (Tensor, Tensor)");
  m.def("region_backward(Tensor probs, Tensor labels, Tensor? weight, Tensor grad_dense, "
        "Tensor grad_and, Tensor grad_or, float[] and_coeffs, float[] or_coeffs, "
        "bool softmax) -> Tensor");
  m.def("soft_boundary(Tensor p, float[] coeffs, int[] pieces, Tensor? mask=None) "
        "-> (Tensor, Tensor)");
  m.def("soft_boundary_backward_bf1(Tensor p, float[] coeffs, int[] pieces, Tensor mask, "
        "Tensor grad_n, Tensor grad_match, Tensor pick_index, Tensor pick_grad) -> Tensor");
  m.def("row_window_max(Tensor x, int radius) -> Tensor");
  m.def("window_argmax(Tensor values, Tensor n, Tensor k, Tensor h, Tensor w, int radius) "
        "-> Tensor");
}

}  // namespace segloss_d2

// A Python module, so that `import segloss_d2._C` loads the library (which registers the ops).
// PIECE_COEFFICIENTS: the per-piece coefficient layout the kernels read, "lo,hi,...,y_lo".
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* m = PyModule_Create(&module);
  if (m == nullptr) return nullptr;
  std::string names(segloss_d2::kPieceCoefficientNames);
  names.pop_back();  // the trailing comma
  if (PyModule_AddStringConstant(m, "PIECE_COEFFICIENTS", names.c_str()) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
