// Fused Adam-family step over tables of tensors: one pass over memory, all math in registers.
// Implements the per-element contract of adamkit/functional.py with the per-step scalars
// computed there (StepScalars); op order follows torch.optim.Adam's for-loop.
// Built into the kernel module (kernels/module.cpp, kernels/native_build.py) once per instruction set.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef ADAMKIT_LOWPREC
#include "simd.h"  // the low-precision kernel's vector path: V is AVX-512 (16 lanes) or AVX2 (8)
#endif

extern "C" {

struct AdamScalars {  // mirrors adamkit.functional.StepScalars
  double beta1, beta2, eps, l2, decay, step_size, bias_correction2_sqrt, grad_scale;
  int32_t maximize, amsgrad;
};

// The tensors of one step, torch's layout kept: one pointer per tensor and role (a null table for
// max_exp_avg_sq without amsgrad). prefix[k] is the number of elements before tensor k
// (prefix[count] the total); tensor k uses scalars[scalar_index[k]] (its own step count).
struct AdamTensorTable {
  void* const* p;
  const void* const* g;
  void* const* m;
  void* const* v;
  void* const* vmax;
  const int64_t* prefix;
  const int32_t* scalar_index;
  int64_t count;
};

#ifndef ADAMKIT_LOWPREC
// Step counts live in each parameter's own float32 scalar tensor (torch's state layout): one
// scattered read or write each, which two threads overlap for many tensors.
void load_floats(float* const* pointers, float* values, int64_t n, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (n >= 4096)
  for (int64_t i = 0; i < n; ++i) values[i] = *pointers[i];
}
void store_floats(float* const* pointers, const float* values, int64_t n, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (n >= 4096)
  for (int64_t i = 0; i < n; ++i) *pointers[i] = values[i];
}
#endif  // ADAMKIT_LOWPREC

}  // extern "C"

namespace {

constexpr int64_t kParallelThreshold = 1 << 15;  // below this, threading costs more than it saves

// This thread's share [begin, end) of `total` items inside a parallel region: contiguous ranges in
// thread order, inner boundaries rounded down to a multiple of `align` (the last takes the rest).
inline std::pair<int64_t, int64_t> thread_range(int64_t total, int64_t align) {
#ifdef _OPENMP
  const int64_t team = omp_get_thread_num(), size = omp_get_num_threads();
#else
  const int64_t team = 0, size = 1;
#endif
  const int64_t begin = total * team / size / align * align;
  return {begin, team + 1 == size ? total : total * (team + 1) / size / align * align};
}

// The Adam-family update of one element: the one statement of the math in C++ (functional.py's
// adam_update_ is the one in Python). Ops supplies the arithmetic on X: ScalarOps<T> for one
// float or double (the fp32/fp64/fp16 kernel, whose loops the compiler vectorises, and the
// low-precision kernel's scalar code) or VectorOps for V::kLanes floats (the low-precision
// kernel's SIMD code, below). Every product that is added is an explicit fma and the build turns
// contraction off (native_build.py), so every instantiation gives the same bits, on any compiler
// and CPU (a CPU without FMA computes std::fma in software). The moments' fmas sit where torch's
// CPU vector code has them (lerp, addcmul, add with alpha), so m and v track torch.optim's
// rounding; the denominator and the step are fmas around one division per element, which keeps
// the arithmetic under the memory traffic (torch's own order costs a second division: ~10 % on
// many small tensors, benchmarks/RESULTS.md).
template <typename T>
struct ScalarOps {
  using X = T;
  static X splat(T x) { return x; }
  static X mul(X a, X b) { return a * b; }
  static X sub(X a, X b) { return a - b; }
  static X div(X a, X b) { return a / b; }
  static X fma(X a, X b, X c) { return std::fma(a, b, c); }
  static X sqrt(X a) { return std::sqrt(a); }
  static X max(X a, X b) { return a > b ? a : b; }  // NaN: b
};

// The per-step constants in the arithmetic type T (float for float16, bfloat16 and the
// low-precision storages, as torch's fused kernels compute reduced precision in fp32).
template <typename T>
struct AdamConstants {
  T grad_multiplier, decay, l2, lerp_weight, beta2, one_minus_beta2, inverse_bias_correction2_sqrt, eps, neg_step_size;
  bool lerp_from_start, scale_grad, add_l2;
  explicit AdamConstants(const AdamScalars& s)
      // maximize flips the sign; an AMP loss scale is divided out (exact for powers of two)
      : grad_multiplier(T((s.maximize ? -1.0 : 1.0) / s.grad_scale)),
        decay(T(s.decay)),
        l2(T(s.l2)),
        // torch's lerp picks the stabler form: from m with weight 1 - beta1, or from g with (1 - beta1) - 1
        lerp_weight((1.0 - s.beta1) < 0.5 ? T(1.0 - s.beta1) : T(T(1.0 - s.beta1) - T(1))),
        beta2(T(s.beta2)),
        one_minus_beta2(T(1.0 - s.beta2)),
        inverse_bias_correction2_sqrt(T(1.0 / s.bias_correction2_sqrt)),
        eps(T(s.eps)),
        neg_step_size(T(-s.step_size)),
        lerp_from_start((1.0 - s.beta1) < 0.5),
        scale_grad(s.maximize || s.grad_scale != 1.0),
        add_l2(s.l2 != 0) {}
};

template <class Ops>
struct AdamMath {
  using X = typename Ops::X;
  X grad_multiplier, decay, l2, lerp_weight, beta2, one_minus_beta2, inverse_bias_correction2_sqrt, eps, neg_step_size;
  bool lerp_from_start;
  template <typename T>
  explicit AdamMath(const AdamConstants<T>& c)
      : grad_multiplier(Ops::splat(c.grad_multiplier)),
        decay(Ops::splat(c.decay)),
        l2(Ops::splat(c.l2)),
        lerp_weight(Ops::splat(c.lerp_weight)),
        beta2(Ops::splat(c.beta2)),
        one_minus_beta2(Ops::splat(c.one_minus_beta2)),
        inverse_bias_correction2_sqrt(Ops::splat(c.inverse_bias_correction2_sqrt)),
        eps(Ops::splat(c.eps)),
        neg_step_size(Ops::splat(c.neg_step_size)),
        lerp_from_start(c.lerp_from_start) {}

  // x: the decayed parameter; m_t and v_t (K&B Alg. 1). add_l2 and scale_grad are the group's
  // (constants where the caller instantiates per configuration, so the branches fold).
  __attribute__((always_inline)) inline void moments(X param, X grad, X old_m, X old_v, bool add_l2, bool scale_grad, X& x,
                                                     X& exp_avg, X& exp_avg_sq) const {
    x = Ops::mul(param, decay);                                  // AdamW: p <- p (1 - lr wd)
    if (scale_grad) grad = Ops::mul(grad, grad_multiplier);
    if (add_l2) grad = Ops::fma(x, l2, grad);                    // Adam + L2: g <- g + wd p
    const X diff = Ops::sub(grad, old_m);                        // m_t = lerp(m, g, 1 - beta1)
    exp_avg = Ops::fma(lerp_weight, diff, lerp_from_start ? old_m : grad);
    exp_avg_sq = Ops::fma(Ops::mul(one_minus_beta2, grad), grad, Ops::mul(old_v, beta2));  // v_t
  }
  // AMSGrad (Reddi et al.): v_max <- max(v_max, v_t), the new v where either is NaN
  __attribute__((always_inline)) inline X second_moment(X old_vmax, X exp_avg_sq) const { return Ops::max(old_vmax, exp_avg_sq); }
  // p <- x - lr m_hat / (sqrt(v_hat) + eps), with the bias corrections folded into the constants
  __attribute__((always_inline)) inline X step(X x, X exp_avg, X second) const {
    const X denom = Ops::fma(Ops::sqrt(second), inverse_bias_correction2_sqrt, eps);
    return Ops::fma(neg_step_size, Ops::div(exp_avg, denom), x);
  }
};

#ifndef ADAMKIT_LOWPREC  // a low-precision mode's library (see below) holds only its own kernel
// Compile-time switches drop the work a configuration does not need: the kernel runs near the
// memory-bandwidth limit only if its arithmetic stays below it (AVX2 sqrt and div are not cheap).
// S is the storage type of params, grads and moments; T the arithmetic type (float for _Float16).
template <typename S, typename T, bool AMSGRAD, bool L2, bool SCALE_GRAD>
struct AdamElement {
  AdamMath<ScalarOps<T>> math;
  explicit AdamElement(const AdamScalars& s) : math(AdamConstants<T>(s)) {}

  // One element; inlined into adam_span's loops, which the compiler vectorises.
  __attribute__((always_inline)) inline void operator()(S* __restrict p, const S* __restrict g, S* __restrict m,
                                                        S* __restrict v, S* __restrict vmax, int64_t i) const {
    T x, exp_avg, exp_avg_sq;
    math.moments(T(p[i]), T(g[i]), T(m[i]), T(v[i]), L2, SCALE_GRAD, x, exp_avg, exp_avg_sq);
    T second = exp_avg_sq;
    if (AMSGRAD) {
      second = math.second_moment(T(vmax[i]), exp_avg_sq);
      vmax[i] = S(second);
    }
    m[i] = S(exp_avg);
    v[i] = S(exp_avg_sq);
    p[i] = S(math.step(x, exp_avg, second));
  }
};

// Software prefetch (where the CPU gains from it: kernels/native.py decides per vendor): each block
// of kPrefetchBlockBytes per stream first asks for the same streams kPrefetchBytes further on. The square root and the division keep each element's instructions
// in the core for long, so the loads the out-of-order window issues by itself run too few lines
// ahead to keep memory busy (GPT-2 shapes: 1.07-1.09x the bytes-only floor without, ~1.01-1.03x
// with; 20,000 x 1,000: 1.43x -> 1.17-1.20x the flat floor; benchmarks/RESULTS.md). 768 bytes
// ahead measured best on GPT-2 shapes, also with another job loading the memory bus (512: ~1 %
// slower there, ~1 % faster on 1,000-element tensors; 1 KiB ~1 % slower on both; 2 KiB and a
// second, far prefetch slower). Past a tensor's end it touches whatever lies there (a prefetch
// never faults); prefetching the next tensor's start instead measured ~5 % slower on
// 1,000-element tensors. All of that was measured on an Intel Xeon; on an AMD EPYC (Zen 4) the same
// prefetch made GPT-2 shapes ~4 % slower with AVX-512 and ~11 % with AVX2 (side by side,
// benchmarks/kernel_side_by_side.py), so there the kernel runs without it. Blocks have a
// compile-time length, so the vector loop inside has no remainder; the last partial block runs
// the same body on its own.
constexpr int64_t kPrefetchBlockBytes = 256, kPrefetchBytes = 768;

template <typename S>
inline void prefetch_lines(const S* x) {  // the address as an integer: it may lie outside the tensor
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(x) + kPrefetchBytes;
  for (int64_t offset = 0; offset < kPrefetchBlockBytes; offset += 64)
    __builtin_prefetch(reinterpret_cast<const void*>(ahead + offset), 0, 3);
}

template <typename S, typename T, bool AMSGRAD, bool L2, bool SCALE_GRAD, bool PREFETCH>
void adam_span(S* __restrict p, const S* __restrict g, S* __restrict m,
                                                            S* __restrict v, S* __restrict vmax, int64_t n,
                                                            const AdamScalars& s) {
  const AdamElement<S, T, AMSGRAD, L2, SCALE_GRAD> element(s);
  constexpr int64_t kSpanBlock = kPrefetchBlockBytes / int64_t(sizeof(S));
  int64_t start = 0;
  for (; start + kSpanBlock <= n; start += kSpanBlock) {
    if (PREFETCH) {
      prefetch_lines(g + start);
      prefetch_lines(p + start);
      prefetch_lines(m + start);
      prefetch_lines(v + start);
      if (AMSGRAD) prefetch_lines(vmax + start);
    }
#pragma omp simd
    for (int64_t i = start; i < start + kSpanBlock; ++i) element(p, g, m, v, vmax, i);
  }
#pragma omp simd
  for (int64_t i = start; i < n; ++i) element(p, g, m, v, vmax, i);
}

// Walks the elements [begin, end) of the tensors laid end to end (prefix[k] = elements before
// tensor k), calling visit(tensor, first element, count) for each piece of a tensor in the range.
template <typename Visit>
void for_each_piece(const int64_t* prefix, int64_t count, int64_t begin, int64_t end, Visit visit) {
  int64_t k = std::upper_bound(prefix, prefix + count + 1, begin) - prefix - 1;
  for (; k < count && prefix[k] < end; ++k) {
    const int64_t first = std::max(begin, prefix[k]), last = std::min(end, prefix[k + 1]);
    if (last > first) visit(k, first - prefix[k], last - first);
  }
}

// One parallel region for all the tensors of a step: the elements of the tensors laid end to end
// are cut into one equal range per thread (so many small tensors cost no more than one big one).
template <typename Visit>
void parallel_pieces(const int64_t* prefix, int64_t count, int threads, Visit visit) {
  const int64_t total = prefix[count];
  constexpr int64_t kAlign = 64;  // range boundaries on whole cache lines of a float tensor
  const int teams = total >= kParallelThreshold ? std::max(threads, 1) : 1;
#pragma omp parallel num_threads(teams) if (teams > 1)
  {
    const auto [begin, end] = thread_range(total, kAlign);
    for_each_piece(prefix, count, begin, end, visit);
  }
}

template <typename S, typename T, bool AMSGRAD, bool L2, bool SCALE_GRAD, bool PREFETCH>
void adam_multi(const AdamTensorTable& t, const AdamScalars* scalars, int threads) {
  parallel_pieces(t.prefix, t.count, threads, [&](int64_t k, int64_t first, int64_t n) {
    auto at = [&](void* const* table) { return table ? static_cast<S*>(table[k]) + first : nullptr; };
    adam_span<S, T, AMSGRAD, L2, SCALE_GRAD, PREFETCH>(at(t.p), static_cast<const S*>(t.g[k]) + first, at(t.m), at(t.v),
                                             at(t.vmax), n, scalars[t.scalar_index[k]]);
  });
}

template <typename S, typename T, bool PREFETCH>
void adam_multi_dispatch(const AdamTensorTable& t, const AdamScalars* scalars, int threads) {
  // amsgrad, L2, maximize and grad_scale are the group's: the same in every entry of scalars
  const AdamScalars& s = scalars[0];
  const int variant = (s.amsgrad ? 4 : 0) | (s.l2 != 0 ? 2 : 0) | (s.maximize || s.grad_scale != 1.0 ? 1 : 0);
  switch (variant) {
    case 0: return adam_multi<S, T, false, false, false, PREFETCH>(t, scalars, threads);
    case 1: return adam_multi<S, T, false, false, true, PREFETCH>(t, scalars, threads);
    case 2: return adam_multi<S, T, false, true, false, PREFETCH>(t, scalars, threads);
    case 3: return adam_multi<S, T, false, true, true, PREFETCH>(t, scalars, threads);
    case 4: return adam_multi<S, T, true, false, false, PREFETCH>(t, scalars, threads);
    case 5: return adam_multi<S, T, true, false, true, PREFETCH>(t, scalars, threads);
    case 6: return adam_multi<S, T, true, true, false, PREFETCH>(t, scalars, threads);
    default: return adam_multi<S, T, true, true, true, PREFETCH>(t, scalars, threads);
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

// The same bytes-only floor over a step's own tensors (the table of one plain-kernel call, float32):
// the same pages, ranges and threads as the kernel, trivial arithmetic.
inline void floor_tables(const AdamTensorTable& t, int threads) {
  parallel_pieces(t.prefix, t.count, threads, [&](int64_t k, int64_t first, int64_t n) {
    float* __restrict p = static_cast<float*>(t.p[k]) + first;
    const float* __restrict g = static_cast<const float*>(t.g[k]) + first;
    float* __restrict m = static_cast<float*>(t.m[k]) + first;
    float* __restrict v = static_cast<float*>(t.v[k]) + first;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float grad = g[i];
      m[i] = m[i] + grad;
      v[i] = v[i] + grad;
      p[i] = p[i] - grad;
    }
  });
}

template <typename T>
int64_t count_nonfinite(const T* __restrict x, int64_t n, int threads) {
  int64_t count = 0;
#pragma omp parallel for simd schedule(static) reduction(+ : count) num_threads(threads) if (n >= kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) count += !std::isfinite(x[i]);
  return count;
}

#endif  // ADAMKIT_LOWPREC

}  // namespace

#ifndef ADAMKIT_LOWPREC

extern "C" {

int64_t count_nonfinite_f32(const float* x, int64_t n, int threads) { return count_nonfinite<float>(x, n, threads); }
int64_t count_nonfinite_f64(const double* x, int64_t n, int threads) { return count_nonfinite<double>(x, n, threads); }

// One step of every tensor in the table; dtype 0 float32, 1 float64, 2 float16 (fp32 math).
// prefetch: whether each block of the streams prefetches ahead (per CPU: kernels/native.py).
void adam_multi_step(const AdamTensorTable* t, const AdamScalars* scalars, int32_t dtype, int threads, int prefetch) {
  if (t->count <= 0) return;
  if (prefetch) {
    if (dtype == 0) adam_multi_dispatch<float, float, true>(*t, scalars, threads);
    else if (dtype == 1) adam_multi_dispatch<double, double, true>(*t, scalars, threads);
    else adam_multi_dispatch<_Float16, float, true>(*t, scalars, threads);
  } else {
    if (dtype == 0) adam_multi_dispatch<float, float, false>(*t, scalars, threads);
    else if (dtype == 1) adam_multi_dispatch<double, double, false>(*t, scalars, threads);
    else adam_multi_dispatch<_Float16, float, false>(*t, scalars, threads);
  }
}

void floor_flat_f32(float* p, const float* g, float* m, float* v, int64_t n, int threads) {
  floor_flat<float>(p, g, m, v, n, threads);
}

}  // extern "C"
#endif  // ADAMKIT_LOWPREC

// ---------------------------------------------------------------------------------------------
// Low-precision storage around the same fp32 math (adamkit/codecs.py defines the formats; the
// encodings below match it bit for bit). Work is cut into blocks that never straddle a
// parameter (int8 blocks are per parameter, so quantized state does not depend on packing).
// Per block: decode -> fp32 update -> encode in one pass; an int8 moment is staged in L1 until
// the block's absmax is known, then encoded.
//
// With AVX-512 or AVX2 + FMA the block runs V::kLanes (16 or 8) lanes at a time in intrinsics
// (simd.h): GCC's auto-vectorisation of the codecs mixed vector widths and cost twice the
// arithmetic. The last (< kLanes) elements of a block, and CPUs without AVX2, run the scalar code.
// All give the same bits: the vector code performs the same IEEE operations in the same order,
// with an FMA exactly where the scalar code calls std::fma (contraction is off for every build,
// so no compiler adds one; a CPU without FMA computes std::fma in software, with the same bits).
extern "C" {

struct LowPrecBuffers {  // per-parameter tables, torch's layout kept: one tensor per parameter and role
  void* const* p;                 // params: float32 or bfloat16 (uint16 bits)
  const void* const* g;           // grads, same dtype as params
  void* const* m;                 // exp_avg storage
  void* const* v;                 // exp_avg_sq storage
  void* const* vmax;              // max_exp_avg_sq storage (amsgrad) or null
  void* const* comp;              // bf16 Kahan compensation (param_rounding="kahan") or null
  float* const* m_absmax;         // per-block absmax of int8 moments, else null
  float* const* v_absmax;
  float* const* vmax_absmax;
  const int32_t* block_param;     // [blocks] the block's parameter (index into the tables)
  const int64_t* block_local;     // [blocks] its first element within the parameter (a multiple of 256)
  const int64_t* numel;           // [params] elements of each parameter
  const int64_t* param_offset;    // [params] the tensor's first element within its whole parameter (shards)
  const uint32_t* param_stream;   // [params] stochastic-rounding stream of each parameter
  const float* steps;             // [params] step count of each parameter (already incremented)
  const int32_t* scalar_index;    // [params] which entry of the step's scalars the parameter uses
  uint64_t seed;                  // stochastic-rounding seed
  int32_t param_format, m_format, v_format, rounding;
};

}  // extern "C"

namespace {

constexpr int64_t kBlock = 256;  // codecs.BLOCK_SIZE
enum Format { kF32 = 0, kBF16 = 1, kInt8 = 2, kInt4 = 3 };
enum Rounding { kNearest = 0, kStochastic = 1, kKahan = 2 };

inline uint32_t bits_of(float x) { uint32_t u; std::memcpy(&u, &x, 4); return u; }
inline float float_of(uint32_t u) { float x; std::memcpy(&x, &u, 4); return x; }
inline float bf16_value(uint16_t h) { return float_of(uint32_t(h) << 16); }
inline uint16_t bf16_nearest(float x) {  // round to nearest even, NaN -> 0x7FC0 (as torch)
  const uint32_t u = bits_of(x);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return x != x ? uint16_t(0x7FC0) : uint16_t(rounded);
}
inline uint32_t mix32(uint32_t x) {  // lowbias32 hash, as codecs._mix32
  x ^= x >> 16; x *= 0x7FEB352Du; x ^= x >> 15; x *= 0x846CA68Bu; x ^= x >> 16;
  return x;
}
inline uint32_t block_key(uint64_t seed, uint32_t step, uint32_t stream) {  // codecs.block_key
  uint32_t key = mix32(uint32_t(seed));
  key = mix32(key ^ uint32_t(seed >> 32));
  key = mix32(key ^ step);
  return mix32(key ^ stream);
}

constexpr float pow2(int e) {  // 2^e, exact, at compile time
  float x = 1.0f;
  for (; e > 0; --e) x *= 2.0f;
  for (; e < 0; ++e) x *= 0.5f;
  return x;
}
constexpr uint32_t bits_of_pow2(int e) { return uint32_t(127 + e) << 23; }  // bits of 2^e, a normal float

#ifdef ADAMKIT_VECTOR
// Lane-wise forms of the helpers above; an I of 16-bit results holds one in each 32-bit lane's high half.
using adamkit_simd::V;
using F = V::F;
using I = V::I;
using M = V::M;
inline F bf16_value_lanes(const uint16_t* h) { return V::as_float(V::shift_left<16>(V::load_u16(h))); }
// bf16_nearest and the stochastic rounding of x in each lane's high half (the low half is left over;
// V::store_high_u16 stores the high halves). may_be_nan (std::true_type or std::false_type): whether
// x can hold a NaN, which rounds to the canonical 0x7FC0 (adding to a NaN's bits could carry it into
// the sign or to infinity).
template <class MayBeNan = std::true_type>
inline I bf16_nearest_high(F x, MayBeNan = {}) {
  const I u = V::as_int(x);
  const I parity = V::bit_and(V::shift_right<16>(u), V::splat(1));
  const I rounded = V::add(V::add(u, V::splat(0x7FFF)), parity);
  if constexpr (!MayBeNan::value) return rounded;
  else return V::blend(rounded, V::splat(0x7FC00000u), V::is_nan(x));
}
template <class MayBeNan = std::true_type>
inline I bf16_stochastic_high(F x, I noise, MayBeNan = {}) {  // noise: 16 random low bits (noise_lanes)
  const I truncated = V::add(V::as_int(x), noise);
  if constexpr (!MayBeNan::value) return truncated;
  else return V::blend(truncated, V::splat(0x7FC00000u), V::is_nan(x));
}
// bf16_nearest of every lane stored as 16-bit words. With AVX512-BF16 one instruction rounds the
// same way wherever no lane is a denormal (it flushes those) or a NaN (it keeps the payload); a
// vector holding either, rare in the moments and parameters, takes the formula: the same bits.
inline void store_bf16_nearest(uint16_t* out, F x) {
#ifdef ADAMKIT_CONVERTS_BF16
  if (__builtin_expect(!V::any_denormal_or_nan(x), 1)) return V::store_bf16(out, x);
#endif
  V::store_high_u16(out, bf16_nearest_high(x));
}
// Kahan compensation: what rounding x to `rounded` (bf16_nearest_high's) lost, itself rounded
inline I bf16_rounding_loss_high(F x, I rounded) {
  return bf16_nearest_high(V::sub(x, V::as_float(V::bit_and(rounded, V::splat(0xFFFF0000u)))));
}
// The all-bf16 loop's layout: 2 kLanes consecutive elements as the even and odd lanes of one load
// of 32-bit words, each 16-bit value in its lane's high half.
inline void load_bf16_pairs(const uint16_t* in, F& even, F& odd) {
  const I words = V::loadu_words(in);
  even = V::as_float(V::shift_left<16>(words));
  odd = V::as_float(V::bit_and(words, V::splat(0xFFFF0000u)));
}
inline void store_high_pairs(uint16_t* out, I even, I odd) {  // results in the lanes' high halves
  V::storeu_words(out, V::interleave_words(V::shift_right<16>(even), odd));
}
// store_bf16_nearest in that layout: with AVX512-BF16 one instruction rounds both vectors where
// neither holds a denormal or a NaN.
template <class MayBeNan>
inline void store_bf16_nearest_pairs(uint16_t* out, F even, F odd, MayBeNan may_be_nan) {
#ifdef ADAMKIT_CONVERTS_BF16
  if (__builtin_expect(!V::any_denormal_or_nan(even, odd), 1)) return V::store_bf16_pairs(out, even, odd);
#endif
  store_high_pairs(out, bf16_nearest_high(even, may_be_nan), bf16_nearest_high(odd, may_be_nan));
}
// 16 random bits per element for stochastic rounding: mix32(index ^ key) & 0xFFFF for the element
// indices `index` of a parameter (codecs.random_bits). folded_key is key ^ (key >> 16): mix32's
// first step, x ^ (x >> 16) of x = index ^ key, is then one three-way xor.
inline I noise_lanes(I index, I folded_key) {
  I x = V::xor3(index, V::shift_right<16>(index), folded_key);
  x = V::mullo(x, V::splat(0x7FEB352Du));
  x = V::bit_xor(x, V::shift_right<15>(x));
  x = V::mullo(x, V::splat(0x846CA68Bu));
  return V::bit_and(V::bit_xor(x, V::shift_right<16>(x)), V::splat(0xFFFF));
}
inline bool denormals_are_zero() { return (_mm_getcsr() & 0x0040u) != 0; }  // MXCSR.DAZ of this thread
#else
inline bool denormals_are_zero() { return true; }  // the scalar code reads no denormal on purpose
#endif  // ADAMKIT_VECTOR

// An 8-bit float code for |x| / absmax * top (codecs.MiniFloat): E exponent bits, M mantissa bits.
template <int E, int M, bool SIGNED, bool KEEP_NONZERO>
struct MiniFloat {
  static constexpr int kBias = (1 << E) - 1;
  static constexpr int32_t kMaxCode = (1 << (E + M)) - 1;
  static constexpr float kTop = 2.0f - 1.0f / float(1 << M);
  static constexpr uint32_t kSmallestNormal = uint32_t(128 - kBias) << 23;  // bits of 2^(1-B)
  // encode()'s normal code ((r + half) >> (23-M)) - ((127-B) << M), with the subtraction moved
  // before an arithmetic shift (the same integer; negative below the normal range)
  static constexpr uint32_t kNormalOffset = (1u << (22 - M)) - (uint32_t(127 - kBias) << 23);
  static float encode_scale(float absmax) {  // top / absmax, 0 for a zero block, capped
    float inverse = absmax > 0 ? kTop / absmax : 0.0f;
    return inverse > 0x1p126f ? 0x1p126f : inverse;
  }
  static float decode_scale(float absmax) {  // 1 / inverse, capped so top * scale stays finite
    const float inverse = encode_scale(absmax);
    const float scale = inverse > 0 ? 1.0f / inverse : 0.0f;
    const float cap = std::nextafter(float(double(3.4028234663852886e38) / kTop), 0.0f);
    return scale > cap ? cap : scale;
  }
  static uint8_t encode(float x, float inverse) {
    // r >= 0 (or NaN), so comparing its bits as integers orders it; integer selects vectorise
    uint32_t r_bits = bits_of(std::fabs(x) * inverse);
    r_bits = r_bits > bits_of(kTop) ? bits_of(kTop) : r_bits;  // NaN saturates to the top code
    const int32_t normal = int32_t((r_bits + (1u << (22 - M))) >> (23 - M)) - ((127 - kBias) << M);
    // Subnormal codes: r 2^(B+M-1) rounded half up, by shifting r's significand (integer ops only,
    // which GCC if-converts and vectorises; float arithmetic here would keep the loop scalar).
    // (A float32 denormal r gets a hidden bit it lacks: harmless, its code is 0 either way.)
    const uint32_t significand = (r_bits & 0x7FFFFFu) | 0x800000u;
    uint32_t shift = uint32_t(151 - kBias - M) - ((r_bits >> 23) > 1u ? (r_bits >> 23) : 1u);
    shift = shift > 31u ? 31u : shift;  // >= 1 in the subnormal range; other lanes are not used
    const int32_t subnormal = int32_t((significand + (1u << (shift - 1))) >> shift);
    // r <= top, so the code is in [0, kMaxCode] without clamping
    int32_t code = r_bits < bits_of(pow2(1 - kBias)) ? subnormal : normal;
    if (KEEP_NONZERO) code |= int32_t((x != 0.0f) & (code == 0));  // a non-zero v never decodes to 0
    // the sign bit, except for a NaN, whose sign depends on the instructions that made it (a
    // software fma and a hardware one differ): a NaN encodes as the positive top code
    if (SIGNED) code |= int32_t((bits_of(x) >> 31) & uint32_t(x == x)) << 7;
    return uint8_t(code);
  }
  static float decode(uint8_t byte, float scale) {
    const uint32_t code = SIGNED ? (byte & 0x7Fu) : byte;
    const float normal = float_of((code + uint32_t((127 - kBias) << M)) << (23 - M));
    const float subnormal = float(int32_t(code)) * pow2(1 - kBias - M);
    const uint32_t is_subnormal = code < (1u << M) ? ~0u : 0u;  // a bit-mask blend, so GCC vectorises
    const float magnitude = float_of((bits_of(subnormal) & is_subnormal) | (bits_of(normal) & ~is_subnormal)) * scale;
    return SIGNED ? float_of(bits_of(magnitude) | (uint32_t(byte & 0x80u) << 24)) : magnitude;  // sign bit
  }
#ifdef ADAMKIT_VECTOR
  // decode() of kLanes codes, exact: the code's bits placed in a float, times 2^(127-B), times scale
  // (the sign is symmetric under multiplication). That reads float32 denormals for e = 0 codes, so when
  // the thread treats denormal inputs as zero (MXCSR.DAZ) a subnormal code c is instead computed as
  // float(exponent field 128-B, mantissa c) - 2^(1-B) = c 2^(1-B-M), also exact.
  template <bool DENORMALS>
  static F decode_lanes(const uint8_t* bytes, F scale) {
    if (DENORMALS) return V::mul(decode_lanes_scaled(bytes, V::set1(pow2(127 - kBias))), scale);
    const I code = SIGNED ? V::load_s8(bytes) : V::load_u8(bytes);
    I fields = V::shift_left<23 - M>(code);  // exponent and mantissa where a float has them
    if (SIGNED) fields = V::bit_and(fields, V::splat(0x7Fu << (23 - M)));
    const F normal = V::as_float(V::add(fields, V::splat(uint32_t(127 - kBias) << 23)));
    const F shifted = V::as_float(V::bit_or(fields, V::splat(uint32_t(128 - kBias) << 23)));
    const F subnormal = V::sub(shifted, V::set1(pow2(1 - kBias)));
    const F magnitude = V::mul(V::blend(normal, subnormal, V::greater(V::splat(1u << 23), fields)), scale);
    if (!SIGNED) return magnitude;
    return V::bit_or(magnitude, V::as_float(V::bit_and(code, V::splat(0x80000000u))));  // sign bit
  }
  // The codes' bits placed in a float (sign kept), times scaled. A float with those bits is the code's
  // value times 2^(B-127), a float32 denormal if e = 0; with scaled = 2^(127-B) that multiplication is
  // exact, and decode_lanes<true> multiplies by scale after it. Its two multiplications as one, by
  // scaled = scale 2^(127-B), give the same bits wherever that product is finite: every block whose
  // absmax is below about top 2^(B-127) FLT_MAX (m: 1.2e5, v: 8e9).
  static F decode_lanes_scaled(const uint8_t* bytes, F scaled) {
    const I code = SIGNED ? V::load_s8(bytes) : V::load_u8(bytes);
    I fields = V::shift_left<23 - M>(code);  // exponent and mantissa where a float has them
    if (SIGNED) fields = V::bit_and(fields, V::splat(0x80000000u | (0x7Fu << (23 - M))));  // sign kept
    return V::mul(V::as_float(fields), scaled);
  }
  // encode() of kLanes values, one code per 32-bit lane (the general form, used for short tails and
  // for the rare blocks with a subnormal code).
  static I encode_lanes(F x, F inverse) {
    I r = V::as_int(V::mul(V::bit_and(x, V::as_float(V::splat(0x7FFFFFFFu))), inverse));
    r = V::min_u32(r, V::splat(bits_of(kTop)));  // NaN saturates to the top code
    const I normal = V::shift_right_signed<23 - M>(V::add(r, V::splat(kNormalOffset)));
    const I significand = V::bit_or(V::bit_and(r, V::splat(0x7FFFFFu)), V::splat(0x800000u));
    const I exponent = V::max_u32(V::shift_right<23>(r), V::splat(1));
    const I shift = V::min_u32(V::sub(V::splat(uint32_t(151 - kBias - M)), exponent), V::splat(31));
    const I half = V::shift_left(V::splat(1), V::sub(shift, V::splat(1)));
    const I subnormal = V::shift_right(V::add(significand, half), shift);
    I code = V::blend(normal, subnormal, V::greater(V::splat(kSmallestNormal), r));
    if (KEEP_NONZERO)  // code 0 -> 1 where x != 0
      code = V::add_where(code, V::and_not(V::equal(x, V::zero()), V::equal(code, V::splat(0))), V::splat(1));
    if (SIGNED) code = V::bit_or(code, V::shift_left<7>(V::blend(V::shift_right<31>(V::as_int(x)), V::splat(0), V::is_nan(x))));
    return code;
  }
  // encode() of a block's first `count` (a multiple of 4 kLanes) values to bytes by the normal
  // formula alone; false if a lane may need the subnormal one (then the caller encodes them all
  // with encode_lanes). With r's bits u: code = (u + half) >> (23-M), minus (127-B) << M saturated
  // at 0 (so r below the normal range gives 0); the byte stores saturate r > top (and NaN) at
  // kMaxCode, which is 127 (SIGNED) or 255 here. The formulas differ only where the subnormal
  // code is not 0 (r >= 2^(-B-M), half the smallest subnormal code, rounded up) and r < 2^(1-B),
  // or, KEEP_NONZERO, where x != 0 has r < 2^(1-B): the minimum over lanes of r (minus 2^(-B-M),
  // wrapping) says whether any lane is there. KEEP_NONZERO (v, unsigned) takes r from x itself,
  // not |x|: v is never negative, and the signed minimum leaves any lane with the sign bit set
  // (-0, a negative NaN) to encode_lanes too.
  static bool encode_normal(uint8_t* out, const float* x, int64_t count, F inverse) {
    static_assert(kMaxCode == (SIGNED ? 0x7F : 0xFF), "the byte stores saturate at the top code");
    static_assert(!(SIGNED && KEEP_NONZERO), "KEEP_NONZERO's check is written for unsigned codes");
    constexpr uint32_t kLow = KEEP_NONZERO ? 0u : bits_of_pow2(-kBias - M);
    const I abs_mask = V::splat(0x7FFFFFFFu), half = V::splat(1u << (22 - M)), offset = V::splat(uint32_t(127 - kBias) << M);
    I least = V::splat(KEEP_NONZERO ? 0x7FFFFFFFu : ~0u);
    for (int64_t j = 0; j < count; j += 4 * V::kLanes) {
      F value[4];
      I code[4];
      for (int k = 0; k < 4; ++k) {
        value[k] = V::load(x + j + V::kLanes * k);
        const I magnitude = KEEP_NONZERO ? V::as_int(value[k]) : V::bit_and(V::as_int(value[k]), abs_mask);
        const I r = V::as_int(V::mul(V::as_float(magnitude), inverse));
        code[k] = V::subs_u16(V::shift_right<23 - M>(V::add(r, half)), offset);
        if (KEEP_NONZERO) least = V::min_i32_where_nonzero(least, magnitude, r);  // x = +0 gives code 0 either way
        else least = V::min_u32(least, V::sub(r, V::splat(kLow)));
      }
      V::template store_codes4<SIGNED>(out + j, code, value);
    }
    return KEEP_NONZERO ? V::all_at_least_i32(least, int32_t(kSmallestNormal)) : V::all_at_least_u32(least, kSmallestNormal - kLow);
  }
#endif  // ADAMKIT_VECTOR
};
using ExpAvgCode = MiniFloat<4, 3, true, false>;   // codecs.EXP_AVG_CODE
using ExpAvgSqCode = MiniFloat<5, 3, false, true>;  // codecs.EXP_AVG_SQ_CODE

// A 4-bit code (codecs.FourBit): the index of the nearest of 16 ascending levels (the top one 1.0)
// to r = x / absmax, counted as the midpoints r reaches (a tie goes up); a NaN takes code 15.
// The scalar code counts; the vector code finds the same count by a branch-free binary search
// (the midpoints ascend), four compares instead of fifteen. An unsigned code (all levels > 0)
// reads |r|. For the powers of two 2^-15 .. 1 the count has a closed form on r's bits:
// rounding the significand at 1.5 (the midpoint) carries into the exponent, which clamped to
// [-15, 0] is code - 15 (a NaN or infinity saturates to 15, a denormal or zero to 0).
template <class Table>
struct FourBit {
  static constexpr bool kUnsigned = Table::kLevels[0] > 0;
  static constexpr uint32_t kAbs = kUnsigned ? 0x7FFFFFFFu : 0xFFFFFFFFu;
  // The midpoints the search compares with: with bit b to decide, the code so far is a multiple of
  // 2b and the candidate is midpoint code + b - 1 (b = 8 has one, midpoint 7; b = 4 two, picked by
  // b = 8's compare). For b = 2 and 1, 16 lanes look it up by the code itself (vpermps reads the
  // index's low 4 bits); 8 lanes by code / 2b in a packed table (one 8-entry permute).
  struct SearchTables {
    float by2[16], by1[16];
    float by2_packed[8], by1_packed[8];
  };
  static constexpr SearchTables search_tables() {
    SearchTables s{};
    for (int code = 0; code < 16; code += 4) s.by2[code] = s.by2_packed[code / 4] = Table::kMidpoints[code + 1];
    for (int code = 0; code < 16; code += 2) s.by1[code] = s.by1_packed[code / 2] = Table::kMidpoints[code];
    return s;
  }
  static constexpr SearchTables kSearch = search_tables();
  static float encode_scale(float absmax) {  // 1 / absmax, 0 for a zero block, capped (MiniFloat's, top 1)
    float inverse = absmax > 0 ? 1.0f / absmax : 0.0f;
    return inverse > 0x1p126f ? 0x1p126f : inverse;
  }
  static float decode_scale(float absmax) {  // 1 / inverse, capped so a level times it stays finite
    const float inverse = encode_scale(absmax);
    const float scale = inverse > 0 ? 1.0f / inverse : 0.0f;
    const float cap = std::nextafter(3.4028234663852886e38f, 0.0f);
    return scale > cap ? cap : scale;
  }
  static uint32_t encode(float x, float inverse) {
    const float r = float_of(bits_of(x * inverse) & kAbs);
    if (Table::kPowersOfTwo) {
      const uint32_t exponent = (bits_of(r) + 0x400000u) >> 23;  // 127 + log2 of the nearest power of two
      return (exponent < 112u ? 112u : exponent > 127u ? 127u : exponent) - 112u;
    }
    uint32_t code = 0;
    for (int k = 0; k < 15; ++k) code += r >= Table::kMidpoints[k] ? 1u : 0u;
    return r != r ? 15u : code;
  }
  // every level times scale: the decoded value of code k is entry k (scalar and vector code alike;
  // out is 64-byte aligned). Written out for the vector path: the compiler's own vectorisation of
  // the loop assembled the table lane by lane, ~40 instructions per table and block half.
  static void decode_table(float scale, float* out) {
#ifdef ADAMKIT_VECTOR
    for (int k = 0; k < 16; k += V::kLanes) V::store(out + k, V::mul(V::loadu(Table::kLevels + k), V::set1(scale)));
#else
    for (int k = 0; k < 16; ++k) out[k] = Table::kLevels[k] * scale;
#endif
  }
#ifdef ADAMKIT_VECTOR
  // The search's state once bits 8 .. b are decided: 16 lanes keep the code so far, which lookup16
  // reads as is; 8 lanes keep code / b, the decisions as a binary number, which indexes the packed
  // tables with no shift and takes the next decision as 2 s + 1 (a true compare is all ones, -1).
  template <int BIT, class W = V>
  static I decide(I s, M at_least) {
    if constexpr (W::kLanes == 16) return W::add_where(s, at_least, W::splat(BIT));
    else return W::sub(W::add(s, s), W::as_int(at_least));
  }
  template <class W = V>
  static F candidate(I s, const float* by_code, const float* packed) {
    if constexpr (W::kLanes == 16) return W::lookup16(s, by_code);
    else return W::lookup8(s, packed);
  }
  static I encode_lanes(F x, F inverse) {
    const F scaled = V::mul(x, inverse);
    const F r = kUnsigned ? V::bit_and(scaled, V::as_float(V::splat(kAbs))) : scaled;
    if (Table::kPowersOfTwo) {
      const I exponent = V::shift_right<23>(V::add(V::as_int(r), V::splat(0x400000u)));  // < 2^9: one 16-bit word
      return V::min_u32(V::subs_u16(exponent, V::splat(112)), V::splat(15));
    }
    // !(r < midpoint) is r >= midpoint, and true for a NaN r at every step: code 15
    const M upper = V::not_less(r, V::set1(Table::kMidpoints[7]));
    I s = decide<8>(V::splat(0), upper);
    s = decide<4>(s, V::not_less(r, V::blend(V::set1(Table::kMidpoints[3]), V::set1(Table::kMidpoints[11]), upper)));
    s = decide<2>(s, V::not_less(r, candidate(s, kSearch.by2, kSearch.by2_packed)));
    return decide<1>(s, V::not_less(r, candidate(s, kSearch.by1, kSearch.by1_packed)));
  }
  static F decode_lanes(I code, const float* scaled_table) { return V::lookup16(code, scaled_table); }
#endif
};
// codecs.EXP_AVG_INT4: the dynamic-exponent map of Li, Chen & Zhu (NeurIPS 2023) for m, as float32
struct ExpAvgInt4Table {
  static constexpr bool kPowersOfTwo = false;
  static constexpr float kLevels[16] = {
      -0x1.c66666p-1f, -0x1.533334p-1f, -0x1.cp-2f, -0x1.b33334p-3f, -0x1.3d70a4p-4f, -0x1.0a3d7p-5f, -0x1.6872bp-8f, 0.0f,
      0x1.6872bp-8f, 0x1.0a3d7p-5f, 0x1.3d70a4p-4f, 0x1.b33334p-3f, 0x1.cp-2f, 0x1.533334p-1f, 0x1.c66666p-1f, 1.0f};
  static constexpr float kMidpoints[15] = {
      -0x1.8cccccp-1f, -0x1.19999ap-1f, -0x1.4cccccp-2f, -0x1.28f5c4p-3f, -0x1.c28f5cp-5f, -0x1.374bc6p-6f, -0x1.6872bp-9f, 0x1.6872bp-9f,
      0x1.374bc6p-6f, 0x1.c28f5cp-5f, 0x1.28f5c4p-3f, 0x1.4cccccp-2f, 0x1.19999ap-1f, 0x1.8cccccp-1f, 0x1.e33334p-1f};
};
// codecs.EXP_AVG_SQ_INT4: v's powers of two 2^-15 .. 1, no zero (a v > 0 never decodes to 0)
struct ExpAvgSqInt4Table {
  static constexpr bool kPowersOfTwo = true;  // encode() takes the closed form
  static constexpr float kLevels[16] = {
      0x1p-15f, 0x1p-14f, 0x1p-13f, 0x1p-12f, 0x1p-11f, 0x1p-10f, 0x1p-9f, 0x1p-8f,
      0x1p-7f, 0x1p-6f, 0x1p-5f, 0x1p-4f, 0x1p-3f, 0x1p-2f, 0x1p-1f, 1.0f};
  static constexpr float kMidpoints[15] = {
      0x1.8p-15f, 0x1.8p-14f, 0x1.8p-13f, 0x1.8p-12f, 0x1.8p-11f, 0x1.8p-10f, 0x1.8p-9f, 0x1.8p-8f,
      0x1.8p-7f, 0x1.8p-6f, 0x1.8p-5f, 0x1.8p-4f, 0x1.8p-3f, 0x1.8p-2f, 0x1.8p-1f};
};
using ExpAvgInt4 = FourBit<ExpAvgInt4Table>;
using ExpAvgSqInt4 = FourBit<ExpAvgSqInt4Table>;
constexpr int64_t kInt4Block = 128;  // codecs.INT4_BLOCK_SIZE: a kBlock work block holds two

// Moment storage within one block: load/load_lanes give fp32 of element i (position j in the
// block), store/store_lanes write it back. An int8 or int4 moment's new values are staged in the
// block buffer `values` and encoded by finish_block once the block's (int4: each half's) absmax is known.
struct F32Moment {
  static constexpr bool kStaged = false;
  static constexpr int64_t kSpan = kBlock;
  float* data;
  static void decode_scales(const float*, int64_t, float*) {}
  void begin_block(const float*, int64_t, int64_t, bool) {}
  float load(int64_t i, int64_t) const { return data[i]; }
  void store(int64_t i, int64_t, float x) { data[i] = x; }
  void end_block(float) {}
  void finish_block(float*, int64_t, int64_t) {}
#ifdef ADAMKIT_VECTOR
  F load_lanes(int64_t i, int64_t) const { return V::loadu(data + i); }
  void store_lanes(int64_t i, int64_t, F x) { V::storeu(data + i, x); }
#endif
};
struct BF16Moment {
  static constexpr bool kStaged = false;
  static constexpr int64_t kSpan = kBlock;
  uint16_t* data;
  static void decode_scales(const float*, int64_t, float*) {}
  void begin_block(const float*, int64_t, int64_t, bool) {}
  float load(int64_t i, int64_t) const { return bf16_value(data[i]); }
  void store(int64_t i, int64_t, float x) { data[i] = bf16_nearest(x); }
  void end_block(float) {}
  void finish_block(float*, int64_t, int64_t) {}
#ifdef ADAMKIT_VECTOR
  F load_lanes(int64_t i, int64_t) const { return bf16_value_lanes(data + i); }
  void store_lanes(int64_t i, int64_t, F x) { store_bf16_nearest(data + i, x); }
#endif
};
template <class Code>
struct Int8Moment {
  static constexpr bool kStaged = true;
  static constexpr int64_t kSpan = kBlock;
  uint8_t* data;
  alignas(64) float values[kBlock];
#ifdef ADAMKIT_VECTOR
  // Usually load_lanes decodes the codes itself (one multiplication, decode_lanes_scaled): no
  // round trip through `values`. The other decodes (DAZ, or a huge absmax) fill `values` first.
  bool direct = false;
  F scaled_lanes;
#endif
  static void decode_scales(const float* absmax, int64_t, float* scale) { scale[0] = Code::decode_scale(absmax[0]); }
  // scales: decode_scales' (block_scales computes them); flush: denormals_are_zero() of this thread
  void begin_block(const float* scales, int64_t base, int64_t n, bool flush) {
    const float scale = scales[0];
    const uint8_t* __restrict codes = data + base;
    int64_t j = 0;
#ifdef ADAMKIT_VECTOR
    const F scale_lanes = V::set1(scale);
    const float scaled = scale * pow2(127 - Code::kBias);
    direct = !flush && std::isfinite(scaled);
    if (direct) {
      scaled_lanes = V::set1(scaled);
      j = n / V::kLanes * V::kLanes;  // the vector loop's elements; the scalar tail reads `values`
    } else if (flush) {
      for (; j + V::kLanes <= n; j += V::kLanes) V::store(values + j, Code::template decode_lanes<false>(codes + j, scale_lanes));
    } else {
      for (; j + V::kLanes <= n; j += V::kLanes) V::store(values + j, Code::template decode_lanes<true>(codes + j, scale_lanes));
    }
#endif
    for (; j < n; ++j) values[j] = Code::decode(codes[j], scale);
  }
  float load(int64_t, int64_t j) const { return values[j]; }
  void store(int64_t, int64_t j, float x) { values[j] = x; }
  float peak, inverse;  // the block's absmax and encode scale (end_block)
  void end_block(float block_peak) { peak = block_peak, inverse = Code::encode_scale(block_peak); }
  void finish_block(float* absmax, int64_t base, int64_t n) const {
    uint8_t* __restrict out = data + base;
    int64_t j = 0;
#ifdef ADAMKIT_VECTOR
    const F inverse_lanes = V::set1(inverse);
    const int64_t grouped = n / (4 * V::kLanes) * (4 * V::kLanes);
    if (Code::encode_normal(out, values, grouped, inverse_lanes)) j = grouped;  // else (rare) encode_lanes redoes them
    for (; j + V::kLanes <= n; j += V::kLanes) V::store_u8(out + j, Code::encode_lanes(V::load(values + j), inverse_lanes));
#endif
    for (; j < n; ++j) out[j] = Code::encode(values[j], inverse);
    absmax[0] = peak;
  }
#ifdef ADAMKIT_VECTOR
  F load_lanes(int64_t i, int64_t j) const {
    return direct ? Code::decode_lanes_scaled(data + i, scaled_lanes) : V::load(values + j);
  }
  void store_lanes(int64_t, int64_t j, F x) { V::store(values + j, x); }
#endif
};

// An int4 moment, two codes a byte: the update loop decodes the codes itself (one lookup in the
// half's levels times its scale) and stages the new values in `values` with their running peak;
// finish_block encodes each 128-half with its own absmax. The loop hands over the first half's peak
// at the half's end (end_span), so the staged values are read once, to encode.
template <class Code>
struct Int4Moment {
  static constexpr bool kStaged = true;
  static constexpr int64_t kSpan = kInt4Block;  // one absmax per span: the step's peaks restart at each
  uint8_t* data;                                // the work block's first code byte
  alignas(64) float values[kBlock];             // left uninitialised: the update loop fills it
  alignas(64) float scaled[2][16];              // each half's levels times its decode scale
  static void decode_scales(const float* absmax, int64_t n, float* scale) {  // each half's
    for (int64_t half = 0; half * kInt4Block < n; ++half) scale[half] = Code::decode_scale(absmax[half]);
  }
  void begin_block(const float* scales, int64_t, int64_t n, bool) {
    for (int64_t half = 0; half * kInt4Block < n; ++half) Code::decode_table(scales[half], scaled[half]);
  }
  float load(int64_t, int64_t j) const { return scaled[j >= kInt4Block][(data[j / 2] >> (4 * (j & 1))) & 15u]; }
  void store(int64_t, int64_t j, float x) { values[j] = x; }
  // Each half's absmax and encode scale: the first half's at its end (end_span, when n > kSpan), the
  // last's at the block's (end_block). Divided there, not in finish_block: the division's latency
  // overlaps the rest of the update, or the encoding of the moments before.
  float peaks[2], inverses[2];
  void end_span(float peak) { peaks[0] = peak, inverses[0] = Code::encode_scale(peak); }
  void end_block(float peak) { peaks[1] = peak, inverses[1] = Code::encode_scale(peak); }
  void finish_block(float* absmax, int64_t, int64_t n) const {
    for (int64_t half = 0; half * kInt4Block < n; ++half) {
      const int64_t start = half * kInt4Block, end = std::min(n, start + kInt4Block);
      const int last = half == 0 && n > kInt4Block ? 0 : 1;  // which of end_span's and end_block's
      const float half_peak = peaks[last], inverse = inverses[last];
      int64_t j = start;
#ifdef ADAMKIT_VECTOR
      const F inverse_lanes = V::set1(inverse);
      for (; j + V::kLanes <= end; j += V::kLanes) V::store_nibbles(data + j / 2, Code::encode_lanes(V::load(values + j), inverse_lanes));
#endif
      for (; j + 1 < end; j += 2) data[j / 2] = uint8_t(Code::encode(values[j], inverse) | Code::encode(values[j + 1], inverse) << 4);
      if (j < end) data[j / 2] = uint8_t(Code::encode(values[j], inverse));  // an odd tail (a 1-D tensor on the loop path never comes here)
      absmax[half] = half_peak;
    }
  }
#ifdef ADAMKIT_VECTOR
  F load_lanes(int64_t, int64_t j) const { return Code::decode_lanes(V::load_nibbles(data + j / 2), scaled[j >= kInt4Block]); }
  void store_lanes(int64_t, int64_t j, F x) { V::store(values + j, x); }
#endif
};

// Where a moment's storage and block scales start for the work block at element `first` of
// parameter `param`: element-wise storage, one absmax per kBlock; int4 packs two elements a byte
// and keeps one absmax per kInt4Block.
template <class Moment>
struct MomentAt {
  using Data = decltype(Moment::data);
  static Data data(void* const* table, int32_t param, int64_t first) { return table ? static_cast<Data>(table[param]) + first : nullptr; }
  static float* absmax(float* const* table, int32_t param, int64_t first) { return table ? table[param] + first / kBlock : nullptr; }
};
template <class Code>
struct MomentAt<Int4Moment<Code>> {
  static uint8_t* data(void* const* table, int32_t param, int64_t first) { return table ? static_cast<uint8_t*>(table[param]) + first / 2 : nullptr; }
  static float* absmax(float* const* table, int32_t param, int64_t first) { return table ? table[param] + first / kInt4Block : nullptr; }
};

#ifdef ADAMKIT_VECTOR
// AdamMath's arithmetic on V::kLanes floats: the same IEEE operations as ScalarOps<float>.
struct VectorOps {
  using X = F;
  static X splat(float x) { return V::set1(x); }
  static X mul(X a, X b) { return V::mul(a, b); }
  static X sub(X a, X b) { return V::sub(a, b); }
  static X div(X a, X b) { return V::div(a, b); }
  static X fma(X a, X b, X c) { return V::fmadd(a, b, c); }
  static X sqrt(X a) { return V::sqrt(a); }
  static X max(X a, X b) { return V::max(a, b); }  // a > b ? a : b (NaN: b)
};
#endif

// A block's decode scales (int8: one per moment, int4: one per half), which adam_lowprec computes
// one block ahead, so that their divisions overlap the block before instead of stalling its start.
struct BlockScales {
  float m[2], v[2], vmax[2];
};
template <class MomentM, class MomentV, bool AMSGRAD>
BlockScales block_scales(const LowPrecBuffers& b, int64_t block) {
  BlockScales scales{};
  const int32_t param = b.block_param[block];
  const int64_t first = b.block_local[block], n = std::min(kBlock, b.numel[param] - first);
  MomentM::decode_scales(MomentAt<MomentM>::absmax(b.m_absmax, param, first), n, scales.m);
  MomentV::decode_scales(MomentAt<MomentV>::absmax(b.v_absmax, param, first), n, scales.v);
  if (AMSGRAD) MomentV::decode_scales(MomentAt<MomentV>::absmax(b.vmax_absmax, param, first), n, scales.vmax);
  return scales;
}

// One block: decode, update and (for bf16/fp32 storage) encode element by element; int8 and int4
// moments are staged and encoded once the block's (int4: each half's) absmax is known.
template <class MomentM, class MomentV, bool AMSGRAD, bool BF16_PARAMS, int ROUNDING>
void step_block(const LowPrecBuffers& b, const AdamConstants<float>* constants, int64_t block, bool flush, const BlockScales& scales) {
  using PT = typename std::conditional<BF16_PARAMS, uint16_t, float>::type;
  const int32_t param = b.block_param[block];
  const int64_t first = b.block_local[block], n = std::min(kBlock, b.numel[param] - first);
  const int64_t base = 0;  // the pointers below start at the block's first element
  PT* __restrict p = static_cast<PT*>(b.p[param]) + first;
  const PT* __restrict g = static_cast<const PT*>(b.g[param]) + first;
  uint16_t* __restrict comp = b.comp ? static_cast<uint16_t*>(b.comp[param]) + first : nullptr;
  const AdamConstants<float>& c = constants[b.scalar_index[param]];
  // default-initialised, not `MomentM m{...}`: that would zero a staged moment's buffer every block
  MomentM m;
  MomentV v, vmax;
  m.data = MomentAt<MomentM>::data(b.m, param, first);
  v.data = MomentAt<MomentV>::data(b.v, param, first);
  vmax.data = MomentAt<MomentV>::data(b.vmax, param, first);
  float* const m_absmax = MomentAt<MomentM>::absmax(b.m_absmax, param, first);
  float* const v_absmax = MomentAt<MomentV>::absmax(b.v_absmax, param, first);
  float* const vmax_absmax = MomentAt<MomentV>::absmax(b.vmax_absmax, param, first);
  m.begin_block(scales.m, base, n, flush);
  v.begin_block(scales.v, base, n, flush);
  if (AMSGRAD) vmax.begin_block(scales.vmax, base, n, flush);
  const uint32_t key = ROUNDING == kStochastic ? block_key(b.seed, uint32_t(b.steps[param]), b.param_stream[param]) : 0;
  const uint32_t folded_key = key ^ (key >> 16);  // noise_lanes
  const uint32_t local = uint32_t(b.param_offset[param] + first);  // element index within the whole parameter
  float peak_m = 0.0f, peak_v = 0.0f, peak_vmax = 0.0f;  // absmax of staged moments' span (the block; int4: its half)
  constexpr bool kSplit = MomentM::kSpan < kBlock || MomentV::kSpan < kBlock;
  // Hands the first int4 half's running peaks (floats, or lanes that `reduce` folds to one) to its
  // moments and restarts them at zero.
  auto end_first_half = [&](auto& peak_of_m, auto& peak_of_v, auto& peak_of_vmax, auto reduce) {
    using Peak = std::remove_reference_t<decltype(peak_of_m)>;
    if constexpr (MomentM::kSpan == kInt4Block) m.end_span(reduce(peak_of_m)), peak_of_m = Peak{};
    if constexpr (MomentV::kSpan == kInt4Block) {
      v.end_span(reduce(peak_of_v)), peak_of_v = Peak{};
      if (AMSGRAD) vmax.end_span(reduce(peak_of_vmax)), peak_of_vmax = Peak{};
    }
  };
  int64_t scalar_start = 0;  // elements before it went through the vector code
  const AdamMath<ScalarOps<float>> scalar_math(c);
#ifdef ADAMKIT_VECTOR
  {
    const F abs_mask = V::as_float(V::splat(0x7FFFFFFFu));
    F peak_m_lanes = V::zero(), peak_v_lanes = V::zero(), peak_vmax_lanes = V::zero();
    const AdamMath<VectorOps> math(c);
    // the update of kLanes elements: AdamMath, as the scalar loop below runs it per element
    auto update = [&](F param_value, F grad_value, F old_m, F old_v, F& x, F& exp_avg, F& exp_avg_sq) {
      math.moments(param_value, grad_value, old_m, old_v, c.add_l2, c.scale_grad, x, exp_avg, exp_avg_sq);
    };
    auto step = [&](F x, F exp_avg, F second) { return math.step(x, exp_avg, second); };
    int64_t vector_start = 0;
    if constexpr (BF16_PARAMS && std::is_same<MomentM, BF16Moment>::value && std::is_same<MomentV, BF16Moment>::value) {
      // All streams 16-bit: 2 kLanes elements per iteration as even and odd lanes of one load (shift
      // or mask each word into a float's high half, no shuffles), written back with one word blend
      // (load_bf16_pairs, store_high_pairs). Same operations per element as the loop below.
      // element indices of the even and odd lanes, for the noise
      I index[2] = {V::iota(local, 2), V::iota(local + 1, 2)};
      const I index_step = V::splat(2 * V::kLanes), folded = V::splat(folded_key);
      for (int64_t j = 0; j + 2 * V::kLanes <= n; j += 2 * V::kLanes, vector_start = j) {
        const int64_t i = base + j;
        uint16_t* const ps = reinterpret_cast<uint16_t*>(p) + i;
        const uint16_t* const gs = reinterpret_cast<const uint16_t*>(g) + i;
        F param_value[2], grad_value[2], old_m[2], old_v[2], old_vmax[2], addend[2];
        load_bf16_pairs(ps, param_value[0], param_value[1]);
        if (ROUNDING == kKahan) {
          load_bf16_pairs(comp + i, addend[0], addend[1]);
          for (int h = 0; h < 2; ++h) param_value[h] = V::add(param_value[h], addend[h]);
        }
        load_bf16_pairs(gs, grad_value[0], grad_value[1]);
        load_bf16_pairs(m.data + i, old_m[0], old_m[1]);
        load_bf16_pairs(v.data + i, old_v[0], old_v[1]);
        if (AMSGRAD) load_bf16_pairs(vmax.data + i, old_vmax[0], old_vmax[1]);
        F x[2], exp_avg[2], exp_avg_sq[2], second[2];
        I noise[2];
        for (int h = 0; h < 2; ++h) {
          update(param_value[h], grad_value[h], old_m[h], old_v[h], x[h], exp_avg[h], exp_avg_sq[h]);
          second[h] = AMSGRAD ? math.second_moment(old_vmax[h], exp_avg_sq[h]) : exp_avg_sq[h];
          x[h] = step(x[h], exp_avg[h], second[h]);
          // the noise does not depend on x: computed before the branch, it overlaps the division
          noise[h] = ROUNDING == kStochastic ? noise_lanes(index[h], folded) : V::splat(0);
          index[h] = V::add(index[h], index_step);
        }
        auto round_and_store = [&](auto may_be_nan) {
          store_bf16_nearest_pairs(m.data + i, exp_avg[0], exp_avg[1], may_be_nan);
          store_bf16_nearest_pairs(v.data + i, exp_avg_sq[0], exp_avg_sq[1], may_be_nan);
          if (AMSGRAD) store_bf16_nearest_pairs(vmax.data + i, second[0], second[1], may_be_nan);
          if (ROUNDING == kStochastic) {
            store_high_pairs(ps, bf16_stochastic_high(x[0], noise[0], may_be_nan), bf16_stochastic_high(x[1], noise[1], may_be_nan));
          } else if (ROUNDING == kNearest) {
            store_bf16_nearest_pairs(ps, x[0], x[1], may_be_nan);
          } else {  // Kahan: x = inf gives inf - inf, so the loss is always checked for NaN
            const I rounded[2] = {bf16_nearest_high(x[0], may_be_nan), bf16_nearest_high(x[1], may_be_nan)};
            store_high_pairs(ps, rounded[0], rounded[1]);
            store_high_pairs(comp + i, bf16_rounding_loss_high(x[0], rounded[0]), bf16_rounding_loss_high(x[1], rounded[1]));
          }
        };
        // A NaN in m, v or v_max makes the new parameter NaN (through the division or the square
        // root; max returns its second operand, v, when one is NaN), so where x holds none,
        // nothing rounded here does, and the NaN checks are skipped.
        if (V::any_nan(x[0], x[1])) round_and_store(std::true_type{});
        else round_and_store(std::false_type{});
      }
    }
    scalar_start = vector_start;
    const I element_lanes = V::iota(0, 1);
    for (int64_t j = vector_start; j + V::kLanes <= n; j += V::kLanes, scalar_start = j) {
      const int64_t i = base + j;
      F param_value, grad_value;
      if (BF16_PARAMS) {
        param_value = bf16_value_lanes(reinterpret_cast<const uint16_t*>(p + i));
        if (ROUNDING == kKahan) param_value = V::add(param_value, bf16_value_lanes(comp + i));
        grad_value = bf16_value_lanes(reinterpret_cast<const uint16_t*>(g + i));
      } else {
        param_value = V::loadu(reinterpret_cast<const float*>(p + i));
        grad_value = V::loadu(reinterpret_cast<const float*>(g + i));
      }
      const F old_m = m.load_lanes(i, j), old_v = v.load_lanes(i, j);
      F x, exp_avg, exp_avg_sq, second;
      update(param_value, grad_value, old_m, old_v, x, exp_avg, exp_avg_sq);
      second = exp_avg_sq;
      if (AMSGRAD) {
        second = math.second_moment(vmax.load_lanes(i, j), exp_avg_sq);
        vmax.store_lanes(i, j, second);
        if (MomentV::kStaged) peak_vmax_lanes = V::max(second, peak_vmax_lanes);
      }
      m.store_lanes(i, j, exp_avg);
      v.store_lanes(i, j, exp_avg_sq);
      if (MomentM::kStaged) peak_m_lanes = V::max(V::bit_and(exp_avg, abs_mask), peak_m_lanes);
      if (MomentV::kStaged) peak_v_lanes = V::max(exp_avg_sq, peak_v_lanes);
      if constexpr (kSplit) {
        if (j + V::kLanes == kInt4Block && n > kInt4Block)  // kLanes divides kInt4Block
          end_first_half(peak_m_lanes, peak_v_lanes, peak_vmax_lanes, [](F lanes) { return V::max_of_lanes(lanes); });
      }
      x = step(x, exp_avg, second);
      if (!BF16_PARAMS) {
        V::storeu(reinterpret_cast<float*>(p + i), x);
      } else if (ROUNDING == kStochastic) {
        const I noise = noise_lanes(V::add(V::splat(local + uint32_t(j)), element_lanes), V::splat(folded_key));
        V::store_high_u16(reinterpret_cast<uint16_t*>(p + i), bf16_stochastic_high(x, noise));
      } else if (ROUNDING != kKahan) {
        store_bf16_nearest(reinterpret_cast<uint16_t*>(p + i), x);
      } else {  // Kahan: what rounding lost goes to the compensation buffer
        const I rounded = bf16_nearest_high(x);
        V::store_high_u16(reinterpret_cast<uint16_t*>(p + i), rounded);
        V::store_high_u16(comp + i, bf16_rounding_loss_high(x, rounded));
      }
    }
    peak_m = V::max_of_lanes(peak_m_lanes);
    peak_v = V::max_of_lanes(peak_v_lanes);
    peak_vmax = V::max_of_lanes(peak_vmax_lanes);
  }
#endif
  // The rest (all of it without vector code), in up to two segments so that an int4 moment's first
  // half's peak is handed over where that half ends.
  int64_t segment_end = kSplit && scalar_start < kInt4Block && n > kInt4Block ? kInt4Block : n;
  for (int64_t segment_start = scalar_start; segment_start < n; segment_start = segment_end, segment_end = n) {
#ifndef ADAMKIT_VECTOR
#pragma omp simd reduction(max : peak_m, peak_v, peak_vmax)
#endif
    for (int64_t j = segment_start; j < segment_end; ++j) {
      const int64_t i = base + j;
      float param_value, grad_value;
      if (BF16_PARAMS) {
        param_value = bf16_value(p[i]);
        if (ROUNDING == kKahan) param_value += bf16_value(comp[i]);  // p + compensation
        grad_value = bf16_value(g[i]);
      } else {
        param_value = p[i];
        grad_value = g[i];
      }
      const float old_m = m.load(i, j), old_v = v.load(i, j);
      float x, exp_avg, exp_avg_sq;
      scalar_math.moments(param_value, grad_value, old_m, old_v, c.add_l2, c.scale_grad, x, exp_avg, exp_avg_sq);
      float second = exp_avg_sq;
      if (AMSGRAD) {
        second = scalar_math.second_moment(vmax.load(i, j), exp_avg_sq);
        vmax.store(i, j, second);
        if (MomentV::kStaged) peak_vmax = second > peak_vmax ? second : peak_vmax;  // v >= 0
      }
      m.store(i, j, exp_avg);
      v.store(i, j, exp_avg_sq);
      if (MomentM::kStaged) peak_m = std::fabs(exp_avg) > peak_m ? std::fabs(exp_avg) : peak_m;
      if (MomentV::kStaged) peak_v = exp_avg_sq > peak_v ? exp_avg_sq : peak_v;
      x = scalar_math.step(x, exp_avg, second);
      if (!BF16_PARAMS) {
        p[i] = x;
      } else if (ROUNDING == kStochastic) {                               // unbiased: add 16 random low bits, truncate
        const uint32_t noise = mix32((local + uint32_t(j)) ^ key) & 0xFFFFu;
        p[i] = x != x ? bf16_nearest(x) : uint16_t((bits_of(x) + noise) >> 16);
      } else {
        const uint16_t rounded = bf16_nearest(x);
        p[i] = rounded;
        if (ROUNDING == kKahan) comp[i] = bf16_nearest(x - bf16_value(rounded));  // what rounding lost
      }
    }
    if constexpr (kSplit)
      if (segment_end < n) end_first_half(peak_m, peak_v, peak_vmax, [](float peak) { return peak; });
  }
  m.end_block(peak_m);
  v.end_block(peak_v);
  if (AMSGRAD) vmax.end_block(peak_vmax);
  m.finish_block(m_absmax, base, n);
  v.finish_block(v_absmax, base, n);
  if (AMSGRAD) vmax.finish_block(vmax_absmax, base, n);
}

template <class MomentM, class MomentV, bool AMSGRAD, bool BF16_PARAMS, int ROUNDING>
void adam_lowprec(const LowPrecBuffers& b, const AdamScalars* scalars, int32_t kinds, int64_t blocks, int threads) {
  std::vector<AdamConstants<float>> constants;
  constants.reserve(kinds);
  for (int32_t k = 0; k < kinds; ++k) constants.emplace_back(scalars[k]);
  const bool parallel = blocks * kBlock >= kParallelThreshold;
#pragma omp parallel num_threads(threads) if (parallel)
  {
    const bool flush = denormals_are_zero();  // MXCSR is per thread; reading it costs ~10 cycles
    // each thread's contiguous range of blocks (as schedule(static)), so it knows its next block
    const auto [start, end] = thread_range(blocks, 1);
    int64_t block = start;
    BlockScales next = block < end ? block_scales<MomentM, MomentV, AMSGRAD>(b, block) : BlockScales{};
    for (; block < end; ++block) {
      const BlockScales scales = next;
      if (block + 1 < end) next = block_scales<MomentM, MomentV, AMSGRAD>(b, block + 1);
      step_block<MomentM, MomentV, AMSGRAD, BF16_PARAMS, ROUNDING>(b, constants.data(), block, flush, scales);
    }
  }
}

#ifdef ADAMKIT_LOWPREC
// Each storage mode is its own object of the kernel module (kernels/native_build.py passes
// ADAMKIT_M_FORMAT, ADAMKIT_V_FORMAT, ADAMKIT_PARAM_FORMAT), so the objects compile in parallel.
template <int F, class Code, class Int4Code>
using MomentOf = typename std::conditional<
    F == kF32, F32Moment,
    typename std::conditional<F == kBF16, BF16Moment,
                              typename std::conditional<F == kInt4, Int4Moment<Int4Code>, Int8Moment<Code>>::type>::type>::type;
using ModeM = MomentOf<ADAMKIT_M_FORMAT, ExpAvgCode, ExpAvgInt4>;
using ModeV = MomentOf<ADAMKIT_V_FORMAT, ExpAvgSqCode, ExpAvgSqInt4>;
constexpr bool kBF16Params = ADAMKIT_PARAM_FORMAT == kBF16;

template <bool AMSGRAD>
void dispatch_rounding(const LowPrecBuffers& b, const AdamScalars* s, int32_t kinds, int64_t blocks, int threads) {
  if (!kBF16Params) return adam_lowprec<ModeM, ModeV, AMSGRAD, false, kNearest>(b, s, kinds, blocks, threads);
  if (b.rounding == kStochastic) return adam_lowprec<ModeM, ModeV, AMSGRAD, kBF16Params, kStochastic>(b, s, kinds, blocks, threads);
  if (b.rounding == kKahan) return adam_lowprec<ModeM, ModeV, AMSGRAD, kBF16Params, kKahan>(b, s, kinds, blocks, threads);
  adam_lowprec<ModeM, ModeV, AMSGRAD, kBF16Params, kNearest>(b, s, kinds, blocks, threads);
}
#endif  // ADAMKIT_LOWPREC

#ifndef ADAMKIT_LOWPREC
// Bytes-only floors for the low-precision modes: the same element reads and writes as a step
// (params and grads of type P, moments of type S), with trivial integer arithmetic. The pass
// goes chunk by chunk with one loop per element width inside a chunk, so every loop vectorises
// at full width (a loop mixing 4- and 1-byte lanes is limited by packing, not by memory), while
// each byte still crosses the memory bus once.
template <typename P, typename S>
void floor_storage(P* __restrict p, const P* __restrict g, S* __restrict m, S* __restrict v, int64_t n, int threads) {
  constexpr int64_t kChunk = 4096;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) num_threads(threads) if (n >= kParallelThreshold)
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const int64_t begin = chunk * kChunk, end = std::min(n, begin + kChunk);
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) p[i] = P(p[i] - g[i]);
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      m[i] = S(m[i] + S(1));
      v[i] = S(v[i] ^ S(1));
    }
  }
}

// The same bytes in one plain loop per element, the threads taking contiguous halves: what a
// floor can be when the compiler packs the widths itself (benchmarks/floors.py compares both).
template <typename P, typename S>
void floor_plain(P* __restrict p, const P* __restrict g, S* __restrict m, S* __restrict v, int64_t n, int threads) {
#pragma omp parallel num_threads(threads) if (n >= kParallelThreshold)
  {
    const auto [begin, end] = thread_range(n, 64);
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      p[i] = P(p[i] - g[i]);
      m[i] = S(m[i] + S(1));
      v[i] = S(v[i] ^ S(1));
    }
  }
}

// int4 state (two elements a byte per moment): the threads take contiguous halves, as floor_plain,
// each with one loop over its parameter elements and one over its state bytes.
template <typename P>
void floor_nibbles(P* __restrict p, const P* __restrict g, uint8_t* __restrict m, uint8_t* __restrict v, int64_t n, int threads) {
#pragma omp parallel num_threads(threads) if (n >= kParallelThreshold)
  {
    const auto [begin, end] = thread_range(n, 64);
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) p[i] = P(p[i] - g[i]);
#pragma omp simd
    for (int64_t k = begin / 2; k < (end + 1) / 2; ++k) {
      m[k] = uint8_t(m[k] + 1);
      v[k] = uint8_t(v[k] ^ 1);
    }
  }
}

#endif  // ADAMKIT_LOWPREC

}  // namespace

extern "C" {

#ifdef ADAMKIT_LOWPREC
// The mode's entry points carry its formats in their names: adam_lowprec_step_p<P>_m<M>_v<V>.
#define ADAMKIT_CAT_(a, b) a##b
#define ADAMKIT_CAT(a, b) ADAMKIT_CAT_(a, b)
#define ADAMKIT_MODE_SUFFIX \
  ADAMKIT_CAT(_p, ADAMKIT_CAT(ADAMKIT_PARAM_FORMAT, ADAMKIT_CAT(_m, ADAMKIT_CAT(ADAMKIT_M_FORMAT, ADAMKIT_CAT(_v, ADAMKIT_V_FORMAT)))))
// Lanes of the vector code path this library was compiled with (1: scalar code only).
int32_t ADAMKIT_CAT(adam_lowprec_lanes, ADAMKIT_MODE_SUFFIX)() {
#ifdef ADAMKIT_VECTOR
  return adamkit_simd::V::kLanes;
#else
  return 1;
#endif
}

// One fused step over `blocks` blocks of the parameters in the tables, in one parallel region;
// parameter k uses scalars[scalar_index[k]] (one entry per distinct step count, `kinds` entries).
// Returns 0, or -1 if the formats are not the ones this library was compiled for.
int32_t ADAMKIT_CAT(adam_lowprec_step, ADAMKIT_MODE_SUFFIX)(const LowPrecBuffers* b, const AdamScalars* s, int32_t kinds,
                                                            int64_t blocks, int threads) {
  if (b->m_format != ADAMKIT_M_FORMAT || b->v_format != ADAMKIT_V_FORMAT || b->param_format != ADAMKIT_PARAM_FORMAT)
    return -1;
  if (blocks <= 0 || kinds <= 0) return 0;
  if (s->amsgrad) dispatch_rounding<true>(*b, s, kinds, blocks, threads);
  else dispatch_rounding<false>(*b, s, kinds, blocks, threads);
  return 0;
}
#else
// param_bytes 4 or 2; state_bytes 4, 2 or 1 (the int8 modes' per-block absmax adds < 2 %), or 0:
// half a byte (int4; m and v hold (n + 1) / 2 bytes, always one loop per width).
void floor_lowprec(void* p, const void* g, void* m, void* v, int64_t n, int32_t param_bytes, int32_t state_bytes,
                   int threads, int plain) {
  if (state_bytes == 0) {
    if (param_bytes == 4) floor_nibbles<uint32_t>((uint32_t*)p, (const uint32_t*)g, (uint8_t*)m, (uint8_t*)v, n, threads);
    else floor_nibbles<uint16_t>((uint16_t*)p, (const uint16_t*)g, (uint8_t*)m, (uint8_t*)v, n, threads);
    return;
  }
  if (plain) {
    if (param_bytes == 4 && state_bytes == 4) floor_plain<uint32_t, uint32_t>((uint32_t*)p, (const uint32_t*)g, (uint32_t*)m, (uint32_t*)v, n, threads);
    else if (param_bytes == 4 && state_bytes == 2) floor_plain<uint32_t, uint16_t>((uint32_t*)p, (const uint32_t*)g, (uint16_t*)m, (uint16_t*)v, n, threads);
    else if (param_bytes == 4) floor_plain<uint32_t, uint8_t>((uint32_t*)p, (const uint32_t*)g, (uint8_t*)m, (uint8_t*)v, n, threads);
    else if (state_bytes == 4) floor_plain<uint16_t, uint32_t>((uint16_t*)p, (const uint16_t*)g, (uint32_t*)m, (uint32_t*)v, n, threads);
    else if (state_bytes == 2) floor_plain<uint16_t, uint16_t>((uint16_t*)p, (const uint16_t*)g, (uint16_t*)m, (uint16_t*)v, n, threads);
    else floor_plain<uint16_t, uint8_t>((uint16_t*)p, (const uint16_t*)g, (uint8_t*)m, (uint8_t*)v, n, threads);
    return;
  }
  if (param_bytes == 4) {
    if (state_bytes == 4) floor_storage<uint32_t, uint32_t>((uint32_t*)p, (const uint32_t*)g, (uint32_t*)m, (uint32_t*)v, n, threads);
    else if (state_bytes == 2) floor_storage<uint32_t, uint16_t>((uint32_t*)p, (const uint32_t*)g, (uint16_t*)m, (uint16_t*)v, n, threads);
    else floor_storage<uint32_t, uint8_t>((uint32_t*)p, (const uint32_t*)g, (uint8_t*)m, (uint8_t*)v, n, threads);
  } else {
    if (state_bytes == 4) floor_storage<uint16_t, uint32_t>((uint16_t*)p, (const uint16_t*)g, (uint32_t*)m, (uint32_t*)v, n, threads);
    else if (state_bytes == 2) floor_storage<uint16_t, uint16_t>((uint16_t*)p, (const uint16_t*)g, (uint16_t*)m, (uint16_t*)v, n, threads);
    else floor_storage<uint16_t, uint8_t>((uint16_t*)p, (const uint16_t*)g, (uint8_t*)m, (uint8_t*)v, n, threads);
  }
}
#endif  // ADAMKIT_LOWPREC

}  // extern "C"
