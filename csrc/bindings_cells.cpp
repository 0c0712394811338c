// pybind11 bindings of the GRU and vanilla-RNN cores (and the LSTM projection / streaming step):
// the same rules as bindings.cpp — every argument checked before any work with an error naming
// it, nothing copied silently, outputs allocated with the GIL held, the GIL released around
// compute only.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cells/gru.h"
#include "cells/lstm.h"
#include "cells/step.h"
#include "cells/rnn.h"
#include "dispatch.h"

namespace py = pybind11;
using namespace lstm_fast;

namespace {

using farray = py::array_t<float, py::array::c_style>;

struct Dim {
  std::string name;
  index_t size;
};

std::string shape_str(const py::array& a) {
  std::ostringstream os;
  os << "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) os << (d ? ", " : "") << a.shape(d);
  if (a.ndim() == 1) os << ",";
  os << ")";
  return os.str();
}

std::string expected_str(const std::vector<Dim>& dims) {
  std::ostringstream os;
  os << "(";
  for (size_t d = 0; d < dims.size(); ++d)
    os << (d ? ", " : "") << dims[d].name << "=" << dims[d].size;
  if (dims.size() == 1) os << ",";
  os << ")";
  return os.str();
}

std::string type_name(py::handle h) { return py::str(py::type::of(h).attr("__name__")); }

py::array check_float_array(py::handle obj, const std::string& name, int ndim,
                            const std::string& legend) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(name + ": expected a numpy.ndarray of dtype float32, got " +
                         type_name(obj));
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<float>()))
    throw py::type_error(name + ": expected dtype float32, got " +
                         std::string(py::str(a.dtype())) +
                         " (convert explicitly, e.g. x.astype(np.float32))");
  if (a.ndim() != ndim)
    throw py::value_error(name + ": expected " + std::to_string(ndim) + " dimensions " + legend +
                          ", got " + std::to_string(a.ndim()) + " with shape " + shape_str(a));
  return a;
}

void check_layout(const py::array& a, const std::string& name, bool writeable) {
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(name + ": expected a C-contiguous array (use np.ascontiguousarray)");
  if (reinterpret_cast<std::uintptr_t>(a.data()) % alignof(float) != 0)
    throw py::value_error(name + ": expected float32-aligned data, got a misaligned buffer");
  if (writeable && !a.writeable())
    throw py::value_error(name + ": expected a writeable array, got a read-only one");
}

py::array arg(py::handle obj, const std::string& name, const std::vector<Dim>& dims,
              bool writeable = false) {
  std::string legend = "(";
  for (size_t d = 0; d < dims.size(); ++d) legend += (d ? ", " : "") + dims[d].name;
  legend += dims.size() == 1 ? ",)" : ")";
  py::array a = check_float_array(obj, name, static_cast<int>(dims.size()), legend);
  for (size_t d = 0; d < dims.size(); ++d)
    if (a.shape(d) != dims[d].size)
      throw py::value_error(name + ": expected shape " + expected_str(dims) + ", got " +
                            shape_str(a));
  check_layout(a, name, writeable);
  return a;
}

py::object opt_arg(py::handle obj, const std::string& name, const std::vector<Dim>& dims) {
  return obj.is_none() ? py::object(py::none()) : py::object(arg(obj, name, dims));
}

const float* cptr(const py::array& a) { return static_cast<const float*>(a.data()); }
float* mptr(py::array& a) { return static_cast<float*>(a.mutable_data()); }
const float* opt_ptr(const py::object& o) {
  return o.is_none() ? nullptr : static_cast<const float*>(py::array(o).data());
}
float* opt_mptr(py::object& o) {
  return o.is_none() ? nullptr : static_cast<float*>(py::array(o).mutable_data());
}

struct Workspace {
  float* p = nullptr;
  explicit Workspace(index_t n) {
    size_t bytes = ((static_cast<size_t>(n) * sizeof(float) + 63) / 64) * 64;
    p = static_cast<float*>(std::aligned_alloc(64, bytes ? bytes : 64));
    if (!p) throw std::bad_alloc();
  }
  ~Workspace() { std::free(p); }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
};

py::object check_batch_sizes(py::handle obj, index_t T, index_t B) {
  if (obj.is_none()) return py::none();
  if (!py::isinstance<py::array>(obj))
    throw py::type_error("batch_sizes: expected a numpy.ndarray of dtype int64, got " +
                         type_name(obj));
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<std::int64_t>()))
    throw py::type_error("batch_sizes: expected dtype int64, got " +
                         std::string(py::str(a.dtype())));
  if (a.ndim() != 1 || a.shape(0) != T)
    throw py::value_error("batch_sizes: expected shape (T=" + std::to_string(T) + ",), got " +
                          shape_str(a));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error("batch_sizes: expected a C-contiguous array");
  const auto* v = static_cast<const std::int64_t*>(a.data());
  for (index_t t = 0; t < T; ++t) {
    if (v[t] < 0 || v[t] > B)
      throw py::value_error("batch_sizes: expected values in [0, B=" + std::to_string(B) +
                            "], got " + std::to_string(v[t]) + " at step " + std::to_string(t));
    if (t > 0 && v[t] > v[t - 1])
      throw py::value_error("batch_sizes: expected non-increasing values (rows sorted by "
                            "length, longest first), got " +
                            std::to_string(v[t - 1]) + " then " + std::to_string(v[t]) +
                            " at step " + std::to_string(t));
  }
  return a;
}

const index_t* bs_ptr(const py::object& o) {
  return o.is_none() ? nullptr : static_cast<const index_t*>(py::array(o).data());
}

py::array grad_out(py::handle given, const std::string& name, const std::vector<Dim>& dims) {
  if (given.is_none()) {
    std::vector<py::ssize_t> shape;
    for (const auto& d : dims) shape.push_back(d.size);
    farray out(shape);
    std::fill(out.mutable_data(), out.mutable_data() + out.size(), 0.0f);
    return out;
  }
  return arg(given, name, dims, /*writeable=*/true);
}

void check_unchanged(const py::array& a, const std::vector<py::ssize_t>& shape,
                     const std::string& name) {
  std::vector<py::ssize_t> now(a.shape(), a.shape() + a.ndim());
  if (now != shape || !(a.flags() & py::array::c_style))
    throw py::value_error("cache: " + name + " was reshaped or re-laid out since the forward call");
}

// Arguments common to the GRU (gates = 3) and RNN (gates = 1) calls.
struct CellArgs {
  py::array x, w_ih, w_hh;
  py::object b_ih, b_hh, h0, batch_sizes;
  CellSizes s;
};

CellArgs check_cell_args(int gates, py::handle x, py::handle weight_ih, py::handle weight_hh,
                         py::handle bias_ih, py::handle bias_hh, py::handle h0,
                         py::handle batch_sizes) {
  const std::string g = gates == 1 ? "H" : std::to_string(gates) + "H";
  CellArgs a;
  a.x = check_float_array(x, "x", 3, "(T, B, I)");
  check_layout(a.x, "x", false);
  py::array w_hh = check_float_array(weight_hh, "weight_hh", 2, "(" + g + ", H)");
  const index_t T = a.x.shape(0), B = a.x.shape(1), I = a.x.shape(2), H = w_hh.shape(1);
  a.s = CellSizes{T, B, I, H};
  a.w_hh = arg(weight_hh, "weight_hh", {{g, gates * H}, {"H", H}});
  a.w_ih = arg(weight_ih, "weight_ih", {{g, gates * H}, {"I", I}});
  a.b_ih = opt_arg(bias_ih, "bias_ih", {{g, gates * H}});
  a.b_hh = opt_arg(bias_hh, "bias_hh", {{g, gates * H}});
  a.h0 = opt_arg(h0, "h0", {{"B", B}, {"H", H}});
  a.batch_sizes = check_batch_sizes(batch_sizes, T, B);
  return a;
}

// What a training forward keeps for backward: references to its inputs (no copies) and the
// saved activations (GRU: gates r, z, n and hw_n; RNN: y alone).
struct CellCache {
  int gates = 3;  // 3 GRU, 1 RNN
  bool relu = false;
  CellSizes s{};
  py::object batch_sizes, h0;
  py::array x, weight_ih, weight_hh, y, gate_acts, hwn;
  bool has_bias_ih = false, has_bias_hh = false;
};
struct GRUCache : CellCache {};
struct RNNCache : CellCache {};

py::tuple gru_forward_py(py::handle x, py::handle weight_ih, py::handle weight_hh,
                         py::handle bias_ih, py::handle bias_hh, py::handle h0, bool training,
                         py::handle batch_sizes) {
  CellArgs a = check_cell_args(3, x, weight_ih, weight_hh, bias_ih, bias_hh, h0, batch_sizes);
  const CellSizes s = a.s;
  const Kernels& kern = active_kernels();
  const int nthreads = get_num_threads();
  farray y({s.T, s.B, s.H}), h_n({s.B, s.H});
  farray gates, hwn;
  if (training) {
    gates = farray({s.T, s.B, 3 * s.H});
    hwn = farray({s.T, s.B, s.H});
  }
  {
    py::gil_scoped_release nogil;
    Workspace ws(
        gru_forward_workspace_size(kern, s, training, bs_ptr(a.batch_sizes) != nullptr));
    gru_forward(y.mutable_data(), h_n.mutable_data(), training ? gates.mutable_data() : nullptr,
                training ? hwn.mutable_data() : nullptr, cptr(a.x), opt_ptr(a.h0), cptr(a.w_ih),
                cptr(a.w_hh), opt_ptr(a.b_ih), opt_ptr(a.b_hh), s, bs_ptr(a.batch_sizes), ws.p,
                kern, nthreads);
  }
  py::object cache = py::none();
  if (training) {
    auto c = std::make_unique<GRUCache>();
    c->gates = 3;
    c->s = s;
    c->x = a.x;
    c->weight_ih = a.w_ih;
    c->weight_hh = a.w_hh;
    c->y = y;
    c->gate_acts = gates;
    c->hwn = hwn;
    c->h0 = a.h0;
    c->batch_sizes = a.batch_sizes;
    c->has_bias_ih = !a.b_ih.is_none();
    c->has_bias_hh = !a.b_hh.is_none();
    cache = py::cast(std::move(c));
  }
  return py::make_tuple(y, h_n, cache);
}

bool parse_nonlinearity(const std::string& nl) {
  if (nl == "tanh") return false;
  if (nl == "relu") return true;
  throw py::value_error("nonlinearity: expected 'tanh' or 'relu', got '" + nl + "'");
}

py::tuple rnn_forward_py(py::handle x, py::handle weight_ih, py::handle weight_hh,
                         py::handle bias_ih, py::handle bias_hh, py::handle h0,
                         const std::string& nonlinearity, bool training, py::handle batch_sizes) {
  const bool relu = parse_nonlinearity(nonlinearity);
  CellArgs a = check_cell_args(1, x, weight_ih, weight_hh, bias_ih, bias_hh, h0, batch_sizes);
  const CellSizes s = a.s;
  const Kernels& kern = active_kernels();
  const int nthreads = get_num_threads();
  farray y({s.T, s.B, s.H}), h_n({s.B, s.H});
  {
    py::gil_scoped_release nogil;
    Workspace ws(rnn_forward_workspace_size(kern, s, bs_ptr(a.batch_sizes) != nullptr));
    rnn_forward(y.mutable_data(), h_n.mutable_data(), cptr(a.x), opt_ptr(a.h0), cptr(a.w_ih),
                cptr(a.w_hh), opt_ptr(a.b_ih), opt_ptr(a.b_hh), relu, s, bs_ptr(a.batch_sizes),
                ws.p, kern, nthreads);
  }
  py::object cache = py::none();
  if (training) {
    auto c = std::make_unique<RNNCache>();
    c->gates = 1;
    c->relu = relu;
    c->s = s;
    c->x = a.x;
    c->weight_ih = a.w_ih;
    c->weight_hh = a.w_hh;
    c->y = y;
    c->h0 = a.h0;
    c->batch_sizes = a.batch_sizes;
    c->has_bias_ih = !a.b_ih.is_none();
    c->has_bias_hh = !a.b_hh.is_none();
    cache = py::cast(std::move(c));
  }
  return py::make_tuple(y, h_n, cache);
}

py::tuple cell_backward_py(const CellCache& c, py::handle dy, py::handle dh_n,
                           py::handle dweight_ih, py::handle dweight_hh, py::handle dbias_ih,
                           py::handle dbias_hh) {
  const CellSizes s = c.s;
  const index_t T = s.T, B = s.B, I = s.I, H = s.H, G = c.gates * H;
  const std::string g = c.gates == 1 ? "H" : "3H";
  check_unchanged(c.weight_ih, {G, I}, "weight_ih");
  check_unchanged(c.weight_hh, {G, H}, "weight_hh");
  check_unchanged(c.x, {T, B, I}, "x");
  check_unchanged(c.y, {T, B, H}, "y");
  py::object dy_a = opt_arg(dy, "dy", {{"T", T}, {"B", B}, {"H", H}});
  py::object dhn_a = opt_arg(dh_n, "dh_n", {{"B", B}, {"H", H}});
  py::array dW_ih = grad_out(dweight_ih, "dweight_ih", {{g, G}, {"I", I}});
  py::array dW_hh = grad_out(dweight_hh, "dweight_hh", {{g, G}, {"H", H}});
  py::object db_ih = py::none(), db_hh = py::none();
  if (c.has_bias_ih) db_ih = grad_out(dbias_ih, "dbias_ih", {{g, G}});
  if (c.has_bias_hh) db_hh = grad_out(dbias_hh, "dbias_hh", {{g, G}});
  farray dx({T, B, I}), dh0({B, H});
  const Kernels& kern = active_kernels();
  const int nthreads = get_num_threads();
  {
    py::gil_scoped_release nogil;
    if (c.gates == 3) {
      Workspace ws(gru_backward_workspace_size(kern, s, bs_ptr(c.batch_sizes) != nullptr));
      gru_backward(dx.mutable_data(), dh0.mutable_data(), mptr(dW_ih), mptr(dW_hh),
                   opt_mptr(db_ih), opt_mptr(db_hh), opt_ptr(dy_a), opt_ptr(dhn_a), cptr(c.x),
                   opt_ptr(c.h0), cptr(c.weight_ih), cptr(c.weight_hh), cptr(c.y),
                   cptr(c.gate_acts), cptr(c.hwn), s, bs_ptr(c.batch_sizes), ws.p, kern,
                   nthreads);
    } else {
      Workspace ws(rnn_backward_workspace_size(kern, s, bs_ptr(c.batch_sizes) != nullptr));
      rnn_backward(dx.mutable_data(), dh0.mutable_data(), mptr(dW_ih), mptr(dW_hh),
                   opt_mptr(db_ih), opt_mptr(db_hh), opt_ptr(dy_a), opt_ptr(dhn_a), cptr(c.x),
                   opt_ptr(c.h0), cptr(c.weight_ih), cptr(c.weight_hh), cptr(c.y), c.relu, s,
                   bs_ptr(c.batch_sizes), ws.p, kern, nthreads);
    }
  }
  return py::make_tuple(dx, dh0, dW_ih, dW_hh, db_ih, db_hh);
}

template <class Cache>
const Cache& cache_arg(py::handle obj, const char* cls, const char* fwd) {
  if (!py::isinstance<Cache>(obj))
    throw py::type_error(std::string("cache: expected the ") + cls + " returned by " + fwd +
                         "(..., training=True), got " + type_name(obj));
  return obj.cast<const Cache&>();
}

template <class Cache>
void bind_cache(py::module_& m, const char* name) {
  py::class_<Cache>(m, name, "What a training forward keeps for backward.")
      .def_property_readonly("shape",
                             [](const Cache& c) {
                               return py::make_tuple(c.s.T, c.s.B, c.s.I, c.s.H);
                             })
      .def_property_readonly("nbytes",
                             [](const Cache& c) {
                               return (c.gates == 3 ? c.gate_acts.nbytes() + c.hwn.nbytes() : 0);
                             })
      .def("__repr__", [name](const Cache& c) {
        std::ostringstream os;
        os << name << "(T=" << c.s.T << ", B=" << c.s.B << ", I=" << c.s.I << ", H=" << c.s.H
           << ")";
        return os.str();
      });
}

// ---- streaming: one step into caller-owned buffers (no allocation) ------------------------------

int mode_gates(const std::string& mode) {
  if (mode == "LSTM") return 4;
  if (mode == "GRU") return 3;
  if (mode == "RNN_TANH" || mode == "RNN_RELU") return 1;
  throw py::value_error("mode: expected LSTM, GRU, RNN_TANH or RNN_RELU, got '" + mode + "'");
}

StepCell step_cell(const std::string& mode) {
  if (mode == "LSTM") return StepCell::kLSTM;
  if (mode == "GRU") return StepCell::kGRU;
  if (mode == "RNN_TANH") return StepCell::kRNNTanh;
  return StepCell::kRNNRelu;
}

index_t step_workspace_size_py(const std::string& mode, index_t B, index_t I, index_t H) {
  mode_gates(mode);
  return step_workspace_size(step_cell(mode), B, H);
}

// h_out, c_out = one step from x (B, I), h, c (B, H). The outputs must not alias the inputs.
void step_into_py(const std::string& mode, py::handle x, py::handle h, py::handle c,
                  py::handle weight_ih, py::handle weight_hh, py::handle bias_ih,
                  py::handle bias_hh, py::handle h_out, py::handle c_out, py::handle workspace) {
  const int g = mode_gates(mode);
  py::array xa = check_float_array(x, "x_t", 2, "(B, I)");
  py::array whh = check_float_array(weight_hh, "weight_hh", 2, "(G, H)");
  const index_t B = xa.shape(0), I = xa.shape(1), H = whh.shape(1), G = g * H;
  const std::string gn = g == 1 ? "H" : std::to_string(g) + "H";
  xa = arg(x, "x_t", {{"B", B}, {"I", I}});
  py::array wih = arg(weight_ih, "weight_ih", {{gn, G}, {"I", I}});
  whh = arg(weight_hh, "weight_hh", {{gn, G}, {"H", H}});
  py::object bih = opt_arg(bias_ih, "bias_ih", {{gn, G}}), bhh = opt_arg(bias_hh, "bias_hh", {{gn, G}});
  py::array ha = arg(h, "h", {{"B", B}, {"H", H}});
  py::array ho = arg(h_out, "h_out", {{"B", B}, {"H", H}}, true);
  py::object ca = py::none(), co = py::none();
  if (g == 4) {
    ca = arg(c, "c", {{"B", B}, {"H", H}});
    co = arg(c_out, "c_out", {{"B", B}, {"H", H}}, true);
  }
  const index_t need = step_workspace_size(step_cell(mode), B, H);
  py::array ws = check_float_array(workspace, "workspace", 1, "(N,)");
  if (ws.shape(0) < need)
    throw py::value_error("workspace: expected at least " + std::to_string(need) +
                          " floats, got " + std::to_string(ws.shape(0)));
  check_layout(ws, "workspace", true);
  if (ha.data() == ho.data()) throw py::value_error("h_out: must not alias h");
  const Kernels& kern = active_kernels();
  const int nthreads = get_num_threads();
  py::gil_scoped_release nogil;
  step_forward(step_cell(mode), mptr(ho), opt_mptr(co), cptr(xa), cptr(ha), opt_ptr(ca),
               cptr(wih), cptr(whh), opt_ptr(bih), opt_ptr(bhh), B, I, H, mptr(ws), kern,
               nthreads);
}

}  // namespace

void bind_cells(py::module_& m) {
  m.def("step_workspace_size", &step_workspace_size_py, py::arg("mode"), py::arg("B"), py::arg("I"),
        py::arg("H"));
  m.def("step_into", &step_into_py, py::arg("mode"), py::arg("x"), py::arg("h"), py::arg("c"),
        py::arg("weight_ih"), py::arg("weight_hh"), py::arg("bias_ih"), py::arg("bias_hh"),
        py::arg("h_out"), py::arg("c_out"), py::arg("workspace"));
  bind_cache<GRUCache>(m, "GRUCache");
  bind_cache<RNNCache>(m, "RNNCache");
  m.def("gru_forward", &gru_forward_py, py::arg("x"), py::arg("weight_ih"), py::arg("weight_hh"),
        py::arg("bias_ih"), py::arg("bias_hh"), py::arg("h0"), py::arg("training"),
        py::arg("batch_sizes") = py::none());
  m.def(
      "gru_backward",
      [](py::handle cache, py::handle dy, py::handle dh_n, py::handle dw_ih, py::handle dw_hh,
         py::handle db_ih, py::handle db_hh) {
        return cell_backward_py(cache_arg<GRUCache>(cache, "GRUCache", "gru_forward"), dy, dh_n,
                                dw_ih, dw_hh, db_ih, db_hh);
      },
      py::arg("cache"), py::arg("dy"), py::arg("dh_n"), py::arg("dweight_ih") = py::none(),
      py::arg("dweight_hh") = py::none(), py::arg("dbias_ih") = py::none(),
      py::arg("dbias_hh") = py::none());
  m.def("rnn_forward", &rnn_forward_py, py::arg("x"), py::arg("weight_ih"), py::arg("weight_hh"),
        py::arg("bias_ih"), py::arg("bias_hh"), py::arg("h0"), py::arg("nonlinearity"),
        py::arg("training"), py::arg("batch_sizes") = py::none());
  m.def(
      "rnn_backward",
      [](py::handle cache, py::handle dy, py::handle dh_n, py::handle dw_ih, py::handle dw_hh,
         py::handle db_ih, py::handle db_hh) {
        return cell_backward_py(cache_arg<RNNCache>(cache, "RNNCache", "rnn_forward"), dy, dh_n,
                                dw_ih, dw_hh, db_ih, db_hh);
      },
      py::arg("cache"), py::arg("dy"), py::arg("dh_n"), py::arg("dweight_ih") = py::none(),
      py::arg("dweight_hh") = py::none(), py::arg("dbias_ih") = py::none(),
      py::arg("dbias_hh") = py::none());
}
