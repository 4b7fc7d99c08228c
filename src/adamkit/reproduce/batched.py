"""Many training runs of one optimizer as one batched model.

R runs (learning rates × seeds) of the same network and optimizer train together: every parameter
is stacked along a leading run axis, each linear layer is one ``torch.baddbmm``, each convolution one
grouped convolution (run r's channels are group r), and one optimizer steps the stacked tensors.

Why this is R independent runs: the optimizers compared here (Adam, AMSGrad, AdamW, Adagrad,
RMSprop, Adadelta, SGD with momentum) are element-wise: a coordinate's state and update depend on
that coordinate's gradient and the group's hyperparameters alone. So one optimizer over a stacked
tensor equals R optimizers over its slices when their hyperparameters agree; runs with different
learning rates get a stacked tensor and a param group per learning rate. The summed loss gives each
slice its own run's gradient. Each run keeps the initialisation, minibatch order and dropout masks
its sequential run draws (:func:`.common.train_classifier` after :func:`.common.seed_everything`),
so the curves equal the sequential ones up to float summation order.

:func:`batchable` marks a trial function whose runs :class:`.runner.Runner` may group.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .common import make_optimizer, seed_everything

Run = tuple[float, int]  # (learning rate, seed)


def batchable(runs_fn: Callable[..., list[Any]], when: Callable[[dict[str, Any]], bool] = lambda kwargs: True
              ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark ``trial(name, lr, seed, **rest)`` as batchable: ``runs_fn(name, runs, **rest)`` returns
    the results of ``trial`` for each (lr, seed) in ``runs``, trained together; the runner batches
    a run only where ``when(its kwargs)`` (where batching was measured to pay)."""
    def mark(trial: Callable[..., Any]) -> Callable[..., Any]:
        trial.batched, trial.batch_when = runs_fn, when
        return trial
    return mark


def on_accelerator(kwargs: dict[str, Any]) -> bool:
    """For :func:`batchable`: batch only off the CPU, where one large kernel beats many small ones
    (on the CPU a FLOP-bound model gains nothing from batching)."""
    return kwargs.get("device", "cpu") != "cpu"


class Stack:
    """The stacked parameters of R runs of ``template``'s architecture, one leaf per parameter and
    learning rate (so each learning rate is a param group); :meth:`params` joins them in run order."""

    def __init__(self, build: Callable[[], nn.Module], runs: Sequence[Run], device: str = "cpu") -> None:
        self.lrs = list(dict.fromkeys(lr for lr, _ in runs))
        # runs of one learning rate are adjacent in the stack; ``order[k]`` is the input index of stack row k
        self.order = [i for lr in self.lrs for i, (r_lr, _) in enumerate(runs) if r_lr == lr]
        per_run, self.generators, self.dropout_generators = {}, {}, {}
        for i in self.order:
            self.generators[i] = seed_everything(runs[i][1])
            model = build().to(device)
            per_run[i] = [p.detach() for p in model.parameters()]
            # dropout draws from the global generator after initialisation: continue that stream per run
            self.dropout_generators[i] = torch.Generator().set_state(torch.get_rng_state())
        self.template = model
        self.leaves = [
            [nn.Parameter(torch.stack([per_run[i][k] for i in self.order if runs[i][0] == lr])) for k in range(len(per_run[self.order[0]]))]
            for lr in self.lrs
        ]
        self.size = len(runs)

    def groups(self) -> list[dict[str, Any]]:
        return [{"params": leaves, "lr": lr} for leaves, lr in zip(self.leaves, self.lrs)]

    def params(self) -> list[torch.Tensor]:
        if len(self.leaves) == 1:
            return list(self.leaves[0])
        return [torch.cat(parts) for parts in zip(*self.leaves)]


def forward(template: nn.Module, params: Sequence[torch.Tensor], x: torch.Tensor, *, shared: bool, training: bool,
            generators: Sequence[torch.Generator] = ()) -> torch.Tensor:
    """``template`` (a Linear, or an ``nn.Sequential`` of Linear, Conv2d, MaxPool2d, Flatten, ReLU, Tanh, Dropout)
    applied with each run's parameters: x is (B, ...) for every run when ``shared``, else (R, B, ...);
    the output is (R, B, out). Convolutions keep the runs in the channel axis, (B, R·C, H, W)."""
    runs = params[0].shape[0]
    it = iter(params)
    layout = "shared" if shared else "runs"
    modules = list(template) if isinstance(template, nn.Sequential) else [template]
    for k, module in enumerate(modules):
        if isinstance(module, nn.ReLU) and k + 1 < len(modules) and isinstance(modules[k + 1], nn.MaxPool2d):
            # ReLU is monotone, so it commutes with max pooling (values and gradients alike): pool first, on a quarter of the elements
            modules[k], modules[k + 1] = modules[k + 1], module
            module = modules[k]
        if isinstance(module, nn.Linear):
            w, b = next(it), next(it)
            if layout == "shared":
                x = torch.addmm(b.reshape(-1), x, w.reshape(-1, w.shape[-1]).t()).view(len(x), runs, -1).transpose(0, 1)
            else:
                x = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
            layout = "runs"
        elif isinstance(module, nn.Conv2d):
            w, b = next(it), next(it)
            if layout == "runs":  # (R, B, C, H, W) -> (B, R·C, H, W)
                x = x.transpose(0, 1).reshape(x.shape[1], -1, *x.shape[3:])
            # channels-last: on the CPU the grouped convolution and the pooling run about 5x faster in this layout
            x = x.contiguous(memory_format=torch.channels_last)
            x = nn.functional.conv2d(x, w.reshape(-1, *w.shape[2:]), b.reshape(-1), module.stride, module.padding, module.dilation,
                                     groups=1 if layout == "shared" else runs)
            layout = "conv"
        elif isinstance(module, nn.Flatten):
            x = x.reshape(x.shape[0], runs, -1).transpose(0, 1) if layout == "conv" else x.flatten(2)
            layout = "runs"
        elif isinstance(module, nn.Dropout):
            if training and module.p > 0:
                x = x * _dropout_masks(x, module.p, layout, generators)
        elif isinstance(module, (nn.ReLU, nn.Tanh, nn.MaxPool2d)):  # element-wise or per channel
            x = module(x)
        else:  # anything mixing runs or holding state (BatchNorm's running statistics) would need its own batched form
            raise ValueError(f"Invalid layer for a batched model: {type(module).__name__}")
    return x


def _dropout_masks(x: torch.Tensor, p: float, layout: str, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Each run's mask drawn as ``nn.functional.dropout`` draws it on the CPU (``bernoulli_(1 − p)``
    on a tensor of the run's shape, divided by 1 − p), from the run's own generator."""
    if layout != "runs":
        raise ValueError("Invalid dropout position: only after a linear layer")
    masks = [torch.empty(x.shape[1:]).bernoulli_(1 - p, generator=g).div_(1 - p) for g in generators]
    return torch.stack(masks).to(x.device)


def train_classifiers(
    name: str,
    build: Callable[[], nn.Module],
    runs: Sequence[Run],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    schedule: Callable[[int], float] | None = None,
    evals_per_epoch: int = 1,
    l2: float = 0.0,
    l2_params: Sequence[int] = (),
    device: str = "cpu",
) -> list[dict[str, list[float]]]:
    """:func:`.common.train_classifier` for every (lr, seed) in ``runs`` at once, cross-entropy loss:
    each run's {"ticks", "losses"} (full training cost in eval mode, + λ/2 ‖θ_k‖² for k in
    ``l2_params``), in the order of ``runs``. ``schedule`` multiplies each learning rate (LambdaLR)."""
    if evals_per_epoch < 1:
        raise ValueError(f"Invalid evals_per_epoch: {evals_per_epoch} (batched runs evaluate at least once per epoch)")
    stack = Stack(build, runs, device)
    optimizer = make_optimizer(name, stack.groups(), stack.lrs[0])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule) if schedule is not None else None
    x, y = x.to(device), y.to(device)
    generators = [stack.generators[i] for i in stack.order]
    dropout_generators = [stack.dropout_generators[i] for i in stack.order]
    size = stack.size
    chunk = max(64, 2048 // size)  # the sequential evaluation's memory per chunk

    def penalty(params: Sequence[torch.Tensor]) -> torch.Tensor:
        total = torch.zeros(size, device=x.device)
        for k in l2_params:
            total = total + 0.5 * l2 * params[k].pow(2).flatten(1).sum(1)
        return total

    @torch.no_grad()
    def costs() -> list[float]:
        params = stack.params()
        total = torch.zeros(size, dtype=torch.float64)
        for start in range(0, len(x), chunk):
            out = forward(stack.template, params, x[start : start + chunk], shared=True, training=False)
            target = y[start : start + chunk].repeat(size)
            ce = nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), target, reduction="none").view(size, -1)
            total += ce.sum(1).double().cpu()
        return (total / len(x) + penalty(params).double().cpu()).tolist()

    n = len(x)
    batches = max(1, math.ceil(n / batch_size))
    eval_every = max(1, batches // evals_per_epoch)
    ticks = [0.0]
    curves = [[c] for c in costs()]
    alive = [math.isfinite(c[0]) for c in curves]
    for epoch in range(epochs):
        orders = [torch.randperm(n, generator=g).to(x.device) for g in generators]
        for b in range(batches):
            index = torch.stack([o[b * batch_size : (b + 1) * batch_size] for o in orders])  # (R, B): each run's own minibatch
            params = stack.params()
            out = forward(stack.template, params, x[index], shared=False, training=True, generators=dropout_generators)
            per_run = nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y[index].reshape(-1), reduction="none").view(size, -1).mean(1)
            optimizer.zero_grad(set_to_none=True)
            (per_run + penalty(params)).sum().backward()  # run r's loss reaches only run r's slice
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if (b + 1) % eval_every == 0 or b == batches - 1:
                ticks.append(epoch + (b + 1) / batches)
                for k, c in enumerate(costs()):
                    if alive[k]:
                        curves[k].append(c)
                        alive[k] = math.isfinite(c)
                if not any(alive):
                    break
        if not any(alive):
            break
    results: list[dict[str, list[float]]] = [{}] * size
    for k, i in enumerate(stack.order):
        results[i] = {"ticks": ticks[: len(curves[k])], "losses": curves[k]}
    return results
