// Fused Adam-family step over one flat buffer: one pass over memory, all math in registers.
// Implements the per-element contract of adamkit/functional.py with the per-step scalars
// computed there (StepScalars); op order follows torch.optim.Adam's for-loop.
// Built by adamkit/kernels/build.py with -O3 -march=native -fopenmp for the host CPU.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

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

// ---------------------------------------------------------------------------------------------
// Low-precision storage around the same fp32 math (adamkit/codecs.py defines the formats; the
// encodings below match it bit for bit). Work is cut into blocks that never straddle a
// parameter (int8 blocks are per parameter, so quantized state does not depend on packing).
// Per block: decode -> fp32 update -> encode in one pass; an int8 moment is staged in L1 until
// the block's absmax is known, then encoded.
extern "C" {

struct LowPrecBuffers {
  void* p;                     // params: float32 or bfloat16 (uint16 bits)
  const void* g;               // grads, same dtype as params
  void* m;                     // exp_avg storage
  void* v;                     // exp_avg_sq storage
  void* vmax;                  // max_exp_avg_sq storage (amsgrad) or null
  uint16_t* comp;              // bf16 Kahan compensation (param_rounding="kahan") or null
  float* m_absmax;             // per-block absmax of int8 moments, else null
  float* v_absmax;
  float* vmax_absmax;
  const int64_t* block_start;  // [blocks + 1] element offsets; a block lies inside one parameter
  const int32_t* block_param;  // [blocks] index of the block's parameter within the bucket
  const int64_t* param_start;  // [params] element offset of each parameter
  const uint32_t* param_stream;  // [params] stochastic-rounding stream of each parameter
  const float* steps;          // [params] step count of each parameter (already incremented)
  uint64_t seed;               // stochastic-rounding seed
  int32_t param_format, m_format, v_format, rounding;
};

}  // extern "C"

namespace {

constexpr int64_t kBlock = 256;  // codecs.BLOCK_SIZE
enum Format { kF32 = 0, kBF16 = 1, kInt8 = 2 };
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

// An 8-bit float code for |x| / absmax * top (codecs.MiniFloat): E exponent bits, M mantissa bits.
template <int E, int M, bool SIGNED, bool KEEP_NONZERO>
struct MiniFloat {
  static constexpr int kBias = (1 << E) - 1;
  static constexpr int32_t kMaxCode = (1 << (E + M)) - 1;
  static constexpr float kTop = 2.0f - 1.0f / float(1 << M);
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
    if (SIGNED) code |= int32_t(bits_of(x) >> 31) << 7;
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
};
using ExpAvgCode = MiniFloat<4, 3, true, false>;   // codecs.EXP_AVG_CODE
using ExpAvgSqCode = MiniFloat<5, 3, false, true>;  // codecs.EXP_AVG_SQ_CODE

// Moment storage: load(i) gives fp32; store(i, j, x) writes storage or the L1 stage.
struct F32Moment {
  static constexpr bool kStaged = false;
  float* data;
  float scale = 0;
  void begin_block(const float*, int64_t) {}
  float load(int64_t i) const { return data[i]; }
  void store(int64_t i, float*, int64_t, float x) const { data[i] = x; }
  void finish_block(float*, int64_t, int64_t, int64_t, const float*, float) const {}
};
struct BF16Moment {
  static constexpr bool kStaged = false;
  uint16_t* data;
  float scale = 0;
  void begin_block(const float*, int64_t) {}
  float load(int64_t i) const { return bf16_value(data[i]); }
  void store(int64_t i, float*, int64_t, float x) const { data[i] = bf16_nearest(x); }
  void finish_block(float*, int64_t, int64_t, int64_t, const float*, float) const {}
};
template <class Code>
struct Int8Moment {
  static constexpr bool kStaged = true;
  uint8_t* data;
  float scale = 0;
  void begin_block(const float* absmax, int64_t block) { scale = Code::decode_scale(absmax[block]); }
  float load(int64_t i) const { return Code::decode(data[i], scale); }
  void store(int64_t, float* stage, int64_t j, float x) const { stage[j] = x; }
  void finish_block(float* absmax, int64_t block, int64_t base, int64_t n, const float* stage, float peak) const {
    const float inverse = Code::encode_scale(peak);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) data[base + j] = Code::encode(stage[j], inverse);
    absmax[block] = peak;
  }
};

template <class MomentM, class MomentV, bool AMSGRAD, bool BF16_PARAMS, int ROUNDING>
void adam_lowprec(const LowPrecBuffers& b, const AdamScalars& s, int64_t first, int64_t last, int threads) {
  using PT = typename std::conditional<BF16_PARAMS, uint16_t, float>::type;
  PT* __restrict p = static_cast<PT*>(b.p);
  const PT* __restrict g = static_cast<const PT*>(b.g);
  // maximize flips the sign; an AMP loss scale is divided out (as the fp32 kernel does)
  const float grad_multiplier = float((s.maximize ? -1.0 : 1.0) / s.grad_scale);
  const float decay = float(s.decay), l2 = float(s.l2);
  const float lerp_weight = float(1.0 - s.beta1), lerp_complement = float(s.beta1);
  const uint32_t lerp_mask = (1.0 - s.beta1) < 0.5 ? ~0u : 0u;  // torch's lerp picks the stabler form
  const float beta2 = float(s.beta2), one_minus_beta2 = float(1.0 - s.beta2);
  const float inverse_bias_correction2_sqrt = float(1.0 / s.bias_correction2_sqrt), eps = float(s.eps);
  const float neg_step_size = float(-s.step_size);
  const bool parallel = (b.block_start[last] - b.block_start[first]) >= kParallelThreshold;
#pragma omp parallel for schedule(static) num_threads(threads) if (parallel)
  for (int64_t block = first; block < last; ++block) {
    const int64_t base = b.block_start[block], n = b.block_start[block + 1] - base;
    const int32_t param = b.block_param[block];
    MomentM m{static_cast<decltype(MomentM::data)>(b.m)};
    MomentV v{static_cast<decltype(MomentV::data)>(b.v)};
    MomentV vmax{static_cast<decltype(MomentV::data)>(b.vmax)};
    m.begin_block(b.m_absmax, block);
    v.begin_block(b.v_absmax, block);
    if (AMSGRAD) vmax.begin_block(b.vmax_absmax, block);
    alignas(64) float m_stage[kBlock], v_stage[kBlock], vmax_stage[kBlock];
    const uint32_t key = ROUNDING == kStochastic ? block_key(b.seed, uint32_t(b.steps[param]), b.param_stream[param]) : 0;
    const uint32_t local = uint32_t(base - b.param_start[param]);
    uint16_t* __restrict comp = b.comp;
    float peak_m = 0.0f, peak_v = 0.0f, peak_vmax = 0.0f;  // block absmax of staged (int8) moments
#pragma omp simd reduction(max : peak_m, peak_v, peak_vmax)
    for (int64_t j = 0; j < n; ++j) {
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
      const float old_m = m.load(i), old_v = v.load(i);
      float x = param_value * decay;                                    // AdamW: p <- p (1 - lr wd)
      const float grad = grad_value * grad_multiplier + l2 * x;         // Adam + L2: g <- g + wd p
      // m_t as torch's lerp; both forms computed so the choice is a blend, not a branch
      const float from_start = old_m + lerp_weight * (grad - old_m);
      const float from_end = grad - (grad - old_m) * lerp_complement;
      const float exp_avg = float_of((bits_of(from_start) & lerp_mask) | (bits_of(from_end) & ~lerp_mask));  // m_t
      const float exp_avg_sq = old_v * beta2 + one_minus_beta2 * grad * grad;       // v_t
      float second = exp_avg_sq;
      if (AMSGRAD) {                                                    // v_max <- max(v_max, v_t)
        const float old_vmax = vmax.load(i);
        second = old_vmax > exp_avg_sq ? old_vmax : exp_avg_sq;
        vmax.store(i, vmax_stage, j, second);
        if (MomentV::kStaged) peak_vmax = second > peak_vmax ? second : peak_vmax;  // v >= 0
      }
      const float denom = std::sqrt(second) * inverse_bias_correction2_sqrt + eps;  // sqrt(v_hat) + eps
      m.store(i, m_stage, j, exp_avg);
      v.store(i, v_stage, j, exp_avg_sq);
      if (MomentM::kStaged) peak_m = std::fabs(exp_avg) > peak_m ? std::fabs(exp_avg) : peak_m;
      if (MomentV::kStaged) peak_v = exp_avg_sq > peak_v ? exp_avg_sq : peak_v;
      x = x + neg_step_size * (exp_avg / denom);                        // p <- p - lr m_hat / (sqrt(v_hat) + eps)
      if (!BF16_PARAMS) {
        p[i] = x;
      } else if (ROUNDING == kStochastic) {                             // unbiased: add 16 random low bits, truncate
        const uint32_t noise = mix32((local + uint32_t(j)) ^ key) & 0xFFFFu;
        p[i] = x != x ? bf16_nearest(x) : uint16_t((bits_of(x) + noise) >> 16);
      } else {
        const uint16_t rounded = bf16_nearest(x);
        p[i] = rounded;
        if (ROUNDING == kKahan) comp[i] = bf16_nearest(x - bf16_value(rounded));  // what rounding lost
      }
    }
    m.finish_block(b.m_absmax, block, base, n, m_stage, peak_m);
    v.finish_block(b.v_absmax, block, base, n, v_stage, peak_v);
    if (AMSGRAD) vmax.finish_block(b.vmax_absmax, block, base, n, vmax_stage, peak_vmax);
  }
}

#ifdef ADAMKIT_LOWPREC
// Each storage mode is compiled on first use into its own small library (kernels/build.py passes
// ADAMKIT_M_FORMAT, ADAMKIT_V_FORMAT, ADAMKIT_PARAM_FORMAT), so no one waits for all 72 variants.
template <int F, class Code>
using MomentOf = typename std::conditional<
    F == kF32, F32Moment, typename std::conditional<F == kBF16, BF16Moment, Int8Moment<Code>>::type>::type;
using ModeM = MomentOf<ADAMKIT_M_FORMAT, ExpAvgCode>;
using ModeV = MomentOf<ADAMKIT_V_FORMAT, ExpAvgSqCode>;
constexpr bool kBF16Params = ADAMKIT_PARAM_FORMAT == kBF16;

template <bool AMSGRAD>
void dispatch_rounding(const LowPrecBuffers& b, const AdamScalars& s, int64_t first, int64_t last, int threads) {
  if (!kBF16Params) return adam_lowprec<ModeM, ModeV, AMSGRAD, false, kNearest>(b, s, first, last, threads);
  if (b.rounding == kStochastic) return adam_lowprec<ModeM, ModeV, AMSGRAD, kBF16Params, kStochastic>(b, s, first, last, threads);
  if (b.rounding == kKahan) return adam_lowprec<ModeM, ModeV, AMSGRAD, kBF16Params, kKahan>(b, s, first, last, threads);
  adam_lowprec<ModeM, ModeV, AMSGRAD, kBF16Params, kNearest>(b, s, first, last, threads);
}
#endif  // ADAMKIT_LOWPREC

// Bytes-only floors for the low-precision modes: the same element reads and writes as a step
// (params and grads of type P, moments of type S), with trivial integer arithmetic.
template <typename P, typename S>
void floor_storage(P* __restrict p, const P* __restrict g, S* __restrict m, S* __restrict v, int64_t n, int threads) {
#pragma omp parallel for simd schedule(static) num_threads(threads) if (n >= kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) {
    const P grad = g[i];
    m[i] = S(m[i] + S(grad));
    v[i] = S(v[i] ^ S(grad));
    p[i] = P(p[i] - grad);
  }
}

}  // namespace

extern "C" {

#ifdef ADAMKIT_LOWPREC
// One fused step over blocks [first, last) of a low-precision flat bucket. Returns 0, or -1 if
// the buffers' formats are not the ones this library was compiled for.
int32_t adam_lowprec_step(const LowPrecBuffers* b, const AdamScalars* s, int64_t first, int64_t last, int threads) {
  if (b->m_format != ADAMKIT_M_FORMAT || b->v_format != ADAMKIT_V_FORMAT || b->param_format != ADAMKIT_PARAM_FORMAT)
    return -1;
  if (last <= first) return 0;
  if (s->amsgrad) dispatch_rounding<true>(*b, *s, first, last, threads);
  else dispatch_rounding<false>(*b, *s, first, last, threads);
  return 0;
}
#endif  // ADAMKIT_LOWPREC

// param_bytes 4 or 2; state_bytes 4, 2 or 1 (the int8 modes' per-block absmax adds < 2 %).
void floor_lowprec(void* p, const void* g, void* m, void* v, int64_t n, int32_t param_bytes, int32_t state_bytes,
                   int threads) {
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

}  // extern "C"
