"""How much faster `adamkit reproduce`'s training runs are when R runs of one optimizer (seeds ×
learning rates) train as one batched model (reproduce.batched) instead of one after another.

For each experiment at its full-run size, the same R runs go through the sequential ``trial`` and
the batched ``trial.batched``; the wall times, the speed-up and the largest relative difference of
the cost curves are printed. Times are this process's CPU seconds (one thread, as in reproduce's
worker processes), the least of ``--repeat`` alternating measurements: on a shared machine the wall
time measures the neighbours as much as the code.

    PYTHONPATH=src python benchmarks/reproduce_batched.py [--runs 10] [--epochs 1] [--repeat 2] [--only logistic mlp cnn sparse]
"""

from __future__ import annotations

import argparse
import time

import torch

from adamkit.reproduce import cnn, logistic, mlp, sparse


def kwargs_of(name: str, epochs: int) -> tuple[object, str, dict]:
    if name == "logistic":
        s = logistic.Settings.full()
        return logistic, "Adam", {"l2": s.l2, "epochs": epochs, "batch_size": s.batch_size, "n_train": s.n_train}
    if name == "mlp":
        s = mlp.Settings.full()
        return mlp, "Adam", {"hidden": s.hidden, "n_train": s.n_train, "epochs": epochs, "dropout": s.dropout}
    if name == "cnn":
        s = cnn.Settings.full()
        return cnn, "Adam", {"channels": s.channels, "n_train": s.n_train, "epochs": epochs}
    s = sparse.Settings.full()
    return sparse, "Adam", {"vocabulary": s.vocabulary, "documents": s.documents, "tokens": s.tokens, "epochs": epochs,
                            "batch_size": s.batch_size, "dropout": s.dropout}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--only", nargs="+", default=["logistic", "mlp", "cnn", "sparse"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.only:
        module, optimizer, kwargs = kwargs_of(name, args.epochs)
        runs = [(2.5e-4 * 2 ** (k // 2), k % 2) for k in range(args.runs)]  # learning rates × 2 seeds, as a tuning grid
        module.trial(optimizer, 1e-3, 0, **{**kwargs, "epochs": 1} if name != "sparse" else kwargs)  # data loaded, caches warm
        t_seq = t_bat = float("inf")
        for _ in range(args.repeat):
            start = time.process_time()
            sequential = [module.trial(optimizer, lr, seed, **kwargs)["losses"] for lr, seed in runs]
            t_seq = min(t_seq, time.process_time() - start)
            start = time.process_time()
            together = [r["losses"] for r in module.trial.batched(optimizer, runs, **kwargs)]
            t_bat = min(t_bat, time.process_time() - start)
        diff = max(abs(a - b) / abs(a) for s, b_ in zip(sequential, together) for a, b in zip(s, b_))
        print(f"{name}: {args.runs} runs x {args.epochs} epoch(s): sequential {t_seq:.1f} s, batched {t_bat:.1f} s, "
              f"speed-up {t_seq / t_bat:.2f}x; largest relative difference of the curves {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
