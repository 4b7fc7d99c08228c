// Fused Adam-family step over one flat buffer: one pass over memory, all math in registers.
// Implements the per-element contract of adamkit/functional.py with the per-step scalars
// computed there (StepScalars); op order follows torch.optim.Adam's for-loop.
// Built by adamkit/kernels/build.py with -O3 -march=native -fopenmp for the host CPU.
#include <cmath>
#include <cstdint>

extern "C" {

struct AdamScalars {  // mirrors adamkit.functional.StepScalars
  double beta1, beta2, eps, l2, decay, step_size, bias_correction2_sqrt, grad_scale;
  int32_t maximize, amsgrad;
};

}  // extern "C"

namespace {

constexpr int64_t kParallelThreshold = 1 << 15;  // below this, threading costs more than it saves

// Compile-time switches drop the work a configuration does not need: the kernel runs near the
// memory-bandwidth limit only if its arithmetic stays below it (AVX2 sqrt and div are not cheap).
template <typename T, bool AMSGRAD, bool L2, bool SCALE_GRAD>
void adam_flat(T* __restrict p, const T* __restrict g, T* __restrict m, T* __restrict v,
               T* __restrict vmax, int64_t n, const AdamScalars& s, int threads) {
  // maximize flips the sign; an AMP loss scale is divided out (exact for powers of two).
  const T grad_multiplier = T((s.maximize ? -1.0 : 1.0) / s.grad_scale);
  const T decay = T(s.decay), l2 = T(s.l2);
  const T lerp_weight = T(1.0 - s.beta1), lerp_complement = T(s.beta1);
  const bool lerp_from_start = (1.0 - s.beta1) < 0.5;  // torch's lerp picks the stabler form
  const T beta2 = T(s.beta2), one_minus_beta2 = T(1.0 - s.beta2);
  const T inverse_bias_correction2_sqrt = T(1.0 / s.bias_correction2_sqrt), eps = T(s.eps);
  const T neg_step_size = T(-s.step_size);
#pragma omp parallel for simd schedule(static) num_threads(threads) if (n >= kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) {
    T param = p[i] * decay;                            // AdamW: p <- p (1 - lr wd)
    T grad = g[i];
    if (SCALE_GRAD) grad *= grad_multiplier;
    if (L2) grad += l2 * param;                        // Adam + L2: g <- g + wd p
    T exp_avg = lerp_from_start ? m[i] + lerp_weight * (grad - m[i])      // m_t, K&B Alg. 1
                                : grad - (grad - m[i]) * lerp_complement;
    T exp_avg_sq = v[i] * beta2 + one_minus_beta2 * grad * grad;         // v_t, K&B Alg. 1
    T second = exp_avg_sq;
    if (AMSGRAD) {                                     // Reddi et al.: v_max <- max(v_max, v_t)
      second = vmax[i] > exp_avg_sq ? vmax[i] : exp_avg_sq;
      vmax[i] = second;
    }
    T denom = std::sqrt(second) * inverse_bias_correction2_sqrt + eps;  // sqrt(v_hat) + eps
    m[i] = exp_avg;
    v[i] = exp_avg_sq;
    p[i] = param + neg_step_size * (exp_avg / denom);  // p <- p - lr m_hat / (sqrt(v_hat) + eps)
  }
}

template <typename T>
void adam_flat_dispatch(T* p, const T* g, T* m, T* v, T* vmax, int64_t n, const AdamScalars& s, int threads) {
  const int variant = (s.amsgrad ? 4 : 0) | (s.l2 != 0 ? 2 : 0) | (s.maximize || s.grad_scale != 1.0 ? 1 : 0);
  switch (variant) {
    case 0: return adam_flat<T, false, false, false>(p, g, m, v, vmax, n, s, threads);
    case 1: return adam_flat<T, false, false, true>(p, g, m, v, vmax, n, s, threads);
    case 2: return adam_flat<T, false, true, false>(p, g, m, v, vmax, n, s, threads);
    case 3: return adam_flat<T, false, true, true>(p, g, m, v, vmax, n, s, threads);
    case 4: return adam_flat<T, true, false, false>(p, g, m, v, vmax, n, s, threads);
    case 5: return adam_flat<T, true, false, true>(p, g, m, v, vmax, n, s, threads);
    case 6: return adam_flat<T, true, true, false>(p, g, m, v, vmax, n, s, threads);
    default: return adam_flat<T, true, true, true>(p, g, m, v, vmax, n, s, threads);
  }
}

template <typename T>
void floor_flat(T* __restrict p, const T* __restrict g, T* __restrict m, T* __restrict v, int64_t n, int threads) {
  // Bytes-only floor: the same reads and writes as an Adam step, trivial arithmetic.
#pragma omp parallel for simd schedule(static) num_threads(threads) if (n >= kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) {
    T grad = g[i];
    m[i] = m[i] + grad;
    v[i] = v[i] + grad;
    p[i] = p[i] - grad;
  }
}

template <typename T>
int64_t count_nonfinite(const T* __restrict x, int64_t n, int threads) {
  int64_t count = 0;
#pragma omp parallel for simd schedule(static) reduction(+ : count) num_threads(threads) if (n >= kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) count += !std::isfinite(x[i]);
  return count;
}

}  // namespace

extern "C" {

int64_t count_nonfinite_f32(const float* x, int64_t n, int threads) { return count_nonfinite<float>(x, n, threads); }
int64_t count_nonfinite_f64(const double* x, int64_t n, int threads) { return count_nonfinite<double>(x, n, threads); }

void adam_flat_f32(float* p, const float* g, float* m, float* v, float* vmax, int64_t n,
                   const AdamScalars* s, int threads) {
  adam_flat_dispatch<float>(p, g, m, v, vmax, n, *s, threads);
}

void adam_flat_f64(double* p, const double* g, double* m, double* v, double* vmax, int64_t n,
                   const AdamScalars* s, int threads) {
  adam_flat_dispatch<double>(p, g, m, v, vmax, n, *s, threads);
}

void floor_flat_f32(float* p, const float* g, float* m, float* v, int64_t n, int threads) {
  floor_flat<float>(p, g, m, v, n, threads);
}

}  // extern "C"
