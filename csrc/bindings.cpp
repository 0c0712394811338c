// pybind11 bindings: arrays in, arrays out. Every argument is checked before any work (dtype,
// rank, shape, contiguity, alignment, writeability) with an error that names it and says what was
// expected and what was given. Nothing is converted or copied silently. Outputs are allocated
// with the GIL held; the GIL is released around compute only.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "bind_common.h"
#include "cells/lstm.h"
#include "cells/team.h"
#include "dispatch.h"
#include "gemm/gemm.h"

namespace py = pybind11;
using namespace lstm_fast;
using namespace lstm_fast::bind;

namespace {

farray empty(std::initializer_list<py::ssize_t> shape) { return new_array(shape); }

// What a training forward keeps for backward: references to its inputs (no copies) and the
// post-activation gates and cell states.
struct LSTMCache {
  LstmSizes s{};
  py::object batch_sizes;  // None or int64 (T,)
  py::object order = py::none();  // None or int64 (B,): sorted_indices (x, dx unsorted)
  py::object ids = py::none();  // or int64 (T, B): an embedding input (then x is E)
  index_t V = 0;           // rows of E with ids
  py::array x = unset(), weight_ih = unset(), weight_hh = unset();
  py::array y = unset(), gates = unset(), cells = unset();
  py::object h0, c0;  // None or arrays
  bool has_bias_ih = false, has_bias_hh = false;
  std::vector<py::ssize_t> wih_shape, whh_shape;
};

struct LstmArgs {
  py::array x = unset(), w_ih = unset(), w_hh = unset();
  py::object b_ih, b_hh, h0, c0, batch_sizes;
  LstmSizes s;
};

LstmArgs check_lstm_args(py::handle x, py::handle weight_ih, py::handle weight_hh,
                         py::handle bias_ih, py::handle bias_hh, py::handle h0, py::handle c0,
                         py::handle batch_sizes) {
  LstmArgs a;
  a.x = check_float_array(x, "x", 3, "(T, B, I)");
  py::array w_hh = check_float_array(weight_hh, "weight_hh", 2, "(4H, H)");
  const index_t T = a.x.shape(0), B = a.x.shape(1), I = a.x.shape(2), H = w_hh.shape(1);
  a.s = LstmSizes{T, B, I, H};
  check_layout(a.x, "x", false);
  a.w_hh = arg(weight_hh, "weight_hh", {{"4H", 4 * H}, {"H", H}});
  a.w_ih = arg(weight_ih, "weight_ih", {{"4H", 4 * H}, {"I", I}});
  a.b_ih = bias_ih.is_none() ? py::object(py::none())
                             : py::object(arg(bias_ih, "bias_ih", {{"4H", 4 * H}}));
  a.b_hh = bias_hh.is_none() ? py::object(py::none())
                             : py::object(arg(bias_hh, "bias_hh", {{"4H", 4 * H}}));
  a.h0 = h0.is_none() ? py::object(py::none()) : py::object(arg(h0, "h0", {{"B", B}, {"H", H}}));
  a.c0 = c0.is_none() ? py::object(py::none()) : py::object(arg(c0, "c0", {{"B", B}, {"H", H}}));
  a.batch_sizes = check_batch_sizes(batch_sizes, T, B);
  return a;
}

py::tuple lstm_forward_py(py::handle x, py::handle weight_ih, py::handle weight_hh,
                          py::handle bias_ih, py::handle bias_hh, py::handle h0, py::handle c0,
                          bool training, py::handle batch_sizes, py::handle sorted_indices) {
  LstmArgs a = check_lstm_args(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, batch_sizes);
  const LstmSizes s = a.s;
  const py::object order = check_sorted_indices(sorted_indices, a.batch_sizes, s.B);
  check_output("x", "y", {{"T", s.T}, {"B", s.B}, {"H", s.H}});
  check_output("x", "h_n", {{"B", s.B}, {"H", s.H}});
  if (training) check_output("x", "gates", {{"T", s.T}, {"B", s.B}, {"4H", 4 * s.H}});
  const Kernels& kern = active_kernels();
  const int nthreads = team_threads();
  farray y = empty({s.T, s.B, s.H}), h_n = empty({s.B, s.H}), c_n = empty({s.B, s.H});
  farray gates = unset<farray>(), cells = unset<farray>();
  if (training) {
    gates = empty({s.T, s.B, 4 * s.H});
    cells = empty({s.T, s.B, s.H});
  }
  {
    py::gil_scoped_release nogil;
    Workspace ws(
        lstm_forward_workspace_size(kern, s, training, bs_ptr(a.batch_sizes) != nullptr,
                                    nthreads));
    lstm_forward(y.mutable_data(), h_n.mutable_data(), c_n.mutable_data(),
                 training ? gates.mutable_data() : nullptr,
                 training ? cells.mutable_data() : nullptr, cptr(a.x), opt_ptr(a.h0),
                 opt_ptr(a.c0), cptr(a.w_ih), cptr(a.w_hh), opt_ptr(a.b_ih), opt_ptr(a.b_hh), s,
                 bs_ptr(a.batch_sizes), ws.p, kern, nthreads, nullptr, nullptr,
                 order_ptr(order));
  }
  py::object cache = py::none();
  if (training) {
    auto c = std::make_unique<LSTMCache>();
    c->s = s;
    c->order = order;
    c->x = a.x;
    c->weight_ih = a.w_ih;
    c->weight_hh = a.w_hh;
    c->y = y;
    c->gates = gates;
    c->cells = cells;
    c->h0 = a.h0;
    c->c0 = a.c0;
    c->batch_sizes = a.batch_sizes;
    c->has_bias_ih = !a.b_ih.is_none();
    c->has_bias_hh = !a.b_hh.is_none();
    c->wih_shape = {4 * s.H, s.I};
    c->whh_shape = {4 * s.H, s.H};
    cache = py::cast(std::move(c));
  }
  return py::make_tuple(y, h_n, c_n, cache);
}

// The first layer of an embedding -> LSTM stack in one call: x = E[ids] is never formed; the
// input projection of each token is a row of table = E . W_ih^T + b_ih + b_hh (V rows, one GEMM
// per call) gathered by id. Results are bitwise those of lstm_forward(E[ids], ...) for every
// shape: each table row is summed as that call sums a row of x on its path (unpacked or packed,
// lstm_embedding_table). The cache remembers ids and E; its backward sends the input gradient
// to E (dembedding) instead of dx: dZ's rows summed per token first, equal to the index-add of
// lstm_backward's dx rows to float rounding.
py::tuple lstm_forward_embedded_py(py::handle ids_obj, py::handle emb_obj, py::handle weight_ih,
                                   py::handle weight_hh, py::handle bias_ih, py::handle bias_hh,
                                   py::handle h0, py::handle c0, bool training) {
  if (!py::isinstance<py::array>(ids_obj) ||
      (py::reinterpret_borrow<py::array>(ids_obj).dtype().kind() != 'i' &&
       py::reinterpret_borrow<py::array>(ids_obj).dtype().kind() != 'u'))
    throw py::type_error(
        "ids: expected a numpy.ndarray of integers, got " +
        (py::isinstance<py::array>(ids_obj)
             ? "dtype " + std::string(py::str(py::reinterpret_borrow<py::array>(ids_obj).dtype()))
             : type_name(ids_obj)));
  auto ids = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(ids_obj);
  if (!ids || ids.ndim() != 2)
    throw py::value_error("ids: expected 2 dimensions (T, B), got " +
                          std::to_string(ids ? ids.ndim() : -1));
  py::array E = check_float_array(emb_obj, "embedding", 2, "(V, I)");
  check_layout(E, "embedding", false);
  const index_t T = ids.shape(0), B = ids.shape(1), V = E.shape(0), I = E.shape(1);
  py::array w_hh = check_float_array(weight_hh, "weight_hh", 2, "(4H, H)");
  const index_t H = w_hh.shape(1), G = 4 * H;
  const LstmSizes s{T, B, I, H};
  w_hh = arg(weight_hh, "weight_hh", {{"4H", G}, {"H", H}});
  py::array w_ih = arg(weight_ih, "weight_ih", {{"4H", G}, {"I", I}});
  py::object b_ih = opt_arg(bias_ih, "bias_ih", {{"4H", G}});
  py::object b_hh = opt_arg(bias_hh, "bias_hh", {{"4H", G}});
  py::object h0a = opt_arg(h0, "h0", {{"B", B}, {"H", H}});
  py::object c0a = opt_arg(c0, "c0", {{"B", B}, {"H", H}});
  // A private copy: the kernels (GIL released) and the cache's backward index the table and
  // the embedding's gradient by these ids, checked once here; a caller's later in-place change
  // (a loader refilling its batch buffer) must not reach them. (ensure() returns the caller's
  // array itself when it is int64 C-contiguous already, else a conversion that is ours.)
  if (ids.ptr() == ids_obj.ptr()) {
    decltype(ids) copy({T, B});
    std::copy_n(ids.data(), T * B, copy.mutable_data());
    ids = std::move(copy);
  }
  const int64_t* ip = ids.data();
  for (index_t r = 0; r < T * B; ++r)
    if (ip[r] < 0 || ip[r] >= V)
      throw py::index_error("ids: expected values in [0, V=" + std::to_string(V) + "), got " +
                            std::to_string(ip[r]));
  check_output("ids", "y", {{"T", T}, {"B", B}, {"H", H}});
  if (training) check_output("ids", "gates", {{"T", T}, {"B", B}, {"4H", G}});
  check_output("embedding", "table", {{"V", V}, {"4H", G}});
  const Kernels& kern = active_kernels();
  const int nthreads = team_threads();
  farray y = empty({T, B, H}), h_n = empty({B, H}), c_n = empty({B, H});
  farray gates = unset<farray>(), cells = unset<farray>();
  if (training) {
    gates = empty({T, B, G});
    cells = empty({T, B, H});
  }
  {
    py::gil_scoped_release nogil;
    Workspace table(std::max<index_t>(1, V * G));
    lstm_embedding_table(table.p, cptr(E), cptr(w_ih), opt_ptr(b_ih), opt_ptr(b_hh), s, V, kern,
                         nthreads);
    Workspace ws(lstm_forward_workspace_size(kern, s, training, false, nthreads));
    lstm_forward(y.mutable_data(), h_n.mutable_data(), c_n.mutable_data(),
                 training ? gates.mutable_data() : nullptr,
                 training ? cells.mutable_data() : nullptr, nullptr, opt_ptr(h0a), opt_ptr(c0a),
                 cptr(w_ih), cptr(w_hh), nullptr, nullptr, s, nullptr, ws.p, kern, nthreads, ip,
                 table.p);
  }
  py::object cache = py::none();
  if (training) {
    auto c = std::make_unique<LSTMCache>();
    c->s = s;
    c->x = E;
    c->ids = ids;
    c->V = V;
    c->weight_ih = w_ih;
    c->weight_hh = w_hh;
    c->y = y;
    c->gates = gates;
    c->cells = cells;
    c->h0 = h0a;
    c->c0 = c0a;
    c->batch_sizes = py::none();
    c->has_bias_ih = !b_ih.is_none();
    c->has_bias_hh = !b_hh.is_none();
    c->wih_shape = {G, I};
    c->whh_shape = {G, H};
    cache = py::cast(std::move(c));
  }
  return py::make_tuple(y, h_n, c_n, cache);
}

py::tuple lstm_backward_py(py::handle cache_obj, py::handle dy, py::handle dh_n, py::handle dc_n,
                           py::handle dweight_ih, py::handle dweight_hh, py::handle dbias_ih,
                           py::handle dbias_hh, py::handle dembedding, bool need_dx) {
  if (!py::isinstance<LSTMCache>(cache_obj))
    throw py::type_error(
        "cache: expected the LSTMCache returned by lstm_forward(..., training=True), got " +
        type_name(cache_obj));
  const LSTMCache& c = cache_obj.cast<const LSTMCache&>();
  const LstmSizes s = c.s;
  const index_t T = s.T, B = s.B, I = s.I, H = s.H;
  check_unchanged(c.weight_ih, c.wih_shape, "weight_ih");
  check_unchanged(c.weight_hh, c.whh_shape, "weight_hh");
  const bool embedded = !c.ids.is_none();
  if (embedded)
    check_unchanged(c.x, {c.V, I}, "embedding");
  else
    check_unchanged(c.x, {T, B, I}, "x");
  check_unchanged(c.y, {T, B, H}, "y");
  check_unchanged(c.h0, {B, H}, "h0");
  check_unchanged(c.c0, {B, H}, "c0");
  check_unchanged(c.gates, {T, B, 4 * H}, "gates");
  check_unchanged(c.cells, {T, B, H}, "cells");
  if (!embedded && !dembedding.is_none())
    throw py::value_error("dembedding: expected None for a cache of lstm_forward (it has an x)");
  py::object dy_a = dy.is_none() ? py::object(py::none())
                                 : py::object(arg(dy, "dy", {{"T", T}, {"B", B}, {"H", H}}));
  py::object dhn_a =
      dh_n.is_none() ? py::object(py::none()) : py::object(arg(dh_n, "dh_n", {{"B", B}, {"H", H}}));
  py::object dcn_a =
      dc_n.is_none() ? py::object(py::none()) : py::object(arg(dc_n, "dc_n", {{"B", B}, {"H", H}}));
  bool fresh[4] = {};  // gradients allocated here: the core writes them instead of adding
  py::array dW_ih = grad_out(dweight_ih, "dweight_ih", {{"4H", 4 * H}, {"I", I}}, &fresh[0]);
  py::array dW_hh = grad_out(dweight_hh, "dweight_hh", {{"4H", 4 * H}, {"H", H}}, &fresh[1]);
  py::object db_ih = py::none(), db_hh = py::none();
  if (c.has_bias_ih) db_ih = grad_out(dbias_ih, "dbias_ih", {{"4H", 4 * H}}, &fresh[2]);
  if (c.has_bias_hh) db_hh = grad_out(dbias_hh, "dbias_hh", {{"4H", 4 * H}}, &fresh[3]);
  const unsigned fresh_mask =
      (fresh[0] ? 1u : 0u) | (fresh[1] ? 2u : 0u) | (fresh[2] ? 4u : 0u) | (fresh[3] ? 8u : 0u);
  py::array dE;
  if (embedded) dE = grad_out(dembedding, "dembedding", {{"V", c.V}, {"I", I}});
  check_separate({{"dweight_ih", dweight_ih},
                  {"dweight_hh", dweight_hh},
                  {"dbias_ih", c.has_bias_ih ? dbias_ih : py::handle(Py_None)},
                  {"dbias_hh", c.has_bias_hh ? dbias_hh : py::handle(Py_None)},
                  {"dembedding", dembedding}},
                 {{"dy", dy},
                  {"dh_n", dh_n},
                  {"dc_n", dc_n},
                  {embedded ? "cache's embedding" : "cache's x", c.x},
                  {"cache's weight_ih", c.weight_ih},
                  {"cache's weight_hh", c.weight_hh},
                  {"cache's y", c.y},
                  {"cache's gates", c.gates},
                  {"cache's cells", c.cells},
                  {"cache's h0", c.h0},
                  {"cache's c0", c.c0}});
  farray dh0 = empty({B, H}), dc0 = empty({B, H});
  // need_dx = false (an input without a gradient): no dx GEMM; with batch_sizes the core still
  // packs x's rows through a (T, B, I) scratch block.
  need_dx = need_dx && !embedded;
  farray dx = need_dx ? empty({T, B, I}) : farray();
  const bool scratch = !need_dx && !embedded && bs_ptr(c.batch_sizes) != nullptr;
  const Kernels& kern = active_kernels();
  const int nthreads = team_threads();
  AccumulateSet given;  // the caller's gradients this call adds into
  for (py::handle h : {dweight_ih, dweight_hh, c.has_bias_ih ? dbias_ih : py::handle(Py_None),
                       c.has_bias_hh ? dbias_hh : py::handle(Py_None),
                       embedded ? dembedding : py::handle(Py_None)})
    given.add(h);
  {
    py::gil_scoped_release nogil;
    AccumulateGuard hold(given);
    Workspace ws(
        lstm_backward_workspace_size(kern, s, bs_ptr(c.batch_sizes) != nullptr, nthreads));
    Workspace S(embedded ? std::max<index_t>(1, c.V * 4 * H) : 1);
    Workspace X(scratch ? std::max<index_t>(1, T * B * I) : 1);
    const int64_t* ids =
        embedded ? static_cast<const int64_t*>(c.ids.cast<py::array>().data()) : nullptr;
    lstm_backward(need_dx ? dx.mutable_data() : (scratch ? X.p : nullptr), dh0.mutable_data(),
                  dc0.mutable_data(),
                  mptr(dW_ih), mptr(dW_hh),
                  db_ih.is_none() ? nullptr : const_cast<float*>(opt_ptr(db_ih)),
                  db_hh.is_none() ? nullptr : const_cast<float*>(opt_ptr(db_hh)), opt_ptr(dy_a),
                  opt_ptr(dhn_a), opt_ptr(dcn_a), cptr(c.x), opt_ptr(c.h0), opt_ptr(c.c0),
                  cptr(c.weight_ih), cptr(c.weight_hh), cptr(c.y), cptr(c.gates), cptr(c.cells),
                  s, bs_ptr(c.batch_sizes), ws.p, kern, nthreads, ids, c.V,
                  embedded ? cptr(c.x) : nullptr, embedded ? mptr(dE) : nullptr, S.p,
                  order_ptr(c.order), need_dx, fresh_mask);
  }
  // with an embedding input, the first element is the embedding's gradient (accumulated)
  return py::make_tuple(embedded ? py::object(dE) : need_dx ? py::object(dx) : py::object(py::none()),
                        dh0, dc0, dW_ih, dW_hh, db_ih, db_hh);
}

py::array gemm_py(py::handle a_obj, py::handle b_obj, bool trans_a, bool trans_b,
                  py::handle bias_obj, py::handle out_obj, bool accumulate,
                  py::handle a_sums_obj) {
  py::array a = check_float_array(a_obj, "a", 2, trans_a ? "(K, M)" : "(M, K)");
  check_layout(a, "a", false);
  const index_t M = trans_a ? a.shape(1) : a.shape(0), K = trans_a ? a.shape(0) : a.shape(1);
  py::array b = check_float_array(b_obj, "b", 2, trans_b ? "(N, K)" : "(K, N)");
  const index_t N = trans_b ? b.shape(0) : b.shape(1);
  check_output("a", "c", {{"M", M}, {"N", N}});
  if (trans_b)
    b = arg(b_obj, "b", {{"N", N}, {"K", K}});
  else
    b = arg(b_obj, "b", {{"K", K}, {"N", N}});
  py::object bias = opt_arg(bias_obj, "bias", {{"N", N}});
  const float* bias_p = opt_ptr(bias);
  if (accumulate && out_obj.is_none())
    throw py::value_error("accumulate: expected an out array to accumulate into, got out=None");
  if (accumulate && bias_p)
    throw py::value_error("bias: expected None with accumulate=True (C += A . B has no bias)");
  py::array c = out_obj.is_none() ? py::array(empty({M, N}))
                                  : arg(out_obj, "out", {{"M", M}, {"N", N}}, true);
  py::object sums = a_sums_obj.is_none()
                       ? py::object(py::none())
                       : py::object(arg(a_sums_obj, "a_row_sums", {{"M", M}}, true));
  float* sums_p = opt_mptr(sums);
  auto overlaps = [](const py::array& x, const py::array& y) {
    const char *x0 = static_cast<const char*>(x.data()), *y0 = static_cast<const char*>(y.data());
    return x0 < y0 + y.nbytes() && y0 < x0 + x.nbytes();
  };
  if (!out_obj.is_none()) {
    for (const py::array* in : {&a, &b})
      if (overlaps(c, *in))
        throw py::value_error(std::string("out: expected memory separate from ") +
                              (in == &a ? "a" : "b") + ", got an overlapping array");
    if (!sums.is_none() && overlaps(c, sums.cast<py::array>()))
      throw py::value_error("a_row_sums: expected memory separate from out");
    // the bias is read while out's rows are written
    if (bias_p && overlaps(c, bias.cast<py::array>()))
      throw py::value_error("bias: expected memory separate from out, got an overlapping array");
  }
  if (!sums.is_none()) {  // the sums are accumulated while a is read (and b, and the bias)
    for (const py::array* in : {&a, &b})
      if (overlaps(sums.cast<py::array>(), *in))
        throw py::value_error(std::string("a_row_sums: expected memory separate from ") +
                              (in == &a ? "a" : "b") + ", got an overlapping array");
    if (bias_p && overlaps(sums.cast<py::array>(), bias.cast<py::array>()))
      throw py::value_error(
          "a_row_sums: expected memory separate from bias, got an overlapping array");
  }
  const Kernels& kern = active_kernels();
  const int nthreads = team_threads();
  float* cp = static_cast<float*>(c.mutable_data());
  AccumulateSet given;  // memory this call adds into (Linear's weight and bias gradients)
  if (accumulate) given.add(out_obj);
  given.add(sums);
  {
    py::gil_scoped_release nogil;
    AccumulateGuard hold(given);
    const index_t lda = a.shape(1), ldb = b.shape(1);
    MatView A = trans_a ? MatView{cptr(a), 1, lda} : MatView{cptr(a), lda, 1};
    MatView Bv = trans_b ? MatView{cptr(b), 1, ldb} : MatView{cptr(b), ldb, 1};
    gemm(kern, M, N, K, A, Bv, cp, N, accumulate, nthreads, bias_p, nullptr, sums_p);
  }
  return c;
}

// Fused softmax cross-entropy, in place on z (rows, V) float32 C-contiguous writeable; targets
// (rows,) int64 with -1 for ignored rows (checked in Python: lstm_fast.nn). Returns the
// per-row negative log-likelihoods (float64); z becomes scale * (softmax - onehot).
py::array_t<double> softmax_xent_py(py::handle z_obj, py::handle t_obj, double scale) {
  py::array z = check_float_array(z_obj, "z", 2, "(N, V)");
  check_layout(z, "z", true);
  const index_t N = z.shape(0), V = z.shape(1);
  auto t = py::array_t<int64_t, py::array::c_style>::ensure(t_obj);
  if (!t || t.ndim() != 1 || t.shape(0) != N)
    throw py::value_error("targets: expected shape (N=" + std::to_string(N) + ",) int64");
  const int64_t* tp = t.data();
  for (index_t r = 0; r < N; ++r)
    if (tp[r] >= V) throw py::index_error("targets: expected values < V=" + std::to_string(V));
  if (V == 0 && N > 0) throw py::value_error("z: expected V >= 1, got 0");
  py::array_t<double> nll(N);
  const Kernels& kern = active_kernels();
  const int nthreads = team_threads();
  {
    py::gil_scoped_release nogil;
    float* zp = static_cast<float*>(z.mutable_data());
    double* np_ = nll.mutable_data();
    const int P = N * V >= (index_t(1) << 16) ? nthreads : 1;
    const index_t blocks = (N + 15) / 16;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(P) schedule(static) if (P > 1)
#endif
    for (index_t blk = 0; blk < blocks; ++blk) {
      DenormalGuard ftz;
      const index_t r0 = blk * 16, r1 = std::min(N, r0 + 16);
      kern.softmax_xent(r1 - r0, V, zp + r0 * V, tp + r0, static_cast<float>(scale), np_ + r0);
    }
  }
  return nll;
}

// A float32, C-contiguous array of any shape (the optimizer's parameter-shaped buffers).
py::array flat_arg(py::handle obj, const std::string& name, bool writeable) {
  py::array a = check_float_type(obj, name);
  check_layout(a, name, writeable);
  return a;
}

// Elementwise kernels over large flat buffers: slices of whole vectors per thread from 64 Ki
// elements up (each element's arithmetic is the same wherever a slice starts).
template <class F>
void parallel_slices(index_t n, F&& f) {
  const int P = n >= (index_t(1) << 16) ? team_threads() : 1;
  if (P <= 1) {
    f(index_t(0), n);
    return;
  }
  const index_t chunk = ((n + P - 1) / P + 63) / 64 * 64;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(P) schedule(static)
#endif
  for (int q = 0; q < P; ++q) {
    const index_t j0 = std::min(n, q * chunk), j1 = std::min(n, j0 + chunk);
    if (j1 > j0) f(j0, j1);
  }
}

// One Adam / AdamW step in place on param, exp_avg, exp_avg_sq (coefficients: kernels.h).
void adam_step_py(py::handle p_obj, py::handle g_obj, py::handle m_obj, py::handle v_obj,
                  double b1, double b2, double step, double bc2_sqrt, double eps, double l2,
                  double decay, bool zero_grad) {
  py::array p = flat_arg(p_obj, "param", true), g = flat_arg(g_obj, "grad", zero_grad);
  py::array m = flat_arg(m_obj, "exp_avg", true), v = flat_arg(v_obj, "exp_avg_sq", true);
  const index_t n = p.size();
  for (auto* a : {&g, &m, &v})
    if (a->size() != n)
      throw py::value_error(std::string(a == &g ? "grad" : a == &m ? "exp_avg" : "exp_avg_sq") +
                            ": expected " + std::to_string(n) + " elements (param's), got " +
                            std::to_string(a->size()));
  const AdamCoeffs c{static_cast<float>(b1),        static_cast<float>(b2),
                     static_cast<float>(1.0 - b1),  static_cast<float>(1.0 - b2),
                     static_cast<float>(step),      static_cast<float>(bc2_sqrt),
                     static_cast<float>(eps),       static_cast<float>(l2),
                     static_cast<float>(decay)};
  const Kernels& kern = active_kernels();
  float* pp = static_cast<float*>(p.mutable_data());
  float* mp = static_cast<float*>(m.mutable_data());
  float* vp = static_cast<float*>(v.mutable_data());
  // g is only written when zero_grad (then checked writeable above)
  float* gp = const_cast<float*>(cptr(g));
  py::gil_scoped_release nogil;
  parallel_slices(n, [&](index_t j0, index_t j1) {
    DenormalGuard ftz;
    kern.adam(j1 - j0, pp + j0, gp + j0, mp + j0, vp + j0, c, zero_grad);
  });
}

// sum(x**2) in float64 over a float32 array of any shape.
double sumsq_py(py::handle x_obj) {
  py::array x = flat_arg(x_obj, "x", false);
  const index_t n = x.size();
  const Kernels& kern = active_kernels();
  const float* xp = cptr(x);
  constexpr index_t kBlock = index_t(1) << 15;  // fixed blocks: the same sum for any threads
  const index_t nb = (n + kBlock - 1) / kBlock;
  std::vector<double> part(static_cast<size_t>(nb));
  {
    py::gil_scoped_release nogil;
    const int P = n >= (index_t(1) << 16) ? team_threads() : 1;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(P) schedule(static) if (P > 1)
#endif
    for (index_t b = 0; b < nb; ++b) {
      const index_t j0 = b * kBlock;
      part[static_cast<size_t>(b)] = kern.sumsq(std::min(kBlock, n - j0), xp + j0);
    }
  }
  double total = 0.0;
  for (double d : part) total += d;
  return total;
}

// out[ids[n], :] += src[n, :] for n in order (an embedding's backward: np.add.at, in one pass).
void index_add_rows_py(py::handle out_obj, py::handle ids_obj, py::handle src_obj) {
  py::array out = check_float_array(out_obj, "out", 2, "(V, E)");
  check_layout(out, "out", true);
  const index_t V = out.shape(0), E = out.shape(1);
  auto ids = py::array_t<int64_t, py::array::c_style>::ensure(ids_obj);
  if (!ids || ids.ndim() != 1)
    throw py::value_error("ids: expected a 1-D integer array");
  const index_t N = ids.shape(0);
  py::array src = arg(src_obj, "src", {{"N", N}, {"E", E}});
  const int64_t* ip = ids.data();
  for (index_t n = 0; n < N; ++n)
    if (ip[n] < 0 || ip[n] >= V)
      throw py::index_error("ids: expected values in [0, V=" + std::to_string(V) + "), got " +
                            std::to_string(ip[n]) + " at position " + std::to_string(n));
  float* op = static_cast<float*>(out.mutable_data());
  const float* sp = cptr(src);
  AccumulateSet given;  // an embedding's gradient, added into
  given.add(out);
  py::gil_scoped_release nogil;
  AccumulateGuard hold(given);
  for (index_t n = 0; n < N; ++n) {
    float* o = op + ip[n] * E;
    const float* r = sp + n * E;
    for (index_t e = 0; e < E; ++e) o[e] += r[e];
  }
}

// out[t, j, :] = a[t, index[j], :] for a (T, B, F): the batch reordering of variable-length
// layers (rows sorted by length on the way in, back to the caller's order on the way out), in
// one pass on the thread team into pooled memory (np.take paid the page faults of a fresh
// array every call: 2.3 ms of a 9.5 ms S1 forward with lengths).
farray take_rows_py(py::handle a_obj, py::handle index_obj) {
  py::array a = check_float_array(a_obj, "a", 3, "(T, B, F)");
  check_layout(a, "a", false);
  auto idx = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(index_obj);
  if (!idx || idx.ndim() != 1)
    throw py::value_error("index: expected a 1-D integer array");
  const index_t T = a.shape(0), B = a.shape(1), F = a.shape(2), N = idx.shape(0);
  const int64_t* ip = idx.data();
  for (index_t j = 0; j < N; ++j)
    if (ip[j] < 0 || ip[j] >= B)
      throw py::index_error("index: expected values in [0, B=" + std::to_string(B) + "), got " +
                            std::to_string(ip[j]) + " at position " + std::to_string(j));
  check_output("index", "out", {{"T", T}, {"N", N}, {"F", F}});
  farray out = empty({static_cast<py::ssize_t>(T), static_cast<py::ssize_t>(N),
                      static_cast<py::ssize_t>(F)});
  // Nothing to copy: a (T, B, 0) input may have any T and N (no product of them is bounded),
  // and the row loop below would count T * N empty rows.
  if (T == 0 || N == 0 || F == 0) return out;
  const float* src = cptr(a);
  float* dst = out.mutable_data();
  py::gil_scoped_release nogil;
  const index_t rows = T * N;  // <= T * N * F, checked above
  const int P = rows * F >= (index_t(1) << 16) ? team_threads() : 1;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(P) schedule(static) if (P > 1)
#endif
  for (index_t r = 0; r < rows; ++r) {
    const index_t t = r / (N ? N : 1), j = r - t * N;
    std::memcpy(dst + r * F, src + (t * B + ip[j]) * F, F * sizeof(float));
  }
  return out;
}

farray activation_py(py::handle x_obj, bool tanh_) {
  py::array x = check_float_array(x_obj, "x", 1, "(N,)");
  check_layout(x, "x", false);
  farray y = empty({x.shape(0)});
  const Kernels& kern = active_kernels();
  {
    py::gil_scoped_release nogil;
    DenormalGuard ftz;
    (tanh_ ? kern.tanh : kern.sigmoid)(x.shape(0), cptr(x), y.mutable_data());
  }
  return y;
}

// First non-finite element of a float32 C-contiguous array: (flat index, is_nan), or None when
// all are finite or the array is not float32 C-contiguous (the compute calls reject those).
py::object find_nonfinite_py(py::handle obj) {
  if (!py::isinstance<py::array>(obj)) return py::none();
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!has_dtype<float>(a) || !(a.flags() & py::array::c_style) ||
      reinterpret_cast<std::uintptr_t>(a.data()) % alignof(float) != 0)
    return py::none();
  const float* p = cptr(a);
  const index_t n = a.size();
  index_t at = -1;
  {
    py::gil_scoped_release nogil;
    // Blocks of 1024: a branch-free finiteness test per block, the exact index only in the
    // block that has one (x - x is NaN exactly for NaN and +-Inf).
    for (index_t b0 = 0; b0 < n && at < 0; b0 += 1024) {
      const index_t b1 = std::min(n, b0 + 1024);
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // independent chains: vectorisable
      index_t i = b0;
      for (; i + 8 <= b1; i += 8)
        for (int k = 0; k < 8; ++k) acc[k] += p[i + k] - p[i + k];
      for (; i < b1; ++i) acc[0] += p[i] - p[i];
      float all = 0.0f;
      for (int k = 0; k < 8; ++k) all += acc[k];
      if (all == all) continue;
      for (index_t j = b0; j < b1; ++j)
        if (!std::isfinite(p[j])) {
          at = j;
          break;
        }
    }
  }
  if (at < 0) return py::none();
  return py::make_tuple(at, std::isnan(p[at]));
}

}  // namespace

void bind_cells(py::module_& m);  // bindings_cells.cpp: GRU, RNN
void bind_lstm_proj(py::module_& m);  // bindings_proj.cpp: LSTM with projection

PYBIND11_MODULE(_core, m) {
  m.doc() = "lstm_fast C++ core (private: use lstm_fast.ops and lstm_fast.LSTM)";
  // One-off lookups done at import rather than in the first call: pybind11's table of NumPy's
  // C API (an import of NumPy's multiarray module, ~0.3 ms here) and the CPU count.
  py::detail::npy_api::get();
  (void)max_threads();
  try {
    init_dispatch();
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const std::invalid_argument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });

  py::class_<LSTMCache>(m, "LSTMCache",
                        "What a training forward keeps for backward (gates, cell states and "
                        "references to its inputs).")
      .def_property_readonly("shape",
                             [](const LSTMCache& c) {
                               return py::make_tuple(c.s.T, c.s.B, c.s.I, c.s.H);
                             })
      .def_property_readonly(
          "gates", [](const LSTMCache& c) { return c.gates; },
          "(T, B, 4H) post-activation gates i, f, g, o. With batch_sizes the rows are packed "
          "(PackedSequence's data layout: step t's batch_sizes[t] rows follow step t-1's); rows "
          "past sum(batch_sizes) are unused.")
      .def_property_readonly("cells", [](const LSTMCache& c) { return c.cells; })
      .def_property_readonly(
          "batch_sizes", [](const LSTMCache& c) { return vector_copy(c.batch_sizes); },
          "The forward's batch_sizes (int64 (T,), a copy), or None.")
      .def_property_readonly(
          "sorted_indices", [](const LSTMCache& c) { return vector_copy(c.order); },
          "The forward's sorted_indices (int64 (B,), a copy), or None.")
      .def_property_readonly("nbytes",
                             [](const LSTMCache& c) { return c.gates.nbytes() + c.cells.nbytes(); })
      .def("__repr__", [](const LSTMCache& c) {
        std::ostringstream os;
        os << "LSTMCache(T=" << c.s.T << ", B=" << c.s.B << ", I=" << c.s.I << ", H=" << c.s.H
           << ")";
        return os.str();
      });
  forward_made_only(m.attr("LSTMCache"));

  m.def("lstm_forward", &lstm_forward_py, py::arg("x"), py::arg("weight_ih"),
        py::arg("weight_hh"), py::arg("bias_ih"), py::arg("bias_hh"), py::arg("h0"),
        py::arg("c0"), py::arg("training"), py::arg("batch_sizes") = py::none(),
        py::arg("sorted_indices") = py::none());
  m.def("lstm_backward", &lstm_backward_py, py::arg("cache"), py::arg("dy"), py::arg("dh_n"),
        py::arg("dc_n"), py::arg("dweight_ih") = py::none(), py::arg("dweight_hh") = py::none(),
        py::arg("dbias_ih") = py::none(), py::arg("dbias_hh") = py::none(),
        py::arg("dembedding") = py::none(), py::kw_only(), py::arg("need_dx") = true);
  m.def("lstm_forward_embedded", &lstm_forward_embedded_py, py::arg("ids"),
        py::arg("embedding"), py::arg("weight_ih"), py::arg("weight_hh"), py::arg("bias_ih"),
        py::arg("bias_hh"), py::arg("h0"), py::arg("c0"), py::arg("training"));
  bind_cells(m);
  bind_lstm_proj(m);
  m.def("gemm", &gemm_py, py::arg("a"), py::arg("b"), py::arg("trans_a") = false,
        py::arg("trans_b") = false, py::arg("bias") = py::none(), py::arg("out") = py::none(),
        py::arg("accumulate") = false, py::arg("a_row_sums") = py::none());
  m.def("softmax_xent", &softmax_xent_py, py::arg("z"), py::arg("targets"), py::arg("scale"));
  m.def("adam_step", &adam_step_py, py::arg("param"), py::arg("grad"), py::arg("exp_avg"),
        py::arg("exp_avg_sq"), py::arg("beta1"), py::arg("beta2"), py::arg("step_size"),
        py::arg("bias_correction2_sqrt"), py::arg("eps"), py::arg("l2") = 0.0,
        py::arg("decay") = 1.0, py::arg("zero_grad") = false);
  m.def("sumsq", &sumsq_py, py::arg("x"));
  m.def("take_rows", &take_rows_py, py::arg("a"), py::arg("index"));
  m.def("index_add_rows", &index_add_rows_py, py::arg("out"), py::arg("ids"), py::arg("src"));
  m.def("sigmoid", [](py::handle x) { return activation_py(x, false); }, py::arg("x"));
  m.def("tanh", [](py::handle x) { return activation_py(x, true); }, py::arg("x"));

  m.def("set_num_threads",
        [](long long n) { set_num_threads(checked_threads(n, "set_num_threads: n")); },
        py::arg("n"));
  m.def("max_threads", &max_threads);
  m.def("empty_cache", [] { workspace_pool().release(); });
  m.def("cached_bytes", [] { return workspace_pool().cached_bytes(); });
  m.def(
      "_set_local_threads",
      [](long long n) { set_local_num_threads(n == 0 ? 0 : checked_threads(n, "n")); },
      py::arg("n"));
  m.def("_get_local_threads", &get_local_num_threads);
  // (f0(), f1()) run at once by two threads of the OpenMP team: the caller's (f0) and the
  // team's first worker (f1), each holding the GIL only while it runs Python (the kernels they
  // call release it). For the two directions of a bidirectional layer (rnn._directions): after
  // any parallel region the team's worker spins for a few milliseconds waiting for more work,
  // and a helper thread of Python's of its own then ran beside it on 2 CPUs, three threads on
  // two (GOMP_SPINCOUNT=0 took the torch drop-in's bidirectional S6 training from 17-18 ms to
  // 9.4-9.7). A team of one (nested in a region, or a serial forked child) runs both in turn.
  // An exception of either is raised once both are done (f0's first).
  m.def(
      "_run_pair",
      [](py::function f0, py::function f1) {
        py::object res[2];
        std::exception_ptr err[2];
        auto call = [&](int i) {
          try {
            res[i] = i == 0 ? f0() : f1();
          } catch (...) {
            err[i] = std::current_exception();
          }
        };
        {
          py::gil_scoped_release nogil;
#if defined(_OPENMP)
#pragma omp parallel num_threads(2)
          {
            const int n = omp_get_num_threads(), i = omp_get_thread_num();
            // Each call in a region of its own thread alone: the kernels it runs on one
            // thread must see a team of one (team_id, team_size, their barriers), not this
            // pair.
#pragma omp parallel num_threads(1)
            {
              py::gil_scoped_acquire gil;
              if (n == 1) {
                call(0);
                call(1);
              } else if (i < 2) {
                call(i);
              }
            }
          }
#else
          py::gil_scoped_acquire gil;
          call(0);
          call(1);
#endif
        }
        for (auto& e : err)
          if (e) std::rethrow_exception(e);
        return py::make_tuple(res[0], res[1]);
      },
      py::arg("f0"), py::arg("f1"));
  m.def("_find_nonfinite", &find_nonfinite_py, py::arg("a"));
  m.def("get_num_threads", &get_num_threads);
  m.def("_team_threads", &team_threads);
  m.def("_wake_state", [] {
    py::dict d;
    const std::int64_t gap = slow_wake_gap_ns();
    d["slow_gap_ns"] = gap == std::numeric_limits<std::int64_t>::max() ? py::object(py::none())
                                                                      : py::object(py::int_(gap));
    d["last_region_end_ns"] = team_end_ns();
    d["now_ns"] = monotonic_ns();
    d["regions"] = team_regions();
    d["slow"] = team_wake_slow();
    return d;
  });
  m.def(
      "_set_slow_wake_gap", [](long long ns) { set_slow_wake_gap_ns(ns); }, py::arg("ns"));
  m.def(
      "_note_team_region",
      [](long long start_ns, long long late_ns) { note_team_region(start_ns, late_ns); },
      py::arg("start_ns"), py::arg("late_ns"));
  m.def(
      "_set_cpu_limit", [](long long n) { set_cpu_limit(n == 0 ? 0 : checked_threads(n, "n")); },
      py::arg("n"));
  m.def("cpu_info", []() {
    py::dict d;
    d["isa"] = active_kernels().name;
    d["available_isas"] = available_isas();
    d["num_threads"] = get_num_threads();
    d["cpus"] = usable_cpus();
    d["cpu_quota"] = cpu_quota() > 0.0 ? py::object(py::float_(cpu_quota())) : py::object(py::none());
    d["forked_serial"] = forked_serial();
#if defined(_OPENMP)
    d["openmp"] = true;
#else
    d["openmp"] = false;
#endif
    d["schedule"] = schedule_name(schedule_override());
    const Kernels& k = active_kernels();
    d["gemm_tile"] = py::make_tuple(k.MR, k.NR);
    d["lstm_units_per_block"] = k.W;
    return d;
  });
  m.def(
      "_parse_cpu_quota",
      [](const std::string& text) -> py::object {
        const double q = parse_cpu_quota(text);
        return q > 0.0 ? py::object(py::float_(q)) : py::object(py::none());
      },
      py::arg("text"));
  m.def("_set_isa", [](const std::string& name) { set_isa(name); }, py::arg("name"));
  m.def(
      "_set_schedule",
      [](const std::string& name) {
        if (name == "auto") set_schedule_override(Schedule::kAuto);
        else if (name == "units") set_schedule_override(Schedule::kUnits);
        else if (name == "batch") set_schedule_override(Schedule::kBatch);
        else if (name == "serial") set_schedule_override(Schedule::kSerial);
        else throw py::value_error("schedule: expected auto, units, batch or serial, got '" + name + "'");
      },
      py::arg("name"));
  m.def(
      "_set_unpacked_backward", [](bool on) { set_unpacked_backward_enabled(on); },
      py::arg("on"));
  m.def("_unpacked_backward", [] { return unpacked_backward_enabled(); });
  m.def(
      "_choose_schedule",
      [](index_t T, index_t B, index_t I, index_t H, int threads) {
        return std::string(
            schedule_name(lstm_choose_schedule(active_kernels(), LstmSizes{T, B, I, H}, threads)));
      },
      py::arg("T"), py::arg("B"), py::arg("I"), py::arg("H"), py::arg("threads"));
}
