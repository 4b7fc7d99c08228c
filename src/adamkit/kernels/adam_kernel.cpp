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

template <typename T, bool AMSGRAD>
void adam_flat(T* __restrict p, const T* __restrict g, T* __restrict m, T* __restrict v,
               T* __restrict vmax, int64_t n, const AdamScalars& s, int threads) {
  // maximize flips the sign; an AMP loss scale is divided out (exact for powers of two).
  const T grad_sign = T((s.maximize ? -1.0 : 1.0) / s.grad_scale);
  const T decay = T(s.decay), l2 = T(s.l2);
  const T lerp_weight = T(1.0 - s.beta1), lerp_complement = T(s.beta1);
  const bool lerp_from_start = (1.0 - s.beta1) < 0.5;  // torch's lerp picks the stabler form
  const T beta2 = T(s.beta2), one_minus_beta2 = T(1.0 - s.beta2);
  const T bias_correction2_sqrt = T(s.bias_correction2_sqrt), eps = T(s.eps);
  const T neg_step_size = T(-s.step_size);
#pragma omp parallel for simd schedule(static) num_threads(threads) if (n >= kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) {
    T param = p[i] * decay;                            // AdamW: p <- p (1 - lr wd)
    T grad = g[i] * grad_sign + l2 * param;            // Adam + L2: g <- g + wd p
    T exp_avg = lerp_from_start ? m[i] + lerp_weight * (grad - m[i])      // m_t, K&B Alg. 1
                                : grad - (grad - m[i]) * lerp_complement;
    T exp_avg_sq = v[i] * beta2 + one_minus_beta2 * grad * grad;         // v_t, K&B Alg. 1
    T second = exp_avg_sq;
    if (AMSGRAD) {                                     // Reddi et al.: v_max <- max(v_max, v_t)
      second = vmax[i] > exp_avg_sq ? vmax[i] : exp_avg_sq;
      vmax[i] = second;
    }
    T denom = std::sqrt(second) / bias_correction2_sqrt + eps;  // sqrt(v_hat) + eps
    m[i] = exp_avg;
    v[i] = exp_avg_sq;
    p[i] = param + neg_step_size * (exp_avg / denom);  // p <- p - lr m_hat / (sqrt(v_hat) + eps)
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
  if (s->amsgrad) adam_flat<float, true>(p, g, m, v, vmax, n, *s, threads);
  else adam_flat<float, false>(p, g, m, v, vmax, n, *s, threads);
}

void adam_flat_f64(double* p, const double* g, double* m, double* v, double* vmax, int64_t n,
                   const AdamScalars* s, int threads) {
  if (s->amsgrad) adam_flat<double, true>(p, g, m, v, vmax, n, *s, threads);
  else adam_flat<double, false>(p, g, m, v, vmax, n, *s, threads);
}

void floor_flat_f32(float* p, const float* g, float* m, float* v, int64_t n, int threads) {
  floor_flat<float>(p, g, m, v, n, threads);
}

}  // extern "C"
