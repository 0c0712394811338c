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

#include "bind_common.h"
#include "cells/gru.h"
#include "cells/lstm.h"
#include "cells/step.h"
#include "cells/rnn.h"
#include "dispatch.h"

namespace py = pybind11;
using namespace lstm_fast;
using namespace lstm_fast::bind;

namespace {

// Arguments common to the GRU (gates = 3) and RNN (gates = 1) calls.
struct CellArgs {
  py::array x = unset(), w_ih = unset(), w_hh = unset();
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
  a.w_hh = arg(weight_hh, "weight_hh", {{g.c_str(), gates * H}, {"H", H}});
  a.w_ih = arg(weight_ih, "weight_ih", {{g.c_str(), gates * H}, {"I", I}});
  a.b_ih = opt_arg(bias_ih, "bias_ih", {{g.c_str(), gates * H}});
  a.b_hh = opt_arg(bias_hh, "bias_hh", {{g.c_str(), gates * H}});
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
  py::array x = unset(), weight_ih = unset(), weight_hh = unset(), y = unset();
  py::array gate_acts = unset(), hwn = unset();  // the GRU's (not set for the RNN)
  bool has_bias_ih = false, has_bias_hh = false;
};
struct GRUCache : CellCache {};
struct RNNCache : CellCache {};

py::tuple gru_forward_py(py::handle x, py::handle weight_ih, py::handle weight_hh,
                         py::handle bias_ih, py::handle bias_hh, py::handle h0, bool training,
                         py::handle batch_sizes) {
  CellArgs a = check_cell_args(3, x, weight_ih, weight_hh, bias_ih, bias_hh, h0, batch_sizes);
  const CellSizes s = a.s;
  check_output("x", "y", {{"T", s.T}, {"B", s.B}, {"H", s.H}});
  check_output("x", "h_n", {{"B", s.B}, {"H", s.H}});
  if (training) check_output("x", "gates", {{"T", s.T}, {"B", s.B}, {"3H", 3 * s.H}});
  const Kernels& kern = active_kernels();
  const int nthreads = team_threads();
  farray y = new_array({s.T, s.B, s.H}), h_n = new_array({s.B, s.H});
  farray gates = unset<farray>(), hwn = unset<farray>();
  if (training) {
    gates = new_array({s.T, s.B, 3 * s.H});
    hwn = new_array({s.T, s.B, s.H});
  }
  {
    py::gil_scoped_release nogil;
    Workspace ws(
        gru_forward_workspace_size(kern, s, training, bs_ptr(a.batch_sizes) != nullptr,
                                   nthreads));
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
  check_output("x", "y", {{"T", s.T}, {"B", s.B}, {"H", s.H}});
  check_output("x", "h_n", {{"B", s.B}, {"H", s.H}});
  const Kernels& kern = active_kernels();
  const int nthreads = team_threads();
  farray y = new_array({s.T, s.B, s.H}), h_n = new_array({s.B, s.H});
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
                           py::handle dbias_hh, bool need_dx) {
  const CellSizes s = c.s;
  const index_t T = s.T, B = s.B, I = s.I, H = s.H, G = c.gates * H;
  const std::string g = c.gates == 1 ? "H" : "3H";
  check_unchanged(c.weight_ih, {G, I}, "weight_ih");
  check_unchanged(c.weight_hh, {G, H}, "weight_hh");
  check_unchanged(c.x, {T, B, I}, "x");
  check_unchanged(c.y, {T, B, H}, "y");
  check_unchanged(c.h0, {B, H}, "h0");  // (the saved gates are the cache's own, not shown)
  py::object dy_a = opt_arg(dy, "dy", {{"T", T}, {"B", B}, {"H", H}});
  py::object dhn_a = opt_arg(dh_n, "dh_n", {{"B", B}, {"H", H}});
  bool fresh[4] = {};  // gradients allocated here: the core writes them instead of adding
  py::array dW_ih = grad_out(dweight_ih, "dweight_ih", {{g.c_str(), G}, {"I", I}}, &fresh[0]);
  py::array dW_hh = grad_out(dweight_hh, "dweight_hh", {{g.c_str(), G}, {"H", H}}, &fresh[1]);
  py::object db_ih = py::none(), db_hh = py::none();
  if (c.has_bias_ih) db_ih = grad_out(dbias_ih, "dbias_ih", {{g.c_str(), G}}, &fresh[2]);
  if (c.has_bias_hh) db_hh = grad_out(dbias_hh, "dbias_hh", {{g.c_str(), G}}, &fresh[3]);
  const unsigned fresh_mask =
      (fresh[0] ? 1u : 0u) | (fresh[1] ? 2u : 0u) | (fresh[2] ? 4u : 0u) | (fresh[3] ? 8u : 0u);
  const py::handle none(Py_None);
  check_separate({{"dweight_ih", dweight_ih},
                  {"dweight_hh", dweight_hh},
                  {"dbias_ih", c.has_bias_ih ? dbias_ih : none},
                  {"dbias_hh", c.has_bias_hh ? dbias_hh : none}},
                 {{"dy", dy},
                  {"dh_n", dh_n},
                  {"cache's x", c.x},
                  {"cache's weight_ih", c.weight_ih},
                  {"cache's weight_hh", c.weight_hh},
                  {"cache's y", c.y},
                  {"cache's h0", c.h0}});
  // need_dx = false: no dx GEMM; with batch_sizes x's packed rows go through a scratch block.
  farray dx = need_dx ? new_array({T, B, I}) : farray(), dh0 = new_array({B, H});
  const bool scratch = !need_dx && bs_ptr(c.batch_sizes) != nullptr;
  const Kernels& kern = active_kernels();
  const int nthreads = team_threads();
  AccumulateSet given;  // the caller's gradients this call adds into
  for (py::handle h : {dweight_ih, dweight_hh, c.has_bias_ih ? dbias_ih : none,
                       c.has_bias_hh ? dbias_hh : none})
    given.add(h);
  {
    py::gil_scoped_release nogil;
    AccumulateGuard hold(given);
    Workspace X(scratch ? std::max<index_t>(1, T * B * I) : 1);
    float* dxp = need_dx ? dx.mutable_data() : scratch ? X.p : nullptr;
    if (c.gates == 3) {
      Workspace ws(
          gru_backward_workspace_size(kern, s, bs_ptr(c.batch_sizes) != nullptr, nthreads));
      gru_backward(dxp, dh0.mutable_data(), mptr(dW_ih), mptr(dW_hh),
                   opt_mptr(db_ih), opt_mptr(db_hh), opt_ptr(dy_a), opt_ptr(dhn_a), cptr(c.x),
                   opt_ptr(c.h0), cptr(c.weight_ih), cptr(c.weight_hh), cptr(c.y),
                   cptr(c.gate_acts), cptr(c.hwn), s, bs_ptr(c.batch_sizes), ws.p, kern,
                   nthreads, need_dx, fresh_mask);
    } else {
      Workspace ws(rnn_backward_workspace_size(kern, s, bs_ptr(c.batch_sizes) != nullptr));
      rnn_backward(dxp, dh0.mutable_data(), mptr(dW_ih), mptr(dW_hh),
                   opt_mptr(db_ih), opt_mptr(db_hh), opt_ptr(dy_a), opt_ptr(dhn_a), cptr(c.x),
                   opt_ptr(c.h0), cptr(c.weight_ih), cptr(c.weight_hh), cptr(c.y), c.relu, s,
                   bs_ptr(c.batch_sizes), ws.p, kern, nthreads, need_dx, fresh_mask);
    }
  }
  return py::make_tuple(need_dx ? py::object(dx) : py::object(py::none()), dh0, dW_ih, dW_hh,
                        db_ih, db_hh);
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
      .def_property_readonly(
          "batch_sizes", [](const Cache& c) { return vector_copy(c.batch_sizes); },
          "The forward's batch_sizes (int64 (T,), a copy), or None.")
      .def("__repr__", [name](const Cache& c) {
        std::ostringstream os;
        os << name << "(T=" << c.s.T << ", B=" << c.s.B << ", I=" << c.s.I << ", H=" << c.s.H
           << ")";
        return os.str();
      });
  forward_made_only(m.attr(name));
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
  const int g = mode_gates(mode);
  const std::pair<const char*, index_t> sizes[3] = {{"B", B}, {"I", I}, {"H", H}};
  for (const auto& d : sizes)
    if (d.second < 0)
      throw py::value_error(std::string(d.first) + ": expected a size >= 0, got " +
                            std::to_string(d.second));
  // two (B, G) blocks: refuse sizes whose product wraps around (or cannot exist)
  check_output("B", "workspace", {{"B", B}, {"H", H}, {"2 x gates", 2 * g}});
  return step_workspace_size(step_cell(mode), B, H);
}

// The name of the first (output, other argument) pair whose memory overlaps, as
// "h_out: must not overlap h", or null: the outputs (h_out, c_out, workspace) are written while
// the inputs are read, so they may share no byte with an input or with each other.
const char* step_overlap(py::handle x, py::handle h, py::handle c, py::handle weight_ih,
                         py::handle weight_hh, py::handle bias_ih, py::handle bias_hh,
                         py::handle h_out, py::handle c_out, py::handle workspace) {
  static const char* const kMsg[3][9] = {
      {"h_out: must not overlap x_t", "h_out: must not overlap h", "h_out: must not overlap c",
       "h_out: must not overlap weight_ih", "h_out: must not overlap weight_hh",
       "h_out: must not overlap bias_ih", "h_out: must not overlap bias_hh", nullptr, nullptr},
      {"c_out: must not overlap x_t", "c_out: must not overlap h", "c_out: must not overlap c",
       "c_out: must not overlap weight_ih", "c_out: must not overlap weight_hh",
       "c_out: must not overlap bias_ih", "c_out: must not overlap bias_hh",
       "c_out: must not overlap h_out", nullptr},
      {"workspace: must not overlap x_t", "workspace: must not overlap h",
       "workspace: must not overlap c", "workspace: must not overlap weight_ih",
       "workspace: must not overlap weight_hh", "workspace: must not overlap bias_ih",
       "workspace: must not overlap bias_hh", "workspace: must not overlap h_out",
       "workspace: must not overlap c_out"}};
  const Span other[9] = {span_of(x),       span_of(h),       span_of(c),
                         span_of(weight_ih), span_of(weight_hh), span_of(bias_ih),
                         span_of(bias_hh), span_of(h_out),   span_of(c_out)};
  const Span outs[3] = {other[7], other[8], span_of(workspace)};
  for (int o = 0; o < 3; ++o)
    for (int i = 0; i < 9; ++i)
      if (kMsg[o][i] && overlap(outs[o], other[i])) return kMsg[o][i];
  return nullptr;
}

// h_out, c_out = one step from x (B, I), h, c (B, H). The outputs must not overlap the inputs.
void step_into_py(const std::string& mode, py::handle x, py::handle h, py::handle c,
                  py::handle weight_ih, py::handle weight_hh, py::handle bias_ih,
                  py::handle bias_hh, py::handle h_out, py::handle c_out, py::handle workspace) {
  const int g = mode_gates(mode);
  // Hot path (a streaming step is a few microseconds): every argument as the layer passes it.
  if (py::array::check_(x) && py::array::check_(weight_hh) && py::array::check_(workspace)) {
    const auto* xp = py::detail::array_proxy(x.ptr());
    const auto* wp = py::detail::array_proxy(weight_hh.ptr());
    const auto* sp = py::detail::array_proxy(workspace.ptr());
    if (xp->nd == 2 && wp->nd == 2 && sp->nd == 1) {
      const index_t B = xp->dimensions[0], I = xp->dimensions[1], H = wp->dimensions[1];
      const index_t G = g * H;
      const bool lstm = g == 4;
      if (quick_ok(x, {B, I}) && quick_ok(weight_hh, {G, H}) && quick_ok(weight_ih, {G, I}) &&
          (bias_ih.is_none() || quick_ok(bias_ih, {G})) &&
          (bias_hh.is_none() || quick_ok(bias_hh, {G})) && quick_ok(h, {B, H}) &&
          quick_ok(h_out, {B, H}, true) && (!lstm || quick_ok(c, {B, H})) &&
          (!lstm || quick_ok(c_out, {B, H}, true)) && quick_ok(workspace, {sp->dimensions[0]}, true) &&
          sp->dimensions[0] >= step_workspace_size(step_cell(mode), B, H) &&
          !step_overlap(x, h, lstm ? c : py::none(), weight_ih, weight_hh, bias_ih, bias_hh,
                        h_out, lstm ? c_out : py::none(), workspace)) {
        auto data = [](py::handle a) { return py::detail::array_proxy(a.ptr())->data; };
        auto f = [&](py::handle a) { return reinterpret_cast<float*>(data(a)); };
        const Kernels& kern = active_kernels();
        const int nthreads = team_threads();
        py::gil_scoped_release nogil;
        step_forward(step_cell(mode), f(h_out), lstm ? f(c_out) : nullptr, f(x), f(h),
                     lstm ? f(c) : nullptr, f(weight_ih), f(weight_hh),
                     bias_ih.is_none() ? nullptr : f(bias_ih),
                     bias_hh.is_none() ? nullptr : f(bias_hh), B, I, H, f(workspace), kern,
                     nthreads);
        return;
      }
    }
  }
  // Full checks, with errors naming the argument.
  py::array xa = check_float_array(x, "x_t", 2, "(B, I)");
  py::array whh = check_float_array(weight_hh, "weight_hh", 2, "(G, H)");
  const index_t B = xa.shape(0), I = xa.shape(1), H = whh.shape(1), G = g * H;
  const std::string gn = g == 1 ? "H" : std::to_string(g) + "H";
  xa = arg(x, "x_t", {{"B", B}, {"I", I}});
  py::array wih = arg(weight_ih, "weight_ih", {{gn.c_str(), G}, {"I", I}});
  whh = arg(weight_hh, "weight_hh", {{gn.c_str(), G}, {"H", H}});
  py::object bih = opt_arg(bias_ih, "bias_ih", {{gn.c_str(), G}});
  py::object bhh = opt_arg(bias_hh, "bias_hh", {{gn.c_str(), G}});
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
  if (const char* msg = step_overlap(xa, ha, ca, wih, whh, bih, bhh, ho, co, ws))
    throw py::value_error(msg);
  const Kernels& kern = active_kernels();
  const int nthreads = team_threads();
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
         py::handle db_ih, py::handle db_hh, bool need_dx) {
        return cell_backward_py(cache_arg<GRUCache>(cache, "GRUCache", "gru_forward"), dy, dh_n,
                                dw_ih, dw_hh, db_ih, db_hh, need_dx);
      },
      py::arg("cache"), py::arg("dy"), py::arg("dh_n"), py::arg("dweight_ih") = py::none(),
      py::arg("dweight_hh") = py::none(), py::arg("dbias_ih") = py::none(),
      py::arg("dbias_hh") = py::none(), py::kw_only(), py::arg("need_dx") = true);
  m.def("rnn_forward", &rnn_forward_py, py::arg("x"), py::arg("weight_ih"), py::arg("weight_hh"),
        py::arg("bias_ih"), py::arg("bias_hh"), py::arg("h0"), py::arg("nonlinearity"),
        py::arg("training"), py::arg("batch_sizes") = py::none());
  m.def(
      "rnn_backward",
      [](py::handle cache, py::handle dy, py::handle dh_n, py::handle dw_ih, py::handle dw_hh,
         py::handle db_ih, py::handle db_hh, bool need_dx) {
        return cell_backward_py(cache_arg<RNNCache>(cache, "RNNCache", "rnn_forward"), dy, dh_n,
                                dw_ih, dw_hh, db_ih, db_hh, need_dx);
      },
      py::arg("cache"), py::arg("dy"), py::arg("dh_n"), py::arg("dweight_ih") = py::none(),
      py::arg("dweight_hh") = py::none(), py::arg("dbias_ih") = py::none(),
      py::arg("dbias_hh") = py::none(), py::kw_only(), py::arg("need_dx") = true);
}
