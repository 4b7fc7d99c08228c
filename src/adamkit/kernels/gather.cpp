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

// Prefetch a few parameters ahead: each check is a short chain of dependent loads (Python object
// -> TensorImpl -> autograd meta -> grad's TensorImpl), cold after the backward pass.
constexpr Py_ssize_t kAhead = 8;

inline const at::Tensor& unpack(PyObject* object) { return THPVariable_Unpack(object); }

// Arguments: (params: list, param_addresses: buffer of n int64, out: writable buffer of n int64).
// Writes out[i] = the data pointer of params[i].grad if the kernel may read it, 0 if the grad is
// None, -1 if it is of another kind (sparse, strided, another dtype, size or device). Returns 0,
// 1 if some params[i].data_ptr() is no longer param_addresses[i] (its .data was replaced: the
// caller rebuilds its tables), or None if the arguments are not what the caller promised.
PyObject* grad_pointers(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3 || !PyList_CheckExact(args[0])) Py_RETURN_NONE;
  PyObject* params = args[0];
  const Py_ssize_t count = PyList_GET_SIZE(params);
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
  long status = 0;
  bool understood = addresses.len == bytes && out.len == bytes;
  try {
    const auto* expected = static_cast<const int64_t*>(addresses.buf);
    auto* pointers = static_cast<int64_t*>(out.buf);
    for (Py_ssize_t i = 0; i < count && understood; ++i) {
      if (i + kAhead < count) __builtin_prefetch(unpack(PyList_GET_ITEM(params, i + kAhead)).unsafeGetTensorImpl());
      PyObject* object = PyList_GET_ITEM(params, i);
      if (!THPVariable_Check(object)) {
        understood = false;
        break;
      }
      const at::Tensor& param = unpack(object);
      if (reinterpret_cast<int64_t>(param.const_data_ptr()) != expected[i]) {
        status = 1;
        break;
      }
      const at::Tensor& grad = param.grad();
      if (!grad.defined()) {
        pointers[i] = 0;
      } else if (grad.layout() == c10::kStrided && grad.device().is_cpu() && grad.scalar_type() == param.scalar_type() &&
                 grad.numel() == param.numel() && grad.is_contiguous() && !grad.is_neg() && !grad.is_conj()) {
        const int64_t address = reinterpret_cast<int64_t>(grad.const_data_ptr());
        pointers[i] = address != 0 ? address : 1;  // an empty grad has no memory: present, never read
      } else {
        pointers[i] = -1;
      }
    }
  } catch (const std::exception&) {
    understood = false;
  }
  PyBuffer_Release(&addresses);
  PyBuffer_Release(&out);
  if (!understood) Py_RETURN_NONE;
  return PyLong_FromLong(status);
}

PyMethodDef methods[] = {
    {"grad_pointers", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(grad_pointers)), METH_FASTCALL,
     "grad_pointers(params, param_addresses, out) -> 0 | 1 | None"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_adamkit_gather", nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__adamkit_gather() { return PyModule_Create(&module); }
