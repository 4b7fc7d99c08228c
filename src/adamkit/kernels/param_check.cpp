// Per-step verification of a flat bucket's parameters, as a CPython extension.
//
// Before each fused step the flat path must know that every parameter still
// lives in its slot of the flat buffer (nobody assigned `p.data`) and that
// every `p.grad` is still the flat gradient buffer's view (nobody assigned or
// reset it). In Python that costs ~1 us per parameter (a descriptor call and a
// method call per tensor): 20-30 ms for 20,000 small tensors, more than the
// kernel itself. Here it is two pointer chases per parameter.
//
// Identity of `p.grad` is identity of its TensorImpl (a Python tensor object
// and its TensorImpl are one-to-one), so the answers equal the Python checks
// in flat.py, which remain the fallback when this module cannot be built.

#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>

#include <cstdint>
#include <exception>

namespace {

// Prefetch a few parameters ahead: each check is a short chain of dependent
// loads (Python object -> TensorImpl -> storage / autograd meta), cold after the
// forward and backward passes, so overlapping the chains of neighbours pays.
constexpr Py_ssize_t kAhead = 8;

inline const at::Tensor& unpack(PyObject* object) {
  return THPVariable_Unpack(object);
}

// Arguments: (params: list, grad_views: list, addresses: buffer of 2n int64,
// check_params: bool). addresses holds the params' data pointers, then the grad
// views'. Returns True when every params[i].grad is grad_views[i], every view
// still points at its slot (nobody assigned `view.data`) and, if check_params,
// every params[i].data_ptr() is its slot; None if the arguments are not what
// the caller promised (the caller then falls back to Python).
PyObject* all_in_place(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 4 || !PyList_CheckExact(args[0]) || !PyList_CheckExact(args[1])) Py_RETURN_NONE;
  PyObject* params = args[0];
  PyObject* grad_views = args[1];
  const bool check_params = PyObject_IsTrue(args[3]) == 1;
  const Py_ssize_t count = PyList_GET_SIZE(params);
  if (PyList_GET_SIZE(grad_views) != count) Py_RETURN_NONE;
  Py_buffer addresses{};
  if (PyObject_GetBuffer(args[2], &addresses, PyBUF_SIMPLE) != 0) {
    PyErr_Clear();
    Py_RETURN_NONE;
  }
  if (addresses.len != 2 * count * static_cast<Py_ssize_t>(sizeof(int64_t))) {
    PyBuffer_Release(&addresses);
    Py_RETURN_NONE;
  }
  const auto* param_addresses = static_cast<const int64_t*>(addresses.buf);
  const int64_t* grad_addresses = param_addresses + count;
  bool ok = true;
  try {
    for (Py_ssize_t i = 0; i < count && ok; ++i) {
      if (i + kAhead < count) {
        __builtin_prefetch(unpack(PyList_GET_ITEM(params, i + kAhead)).unsafeGetTensorImpl());
        __builtin_prefetch(unpack(PyList_GET_ITEM(grad_views, i + kAhead)).unsafeGetTensorImpl());
      }
      const at::Tensor& param = unpack(PyList_GET_ITEM(params, i));
      const at::Tensor& view = unpack(PyList_GET_ITEM(grad_views, i));
      ok = param.grad().unsafeGetTensorImpl() == view.unsafeGetTensorImpl() &&
           reinterpret_cast<int64_t>(view.const_data_ptr()) == grad_addresses[i] &&
           (!check_params || reinterpret_cast<int64_t>(param.const_data_ptr()) == param_addresses[i]);
    }
  } catch (const std::exception&) {
    PyBuffer_Release(&addresses);
    Py_RETURN_NONE;
  }
  PyBuffer_Release(&addresses);
  return PyBool_FromLong(ok);
}

PyMethodDef methods[] = {
    {"all_in_place", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(all_in_place)), METH_FASTCALL,
     "all_in_place(params, grad_views, addresses, check_params) -> bool | None"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_adamkit_param_check", nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__adamkit_param_check() { return PyModule_Create(&module); }
