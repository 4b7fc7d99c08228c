"""Does this machine's second core double arithmetic throughput? (Context for the low-precision figures.)

Compiles a tiny OpenMP program that gives every thread the same fixed amount of AVX2 FMA work
(eight independent FMA chains, no memory traffic) and times it on one thread and on two,
alternately. On two real cores both take the same time; on two hyperthreads of one core, or on
vCPUs that share a core's time, two threads take longer. Arithmetic-bound kernels (adamkit's int8
and stochastic-rounding steps on AVX2) scale accordingly, while memory-bound ones (the bytes
floors, torch's fused step) do not care.

    python benchmarks/vcpu_scaling.py [--rounds 5]
"""
from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

SOURCE = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char** argv) {
  const int threads = atoi(argv[1]);
  const long iterations = 200000000L;
  float sink = 0.0f;
  const double start = omp_get_wtime();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
  {
    __m256 chain[8];
    for (int k = 0; k < 8; ++k) chain[k] = _mm256_set1_ps(1.0f + k * 1e-3f);
    const __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (long i = 0; i < iterations; ++i)
      for (int k = 0; k < 8; ++k) chain[k] = _mm256_fmadd_ps(chain[k], b, c);
    for (int k = 0; k < 8; ++k) sink += _mm256_cvtss_f32(chain[k]);
  }
  printf("%.4f %f\n", omp_get_wtime() - start, sink);
  return 0;
}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        source, binary = Path(directory, "fma.c"), Path(directory, "fma")
        source.write_text(SOURCE)
        subprocess.run(["gcc", "-O2", "-mavx2", "-mfma", "-fopenmp", str(source), "-o", str(binary)], check=True)
        times: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(args.rounds):
            for threads in (1, 2):
                output = subprocess.run([str(binary), str(threads)], check=True, capture_output=True, text=True).stdout
                times[threads].append(float(output.split()[0]))
    for threads, values in times.items():
        print(f"{threads} thread(s), same work per thread: " + ", ".join(f"{t:.2f} s" for t in values))
    ratios = sorted(two / one for one, two in zip(times[1], times[2]))
    print(f"two threads / one thread, per round: {', '.join(f'{r:.2f}' for r in ratios)} (1.00 = two full cores)")


if __name__ == "__main__":
    main()
