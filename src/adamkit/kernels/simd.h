// Vector instruction sets for the low-precision kernel (adam_kernel.cpp). Its vector code is written
// once against `V`, a struct of thin inline wrappers; the compiler flags (-march=native) pick V:
// AVX-512 F/BW/DQ/VL gives 16 lanes, AVX2 + FMA 8 lanes, other CPUs run the kernel's scalar code.
// Both structs wrap the same operations with the same IEEE semantics, so every width gives the
// same bits; only packing (lanes to bytes or words) is written per instruction set.
//
// ADAMKIT_EMULATE_AVX512 (tests only) compiles the AVX-512 code on any x86-64 CPU with SIMDe's
// portable forms of the intrinsics (Debian/Ubuntu package libsimde-dev), so the 16-lane path is
// checked bit for bit on machines without AVX-512. ADAMKIT_NO_AVX512 keeps AVX2 on an AVX-512 CPU.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(ADAMKIT_EMULATE_AVX512)
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#define ADAMKIT_AVX512 1
#elif defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__) && \
    !defined(ADAMKIT_NO_AVX512)
#include <immintrin.h>
#define ADAMKIT_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define ADAMKIT_AVX2 1
#endif

namespace adamkit_simd {

#if defined(ADAMKIT_AVX2)
struct Avx2 {
  static constexpr int kLanes = 8;
  using F = __m256;
  using I = __m256i;
  using M = __m256;  // a lane mask: all ones or zero per lane

  static F set1(float x) { return _mm256_set1_ps(x); }
  static I splat(uint32_t x) { return _mm256_set1_epi32(int32_t(x)); }
  static F zero() { return _mm256_setzero_ps(); }
  static I iota(uint32_t start, uint32_t stride) {  // start + stride * lane
    return _mm256_add_epi32(splat(start), _mm256_mullo_epi32(splat(stride), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
  }
  static I as_int(F x) { return _mm256_castps_si256(x); }
  static F as_float(I x) { return _mm256_castsi256_ps(x); }

  static F load(const float* p) { return _mm256_load_ps(p); }  // 32-byte aligned
  static void store(float* p, F x) { _mm256_store_ps(p, x); }
  static F loadu(const float* p) { return _mm256_loadu_ps(p); }
  static void storeu(float* p, F x) { _mm256_storeu_ps(p, x); }
  static I loadu_words(const uint16_t* p) { return _mm256_loadu_si256(reinterpret_cast<const I*>(p)); }  // 2 kLanes words
  static void storeu_words(uint16_t* p, I x) { _mm256_storeu_si256(reinterpret_cast<I*>(p), x); }
  static I load_u16(const uint16_t* p) { return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static I load_s8(const uint8_t* p) { return _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))); }
  static I load_u8(const uint8_t* p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))); }
  static void store_high_u16(uint16_t* p, I x) {  // each lane's high 16 bits: one byte shuffle, one qword permute
    const I high_words = _mm256_shuffle_epi8(x, _mm256_setr_epi8(2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1,
                                                                 2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(_mm256_permute4x64_epi64(high_words, 0x08)));
  }
  static void store_u8(uint8_t* p, I x) {  // lanes hold values <= 0xFF
    const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packus_epi16(words, words));
  }
  // 2 kLanes words: the low halves of `low` in the even words, the high halves of `high` in the odd
  static I interleave_words(I low, I high) { return _mm256_blend_epi16(low, high, 0xAA); }
  // 4 kLanes codes (lanes in [0, 0x7FFF]) to bytes, saturated at 0x7F if SIGNED, else at 0xFF;
  // SIGNED: each byte's top bit is the sign bit of x, 0 for a NaN (the saturating packs keep a lane's sign)
  template <bool SIGNED>
  static void store_codes4(uint8_t* out, const I code[4], const F x[4]) {
    const I low = _mm256_packs_epi32(code[0], code[1]), high = _mm256_packs_epi32(code[2], code[3]);
    I bytes = SIGNED ? _mm256_packs_epi16(low, high) : _mm256_packus_epi16(low, high);
    if (SIGNED) {
      const auto signed_bits = [](F value) {  // a NaN's sign bit cleared (MiniFloat::encode)
        return _mm256_andnot_si256(_mm256_castps_si256(_mm256_cmp_ps(value, value, _CMP_UNORD_Q)), _mm256_castps_si256(value));
      };
      const I a = _mm256_packs_epi32(signed_bits(x[0]), signed_bits(x[1]));
      const I b = _mm256_packs_epi32(signed_bits(x[2]), signed_bits(x[3]));
      bytes = _mm256_or_si256(bytes, _mm256_and_si256(_mm256_packs_epi16(a, b), _mm256_set1_epi8(char(0x80))));
    }
    bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));  // undo the in-lane packs
    _mm256_storeu_si256(reinterpret_cast<I*>(out), bytes);
  }

  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F div(F a, F b) { return _mm256_div_ps(a, b); }
  static F sqrt(F a) { return _mm256_sqrt_ps(a); }
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }    // a b + c, one rounding
  static F fnmadd(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }  // c - a b, one rounding
  static F max(F a, F b) { return _mm256_max_ps(a, b); }                // a > b ? a : b (NaN: b)
  static F bit_and(F a, F b) { return _mm256_and_ps(a, b); }
  static F bit_or(F a, F b) { return _mm256_or_ps(a, b); }

  static I add(I a, I b) { return _mm256_add_epi32(a, b); }
  static I sub(I a, I b) { return _mm256_sub_epi32(a, b); }
  static I mullo(I a, I b) { return _mm256_mullo_epi32(a, b); }
  static I bit_and(I a, I b) { return _mm256_and_si256(a, b); }
  static I bit_or(I a, I b) { return _mm256_or_si256(a, b); }
  static I bit_xor(I a, I b) { return _mm256_xor_si256(a, b); }
  static I xor3(I a, I b, I c) { return _mm256_xor_si256(_mm256_xor_si256(a, b), c); }
  static I min_u32(I a, I b) { return _mm256_min_epu32(a, b); }
  static I max_u32(I a, I b) { return _mm256_max_epu32(a, b); }
  static I subs_u16(I a, I b) { return _mm256_subs_epu16(a, b); }  // per 16-bit half: a - b, 0 if negative
  static I min_i32_where_nonzero(I least, I key, I x) {  // min(least, x), signed, in the lanes where key != 0
    const I zero_key = _mm256_cmpeq_epi32(key, _mm256_setzero_si256());
    return _mm256_min_epi32(least, _mm256_or_si256(x, _mm256_srli_epi32(zero_key, 1)));  // key 0: INT32_MAX
  }
  template <int N> static I shift_left(I a) { return _mm256_slli_epi32(a, N); }
  template <int N> static I shift_right(I a) { return _mm256_srli_epi32(a, N); }
  template <int N> static I shift_right_signed(I a) { return _mm256_srai_epi32(a, N); }
  static I shift_left(I a, I n) { return _mm256_sllv_epi32(a, n); }
  static I shift_right(I a, I n) { return _mm256_srlv_epi32(a, n); }

  static M mask_of(bool all) { return as_float(splat(all ? ~0u : 0u)); }
  static M is_nan(F a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
  static M equal(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
  static M equal(I a, I b) { return as_float(_mm256_cmpeq_epi32(a, b)); }
  static M greater(I a, I b) { return as_float(_mm256_cmpgt_epi32(a, b)); }  // signed
  static M and_not(M a, M b) { return _mm256_andnot_ps(a, b); }            // b and not a
  static bool any_nan(F a, F b) { return _mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_UNORD_Q)) != 0; }  // in a or b
  static F blend(F a, F b, M mask) { return _mm256_blendv_ps(a, b, mask); }  // mask ? b : a
  static I blend(I a, I b, M mask) { return _mm256_blendv_epi8(a, b, as_int(mask)); }
  static I add_where(I a, M mask, I b) { return _mm256_add_epi32(a, _mm256_and_si256(as_int(mask), b)); }  // mask ? a + b : a
  // int4 codes (adam_kernel.cpp's Int4Moment): !(a < b) (true for NaN), table lookups (reading only
  // the index's low 3 or 4 bits), and kLanes 4-bit codes to and from kLanes / 2 bytes (element 2k in
  // the low nibble of byte k; loaded codes hold other bits above the nibble, which lookup16 ignores)
  static M not_less(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_NLT_UQ); }  // a >= b, or a NaN
  static F lookup8(I index, const float* table) { return _mm256_permutevar8x32_ps(_mm256_loadu_ps(table), index); }  // [0, 8)
  static F lookup16(I index, const float* table) {  // the index's low 4 bits
    const F low = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table), index);
    const F high = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table + 8), index);
    return _mm256_blendv_ps(low, high, as_float(_mm256_slli_epi32(index, 28)));  // bit 3 to the sign bit
  }
  static I load_nibbles(const uint8_t* p) {
    int32_t word;
    std::memcpy(&word, p, 4);
    // the 4 bytes in every lane (a broadcast load); a byte shuffle, which stays within each 128-bit
    // half, puts byte k in lanes 2k and 2k + 1 (half 0: bytes 0, 1; half 1: bytes 2, 3)
    const I spread = _mm256_shuffle_epi8(_mm256_set1_epi32(word), _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                                                                   2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    return _mm256_srlv_epi32(spread, _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4));
  }
  static void store_nibbles(uint8_t* p, I code) {  // lanes hold values < 16
    const I pairs = _mm256_or_si256(code, _mm256_srli_epi64(code, 28));  // low 32 bits: even | odd << 4
    const I bytes = _mm256_shuffle_epi8(pairs, _mm256_setr_epi8(0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                                                -1, -1, 0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1));
    const int32_t word = _mm_cvtsi128_si32(_mm_or_si128(_mm256_castsi256_si128(bytes), _mm256_extracti128_si256(bytes, 1)));
    std::memcpy(p, &word, 4);
  }

  static float max_of_lanes(F x) {  // lanes hold no NaN
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ps(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
  }
  static bool all_at_least_u32(I x, uint32_t bound) {  // every lane >= bound, unsigned
    return _mm256_movemask_epi8(_mm256_cmpeq_epi32(_mm256_max_epu32(x, splat(bound)), x)) == -1;
  }
  static bool all_at_least_i32(I x, int32_t bound) {  // every lane >= bound, signed
    return _mm256_movemask_epi8(_mm256_cmpgt_epi32(splat(uint32_t(bound)), x)) == 0;
  }
};
using V = Avx2;
#endif  // ADAMKIT_AVX2

#if defined(ADAMKIT_AVX512)
#if defined(ADAMKIT_EMULATE_AVX512)
// SIMDe 0.7 lacks these; lane-by-lane forms through memory, obviously right by construction.
#define ADAMKIT_LANEWISE(name, In, Out, in_type, out_type, expression) \
  inline Out name(In x) {                                             \
    in_type in[16];                                                   \
    out_type out[16];                                                 \
    std::memcpy(in, &x, sizeof(in));                                  \
    for (int k = 0; k < 16; ++k) out[k] = expression;                 \
    Out result;                                                       \
    std::memcpy(&result, out, sizeof(result));                        \
    return result;                                                    \
  }
ADAMKIT_LANEWISE(emulated_cvtepi8_epi32, __m128i, __m512i, int8_t, int32_t, int32_t(in[k]))      // sign-extend
ADAMKIT_LANEWISE(emulated_cvtepu8_epi32, __m128i, __m512i, uint8_t, uint32_t, uint32_t(in[k]))   // zero-extend
ADAMKIT_LANEWISE(emulated_cvtepu16_epi32, __m256i, __m512i, uint16_t, uint32_t, uint32_t(in[k]))
ADAMKIT_LANEWISE(emulated_cvtepi32_epi8, __m512i, __m128i, uint32_t, uint8_t, uint8_t(in[k]))     // truncate
ADAMKIT_LANEWISE(emulated_cvtsepi32_epi8, __m512i, __m128i, int32_t, int8_t, int8_t(in[k] < -128 ? -128 : in[k] > 127 ? 127 : in[k]))
ADAMKIT_LANEWISE(emulated_cvtusepi32_epi8, __m512i, __m128i, uint32_t, uint8_t, uint8_t(in[k] > 255u ? 255u : in[k]))
#undef ADAMKIT_LANEWISE
template <int N>
inline __m512i emulated_srai_epi32(__m512i x) {  // arithmetic shift right
  int32_t lanes[16];
  std::memcpy(lanes, &x, sizeof(lanes));
  for (int k = 0; k < 16; ++k) lanes[k] = lanes[k] >> N;
  std::memcpy(&x, lanes, sizeof(lanes));
  return x;
}
#define ADAMKIT_CVTEPI8_EPI32 emulated_cvtepi8_epi32
#define ADAMKIT_CVTEPU8_EPI32 emulated_cvtepu8_epi32
#define ADAMKIT_CVTEPU16_EPI32 emulated_cvtepu16_epi32
#define ADAMKIT_CVTEPI32_EPI8 emulated_cvtepi32_epi8
#define ADAMKIT_CVTSEPI32_EPI8 emulated_cvtsepi32_epi8
#define ADAMKIT_CVTUSEPI32_EPI8 emulated_cvtusepi32_epi8
#define ADAMKIT_SRAI_EPI32(x, n) emulated_srai_epi32<n>(x)
inline __m128i emulated_cvtepi64_epi8(__m512i x) {  // 8 lanes of 64 bits truncated to bytes, zeros above
  uint64_t in[8];
  uint8_t out[16] = {};
  std::memcpy(in, &x, sizeof(in));
  for (int k = 0; k < 8; ++k) out[k] = uint8_t(in[k]);
  __m128i result;
  std::memcpy(&result, out, sizeof(result));
  return result;
}
#define ADAMKIT_CVTEPI64_EPI8 emulated_cvtepi64_epi8
#else
#define ADAMKIT_CVTEPI8_EPI32 _mm512_cvtepi8_epi32
#define ADAMKIT_CVTEPU8_EPI32 _mm512_cvtepu8_epi32
#define ADAMKIT_CVTEPU16_EPI32 _mm512_cvtepu16_epi32
#define ADAMKIT_CVTEPI32_EPI8 _mm512_cvtepi32_epi8
#define ADAMKIT_CVTSEPI32_EPI8 _mm512_cvtsepi32_epi8
#define ADAMKIT_CVTUSEPI32_EPI8 _mm512_cvtusepi32_epi8
#define ADAMKIT_SRAI_EPI32(x, n) _mm512_srai_epi32(x, n)
#define ADAMKIT_CVTEPI64_EPI8 _mm512_cvtepi64_epi8
#endif  // ADAMKIT_EMULATE_AVX512

struct Avx512 {
  static constexpr int kLanes = 16;
  using F = __m512;
  using I = __m512i;
  using M = __mmask16;  // a lane mask: one bit per lane

  static F set1(float x) { return _mm512_set1_ps(x); }
  static I splat(uint32_t x) { return _mm512_set1_epi32(int32_t(x)); }
  static F zero() { return _mm512_setzero_ps(); }
  static I iota(uint32_t start, uint32_t stride) {  // start + stride * lane
    return _mm512_add_epi32(splat(start), _mm512_mullo_epi32(splat(stride), _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)));
  }
  static I as_int(F x) { return _mm512_castps_si512(x); }
  static F as_float(I x) { return _mm512_castsi512_ps(x); }

  static F load(const float* p) { return _mm512_load_ps(p); }  // 64-byte aligned
  static void store(float* p, F x) { _mm512_store_ps(p, x); }
  static F loadu(const float* p) { return _mm512_loadu_ps(p); }
  static void storeu(float* p, F x) { _mm512_storeu_ps(p, x); }
  static I loadu_words(const uint16_t* p) { return _mm512_loadu_si512(p); }  // 2 kLanes words
  static void storeu_words(uint16_t* p, I x) { _mm512_storeu_si512(p, x); }
  static I load_u16(const uint16_t* p) { return ADAMKIT_CVTEPU16_EPI32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static I load_s8(const uint8_t* p) { return ADAMKIT_CVTEPI8_EPI32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static I load_u8(const uint8_t* p) { return ADAMKIT_CVTEPU8_EPI32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static void store_high_u16(uint16_t* p, I x) {  // each lane's high 16 bits: one word permute
    const I odd_words = _mm512_set_epi16(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1,
                                         31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_castsi512_si256(_mm512_permutexvar_epi16(odd_words, x)));
  }
  static void store_u8(uint8_t* p, I x) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), ADAMKIT_CVTEPI32_EPI8(x)); }      // lanes <= 0xFF
  static I interleave_words(I low, I high) { return _mm512_mask_blend_epi16(0xAAAAAAAAu, low, high); }
  template <bool SIGNED>
  static void store_codes4(uint8_t* out, const I code[4], const F x[4]) {  // as Avx2::store_codes4
    for (int k = 0; k < 4; ++k) {
      __m128i bytes = SIGNED ? ADAMKIT_CVTSEPI32_EPI8(code[k]) : ADAMKIT_CVTUSEPI32_EPI8(code[k]);  // saturating
      if (SIGNED) {  // the sign bit, cleared for a NaN (MiniFloat::encode); the code is <= 0x7F
        const __mmask16 negative = __mmask16(_mm512_movepi32_mask(_mm512_castps_si512(x[k])) & _mm512_cmp_ps_mask(x[k], x[k], _CMP_ORD_Q));
        bytes = _mm_mask_add_epi8(bytes, negative, bytes, _mm_set1_epi8(char(0x80)));
      }
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16 * k), bytes);
    }
  }

  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F div(F a, F b) { return _mm512_div_ps(a, b); }
  static F sqrt(F a) { return _mm512_sqrt_ps(a); }
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F fnmadd(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }  // a > b ? a : b (NaN: b), as vmaxps
  static F bit_and(F a, F b) { return as_float(_mm512_and_si512(as_int(a), as_int(b))); }
  static F bit_or(F a, F b) { return as_float(_mm512_or_si512(as_int(a), as_int(b))); }

  static I add(I a, I b) { return _mm512_add_epi32(a, b); }
  static I sub(I a, I b) { return _mm512_sub_epi32(a, b); }
  static I mullo(I a, I b) { return _mm512_mullo_epi32(a, b); }
  static I bit_and(I a, I b) { return _mm512_and_si512(a, b); }
  static I bit_or(I a, I b) { return _mm512_or_si512(a, b); }
  static I bit_xor(I a, I b) { return _mm512_xor_si512(a, b); }
  static I xor3(I a, I b, I c) { return _mm512_ternarylogic_epi32(a, b, c, 0x96); }  // a ^ b ^ c
  static I min_u32(I a, I b) { return _mm512_min_epu32(a, b); }
  static I max_u32(I a, I b) { return _mm512_max_epu32(a, b); }
  static I subs_u16(I a, I b) { return _mm512_subs_epu16(a, b); }
  static I min_i32_where_nonzero(I least, I key, I x) { return _mm512_mask_min_epi32(least, _mm512_test_epi32_mask(key, key), least, x); }
  template <int N> static I shift_left(I a) { return _mm512_slli_epi32(a, N); }
  template <int N> static I shift_right(I a) { return _mm512_srli_epi32(a, N); }
  template <int N> static I shift_right_signed(I a) { return ADAMKIT_SRAI_EPI32(a, N); }
  static I shift_left(I a, I n) { return _mm512_sllv_epi32(a, n); }
  static I shift_right(I a, I n) { return _mm512_srlv_epi32(a, n); }

  static M mask_of(bool all) { return all ? M(0xFFFF) : M(0); }
  static M is_nan(F a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
  static M equal(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  static M equal(I a, I b) { return _mm512_cmpeq_epi32_mask(a, b); }
  static M greater(I a, I b) { return _mm512_cmpgt_epi32_mask(a, b); }  // signed
  static M and_not(M a, M b) { return M(~a & b); }
  static bool any_nan(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q) != 0; }  // in a or b
#if defined(__AVX512BF16__) && !defined(ADAMKIT_EMULATE_AVX512)
#define ADAMKIT_CONVERTS_BF16 1
  // vcvtneps2bf16: round to nearest even, but a denormal input becomes ±0 and a NaN keeps its payload
  static constexpr int kDenormalOrNan = 0x01 | 0x20 | 0x80;  // vfpclassps classes: QNaN, denormal, SNaN
  static bool any_denormal_or_nan(F x) { return _mm512_fpclass_ps_mask(x, kDenormalOrNan) != 0; }
  static bool any_denormal_or_nan(F a, F b) {
    return (_mm512_fpclass_ps_mask(a, kDenormalOrNan) | _mm512_fpclass_ps_mask(b, kDenormalOrNan)) != 0;
  }
  static void store_bf16(uint16_t* p, F x) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)_mm512_cvtneps_pbh(x)); }
  // 2 kLanes words from the even and odd elements (loadu_words' halves): both rounded in one
  // instruction (even's to the low half, odd's to the high), then interleaved by one word permute
  static void store_bf16_pairs(uint16_t* p, F even, F odd) {
    const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                                23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    _mm512_storeu_si512(p, _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(odd, even)));
  }
#endif
  static F blend(F a, F b, M mask) { return _mm512_mask_blend_ps(mask, a, b); }  // mask ? b : a
  static I blend(I a, I b, M mask) { return _mm512_mask_blend_epi32(mask, a, b); }
  static I add_where(I a, M mask, I b) { return _mm512_mask_add_epi32(a, mask, a, b); }
  // int4 codes: as Avx2's
  static M not_less(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_NLT_UQ); }
  static F lookup16(I index, const float* table) { return _mm512_permutexvar_ps(index, _mm512_loadu_ps(table)); }  // low 4 bits
  static I load_nibbles(const uint8_t* p) {  // as Avx2's: 8 bytes broadcast, 128-bit quarter q takes bytes 2q, 2q + 1
    int64_t word;
    std::memcpy(&word, p, 8);
    const I spread = _mm512_shuffle_epi8(_mm512_set1_epi64(word), _mm512_set_epi8(
        7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6, 6, 6, 6, 6, 6, 5, 5, 5, 5, 5, 5, 5, 5, 4, 4, 4, 4, 4, 4, 4, 4,
        3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0));
    return _mm512_srlv_epi32(spread, _mm512_set1_epi64(int64_t(4) << 32));
  }
  static void store_nibbles(uint8_t* p, I code) {  // lanes hold values < 16
    const I pairs = _mm512_or_si512(code, _mm512_srli_epi64(code, 28));  // low 32 bits: even | odd << 4
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), ADAMKIT_CVTEPI64_EPI8(pairs));
  }

  static float max_of_lanes(F x) {  // lanes hold no NaN
    __m256 half = _mm256_max_ps(_mm512_castps512_ps256(x), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ps(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
  }
  static bool all_at_least_u32(I x, uint32_t bound) { return _mm512_cmpge_epu32_mask(x, splat(bound)) == 0xFFFF; }
  static bool all_at_least_i32(I x, int32_t bound) { return _mm512_cmpge_epi32_mask(x, splat(uint32_t(bound))) == 0xFFFF; }
};
using V = Avx512;
#endif  // ADAMKIT_AVX512

}  // namespace adamkit_simd

#if defined(ADAMKIT_AVX2) || defined(ADAMKIT_AVX512)
#define ADAMKIT_VECTOR 1  // the kernel's vector code path is compiled, V lanes wide
#endif
