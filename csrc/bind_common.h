// Argument checking shared by the binding files (bindings.cpp, bindings_cells.cpp): every array
// argument is checked before any work (type, dtype, rank, shape, contiguity, alignment,
// writeability) with an error that names it and says what was expected and what was given;
// output sizes are checked before anything is allocated. Nothing is converted or copied silently.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>  // check_layout casts a std::vector: every includer must see this

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "shapes.h"

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#include <unistd.h>
#define LSTM_FAST_BIND_ATFORK 1
#endif
#if defined(__linux__)
#include <sys/sysinfo.h>
#endif

namespace lstm_fast {
namespace bind {

namespace py = pybind11;
using farray = py::array_t<float, py::array::c_style>;

// One expected dimension: a letter of the legend (or a short formula) and its size.
struct Dim {
  const char* name;
  index_t size;
};
// A call site's expected dimensions, written in place ({{"T", T}, {"B", B}}): no allocation.
using Dims = std::initializer_list<Dim>;

inline std::string shape_str(const py::array& a) {
  std::ostringstream os;
  os << "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) os << (d ? ", " : "") << a.shape(d);
  if (a.ndim() == 1) os << ",";
  os << ")";
  return os.str();
}

inline std::string expected_str(Dims dims) {
  std::ostringstream os;
  os << "(";
  size_t d = 0;
  for (const Dim& dim : dims) os << (d++ ? ", " : "") << dim.name << "=" << dim.size;
  if (dims.size() == 1) os << ",";
  os << ")";
  return os.str();
}

inline std::string type_name(py::handle h) {
  return py::str(py::type::of(h).attr("__name__"));
}

// dtype equality (PyArray_EquivTypes: same type, byte order and size), not identity: the
// float32 dtype of an array that went through pickle (multiprocessing, copies) is a distinct
// but equal object.
template <typename T>
inline bool has_dtype(const py::array& a) {
  return py::detail::npy_api::get().PyArray_EquivTypes_(a.dtype().ptr(),
                                                        py::dtype::of<T>().ptr());
}

// An instance of numpy.ndarray itself (not of a subclass: np.memmap, np.matrix, np.ma.MaskedArray).
inline bool exact_ndarray(py::handle obj) {
  return Py_TYPE(obj.ptr()) ==
         reinterpret_cast<PyTypeObject*>(py::detail::npy_api::get().PyArray_Type_);
}

// A numpy.ma.MaskedArray with masked elements is refused: the kernels read the values under
// the mask as data (a masked array is an ndarray, so it passed every other check and the
// masked entries' values, whatever they held, went into the results silently). One without
// masked elements is its data. Only subclass instances get here past the first test.
inline void check_unmasked(py::handle obj, const std::string& name) {
  if (exact_ndarray(obj)) return;
  // (imported per call, not cached in a function static: the import may release the GIL, and
  // a static's guard held meanwhile would deadlock another thread; numpy.ma is loaded by then)
  py::module_ ma = py::module_::import("numpy.ma");
  const int is = PyObject_IsInstance(obj.ptr(), ma.attr("MaskedArray").ptr());
  if (is < 0) throw py::error_already_set();
  if (!is) return;
  const long long n = ma.attr("count_masked")(obj).cast<long long>();
  if (n)
    throw py::value_error(name + ": expected an array without masked values, got a " +
                          "numpy.ma.MaskedArray with " + std::to_string(n) +
                          " masked (lstm_fast reads values, not masks: fill them explicitly, " +
                          "e.g. " + name + ".filled(0.0))");
}

// Type and dtype (a float32 numpy.ndarray, any shape); returns the array (no copy).
inline py::array check_float_type(py::handle obj, const std::string& name) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(name + ": expected a numpy.ndarray of dtype float32, got " +
                         type_name(obj));
  check_unmasked(obj, name);
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!has_dtype<float>(a))
    throw py::type_error(name + ": expected dtype float32, got " +
                         std::string(py::str(a.dtype())) +
                         " (convert explicitly, e.g. x.astype(np.float32))");
  return a;
}

// Type, dtype and rank; returns the array (no copy).
inline py::array check_float_array(py::handle obj, const std::string& name, int ndim,
                                   const std::string& legend) {
  py::array a = check_float_type(obj, name);
  if (a.ndim() != ndim)
    throw py::value_error(name + ": expected " + std::to_string(ndim) + " dimensions " + legend +
                          ", got " + std::to_string(a.ndim()) + " with shape " + shape_str(a));
  return a;
}

inline void check_layout(const py::array& a, const std::string& name, bool writeable) {
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(name + ": expected a C-contiguous array, got strides " +
                          std::string(py::str(py::tuple(py::cast(std::vector<py::ssize_t>(
                              a.strides(), a.strides() + a.ndim()))))) +
                          " (use np.ascontiguousarray)");
  if (reinterpret_cast<std::uintptr_t>(a.data()) % alignof(float) != 0)
    throw py::value_error(name + ": expected float32-aligned data, got a misaligned buffer");
  if (writeable && !a.writeable())
    throw py::value_error(name + ": expected a writeable array, got a read-only one");
}

inline void check_shape(const py::array& a, const std::string& name, Dims dims) {
  py::ssize_t d = 0;
  for (const Dim& dim : dims)
    if (a.shape(d++) != dim.size)
      throw py::value_error(name + ": expected shape " + expected_str(dims) + ", got " +
                            shape_str(a));
}

inline index_t dim_size(index_t n) { return n; }
inline index_t dim_size(const Dim& d) { return d.size; }

// The hot-path test: true only for a native float32, C-contiguous, aligned array of exactly
// these dimensions (and writeable when asked). Conservative: false sends the caller to the
// full checks, which raise the detailed error (or accept). No allocation, no string.
template <class List>
inline bool quick_ok(py::handle obj, const List& dims, bool writeable = false) {
  namespace d = py::detail;
  if (!exact_ndarray(obj)) return false;  // subclasses (a masked array) take the full checks
  const auto* p = d::array_proxy(obj.ptr());
  if (p->nd != static_cast<int>(dims.size())) return false;
  int i = 0;
  for (const auto& n : dims)
    if (p->dimensions[i++] != dim_size(n)) return false;
  if (!(p->flags & d::npy_api::NPY_ARRAY_C_CONTIGUOUS_)) return false;
  if (writeable && !(p->flags & d::npy_api::NPY_ARRAY_WRITEABLE_)) return false;
  if (reinterpret_cast<std::uintptr_t>(p->data) % alignof(float) != 0) return false;
  const auto* descr = d::array_descriptor_proxy(p->descr);
  return descr->type_num == d::npy_api::NPY_FLOAT_ && descr->byteorder == '=';
}
inline bool quick_ok(py::handle obj, std::initializer_list<index_t> dims, bool writeable = false) {
  return quick_ok<std::initializer_list<index_t>>(obj, dims, writeable);
}

// Full check of an array argument with a known expected shape (the quick test first; the
// messages are only built for an argument that fails it).
inline py::array arg(py::handle obj, const char* name, Dims dims, bool writeable = false) {
  if (quick_ok(obj, dims, writeable)) return py::reinterpret_borrow<py::array>(obj);
  std::string legend = "(";
  size_t d = 0;
  for (const Dim& dim : dims) {
    legend += d++ ? ", " : "";
    legend += dim.name;
  }
  legend += dims.size() == 1 ? ",)" : ")";
  py::array a = check_float_array(obj, name, static_cast<int>(dims.size()), legend);
  check_shape(a, name, dims);
  check_layout(a, name, writeable);
  return a;
}

// None stays None; anything else must pass arg().
inline py::object opt_arg(py::handle obj, const char* name, Dims dims) {
  return obj.is_none() ? py::object(py::none()) : py::object(arg(obj, name, dims));
}

// An array handle that holds nothing yet, for a member or local assigned later. (The default
// constructors of py::array and py::array_t create an empty NumPy array: a call into NumPy
// each, several per call of a one-step cell.)
template <class A = py::array>
inline A unset() {
  return py::reinterpret_steal<A>(py::handle());
}

inline const float* cptr(const py::array& a) { return static_cast<const float*>(a.data()); }
inline float* mptr(py::array& a) { return static_cast<float*>(a.mutable_data()); }
// The data of an argument that passed arg() (or None): read from the array object directly
// (py::array(o) would go through NumPy's conversion machinery on every call).
inline void* data_of(const py::object& o) {
  return o.is_none() ? nullptr : py::detail::array_proxy(o.ptr())->data;
}
inline const float* opt_ptr(const py::object& o) { return static_cast<const float*>(data_of(o)); }
inline float* opt_mptr(py::object& o) { return static_cast<float*>(data_of(o)); }

// The largest byte count an output or workspace may have: 2^47 (128 TiB, half of a 48-bit
// address space). Anything larger cannot be allocated on any machine this runs on; refusing it
// up front gives an error that names the argument instead of NumPy's or the allocator's.
constexpr std::uint64_t kMaxBytes = std::uint64_t{1} << 47;

// Refuses an output (or workspace) of these dimensions when it cannot exist, naming the input
// argument whose sizes ask for it: "x: ... needs y (T=.., B=.., H=..) of 2^62 bytes ...".
inline void check_output(const char* arg_name, const char* out_name, Dims dims) {
  std::uint64_t n = 1;
  bool over = false, zero = false;
  for (const auto& d : dims) zero = zero || d.size == 0;
  if (zero) return;
  for (const auto& d : dims)
    over = over || __builtin_mul_overflow(n, static_cast<std::uint64_t>(d.size), &n) ||
           n > kMaxBytes / sizeof(float);
  if (!over) return;
  std::ostringstream os;
  os << arg_name << ": these sizes need " << out_name << " " << expected_str(dims)
     << " of float32, more than 2^47 bytes (128 TiB): beyond any memory";
  throw py::value_error(os.str());
}

// The largest thread count accepted: 4 x the hardware threads, at least 64. More threads than
// that only oversubscribe, and OpenMP runtimes crash creating hundreds of thousands of them.
inline int max_threads() {
  static const unsigned hw = std::thread::hardware_concurrency();  // a system query: once
  return static_cast<int>(std::max<unsigned>(64, 4 * hw));
}

inline int checked_threads(long long n, const char* what) {
  if (n < 1 || n > max_threads())
    throw py::value_error(std::string(what) + ": expected an int in [1, " +
                          std::to_string(max_threads()) + "] (4 x the hardware threads, at " +
                          "least 64), got " + std::to_string(n));
  return static_cast<int>(n);
}

// A cache class is only instantiated by a training forward. Its type's own __new__
// (Cache.__new__(Cache), or a subclass's) would give an object whose C++ value was never
// constructed: its properties, repr and backward read uninitialised memory (a crash). The
// forwards create their caches through tp_alloc, not tp_new, so refusing tp_new only stops that.
inline PyObject* refuse_new(PyTypeObject* type, PyObject*, PyObject*) {
  PyErr_Format(PyExc_TypeError,
               "%s: cannot be created directly; a forward with training=True returns one",
               type->tp_name);
  return nullptr;
}
inline void forward_made_only(py::handle cls) {
  reinterpret_cast<PyTypeObject*>(cls.ptr())->tp_new = refuse_new;
}

// Reaching a cache's saved input whose shape or layout the caller changed since forward.
inline void check_unchanged(const py::array& a, const std::vector<py::ssize_t>& shape,
                            const std::string& name) {
  std::vector<py::ssize_t> now(a.shape(), a.shape() + a.ndim());
  if (now != shape || !(a.flags() & py::array::c_style))
    throw py::value_error("cache: " + name +
                          " was reshaped or re-laid out since the forward call");
}

// The same for an optional saved argument (h0, c0): None, or an array of this shape.
inline void check_unchanged(const py::object& o, const std::vector<py::ssize_t>& shape,
                            const std::string& name) {
  if (!o.is_none()) check_unchanged(py::reinterpret_borrow<py::array>(o), shape, name);
}

// The bytes an argument spans (None or a non-array: none), for a float32 C-contiguous array
// (an argument already checked). Zero-size arrays overlap nothing.
struct Span {
  const char* p = nullptr;
  std::size_t n = 0;
};
inline Span span_of(py::handle a) {
  if (a.is_none() || !py::array::check_(a)) return {};
  const auto* ap = py::detail::array_proxy(a.ptr());
  std::size_t n = sizeof(float);
  for (int d = 0; d < ap->nd; ++d) n *= static_cast<std::size_t>(ap->dimensions[d]);
  return {static_cast<const char*>(ap->data), n};
}
inline bool overlap(Span a, Span b) {
  return a.n && b.n && a.p < b.p + b.n && b.p < a.p + a.n;
}

// A named array argument (or None) for check_separate.
struct Named {
  const char* name;
  py::handle obj;
};

// Outputs a call writes (a caller's gradient arrays to accumulate into; all arguments checked
// float32 C-contiguous first) must share no byte with
// what it reads (inputs, a cache's arrays) nor with each other: they are written while those are
// read, and two outputs in one memory would each receive the other's sum. Raises ValueError
// naming the first overlapping pair: "dbias_hh: expected memory separate from dbias_ih, ...".
inline void check_separate(std::initializer_list<Named> outs, std::initializer_list<Named> ins) {
  for (auto o = outs.begin(); o != outs.end(); ++o) {
    const Span so = span_of(o->obj);
    if (!so.n) continue;
    const Named* hit = nullptr;
    for (auto p = outs.begin(); p != o && !hit; ++p)
      if (overlap(so, span_of(p->obj))) hit = p;
    for (auto i = ins.begin(); i != ins.end() && !hit; ++i)
      if (overlap(so, span_of(i->obj))) hit = i;
    if (hit)
      throw py::value_error(std::string(o->name) + ": expected memory separate from " +
                            hit->name + ", got an overlapping array");
  }
}

// batch_sizes: None, or int64 (T,), non-increasing, each in [0, B]. Returns a private copy:
// a cache keeps it for backward, which trusts its values, so a caller's later in-place change
// must not reach it.
// A private copy of an int64 C-contiguous (n,) array argument (`dim` names n in the message).
inline py::array_t<std::int64_t> int64_vector(py::handle obj, const std::string& name, index_t n,
                                              const std::string& dim) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(name + ": expected a numpy.ndarray of dtype int64, got " +
                         type_name(obj));
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!has_dtype<std::int64_t>(a))
    throw py::type_error(name + ": expected dtype int64, got " + std::string(py::str(a.dtype())));
  if (a.ndim() != 1 || a.shape(0) != n)
    throw py::value_error(name + ": expected shape (" + dim + "=" + std::to_string(n) +
                          ",), got " + shape_str(a));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(name + ": expected a C-contiguous array");
  py::array_t<std::int64_t> copy(n);
  std::copy_n(static_cast<const std::int64_t*>(a.data()), n, copy.mutable_data());
  return copy;
}

inline py::object check_batch_sizes(py::handle obj, index_t T, index_t B) {
  if (obj.is_none()) return py::none();
  py::array_t<std::int64_t> copy = int64_vector(obj, "batch_sizes", T, "T");
  const std::int64_t* v = copy.data();
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
  return std::move(copy);
}

// sorted_indices (with batch_sizes): None, or an int64 (B,) permutation of [0, B): row r of the
// sorted batch is the caller's row sorted_indices[r]. Returns a private copy.
inline py::object check_sorted_indices(py::handle obj, const py::object& batch_sizes, index_t B) {
  if (obj.is_none()) return py::none();
  if (batch_sizes.is_none())
    throw py::value_error("sorted_indices: given without batch_sizes (it orders their rows)");
  py::array_t<std::int64_t> copy = int64_vector(obj, "sorted_indices", B, "B");
  const std::int64_t* v = copy.data();
  std::vector<char> seen(static_cast<std::size_t>(B), 0);
  for (index_t r = 0; r < B; ++r) {
    if (v[r] < 0 || v[r] >= B)
      throw py::value_error("sorted_indices: expected values in [0, B=" + std::to_string(B) +
                            "), got " + std::to_string(v[r]) + " at position " +
                            std::to_string(r));
    if (seen[v[r]]++)
      throw py::value_error("sorted_indices: expected a permutation of [0, B), got " +
                            std::to_string(v[r]) + " twice");
  }
  return std::move(copy);
}

// A cache's private int64 vector (batch_sizes, sorted_indices) for Python: None, or a copy (the
// cache's own must not change under the backward that reads it).
inline py::object vector_copy(const py::object& o) {
  return !o || o.is_none() ? py::none() : o.attr("copy")();
}

inline const int64_t* order_ptr(const py::object& o) {
  return static_cast<const int64_t*>(data_of(o));
}

inline const index_t* bs_ptr(const py::object& o) {
  return static_cast<const index_t*>(data_of(o));
}

// Gradient outputs: allocated (zeroed) here, or given by the caller to accumulate into. With
// `fresh`: an allocated array is left unwritten and *fresh set, for a core that then writes it
// (instead of adding to zeros: one pass over the array, not three).
inline py::array_t<float, py::array::c_style> new_array(const py::ssize_t* shape, int nd);

inline py::array grad_out(py::handle given, const char* name, Dims dims,
                          bool* fresh = nullptr) {
  if (fresh) *fresh = false;
  if (given.is_none()) {
    py::ssize_t shape[8];
    int nd = 0;
    for (const auto& d : dims) shape[nd++] = d.size;
    farray out = new_array(shape, nd);
    if (fresh)
      *fresh = true;
    else
      std::fill(out.mutable_data(), out.mutable_data() + out.size(), 0.0f);
    return out;
  }
  return arg(given, name, dims, /*writeable=*/true);
}

// ---- memory that cannot be had ------------------------------------------------------------

// RAM + swap of this machine in bytes (0 when unknown): no single block larger than that can
// ever be filled, whatever the kernel's overcommit policy lets malloc promise.
inline std::uint64_t machine_memory_bytes() {
  static const std::uint64_t total = [] {
#if defined(__linux__)
    struct sysinfo si;
    if (sysinfo(&si) == 0)
      return (static_cast<std::uint64_t>(si.totalram) + si.totalswap) * si.mem_unit;
#endif
    return std::uint64_t{0};
  }();
  return total;
}

inline std::string bytes_str(double b) {
  static const char* const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int u = 0;
  while (b >= 1024.0 && u < 5) b /= 1024.0, ++u;
  std::ostringstream os;
  os.precision(u ? 1 : 0);
  os << std::fixed << b << " " << units[u];
  return os.str();
}

// A MemoryError naming what could not be allocated (pybind11 raises std::bad_alloc as
// MemoryError with its what()); thrown with or without the GIL held.
struct OutOfMemory : std::bad_alloc {
  std::string msg;
  explicit OutOfMemory(std::string m) : msg(std::move(m)) {}
  const char* what() const noexcept override { return msg.c_str(); }
};

// `what`: "a float32 array of shape (T, B, H)" or "scratch memory of N floats". Refuses a block
// larger than RAM + swap before allocating it (with overcommit it could be promised, then the
// OOM killer would end the process while the kernel writes it); after a failed allocation the
// same message says the memory is short.
[[noreturn]] inline void throw_out_of_memory(size_t bytes, const std::string& what,
                                             bool refused) {
  std::ostringstream os;
  os << "cannot allocate " << bytes_str(static_cast<double>(bytes)) << " (" << bytes
     << " bytes) for " << what;
  const std::uint64_t total = machine_memory_bytes();
  if (refused)
    os << ": more than this machine's memory (" << bytes_str(static_cast<double>(total))
       << " of RAM and swap)";
  else
    os << ": out of memory";
  throw OutOfMemory(os.str());
}
inline bool beyond_machine(size_t bytes) {
  const std::uint64_t total = machine_memory_bytes();
  return total && bytes > total;
}
inline std::string shape_text(const py::ssize_t* shape, int nd) {
  std::ostringstream os;
  os << "a float32 array of shape (";
  for (int d = 0; d < nd; ++d) os << (d ? ", " : "") << shape[d];
  os << (nd == 1 ? ",)" : ")");
  return os.str();
}

// ---- gradients accumulated by concurrent calls ----------------------------------------------

// Backward calls add (+=) into caller-given gradient arrays (a layer's parameter .grad) with the
// GIL released. Two Python threads running backward into the same gradients (two backward
// calls of one layer; PyTorch's .grad accumulation is thread safe) would interleave their
// read-modify-writes: lost updates and bits that depend on timing. A call holds the byte ranges
// it accumulates into for its whole computation and a call whose ranges overlap held ones
// waits; all of a call's ranges are taken at once, so calls cannot deadlock, and calls into
// separate memory never wait.
class AccumulateRegistry {
 public:
  void acquire(const Span* r, int n) {
    std::unique_lock<std::mutex> lock(m_);
    cv_.wait(lock, [&] {
      for (const Span& h : held_)
        for (int i = 0; i < n; ++i)
          if (overlap(h, r[i])) return false;
      return true;
    });
    for (int i = 0; i < n; ++i) held_.push_back(r[i]);
  }
  void release(const Span* r, int n) {
    {
      std::lock_guard<std::mutex> lock(m_);
      for (int i = 0; i < n; ++i)
        for (auto it = held_.begin(); it != held_.end(); ++it)
          if (it->p == r[i].p && it->n == r[i].n) {
            held_.erase(it);
            break;
          }
    }
    cv_.notify_all();
  }

  // fork(): the child gets a registry of its own, unlocked and empty (the parent's other
  // threads, whose ranges it lists, do not exist there). The parent's is locked across fork so
  // that no thread is inside it at that moment (the child's copy is simply abandoned).
  static AccumulateRegistry*& instance_ptr() {
    static AccumulateRegistry* r = [] {
      auto* p = new AccumulateRegistry;
#if defined(LSTM_FAST_BIND_ATFORK)
      pthread_atfork([] { instance_ptr()->m_.lock(); }, [] { instance_ptr()->m_.unlock(); },
                     [] { instance_ptr() = new AccumulateRegistry; });
#endif
      return p;
    }();
    return r;
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  std::vector<Span> held_;
};

// The caller-given gradient arrays of one call (None and empty ones are skipped), collected
// with the GIL held; AccumulateGuard then holds them for the computation (without the GIL:
// waiting for another call while holding it would deadlock that call's return).
struct AccumulateSet {
  Span r[8];
  int n = 0;
  void add(py::handle given) {
    if (given.is_none() || n == 8) return;
    const Span s = span_of(given);
    if (s.n) r[n++] = s;
  }
};
struct AccumulateGuard {
  const AccumulateSet& set;
  AccumulateRegistry* reg = nullptr;
  explicit AccumulateGuard(const AccumulateSet& s) : set(s) {
    if (!set.n) return;
    reg = AccumulateRegistry::instance_ptr();
    reg->acquire(set.r, set.n);
  }
  ~AccumulateGuard() {
    if (reg) reg->release(set.r, set.n);
  }
  AccumulateGuard(const AccumulateGuard&) = delete;
  AccumulateGuard& operator=(const AccumulateGuard&) = delete;
};

// Large scratch blocks are kept for the next call instead of going back to the system: the
// pages of a fresh large allocation are zeroed by the kernel on first touch, which measured 12 %
// of an S3 backward pass (a 210 MB dZ workspace per call), and smaller blocks repeatedly
// returned to and taken from the system fault too (4 % of an S6 training step). Blocks of at
// least kPoolMin bytes are reused best-fit; at most kPoolKeep stay cached (the smallest goes
// first; over kPoolBytes, the largest), so what is retained is bounded by kPoolKeep blocks and
// kPoolBytes. Thread safe (calls release the GIL). lstm_fast.empty_cache() empties it.
class WorkspacePool {
 public:
  static constexpr size_t kPoolMin = size_t(256) << 10;
  static constexpr size_t kPoolKeep = 8;
  static constexpr size_t kPoolBytes = size_t(1) << 30;  // at most 1 GiB kept

  // A block of at least `bytes`; `bytes` is set to its capacity (give it back with that).
  void* take(size_t& bytes) {
    if (beyond_machine(bytes)) return nullptr;  // the caller names it (never promised memory)
    if (bytes >= kPoolMin) {
      std::lock_guard<std::mutex> lock(m_);
      auto best = free_.end();
      for (auto it = free_.begin(); it != free_.end(); ++it)
        if (it->first >= bytes && (best == free_.end() || it->first < best->first)) best = it;
      if (best != free_.end()) {
        void* p = best->second;
        bytes = best->first;
        kept_ -= bytes;
        free_.erase(best);
        return p;
      }
    }
    void* p = fresh(bytes);
    if (!p && bytes >= kPoolMin) {  // memory is short: give the cached blocks back, retry
      release();
      p = fresh(bytes);
    }
    return p;
  }

  // Takes back a block from take(bytes) (the capacity it was created with).
  void give(void* p, size_t bytes) {
    if (bytes < kPoolMin) return std::free(p);
    std::lock_guard<std::mutex> lock(m_);
    free_.emplace_back(bytes, p);
    kept_ += bytes;
    while (free_.size() > kPoolKeep || kept_ > kPoolBytes) {
      auto victim = kept_ > kPoolBytes ? std::max_element(free_.begin(), free_.end())
                                       : std::min_element(free_.begin(), free_.end());
      kept_ -= victim->first;
      std::free(victim->second);
      free_.erase(victim);
    }
  }

  void release() {
    std::lock_guard<std::mutex> lock(m_);
    for (auto& b : free_) std::free(b.second);
    free_.clear();
    kept_ = 0;
  }

  void lock() { m_.lock(); }  // for fork() only (workspace_pool())
  void unlock() { m_.unlock(); }

  size_t cached_bytes() {
    std::lock_guard<std::mutex> lock(m_);
    return kept_;
  }

 private:
  // Plain 64-byte aligned blocks. (Marking large ones for transparent huge pages made first
  // touches fault once per 2 MiB, but with the kernel's defrag=madvise setting a first call
  // could stall for tens of ms in page compaction; the pool already removes the faults of
  // later calls.)
  static void* fresh(size_t bytes) { return std::aligned_alloc(64, bytes); }

  std::mutex m_;
  std::vector<std::pair<size_t, void*>> free_;  // (capacity in bytes, block)
  size_t kept_ = 0;                              // bytes in free_
};

// One pool per process, never destroyed (a block may be handed back during interpreter exit).
// Its mutex is held across fork() (a child forked while another thread was inside take or give,
// e.g. freeing blocks in empty_cache(), inherited it locked and hung at its first large array).
inline WorkspacePool& workspace_pool() {
  static WorkspacePool* pool = [] {
    auto* p = new WorkspacePool;
#if defined(LSTM_FAST_BIND_ATFORK)
    pthread_atfork([] { workspace_pool().lock(); }, [] { workspace_pool().unlock(); },
                   [] { workspace_pool().unlock(); });
#endif
    return p;
  }();
  return *pool;
}

// A new C-contiguous float32 array for a result. Large ones take their memory from the pool and
// hand it back when NumPy frees the array (a capsule owns the block), so a training loop that
// drops last step's outputs and caches reuses their memory instead of faulting in fresh pages
// (6 % of a GRU S2 training step at 2 threads). Small ones are plain NumPy arrays.
// A new, uninitialised C-contiguous float32 array straight from NumPy's C API (no shape or
// stride vectors on the heap: this runs several times per call of a one-step cell).
inline py::array_t<float, py::array::c_style> numpy_empty(const py::ssize_t* shape, int nd,
                                                          void* data = nullptr,
                                                          py::handle base = {}) {
  auto& api = py::detail::npy_api::get();
  PyObject* descr = api.PyArray_DescrFromType_(py::detail::npy_api::NPY_FLOAT_);
  if (!descr) throw py::error_already_set();
  const int flags = data ? py::detail::npy_api::NPY_ARRAY_WRITEABLE_ : 0;
  // PyArray_NewFromDescr takes the reference to descr, also when it fails.
  PyObject* o = api.PyArray_NewFromDescr_(api.PyArray_Type_, descr, nd, shape, nullptr, data,
                                          flags, nullptr);
  if (!o) throw py::error_already_set();
  auto out = py::reinterpret_steal<py::array_t<float, py::array::c_style>>(o);
  if (base && api.PyArray_SetBaseObject_(o, base.inc_ref().ptr()) != 0)
    throw py::error_already_set();  // the array owns the reference it was given either way
  return out;
}

inline py::array_t<float, py::array::c_style> new_array(const py::ssize_t* shape, int nd) {
  size_t n = 1;
  for (int d = 0; d < nd; ++d) n *= static_cast<size_t>(shape[d]);
  size_t bytes = ((n * sizeof(float) + 63) / 64) * 64;
  if (beyond_machine(bytes)) throw_out_of_memory(bytes, shape_text(shape, nd), true);
  if (bytes < WorkspacePool::kPoolMin) return numpy_empty(shape, nd);
  void* block = workspace_pool().take(bytes);
  if (!block) throw_out_of_memory(bytes, shape_text(shape, nd), false);
  auto* owner = new std::pair<void*, size_t>(block, bytes);
  py::capsule base(owner, [](void* o) {
    auto* b = static_cast<std::pair<void*, size_t>*>(o);
    workspace_pool().give(b->first, b->second);
    delete b;
  });
  return numpy_empty(shape, nd, block, base);
}
inline py::array_t<float, py::array::c_style> new_array(std::initializer_list<py::ssize_t> shape) {
  return new_array(shape.begin(), static_cast<int>(shape.size()));
}
inline py::array_t<float, py::array::c_style> new_array(const std::vector<py::ssize_t>& shape) {
  return new_array(shape.data(), static_cast<int>(shape.size()));
}

// 64-byte aligned scratch memory for one call (from the pool), handed back on scope exit.
struct Workspace {
  float* p = nullptr;
  size_t bytes = 0;
  explicit Workspace(index_t n) {
    // A size that no memory holds (or a negative one, from a size computation that wrapped)
    // is refused here, never rounded into a small block that the core would overrun.
    if (n < 0 || static_cast<std::uint64_t>(n) > kMaxBytes / sizeof(float))
      throw OutOfMemory("cannot allocate scratch memory of " + std::to_string(n) +
                        " floats: more than 2^47 bytes (128 TiB), beyond any memory");
    const size_t want = ((static_cast<size_t>(n) * sizeof(float) + 63) / 64) * 64;
    bytes = want ? want : 64;
    void* block = workspace_pool().take(bytes);
    if (!block)
      throw_out_of_memory(bytes, "scratch memory of " + std::to_string(n) + " floats",
                          beyond_machine(bytes));
    p = static_cast<float*>(block);
  }
  ~Workspace() { workspace_pool().give(p, bytes); }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
};

}  // namespace bind
}  // namespace lstm_fast
