/* Throughput of the update's square root and division on this CPU: vsqrtps, vdivps and the pair
   (as AdamMath::step chains them), 8 independent chains, in cycles per instruction. The clock is
   estimated first from a chain of dependent integer adds (one cycle each).

       gcc -O2 -march=native benchmarks/divider_throughput.c -o /tmp/divider_throughput && /tmp/divider_throughput

   Needs AVX-512 for the zmm lines (built with -march=native on a CPU without it, they are left out). */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

enum { kChains = 8 };
static const long kRepeats = 20000000;

int main(void) {
  const long adds = 400000000;
  double start = now();
  long x = 0;
  for (long i = 0; i < adds; ++i) __asm__ volatile("add $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0" : "+r"(x));
  const double ghz = 4.0 * adds / (now() - start) / 1e9;
  printf("clock: about %.2f GHz\n", ghz);
  const double cycles_per_second = ghz * 1e9, per = 1.0 / ((double)kChains * kRepeats);

  __m256 y[kChains];
  const __m256 one8 = _mm256_set1_ps(1.0001f);
  for (int k = 0; k < kChains; ++k) y[k] = _mm256_set1_ps(1.5f + k);
  start = now();
  for (long i = 0; i < kRepeats; ++i) {
    for (int k = 0; k < kChains; ++k) y[k] = _mm256_div_ps(one8, _mm256_sqrt_ps(y[k]));
    __asm__ volatile("" ::: "memory");
  }
  printf("ymm sqrt + div: %.2f cycles per pair (8 lanes)\n", (now() - start) * cycles_per_second * per);
  float sink = 0;
  for (int k = 0; k < kChains; ++k) sink += y[k][0];

#ifdef __AVX512F__
  __m512 z[kChains];
  const __m512 one16 = _mm512_set1_ps(1.0001f);
  for (int k = 0; k < kChains; ++k) z[k] = _mm512_set1_ps(1.5f + k);
  start = now();
  for (long i = 0; i < kRepeats; ++i) {
    for (int k = 0; k < kChains; ++k) z[k] = _mm512_sqrt_ps(z[k]);
    __asm__ volatile("" ::: "memory");
  }
  printf("zmm sqrt: %.2f cycles each\n", (now() - start) * cycles_per_second * per);
  start = now();
  for (long i = 0; i < kRepeats; ++i) {
    for (int k = 0; k < kChains; ++k) z[k] = _mm512_div_ps(one16, z[k]);
    __asm__ volatile("" ::: "memory");
  }
  printf("zmm div: %.2f cycles each\n", (now() - start) * cycles_per_second * per);
  start = now();
  for (long i = 0; i < kRepeats; ++i) {
    for (int k = 0; k < kChains; ++k) z[k] = _mm512_div_ps(one16, _mm512_sqrt_ps(z[k]));
    __asm__ volatile("" ::: "memory");
  }
  printf("zmm sqrt + div: %.2f cycles per pair (16 lanes)\n", (now() - start) * cycles_per_second * per);
  for (int k = 0; k < kChains; ++k) sink += z[k][0];
#endif
  printf("(checksum %g)\n", sink);
  return 0;
}
