// Self-check of the C++ core without Python, for a platform where the package's tests cannot
// run as they are: built for aarch64 with a cross compiler and run under qemu-user by
// tools/aarch64-check.sh (on x86-64 it also builds and runs natively). For every kernel set the
// CPU runs ("scalar", "generic" and, on x86-64, "avx2" / "avx512"):
//   * the packed GEMM (NN, NT, TN, accumulate, bias) against a float64 triple loop;
//   * the LSTM forward (inference and training) against a float64 reference written here;
//   * LSTM, LSTM with projection, GRU and RNN (tanh, relu) forward and backward, with and
//     without h0, with and without variable lengths, and the one-step cells (step_forward),
//     against the scalar kernel set (the readable oracle that the
//     Python tests hold to NumPy and PyTorch), within float32 tolerances;
//   * bitwise identical results on 1 and 2 threads.
// Shapes hit every vector tail (1, 7, 17, 33, 100). Exit status 0 when everything agrees; the
// first failures are printed with the case, the quantity and the worst element.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "cells/gru.h"
#include "cells/lstm.h"
#include "cells/lstm_proj.h"
#include "cells/rnn.h"
#include "cells/step.h"
#include "dispatch.h"
#include "gemm/gemm.h"

using namespace lstm_fast;
using fvec = std::vector<float>;
using Result = std::map<std::string, fvec>;

namespace {

int g_failures = 0;
int g_checks = 0;

fvec randn(std::mt19937& rng, index_t n, float scale) {
  std::normal_distribution<float> d(0.0f, scale);
  fvec v(static_cast<size_t>(std::max<index_t>(n, 1)));
  for (auto& e : v) e = d(rng);
  v.resize(static_cast<size_t>(n));
  return v;
}

// 64-byte aligned scratch (the core's workspaces are aligned by the bindings' pool).
struct Scratch {
  float* p = nullptr;
  explicit Scratch(index_t n) {
    const size_t bytes = ((static_cast<size_t>(std::max<index_t>(n, 1)) * 4 + 63) / 64) * 64;
    p = static_cast<float*>(std::aligned_alloc(64, bytes));
    std::memset(p, 0, bytes);
  }
  ~Scratch() { std::free(p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

void report(bool ok, const std::string& what) {
  ++g_checks;
  if (ok) return;
  if (g_failures < 30) std::printf("FAIL %s\n", what.c_str());
  ++g_failures;
}

// |a - b| <= atol + rtol |b| everywhere (NaN fails).
void expect_close(const fvec& a, const std::vector<double>& b, double rtol, double atol,
                  const std::string& what) {
  double worst = 0.0;
  size_t at = 0;
  bool ok = a.size() == b.size();
  for (size_t i = 0; ok && i < a.size(); ++i) {
    const double err = std::fabs(a[i] - b[i]), bound = atol + rtol * std::fabs(b[i]);
    if (!(err <= bound)) {
      ok = false;
      at = i;
    }
    worst = std::max(worst, err);
  }
  char buf[160];
  std::snprintf(buf, sizeof buf, " (element %zu: %g vs %g, max abs err %g)", at,
                at < a.size() ? a[at] : 0.0f, at < b.size() ? b[at] : 0.0, worst);
  report(ok, what + (ok ? "" : buf));
}

void expect_close(const fvec& a, const fvec& b, double rtol, double atol, const std::string& what) {
  expect_close(a, std::vector<double>(b.begin(), b.end()), rtol, atol, what);
}

void expect_bitwise(const fvec& a, const fvec& b, const std::string& what) {
  report(a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0, what);
}

double sigm(double v) { return 1.0 / (1.0 + std::exp(-v)); }

// ---- GEMM ---------------------------------------------------------------------------------------

void check_gemm(const Kernels& kern, const std::string& isa, std::mt19937& rng) {
  const index_t dims[][3] = {{1, 1, 1}, {7, 17, 5}, {33, 100, 65}, {130, 47, 300}, {13, 257, 9}};
  for (const auto& d : dims) {
    const index_t M = d[0], N = d[1], K = d[2];
    const fvec A = randn(rng, M * K, 1.0f), Bm = randn(rng, K * N, 1.0f);
    const fvec C0 = randn(rng, M * N, 1.0f), bias = randn(rng, N, 1.0f);
    for (int variant = 0; variant < 4; ++variant) {  // NN, NT, TN, NN += with bias-free
      // A is (M, K) row-major for NN/NT, (K, M) for TN; B is (K, N) for NN/TN, (N, K) for NT.
      const bool ta = variant == 2, tb = variant == 1, acc = variant == 3;
      const MatView Av = ta ? MatView{A.data(), 1, M} : MatView{A.data(), K, 1};
      const MatView Bv = tb ? MatView{Bm.data(), 1, K} : MatView{Bm.data(), N, 1};
      std::vector<double> want(M * N);
      for (index_t i = 0; i < M; ++i)
        for (index_t j = 0; j < N; ++j) {
          double s = acc ? C0[i * N + j] : (variant == 0 ? bias[j] : 0.0);
          for (index_t k = 0; k < K; ++k)
            s += double(A[ta ? k * M + i : i * K + k]) * Bm[tb ? j * K + k : k * N + j];
          want[i * N + j] = s;
        }
      for (int threads : {1, 2}) {
        fvec C = acc ? C0 : fvec(M * N, std::nanf(""));
        gemm(kern, M, N, K, Av, Bv, C.data(), N, acc, threads, variant == 0 ? bias.data() : nullptr);
        char what[128];
        std::snprintf(what, sizeof what, "%s gemm M=%ld N=%ld K=%ld variant=%d threads=%d",
                      isa.c_str(), long(M), long(N), long(K), variant, threads);
        expect_close(C, want, 1e-5, 2e-5 * std::sqrt(double(K)), what);
      }
    }
  }
}

// ---- recurrent layers ---------------------------------------------------------------------------

struct Case {
  index_t T, B, I, H;
  bool h0, lengths;
};

// batch_sizes for a case with lengths: rows sorted longest first, the last rows shorter.
std::vector<index_t> batch_sizes_for(const Case& c) {
  std::vector<index_t> len(c.B);
  for (index_t b = 0; b < c.B; ++b) len[b] = std::max<index_t>(1, c.T - (b * c.T) / (c.B + 1));
  std::vector<index_t> bs(c.T);
  for (index_t t = 0; t < c.T; ++t)
    bs[t] = std::count_if(len.begin(), len.end(), [&](index_t l) { return l > t; });
  return bs;
}

enum class Cell { kLSTM, kLSTMProj, kGRU, kRNNTanh, kRNNRelu };
const char* cell_name(Cell c) {
  switch (c) {
    case Cell::kLSTM: return "lstm";
    case Cell::kLSTMProj: return "lstm_proj";
    case Cell::kGRU: return "gru";
    case Cell::kRNNTanh: return "rnn_tanh";
    default: return "rnn_relu";
  }
}
int gates(Cell c) { return c == Cell::kLSTM || c == Cell::kLSTMProj ? 4 : c == Cell::kGRU ? 3 : 1; }
// The width of h: the projection size P = ceil(H / 2) < H with projection, else H.
index_t out_width(Cell cell, index_t H) { return cell == Cell::kLSTMProj ? (H + 1) / 2 : H; }

struct Inputs {
  fvec x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, dy, dh_n, dc_n;
};

Inputs make_inputs(const Case& c, Cell cell, std::mt19937& rng) {
  const index_t G = gates(cell) * c.H, P = out_width(cell, c.H);
  const float k = 1.0f / std::sqrt(float(c.H));
  Inputs in;
  in.x = randn(rng, c.T * c.B * c.I, 1.0f);
  in.h0 = randn(rng, c.B * P, 0.5f);
  in.c0 = randn(rng, c.B * c.H, 0.5f);
  in.W_ih = randn(rng, G * c.I, k);
  in.W_hh = randn(rng, G * P, k);
  in.b_ih = randn(rng, G, k);
  in.b_hh = randn(rng, G, k);
  in.W_hr = randn(rng, P * c.H, k);
  in.dy = randn(rng, c.T * c.B * P, 1.0f);
  in.dh_n = randn(rng, c.B * P, 1.0f);
  in.dc_n = randn(rng, c.B * c.H, 1.0f);
  return in;
}

// Forward (training) and backward of one layer on one kernel set and thread count; every output.
Result run_layer(const Kernels& kern, Cell cell, const Case& c, const Inputs& in, int threads) {
  const index_t T = c.T, B = c.B, I = c.I, H = c.H, G = gates(cell) * H, P = out_width(cell, H);
  std::vector<index_t> bsv = c.lengths ? batch_sizes_for(c) : std::vector<index_t>();
  const index_t* bs = c.lengths ? bsv.data() : nullptr;
  const float* h0 = c.h0 ? in.h0.data() : nullptr;
  const float* c0 = c.h0 ? in.c0.data() : nullptr;
  // The padding of x is never read: NaN there must not reach any result.
  fvec x = in.x;
  if (bs)
    for (index_t t = 0; t < T; ++t)
      for (index_t b = bs[t]; b < B; ++b)
        for (index_t i = 0; i < I; ++i) x[(t * B + b) * I + i] = std::nanf("");
  Result r;
  fvec y(T * B * P), h_n(B * P), c_n(B * H), gts(T * B * G), aux(T * B * H), m(T * B * H);
  fvec y_inf(T * B * P), hn_inf(B * P), cn_inf(B * H);
  fvec dx(T * B * I), dh0(B * P), dc0(B * H), dW_ih(G * I, 0.0f), dW_hh(G * P, 0.0f);
  fvec dW_hr(P * H, 0.0f);
  fvec db_ih(G, 0.0f), db_hh(G, 0.0f);
  const LstmSizes ls{T, B, I, H};
  const CellSizes cs{T, B, I, H};
  const bool relu = cell == Cell::kRNNRelu;
  switch (cell) {
    case Cell::kLSTM: {
      {
        Scratch ws(lstm_forward_workspace_size(kern, ls, false, bs != nullptr, threads));
        lstm_forward(y_inf.data(), hn_inf.data(), cn_inf.data(), nullptr, nullptr, x.data(), h0,
                     c0, in.W_ih.data(), in.W_hh.data(), in.b_ih.data(), in.b_hh.data(), ls, bs,
                     ws.p, kern, threads);
      }
      {
        Scratch ws(lstm_forward_workspace_size(kern, ls, true, bs != nullptr, threads));
        lstm_forward(y.data(), h_n.data(), c_n.data(), gts.data(), aux.data(), x.data(), h0, c0,
                     in.W_ih.data(), in.W_hh.data(), in.b_ih.data(), in.b_hh.data(), ls, bs, ws.p,
                     kern, threads);
      }
      Scratch ws(lstm_backward_workspace_size(kern, ls, bs != nullptr, threads));
      lstm_backward(dx.data(), dh0.data(), dc0.data(), dW_ih.data(), dW_hh.data(), db_ih.data(),
                    db_hh.data(), in.dy.data(), in.dh_n.data(), in.dc_n.data(), x.data(), h0, c0,
                    in.W_ih.data(), in.W_hh.data(), y.data(), gts.data(), aux.data(), ls, bs,
                    ws.p, kern, threads);
      r["c_n"] = c_n;
      r["c_n_inference"] = cn_inf;
      r["dc0"] = dc0;
      break;
    }
    case Cell::kLSTMProj: {
      {
        Scratch ws(lstm_proj_forward_workspace_size(kern, ls, P, false));
        lstm_proj_forward(y_inf.data(), hn_inf.data(), cn_inf.data(), nullptr, nullptr, nullptr,
                          x.data(), h0, c0, in.W_ih.data(), in.W_hh.data(), in.b_ih.data(),
                          in.b_hh.data(), in.W_hr.data(), ls, P, bs, ws.p, kern, threads);
      }
      {
        Scratch ws(lstm_proj_forward_workspace_size(kern, ls, P, true));
        lstm_proj_forward(y.data(), h_n.data(), c_n.data(), gts.data(), aux.data(), m.data(),
                          x.data(), h0, c0, in.W_ih.data(), in.W_hh.data(), in.b_ih.data(),
                          in.b_hh.data(), in.W_hr.data(), ls, P, bs, ws.p, kern, threads);
      }
      Scratch ws(lstm_proj_backward_workspace_size(kern, ls, P, bs != nullptr));
      lstm_proj_backward(dx.data(), dh0.data(), dc0.data(), dW_ih.data(), dW_hh.data(),
                         dW_hr.data(), db_ih.data(), db_hh.data(), in.dy.data(), in.dh_n.data(),
                         in.dc_n.data(), x.data(), h0, c0, in.W_ih.data(), in.W_hh.data(),
                         in.W_hr.data(), y.data(), gts.data(), aux.data(), m.data(), ls, P, bs,
                         ws.p, kern, threads);
      r["c_n"] = c_n;
      r["c_n_inference"] = cn_inf;
      r["dc0"] = dc0;
      r["dW_hr"] = dW_hr;
      break;
    }
    case Cell::kGRU: {
      {
        Scratch ws(gru_forward_workspace_size(kern, cs, false, bs != nullptr, threads));
        gru_forward(y_inf.data(), hn_inf.data(), nullptr, nullptr, x.data(), h0, in.W_ih.data(),
                    in.W_hh.data(), in.b_ih.data(), in.b_hh.data(), cs, bs, ws.p, kern, threads);
      }
      {
        Scratch ws(gru_forward_workspace_size(kern, cs, true, bs != nullptr, threads));
        gru_forward(y.data(), h_n.data(), gts.data(), aux.data(), x.data(), h0, in.W_ih.data(),
                    in.W_hh.data(), in.b_ih.data(), in.b_hh.data(), cs, bs, ws.p, kern, threads);
      }
      Scratch ws(gru_backward_workspace_size(kern, cs, bs != nullptr, threads));
      gru_backward(dx.data(), dh0.data(), dW_ih.data(), dW_hh.data(), db_ih.data(), db_hh.data(),
                   in.dy.data(), in.dh_n.data(), x.data(), h0, in.W_ih.data(), in.W_hh.data(),
                   y.data(), gts.data(), aux.data(), cs, bs, ws.p, kern, threads);
      break;
    }
    default: {
      {
        Scratch ws(rnn_forward_workspace_size(kern, cs, bs != nullptr));
        rnn_forward(y_inf.data(), hn_inf.data(), x.data(), h0, in.W_ih.data(), in.W_hh.data(),
                    in.b_ih.data(), in.b_hh.data(), relu, cs, bs, ws.p, kern, threads);
      }
      {
        Scratch ws(rnn_forward_workspace_size(kern, cs, bs != nullptr));
        rnn_forward(y.data(), h_n.data(), x.data(), h0, in.W_ih.data(), in.W_hh.data(),
                    in.b_ih.data(), in.b_hh.data(), relu, cs, bs, ws.p, kern, threads);
      }
      Scratch ws(rnn_backward_workspace_size(kern, cs, bs != nullptr));
      rnn_backward(dx.data(), dh0.data(), dW_ih.data(), dW_hh.data(), db_ih.data(), db_hh.data(),
                   in.dy.data(), in.dh_n.data(), x.data(), h0, in.W_ih.data(), in.W_hh.data(),
                   y.data(), relu, cs, bs, ws.p, kern, threads);
    }
  }
  // dx is defined on the active rows only (the padding rows' gradient is zero by contract).
  r["y"] = y;
  r["h_n"] = h_n;
  r["y_inference"] = y_inf;
  r["h_n_inference"] = hn_inf;
  r["dx"] = dx;
  r["dh0"] = dh0;
  r["dW_ih"] = dW_ih;
  r["dW_hh"] = dW_hh;
  r["db_ih"] = db_ih;
  r["db_hh"] = db_hh;
  return r;
}

// The LSTM forward in float64, straight from the equations (PyTorch's gate order i, f, g, o),
// with lengths: a row stops at its length (y zero after it, h_n / c_n its last state).
void lstm_reference(const Case& c, const Inputs& in, std::vector<double>& y,
                    std::vector<double>& h_n, std::vector<double>& c_n) {
  const index_t T = c.T, B = c.B, I = c.I, H = c.H, G = 4 * H;
  std::vector<index_t> bs = c.lengths ? batch_sizes_for(c) : std::vector<index_t>(T, B);
  y.assign(T * B * H, 0.0);
  h_n.assign(B * H, 0.0);
  c_n.assign(B * H, 0.0);
  std::vector<double> h(B * H, 0.0), cc(B * H, 0.0), z(G);
  if (c.h0)
    for (index_t j = 0; j < B * H; ++j) {
      h[j] = in.h0[j];
      cc[j] = in.c0[j];
    }
  for (index_t t = 0; t < T; ++t)
    for (index_t b = 0; b < bs[t]; ++b) {
      for (index_t g = 0; g < G; ++g) {
        double s = double(in.b_ih[g]) + in.b_hh[g];
        for (index_t i = 0; i < I; ++i) s += double(in.W_ih[g * I + i]) * in.x[(t * B + b) * I + i];
        for (index_t k = 0; k < H; ++k) s += double(in.W_hh[g * H + k]) * h[b * H + k];
        z[g] = s;
      }
      for (index_t u = 0; u < H; ++u) {
        const double ig = sigm(z[u]), fg = sigm(z[H + u]), gg = std::tanh(z[2 * H + u]);
        cc[b * H + u] = fg * cc[b * H + u] + ig * gg;
      }
      // h of this row changes only after all of its gates used the old h
      for (index_t u = 0; u < H; ++u) {
        const double og = sigm(z[3 * H + u]);
        h[b * H + u] = og * std::tanh(cc[b * H + u]);
        y[(t * B + b) * H + u] = h[b * H + u];
      }
    }
  h_n = h;
  c_n = cc;
}

// One step of a cell (the streaming path: weights read in place) from x (B, I), h0, c0.
Result run_step(const Kernels& kern, Cell cell, const Case& c, const Inputs& in, int threads) {
  const StepCell sc = cell == Cell::kLSTM  ? StepCell::kLSTM
                      : cell == Cell::kGRU ? StepCell::kGRU
                      : cell == Cell::kRNNTanh ? StepCell::kRNNTanh
                                               : StepCell::kRNNRelu;
  fvec h(c.B * c.H), cc(c.B * c.H);
  Scratch ws(step_workspace_size(sc, c.B, c.H));
  step_forward(sc, h.data(), cc.data(), in.x.data(), in.h0.data(), in.c0.data(), in.W_ih.data(),
               in.W_hh.data(), in.b_ih.data(), in.b_hh.data(), c.B, c.I, c.H, ws.p, kern, threads);
  Result r;
  r["step_h"] = h;
  if (cell == Cell::kLSTM) r["step_c"] = cc;
  return r;
}

std::vector<std::string> isas_to_check() {
  std::vector<std::string> out;
  for (const auto& name : available_isas()) out.push_back(name);
  return out;
}

}  // namespace

int main() {
  init_dispatch();
  const std::vector<std::string> isas = isas_to_check();
  std::printf("kernel sets:");
  for (const auto& n : isas) std::printf(" %s", n.c_str());
  std::printf("\n");
  std::mt19937 rng(1234);

  for (const auto& isa : isas) {
    set_isa(isa);
    check_gemm(active_kernels(), isa, rng);
  }

  const Case cases[] = {
      {1, 1, 1, 1, false, false},   {3, 2, 5, 7, true, false},   {5, 3, 7, 17, false, true},
      {4, 13, 9, 33, true, true},   {6, 5, 17, 100, true, false}, {9, 16, 65, 100, false, true},
      {2, 1, 33, 17, true, false},  {7, 20, 3, 48, true, true},
  };
  const Cell cells[] = {Cell::kLSTM, Cell::kLSTMProj, Cell::kGRU, Cell::kRNNTanh, Cell::kRNNRelu};
  for (const Case& c : cases)
    for (Cell cell : cells) {
      if (cell == Cell::kLSTMProj && c.H < 2) continue;  // needs proj_size < hidden_size
      const Inputs in = make_inputs(c, cell, rng);
      char tag[128];
      std::snprintf(tag, sizeof tag, "%s T=%ld B=%ld I=%ld H=%ld h0=%d lengths=%d",
                    cell_name(cell), long(c.T), long(c.B), long(c.I), long(c.H), int(c.h0),
                    int(c.lengths));
      set_isa("scalar");
      const bool stepped = cell != Cell::kLSTMProj;
      Result oracle = run_layer(active_kernels(), cell, c, in, 1);
      if (stepped) oracle.merge(run_step(active_kernels(), cell, c, in, 1));
      if (cell == Cell::kLSTM) {
        std::vector<double> y, h_n, c_n;
        lstm_reference(c, in, y, h_n, c_n);
        for (const char* q : {"y", "y_inference"})
          expect_close(oracle.at(q), y, 1e-5, 1e-6, std::string("scalar ") + tag + " " + q);
        expect_close(oracle.at("h_n"), h_n, 1e-5, 1e-6, std::string("scalar ") + tag + " h_n");
        expect_close(oracle.at("c_n"), c_n, 1e-5, 1e-6, std::string("scalar ") + tag + " c_n");
      }
      for (const auto& isa : isas) {
        set_isa(isa);
        Result one = run_layer(active_kernels(), cell, c, in, 1);
        Result two = run_layer(active_kernels(), cell, c, in, 2);
        if (stepped) {
          one.merge(run_step(active_kernels(), cell, c, in, 1));
          two.merge(run_step(active_kernels(), cell, c, in, 2));
        }
        for (const auto& kv : one) {
          const std::string what = isa + " " + tag + " " + kv.first;
          const bool grad = kv.first[0] == 'd';
          expect_close(kv.second, oracle.at(kv.first), grad ? 1e-4 : 1e-5, grad ? 1e-4 : 1e-6,
                       what + " vs scalar");
          expect_bitwise(kv.second, two.at(kv.first), what + " 1 vs 2 threads");
        }
      }
    }
  std::printf("%d checks, %d failed\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
