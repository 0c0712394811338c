// pybind11 bindings of the LSTM with projection (proj_size): the same rules as bindings.cpp
// (checks from bind_common.h) — every argument checked before any work with an error naming it
// and giving the expected vs the given shape, output sizes checked before allocation, nothing
// copied silently, outputs allocated with the GIL held, the GIL released around compute only.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>  // bind_common.h casts std::vector (the same in every file: ODR)

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "bind_common.h"
#include "cells/lstm_proj.h"
#include "dispatch.h"

namespace py = pybind11;
using namespace lstm_fast;
using namespace lstm_fast::bind;

namespace {

farray empty_(std::initializer_list<py::ssize_t> shape) { return new_array(shape); }

// What a training forward keeps for backward: references to its inputs (no copies), the
// post-activation gates, the cell states and m = o * tanh(c) before the projection.
struct LSTMProjCache {
  LstmSizes s{};
  index_t P = 0;
  py::object batch_sizes;  // None or int64 (T,)
  py::array x = unset(), weight_ih = unset(), weight_hh = unset(), weight_hr = unset();
  py::array y = unset(), gates = unset(), cells = unset(), m = unset();
  py::object h0, c0;  // None or arrays
  bool has_bias_ih = false, has_bias_hh = false;
};

struct ProjArgs {
  py::array x = unset(), w_ih = unset(), w_hh = unset(), w_hr = unset();
  py::object b_ih, b_hh, h0, c0, batch_sizes;
  LstmSizes s;
  index_t P;
};

// Sizes come from weight_hh (4H, P); every other argument is checked against them.
ProjArgs check_proj_args(py::handle x, py::handle weight_ih, py::handle weight_hh,
                         py::handle bias_ih, py::handle bias_hh, py::handle h0, py::handle c0,
                         py::handle weight_hr, py::handle batch_sizes) {
  ProjArgs a;
  a.x = check_float_array(x, "x", 3, "(T, B, I)");
  check_layout(a.x, "x", false);
  py::array w_hh = check_float_array(weight_hh, "weight_hh", 2, "(4H, P)");
  if (w_hh.shape(0) % 4 != 0 || w_hh.shape(0) == 0)
    throw py::value_error("weight_hh: expected shape (4H, P) with H >= 1, got " + shape_str(w_hh));
  const index_t T = a.x.shape(0), B = a.x.shape(1), I = a.x.shape(2);
  const index_t H = w_hh.shape(0) / 4, P = w_hh.shape(1);
  py::array w_hr = check_float_array(weight_hr, "weight_hr", 2, "(P, H)");
  if (w_hr.shape(0) != P || w_hr.shape(1) != H)
    throw py::value_error("weight_hr: expected shape " + expected_str({{"P", P}, {"H", H}}) +
                          ", got " + shape_str(w_hr) + " (H and P from weight_hh " +
                          shape_str(w_hh) + " = (4H, P))");
  a.w_hr = arg(weight_hr, "weight_hr", {{"P", P}, {"H", H}});
  if (P < 1 || P >= H)
    throw py::value_error("weight_hr: expected a projection size 0 < P < H, got shape " +
                          shape_str(w_hr) + " (P=" + std::to_string(P) + ", H=" +
                          std::to_string(H) + ")");
  a.s = LstmSizes{T, B, I, H};
  a.P = P;
  a.w_hh = arg(weight_hh, "weight_hh", {{"4H", 4 * H}, {"P", P}});
  a.w_ih = arg(weight_ih, "weight_ih", {{"4H", 4 * H}, {"I", I}});
  a.b_ih = opt_arg(bias_ih, "bias_ih", {{"4H", 4 * H}});
  a.b_hh = opt_arg(bias_hh, "bias_hh", {{"4H", 4 * H}});
  a.h0 = opt_arg(h0, "h0", {{"B", B}, {"P", P}});
  a.c0 = opt_arg(c0, "c0", {{"B", B}, {"H", H}});
  a.batch_sizes = check_batch_sizes(batch_sizes, T, B);
  return a;
}

py::tuple lstm_proj_forward_py(py::handle x, py::handle weight_ih, py::handle weight_hh,
                               py::handle bias_ih, py::handle bias_hh, py::handle h0,
                               py::handle c0, py::handle weight_hr, bool training,
                               py::handle batch_sizes) {
  ProjArgs a = check_proj_args(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, weight_hr,
                               batch_sizes);
  const LstmSizes s = a.s;
  const index_t P = a.P;
  check_output("x", "y", {{"T", s.T}, {"B", s.B}, {"P", P}});
  check_output("x", "c_n", {{"B", s.B}, {"H", s.H}});
  if (training) check_output("x", "gates", {{"T", s.T}, {"B", s.B}, {"4H", 4 * s.H}});
  const Kernels& kern = active_kernels();
  const int nthreads = team_threads();
  farray y = empty_({s.T, s.B, P}), h_n = empty_({s.B, P}), c_n = empty_({s.B, s.H});
  farray gates = unset<farray>(), cells = unset<farray>(), m = unset<farray>();
  if (training) {
    gates = empty_({s.T, s.B, 4 * s.H});
    cells = empty_({s.T, s.B, s.H});
    m = empty_({s.T, s.B, s.H});
  }
  {
    py::gil_scoped_release nogil;
    Workspace ws(lstm_proj_forward_workspace_size(kern, s, P, training));
    lstm_proj_forward(y.mutable_data(), h_n.mutable_data(), c_n.mutable_data(),
                      training ? gates.mutable_data() : nullptr,
                      training ? cells.mutable_data() : nullptr,
                      training ? m.mutable_data() : nullptr, cptr(a.x), opt_ptr(a.h0),
                      opt_ptr(a.c0), cptr(a.w_ih), cptr(a.w_hh), opt_ptr(a.b_ih),
                      opt_ptr(a.b_hh), cptr(a.w_hr), s, P, bs_ptr(a.batch_sizes), ws.p, kern,
                      nthreads);
  }
  py::object cache = py::none();
  if (training) {
    auto c = std::make_unique<LSTMProjCache>();
    c->s = s;
    c->P = P;
    c->x = a.x;
    c->weight_ih = a.w_ih;
    c->weight_hh = a.w_hh;
    c->weight_hr = a.w_hr;
    c->y = y;
    c->gates = gates;
    c->cells = cells;
    c->m = m;
    c->h0 = a.h0;
    c->c0 = a.c0;
    c->batch_sizes = a.batch_sizes;
    c->has_bias_ih = !a.b_ih.is_none();
    c->has_bias_hh = !a.b_hh.is_none();
    cache = py::cast(std::move(c));
  }
  return py::make_tuple(y, h_n, c_n, cache);
}

py::tuple lstm_proj_backward_py(py::handle cache_obj, py::handle dy, py::handle dh_n,
                                py::handle dc_n, py::handle dweight_ih, py::handle dweight_hh,
                                py::handle dbias_ih, py::handle dbias_hh,
                                py::handle dweight_hr, bool need_dx) {
  if (!py::isinstance<LSTMProjCache>(cache_obj))
    throw py::type_error("cache: expected the LSTMProjCache returned by lstm_forward(..., "
                         "weight_hr=..., training=True), got " +
                         type_name(cache_obj));
  const LSTMProjCache& c = cache_obj.cast<const LSTMProjCache&>();
  const LstmSizes s = c.s;
  const index_t T = s.T, B = s.B, I = s.I, H = s.H, P = c.P;
  check_unchanged(c.weight_ih, {4 * H, I}, "weight_ih");
  check_unchanged(c.weight_hh, {4 * H, P}, "weight_hh");
  check_unchanged(c.weight_hr, {P, H}, "weight_hr");
  check_unchanged(c.x, {T, B, I}, "x");
  check_unchanged(c.y, {T, B, P}, "y");
  check_unchanged(c.h0, {B, P}, "h0");
  check_unchanged(c.c0, {B, H}, "c0");
  check_unchanged(c.gates, {T, B, 4 * H}, "gates");
  check_unchanged(c.cells, {T, B, H}, "cells");
  check_unchanged(c.m, {T, B, H}, "m");
  py::object dy_a = opt_arg(dy, "dy", {{"T", T}, {"B", B}, {"P", P}});
  py::object dhn_a = opt_arg(dh_n, "dh_n", {{"B", B}, {"P", P}});
  py::object dcn_a = opt_arg(dc_n, "dc_n", {{"B", B}, {"H", H}});
  bool fresh[5] = {};  // gradients allocated here: the core writes them instead of adding
  py::array dW_ih = grad_out(dweight_ih, "dweight_ih", {{"4H", 4 * H}, {"I", I}}, &fresh[0]);
  py::array dW_hh = grad_out(dweight_hh, "dweight_hh", {{"4H", 4 * H}, {"P", P}}, &fresh[1]);
  py::array dW_hr = grad_out(dweight_hr, "dweight_hr", {{"P", P}, {"H", H}}, &fresh[4]);
  py::object db_ih = py::none(), db_hh = py::none();
  if (c.has_bias_ih) db_ih = grad_out(dbias_ih, "dbias_ih", {{"4H", 4 * H}}, &fresh[2]);
  if (c.has_bias_hh) db_hh = grad_out(dbias_hh, "dbias_hh", {{"4H", 4 * H}}, &fresh[3]);
  unsigned fresh_mask = 0;
  for (int i = 0; i < 5; ++i) fresh_mask |= fresh[i] ? 1u << i : 0u;
  const py::handle none(Py_None);
  check_separate({{"dweight_ih", dweight_ih},
                  {"dweight_hh", dweight_hh},
                  {"dweight_hr", dweight_hr},
                  {"dbias_ih", c.has_bias_ih ? dbias_ih : none},
                  {"dbias_hh", c.has_bias_hh ? dbias_hh : none}},
                 {{"dy", dy},
                  {"dh_n", dh_n},
                  {"dc_n", dc_n},
                  {"cache's x", c.x},
                  {"cache's weight_ih", c.weight_ih},
                  {"cache's weight_hh", c.weight_hh},
                  {"cache's weight_hr", c.weight_hr},
                  {"cache's y", c.y},
                  {"cache's gates", c.gates},
                  {"cache's cells", c.cells},
                  {"cache's m", c.m},
                  {"cache's h0", c.h0},
                  {"cache's c0", c.c0}});
  farray dx = need_dx ? empty_({T, B, I}) : farray(), dh0 = empty_({B, P}), dc0 = empty_({B, H});
  const Kernels& kern = active_kernels();
  const int nthreads = team_threads();
  AccumulateSet given;  // the caller's gradients this call adds into
  for (py::handle h : {dweight_ih, dweight_hh, dweight_hr, c.has_bias_ih ? dbias_ih : none,
                       c.has_bias_hh ? dbias_hh : none})
    given.add(h);
  {
    py::gil_scoped_release nogil;
    AccumulateGuard hold(given);
    Workspace ws(lstm_proj_backward_workspace_size(kern, s, P, bs_ptr(c.batch_sizes) != nullptr));
    lstm_proj_backward(need_dx ? dx.mutable_data() : nullptr, dh0.mutable_data(),
                       dc0.mutable_data(), mptr(dW_ih),
                       mptr(dW_hh), mptr(dW_hr), opt_mptr(db_ih), opt_mptr(db_hh), opt_ptr(dy_a),
                       opt_ptr(dhn_a), opt_ptr(dcn_a), cptr(c.x), opt_ptr(c.h0), opt_ptr(c.c0),
                       cptr(c.weight_ih), cptr(c.weight_hh), cptr(c.weight_hr), cptr(c.y),
                       cptr(c.gates), cptr(c.cells), cptr(c.m), s, P, bs_ptr(c.batch_sizes),
                       ws.p, kern, nthreads, need_dx, fresh_mask);
  }
  return py::make_tuple(need_dx ? py::object(dx) : py::object(py::none()), dh0, dc0, dW_ih,
                        dW_hh, db_ih, db_hh, dW_hr);
}

}  // namespace

void bind_lstm_proj(py::module_& m) {
  py::class_<LSTMProjCache>(m, "LSTMProjCache",
                            "What a training forward of the LSTM with projection keeps for "
                            "backward (gates, cell states, pre-projection outputs m and "
                            "references to its inputs).")
      .def_property_readonly("shape",
                             [](const LSTMProjCache& c) {
                               return py::make_tuple(c.s.T, c.s.B, c.s.I, c.s.H, c.P);
                             })
      .def_property_readonly("gates", [](const LSTMProjCache& c) { return c.gates; })
      .def_property_readonly("cells", [](const LSTMProjCache& c) { return c.cells; })
      .def_property_readonly("m", [](const LSTMProjCache& c) { return c.m; })
      .def_property_readonly(
          "batch_sizes", [](const LSTMProjCache& c) { return vector_copy(c.batch_sizes); },
          "The forward's batch_sizes (int64 (T,), a copy), or None.")
      .def_property_readonly("nbytes",
                             [](const LSTMProjCache& c) {
                               return c.gates.nbytes() + c.cells.nbytes() + c.m.nbytes();
                             })
      .def("__repr__", [](const LSTMProjCache& c) {
        std::ostringstream os;
        os << "LSTMProjCache(T=" << c.s.T << ", B=" << c.s.B << ", I=" << c.s.I
           << ", H=" << c.s.H << ", P=" << c.P << ")";
        return os.str();
      });
  forward_made_only(m.attr("LSTMProjCache"));
  m.def("lstm_proj_forward", &lstm_proj_forward_py, py::arg("x"), py::arg("weight_ih"),
        py::arg("weight_hh"), py::arg("bias_ih"), py::arg("bias_hh"), py::arg("h0"),
        py::arg("c0"), py::arg("weight_hr"), py::arg("training"),
        py::arg("batch_sizes") = py::none());
  m.def("lstm_proj_backward", &lstm_proj_backward_py, py::arg("cache"), py::arg("dy"),
        py::arg("dh_n"), py::arg("dc_n"), py::arg("dweight_ih") = py::none(),
        py::arg("dweight_hh") = py::none(), py::arg("dbias_ih") = py::none(),
        py::arg("dbias_hh") = py::none(), py::arg("dweight_hr") = py::none(), py::kw_only(),
        py::arg("need_dx") = true);
  // Floats of scratch memory lstm_proj_forward takes for these sizes (for tests of its size
  // arithmetic at shapes too large to run): sizes >= 0 whose y (T, B, P) and c_n (B, H) could
  // exist, as lstm_proj_forward checks them.
  m.def(
      "_proj_forward_workspace_floats",
      [](index_t T, index_t B, index_t I, index_t H, index_t P, bool training) {
        for (const index_t v : {T, B, I, H, P})
          if (v < 0 || static_cast<std::uint64_t>(v) > kMaxBytes / sizeof(float))
            throw py::value_error("sizes: expected values in [0, 2^45], got " +
                                  std::to_string(v));
        check_output("sizes", "y", {{"T", T}, {"B", B}, {"P", P}});
        check_output("sizes", "c_n", {{"B", B}, {"H", H}});
        check_output("sizes", "weight_hh", {{"4H", 4 * H}, {"P", P}});
        check_output("sizes", "weight_ih", {{"4H", 4 * H}, {"I", I}});
        return lstm_proj_forward_workspace_size(active_kernels(), LstmSizes{T, B, I, H}, P,
                                                training);
      },
      py::arg("T"), py::arg("B"), py::arg("I"), py::arg("H"), py::arg("P"),
      py::arg("training"));
  m.def(
      "_proj_choose_schedule",
      [](index_t T, index_t B, index_t I, index_t H, index_t P, int threads) {
        return std::string(schedule_name(
            lstm_proj_choose_schedule(active_kernels(), LstmSizes{T, B, I, H}, P, threads)));
      },
      py::arg("T"), py::arg("B"), py::arg("I"), py::arg("H"), py::arg("P"), py::arg("threads"));
}
