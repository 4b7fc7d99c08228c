// The kernel module: adam_kernel.cpp's kernels as a CPython extension (no torch headers, so one
// binary serves every torch version). Tables are numpy arrays passed by the buffer protocol and
// checked against the counts they must hold; per-step constants are read by name from
// adamkit.functional.StepScalars objects, so no structure layout is mirrored in Python. Kernels
// run with the GIL released. The low-precision storage modes are separate objects of the same
// module (adam_kernel.cpp compiled with ADAMKIT_LOWPREC, see native_build.py).
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "adam_kernel.cpp"

#ifndef ADAMKIT_MODULE_NAME
#error "ADAMKIT_MODULE_NAME must name the module"
#endif
#define ADAMKIT_STR_(x) #x
#define ADAMKIT_STR(x) ADAMKIT_STR_(x)
#define ADAMKIT_INIT_(name) PyInit_##name
#define ADAMKIT_INIT(name) ADAMKIT_INIT_(name)

// The low-precision modes' entry points, one object each: (param, exp_avg, exp_avg_sq) formats.
#define ADAMKIT_FOR_EACH_MODE(X)                                                                               \
  X(0, 0, 0) X(0, 0, 1) X(0, 0, 2) X(0, 0, 3) X(0, 1, 0) X(0, 1, 1) X(0, 1, 2) X(0, 1, 3) X(0, 2, 0) X(0, 2, 1) \
  X(0, 2, 2) X(0, 2, 3) X(0, 3, 0) X(0, 3, 1) X(0, 3, 2) X(0, 3, 3) X(1, 0, 0) X(1, 0, 1) X(1, 0, 2) X(1, 0, 3) \
  X(1, 1, 0) X(1, 1, 1) X(1, 1, 2) X(1, 1, 3) X(1, 2, 0) X(1, 2, 1) X(1, 2, 2) X(1, 2, 3) X(1, 3, 0) X(1, 3, 1) \
  X(1, 3, 2) X(1, 3, 3)
// Weak: a module built with a subset of the modes (kernels/verify.py's checks) links without the
// others, which then read as null and are refused.
#define ADAMKIT_DECLARE(p, m, v)                                                                              \
  extern "C" __attribute__((weak)) int32_t adam_lowprec_step_p##p##_m##m##_v##v(const LowPrecBuffers*,         \
                                                                              const AdamScalars*, int32_t,     \
                                                                              int64_t, int);                   \
  extern "C" __attribute__((weak)) int32_t adam_lowprec_lanes_p##p##_m##m##_v##v();
ADAMKIT_FOR_EACH_MODE(ADAMKIT_DECLARE)

namespace {

using LowPrecStep = int32_t (*)(const LowPrecBuffers*, const AdamScalars*, int32_t, int64_t, int);
using LowPrecLanes = int32_t (*)();
struct Mode {
  LowPrecStep step;
  LowPrecLanes lanes;
};
#define ADAMKIT_ENTRY(p, m, v) {adam_lowprec_step_p##p##_m##m##_v##v, adam_lowprec_lanes_p##p##_m##m##_v##v},
const Mode kModes[32] = {ADAMKIT_FOR_EACH_MODE(ADAMKIT_ENTRY)};  // in the order (p, m, v) above

const Mode* mode_of(int param_format, int m_format, int v_format) {
  if (param_format < 0 || param_format > 1 || m_format < 0 || m_format > 3 || v_format < 0 || v_format > 3) return nullptr;
  const Mode* mode = &kModes[(param_format * 4 + m_format) * 4 + v_format];
  return mode->step != nullptr && mode->lanes != nullptr ? mode : nullptr;
}

// A borrowed buffer of at least `count` items of `item` bytes (None: a null pointer where allowed).
class Table {
 public:
  Table() = default;
  Table(const Table&) = delete;
  Table& operator=(const Table&) = delete;
  ~Table() {
    if (held_) PyBuffer_Release(&view_);
  }
  bool take(PyObject* object, Py_ssize_t count, Py_ssize_t item, const char* name, bool optional = false) {
    if ((object == nullptr || object == Py_None) && optional) return true;
    if (object == nullptr || object == Py_None) {
      PyErr_Format(PyExc_TypeError, "adamkit kernel: table '%s' is missing", name);
      return false;
    }
    if (PyObject_GetBuffer(object, &view_, PyBUF_C_CONTIGUOUS) != 0) return false;
    held_ = true;
    if (view_.len < count * item) {
      PyErr_Format(PyExc_ValueError, "adamkit kernel: table '%s' holds %zd bytes, needs %zd", name, view_.len, count * item);
      return false;
    }
    return true;
  }
  template <typename T>
  T* get() const {
    return held_ ? static_cast<T*>(view_.buf) : nullptr;
  }

 private:
  Py_buffer view_{};
  bool held_ = false;
};

bool read_double(PyObject* object, const char* name, double* out) {
  PyObject* value = PyObject_GetAttrString(object, name);
  if (value == nullptr) return false;
  *out = PyFloat_AsDouble(value);
  Py_DECREF(value);
  return !(*out == -1.0 && PyErr_Occurred());
}

// A list of StepScalars (one per distinct step count) as the kernels' AdamScalars.
bool read_scalars(PyObject* list, std::vector<AdamScalars>* out) {
  if (!PyList_Check(list) || PyList_GET_SIZE(list) == 0) {
    PyErr_SetString(PyExc_TypeError, "adamkit kernel: scalars must be a non-empty list of StepScalars");
    return false;
  }
  out->resize(PyList_GET_SIZE(list));
  for (Py_ssize_t k = 0; k < PyList_GET_SIZE(list); ++k) {
    PyObject* s = PyList_GET_ITEM(list, k);
    AdamScalars& a = (*out)[k];
    double maximize = 0, amsgrad = 0;
    if (!read_double(s, "beta1", &a.beta1) || !read_double(s, "beta2", &a.beta2) || !read_double(s, "eps", &a.eps) ||
        !read_double(s, "l2", &a.l2) || !read_double(s, "decay", &a.decay) || !read_double(s, "step_size", &a.step_size) ||
        !read_double(s, "bias_correction2_sqrt", &a.bias_correction2_sqrt) ||
        !read_double(s, "grad_scale", &a.grad_scale) || !read_double(s, "maximize", &maximize) ||
        !read_double(s, "amsgrad", &amsgrad))
      return false;
    a.maximize = maximize != 0;
    a.amsgrad = amsgrad != 0;
  }
  return true;
}

// adam_multi_step(p, g, m, v, vmax | None, prefix, scalar_index, count, scalars, dtype, threads, prefetch)
// p..vmax: int64 tables of `count` data pointers; prefix: count + 1 element offsets; scalar_index:
// count int32 entries into scalars; dtype 0 float32, 1 float64, 2 float16.
PyObject* py_adam_multi_step(PyObject*, PyObject* args) {
  PyObject *p, *g, *m, *v, *vmax, *prefix, *scalar_index, *scalars;
  Py_ssize_t count;
  int dtype, threads, prefetch;
  if (!PyArg_ParseTuple(args, "OOOOOOOnOiip", &p, &g, &m, &v, &vmax, &prefix, &scalar_index, &count, &scalars, &dtype,
                        &threads, &prefetch))
    return nullptr;
  if (dtype < 0 || dtype > 2 || count < 0) {
    PyErr_Format(PyExc_ValueError, "adamkit kernel: dtype %d or count %zd out of range", dtype, count);
    return nullptr;
  }
  Table tp, tg, tm, tv, tvmax, tprefix, tindex;
  std::vector<AdamScalars> constants;
  if (!tp.take(p, count, 8, "p") || !tg.take(g, count, 8, "g") || !tm.take(m, count, 8, "exp_avg") ||
      !tv.take(v, count, 8, "exp_avg_sq") || !tvmax.take(vmax, count, 8, "max_exp_avg_sq", true) ||
      !tprefix.take(prefix, count + 1, 8, "prefix") || !tindex.take(scalar_index, count, 4, "scalar_index") ||
      !read_scalars(scalars, &constants))
    return nullptr;
  for (Py_ssize_t k = 0; k < count; ++k)
    if (tindex.get<int32_t>()[k] < 0 || tindex.get<int32_t>()[k] >= int32_t(constants.size())) {
      PyErr_SetString(PyExc_IndexError, "adamkit kernel: scalar_index out of range");
      return nullptr;
    }
  AdamTensorTable table{tp.get<void*>(),      tg.get<const void*>(),  tm.get<void*>(), tv.get<void*>(),
                        tvmax.get<void*>(),   tprefix.get<int64_t>(), tindex.get<int32_t>(), count};
  Py_BEGIN_ALLOW_THREADS adam_multi_step(&table, constants.data(), dtype, threads, prefetch);
  Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

// load_floats(pointers, values, count, threads) / store_floats(...): float32 scalars by address.
template <bool LOAD>
PyObject* py_floats(PyObject*, PyObject* args) {
  PyObject *pointers, *values;
  Py_ssize_t count;
  int threads;
  if (!PyArg_ParseTuple(args, "OOni", &pointers, &values, &count, &threads)) return nullptr;
  Table tp, tv;
  if (!tp.take(pointers, count, 8, "pointers") || !tv.take(values, count, 4, "values")) return nullptr;
  Py_BEGIN_ALLOW_THREADS if (LOAD) load_floats(tp.get<float*>(), tv.get<float>(), count, threads);
  else store_floats(tp.get<float*>(), tv.get<float>(), count, threads);
  Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

// count_nonfinite(address, n, dtype, threads): NaN/Inf entries of a contiguous float32 (0) or
// float64 (1) buffer.
PyObject* py_count_nonfinite(PyObject*, PyObject* args) {
  unsigned long long address;
  long long n;
  int dtype, threads;
  if (!PyArg_ParseTuple(args, "KLii", &address, &n, &dtype, &threads)) return nullptr;
  int64_t count = 0;
  Py_BEGIN_ALLOW_THREADS if (dtype == 0) count = count_nonfinite<float>(reinterpret_cast<const float*>(address), n, threads);
  else count = count_nonfinite<double>(reinterpret_cast<const double*>(address), n, threads);
  Py_END_ALLOW_THREADS return PyLong_FromLongLong(count);
}

// floor_flat_f32(p, g, m, v, n, threads): the bytes-only floor of a float32 step (addresses).
PyObject* py_floor_flat_f32(PyObject*, PyObject* args) {
  unsigned long long p, g, m, v;
  long long n;
  int threads;
  if (!PyArg_ParseTuple(args, "KKKKLi", &p, &g, &m, &v, &n, &threads)) return nullptr;
  Py_BEGIN_ALLOW_THREADS floor_flat<float>(reinterpret_cast<float*>(p), reinterpret_cast<const float*>(g),
                                           reinterpret_cast<float*>(m), reinterpret_cast<float*>(v), n, threads);
  Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

// floor_tables(p, g, m, v, prefix, count, threads): the bytes-only floor over a float32 step's own
// tensors (tables as adam_multi_step's).
PyObject* py_floor_tables(PyObject*, PyObject* args) {
  PyObject *p, *g, *m, *v, *prefix;
  Py_ssize_t count;
  int threads;
  if (!PyArg_ParseTuple(args, "OOOOOni", &p, &g, &m, &v, &prefix, &count, &threads)) return nullptr;
  Table tp, tg, tm, tv, tprefix;
  if (!tp.take(p, count, 8, "p") || !tg.take(g, count, 8, "g") || !tm.take(m, count, 8, "exp_avg") ||
      !tv.take(v, count, 8, "exp_avg_sq") || !tprefix.take(prefix, count + 1, 8, "prefix"))
    return nullptr;
  AdamTensorTable table{tp.get<void*>(), tg.get<const void*>(), tm.get<void*>(), tv.get<void*>(), nullptr,
                        tprefix.get<int64_t>(), nullptr, count};
  Py_BEGIN_ALLOW_THREADS floor_tables(table, threads);
  Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

// floor_lowprec(p, g, m, v, n, param_bytes, state_bytes, threads, plain=False): a storage mode's
// bytes-only floor (plain: one loop per element, contiguous halves per thread).
PyObject* py_floor_lowprec(PyObject*, PyObject* args) {
  unsigned long long p, g, m, v;
  long long n;
  int param_bytes, state_bytes, threads, plain = 0;
  if (!PyArg_ParseTuple(args, "KKKKLiii|p", &p, &g, &m, &v, &n, &param_bytes, &state_bytes, &threads, &plain)) return nullptr;
  Py_BEGIN_ALLOW_THREADS floor_lowprec(reinterpret_cast<void*>(p), reinterpret_cast<const void*>(g),
                                       reinterpret_cast<void*>(m), reinterpret_cast<void*>(v), n, param_bytes,
                                       state_bytes, threads, plain);
  Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

// adam_lowprec_step(tables: dict, seed, (param_format, m_format, v_format, rounding), scalars, blocks, threads)
// tables: numpy arrays keyed by LowPrecBuffers' field names (per-parameter pointer tables and
// per-block indices); roles a mode lacks are absent or None.
PyObject* py_adam_lowprec_step(PyObject*, PyObject* args) {
  PyObject *tables, *scalars;
  unsigned long long seed;
  int param_format, m_format, v_format, rounding, threads;
  long long blocks;
  if (!PyArg_ParseTuple(args, "O!K(iiii)OLi", &PyDict_Type, &tables, &seed, &param_format, &m_format, &v_format, &rounding,
                        &scalars, &blocks, &threads))
    return nullptr;
  const Mode* mode = mode_of(param_format, m_format, v_format);
  if (mode == nullptr || rounding < 0 || rounding > 2) {
    PyErr_SetString(PyExc_ValueError, "adamkit kernel: storage formats unknown or not in this build");
    return nullptr;
  }
  PyObject* numel_object = PyDict_GetItemString(tables, "numel");
  Table numel;
  if (!numel.take(numel_object, 0, 8, "numel")) return nullptr;
  PyObject* p_object = PyDict_GetItemString(tables, "p");
  Py_buffer probe;
  if (p_object == nullptr || PyObject_GetBuffer(p_object, &probe, PyBUF_C_CONTIGUOUS) != 0) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "adamkit kernel: table 'p' is missing");
    return nullptr;
  }
  const Py_ssize_t params = probe.len / 8;
  PyBuffer_Release(&probe);
  struct Field {
    const char* name;
    Py_ssize_t count, item;
    bool optional;
  };
  const Field fields[] = {
      {"p", params, 8, false},           {"g", params, 8, false},           {"m", params, 8, false},
      {"v", params, 8, false},           {"vmax", params, 8, true},         {"comp", params, 8, true},
      {"m_absmax", params, 8, true},     {"v_absmax", params, 8, true},     {"vmax_absmax", params, 8, true},
      {"block_param", blocks, 4, false}, {"block_local", blocks, 8, false}, {"numel", params, 8, false},
      {"param_offset", params, 8, false}, {"param_stream", params, 4, false}, {"steps", params, 4, false},
      {"scalar_index", params, 4, false},
  };
  Table held[sizeof(fields) / sizeof(fields[0])];
  for (size_t k = 0; k < sizeof(fields) / sizeof(fields[0]); ++k)
    if (!held[k].take(PyDict_GetItemString(tables, fields[k].name), fields[k].count, fields[k].item, fields[k].name,
                      fields[k].optional))
      return nullptr;
  std::vector<AdamScalars> constants;
  if (!read_scalars(scalars, &constants)) return nullptr;
  const int32_t* block_param = held[9].get<int32_t>();
  const int64_t* block_local = held[10].get<int64_t>();
  const int64_t* numels = held[11].get<int64_t>();
  const int32_t* scalar_index = held[15].get<int32_t>();
  for (long long b = 0; b < blocks; ++b)  // every block inside its parameter: the kernel trusts these
    if (block_param[b] < 0 || block_param[b] >= params || block_local[b] < 0 || block_local[b] >= numels[block_param[b]]) {
      PyErr_SetString(PyExc_IndexError, "adamkit kernel: a block lies outside its parameter");
      return nullptr;
    }
  for (Py_ssize_t k = 0; k < params; ++k)
    if (scalar_index[k] < 0 || scalar_index[k] >= int32_t(constants.size())) {
      PyErr_SetString(PyExc_IndexError, "adamkit kernel: scalar_index out of range");
      return nullptr;
    }
  LowPrecBuffers buffers{held[0].get<void* const>(),      held[1].get<const void* const>(), held[2].get<void* const>(),
                         held[3].get<void* const>(),      held[4].get<void* const>(),       held[5].get<void* const>(),
                         held[6].get<float* const>(),     held[7].get<float* const>(),      held[8].get<float* const>(),
                         block_param,                     block_local,                      numels,
                         held[12].get<int64_t>(),         held[13].get<uint32_t>(),         held[14].get<float>(),
                         scalar_index,                    seed,                             param_format,
                         m_format,                        v_format,                         rounding};
  int32_t status;
  Py_BEGIN_ALLOW_THREADS status = mode->step(&buffers, constants.data(), int32_t(constants.size()), blocks, threads);
  Py_END_ALLOW_THREADS if (status != 0) {
    PyErr_SetString(PyExc_RuntimeError, "adamkit kernel: the storage mode's object was built for other formats");
    return nullptr;
  }
  Py_RETURN_NONE;
}

// lowprec_lanes(param_format, m_format, v_format): vector lanes of that mode's code (1: scalar only).
PyObject* py_lowprec_lanes(PyObject*, PyObject* args) {
  int p, m, v;
  if (!PyArg_ParseTuple(args, "iii", &p, &m, &v)) return nullptr;
  const Mode* mode = mode_of(p, m, v);
  if (mode == nullptr) {
    PyErr_SetString(PyExc_ValueError, "adamkit kernel: unknown storage formats");
    return nullptr;
  }
  return PyLong_FromLong(mode->lanes());
}

PyMethodDef kMethods[] = {
    {"adam_multi_step", py_adam_multi_step, METH_VARARGS, "One fused step of every tensor in the tables."},
    {"load_floats", py_floats<true>, METH_VARARGS, "values[i] = *pointers[i] (float32)."},
    {"store_floats", py_floats<false>, METH_VARARGS, "*pointers[i] = values[i] (float32)."},
    {"count_nonfinite", py_count_nonfinite, METH_VARARGS, "NaN/Inf entries of a float buffer."},
    {"floor_flat_f32", py_floor_flat_f32, METH_VARARGS, "Bytes-only floor of a float32 step."},
    {"floor_lowprec", py_floor_lowprec, METH_VARARGS, "Bytes-only floor of a storage mode."},
    {"floor_tables", py_floor_tables, METH_VARARGS, "Bytes-only floor over a float32 step's own tensors."},
    {"adam_lowprec_step", py_adam_lowprec_step, METH_VARARGS, "One fused low-precision step."},
    {"lowprec_lanes", py_lowprec_lanes, METH_VARARGS, "Vector lanes of a storage mode's code."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, ADAMKIT_STR(ADAMKIT_MODULE_NAME), "adamkit's fused CPU kernels.", -1,
                       kMethods};

}  // namespace

PyMODINIT_FUNC ADAMKIT_INIT(ADAMKIT_MODULE_NAME)() {
  PyObject* module = PyModule_Create(&kModule);
  if (module == nullptr) return nullptr;
#if defined(__AVX512F__) && defined(__AVX512BF16__)
  const char* isa = "avx512bf16";
#elif defined(__AVX512F__)
  const char* isa = "avx512";
#elif defined(__AVX2__)
  const char* isa = "avx2";
#else
  const char* isa = "baseline";
#endif
  if (PyModule_AddStringConstant(module, "ISA", isa) != 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
