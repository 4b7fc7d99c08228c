// Per-step gathering of gradient pointers for the kernel path, as a CPython extension.
//
// Before each fused step the kernel needs the data pointer of every parameter's gradient, and
// the knowledge that each gradient is one the kernel may read: a dense, contiguous CPU tensor of
// the parameter's dtype and size. In Python that costs ~1 us per parameter (several descriptor
// and method calls per tensor): 20-30 ms for 20,000 small tensors, more than the kernel itself.
// Here it is a few pointer chases per parameter. The answers equal the Python gather in
// gather.py, which remains the fallback when this module cannot be built.

#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>

#include <cstdint>
#include <exception>

namespace {

inline const at::Tensor& unpack(PyObject* object) { return THPVariable_Unpack(object); }

// Below this many parameters one thread answers (a parallel region costs more than it saves).
constexpr Py_ssize_t kParallelCount = 2048;

// The answer for one parameter: the grad's data pointer, 0 for None, -1 for a grad of another
// kind; 1 in *moved if the parameter's memory is not at `expected`.
inline int64_t grad_pointer(const at::Tensor& param, int64_t expected, int* moved) {
  if (reinterpret_cast<int64_t>(param.const_data_ptr()) != expected) {
    *moved = 1;
    return -1;
  }
  const at::Tensor& grad = param.grad();
  if (!grad.defined()) return 0;
  if (grad.layout() == c10::kStrided && grad.device().is_cpu() && grad.scalar_type() == param.scalar_type() &&
      grad.numel() == param.numel() && grad.is_contiguous() && !grad.is_neg() && !grad.is_conj()) {
    const int64_t address = reinterpret_cast<int64_t>(grad.const_data_ptr());
    return address != 0 ? address : 1;  // an empty grad has no memory: present, never read
  }
  return -1;
}

// Arguments: (params: list, param_addresses: buffer of n int64, out: writable buffer of n int64,
// threads: int). Writes out[i] = the data pointer of params[i].grad if the kernel may read it, 0 if
// the grad is None, -1 if it is of another kind (sparse, strided, another dtype, size or device).
// Returns 0, 1 if some params[i].data_ptr() is no longer param_addresses[i] (its .data was
// replaced: the caller rebuilds its tables), or None if the arguments are not what the caller
// promised (a list of exactly torch.Tensor / nn.Parameter objects and matching buffers).
// The answers for many parameters are a chain of cold pointer loads each (Python object ->
// TensorImpl -> autograd meta -> grad -> storage): the threads share them. Only the GIL holder's
// list is read, and no Python API is called inside the parallel region.
PyObject* grad_pointers(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 4 || !PyList_CheckExact(args[0]) || !PyLong_Check(args[3])) Py_RETURN_NONE;
  PyObject* params = args[0];
  const Py_ssize_t count = PyList_GET_SIZE(params);
  const long threads = PyLong_AsLong(args[3]);
  for (Py_ssize_t i = 0; i < count; ++i)
    if (!THPVariable_CheckExact(PyList_GET_ITEM(params, i))) Py_RETURN_NONE;
  Py_buffer addresses{}, out{};
  if (PyObject_GetBuffer(args[1], &addresses, PyBUF_SIMPLE) != 0) {
    PyErr_Clear();
    Py_RETURN_NONE;
  }
  if (PyObject_GetBuffer(args[2], &out, PyBUF_WRITABLE) != 0) {
    PyErr_Clear();
    PyBuffer_Release(&addresses);
    Py_RETURN_NONE;
  }
  const Py_ssize_t bytes = count * static_cast<Py_ssize_t>(sizeof(int64_t));
  int moved = 0, failed = 0;
  if (addresses.len == bytes && out.len == bytes) {
    const auto* expected = static_cast<const int64_t*>(addresses.buf);
    auto* pointers = static_cast<int64_t*>(out.buf);
    const int teams = count >= kParallelCount && threads > 1 ? static_cast<int>(threads) : 1;
#pragma omp parallel for schedule(static) num_threads(teams) reduction(| : moved, failed) if (teams > 1)
    for (Py_ssize_t i = 0; i < count; ++i) {
      try {
        pointers[i] = grad_pointer(unpack(PyList_GET_ITEM(params, i)), expected[i], &moved);
      } catch (...) {
        failed = 1;
      }
    }
  } else {
    failed = 1;
  }
  PyBuffer_Release(&addresses);
  PyBuffer_Release(&out);
  if (failed) Py_RETURN_NONE;
  return PyLong_FromLong(moved);
}

PyMethodDef methods[] = {
    {"grad_pointers", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(grad_pointers)), METH_FASTCALL,
     "grad_pointers(params, param_addresses, out, threads) -> 0 | 1 | None"},
    {nullptr, nullptr, 0, nullptr},
};

// The package build names the module _gather and records the torch it was compiled against (its
// C++ API has no stable ABI across torch releases); the first-use build is _adamkit_gather.
#ifndef ADAMKIT_GATHER_NAME
#define ADAMKIT_GATHER_NAME _adamkit_gather
#endif
#ifndef ADAMKIT_TORCH_VERSION
#define ADAMKIT_TORCH_VERSION ""
#endif
#define ADAMKIT_STR_(x) #x
#define ADAMKIT_STR(x) ADAMKIT_STR_(x)
#define ADAMKIT_INIT_(name) PyInit_##name
#define ADAMKIT_INIT(name) ADAMKIT_INIT_(name)

PyModuleDef module = {PyModuleDef_HEAD_INIT, ADAMKIT_STR(ADAMKIT_GATHER_NAME), nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC ADAMKIT_INIT(ADAMKIT_GATHER_NAME)() {
  PyObject* created = PyModule_Create(&module);
  if (created != nullptr && PyModule_AddStringConstant(created, "TORCH_VERSION", ADAMKIT_TORCH_VERSION) != 0) {
    Py_DECREF(created);
    return nullptr;
  }
  return created;
}
