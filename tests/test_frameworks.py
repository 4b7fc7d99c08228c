"""adamkit inside the training frameworks, each run compared with the same run using torch.optim.

Hugging Face Trainer (train, resume_from_checkpoint, save_pretrained /
from_pretrained with tied embeddings), accelerate (save_state / load_state,
save_model with its default safetensors), Lightning (bf16-mixed with
gradient_clip_val, ckpt_path resume) and peft LoRA. Models are built from
configs and data are generated: nothing is downloaded, and the network is never
tried (offline switches below). The frameworks come with the ``test`` extras;
``importorskip`` only guards a machine without them.

Tolerances (see test_dropin.py for how they were measured). These runs use
wider models, gradient clipping and warm-up, and some tensors amplify float32
rounding: adamkit's kernel vs torch's for-loop was measured up to 1.4e-5 on the
accelerate run's branch weights (torch's fused kernel: 1.6e-6 to 2.9e-6 there)
and 2.4e-6 on GPT-2's MLP weights. ``FRAMEWORK_PARAM_RTOL = 1e-4`` (7x) and the
per-tensor spread of torch's own two kernels times ``SPREAD_FACTOR``, whichever
is larger; the divergences these tests look for (a parameter stepped without a
gradient, a lost or duplicated tensor, a skipped clip) are 1e-3 and more. Under
bf16 autocast (Lightning) the ``MIXED_*`` tolerances of test_dropin.py apply.
"""

from __future__ import annotations

import os

# Before any Hugging Face / Lightning import: no hub, no telemetry, no trackers, no progress bars.
for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "DISABLE_MLFLOW_INTEGRATION": "TRUE",
    "WANDB_DISABLED": "true",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
}.items():
    os.environ.setdefault(_key, _value)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import adamkit  # noqa: E402
from helpers import assert_same, max_relative_error  # noqa: E402
from test_dropin import (  # noqa: E402
    MIXED_LOSS_RTOL,
    MIXED_PARAM_RTOL,
    MIXED_STATE_RTOL,
    SPREAD_FACTOR,
    SIZE_RTOL,
    assert_losses_close,
    assert_params_close,
    assert_states_match,
    big_model,
    storage_layout,
)

# The torch reference is its for-loop; adamkit gets no extra argument (its default path).
# torch's fused kernel ("torch-fused") only measures how far two correct kernels drift apart
# (test_dropin.spread_tolerance); Lightning refuses it with gradient clipping.
LIBRARIES = {"torch": torch.optim.AdamW, "adamkit": adamkit.AdamW, "torch-fused": torch.optim.AdamW}
EXTRA = {"torch": dict(foreach=False), "adamkit": {}, "torch-fused": dict(fused=True)}
PAIR = ("torch", "adamkit")
LR, WEIGHT_DECAY = 1e-2, 0.1
FRAMEWORK_PARAM_RTOL, FRAMEWORK_STATE_RTOL, FRAMEWORK_LOSS_RTOL = 1e-4, 2e-4, 1e-5


def optimizer_for(library: str, params, **kwargs):
    return LIBRARIES[library](params, lr=LR, weight_decay=WEIGHT_DECAY, **EXTRA[library], **kwargs)


def file_sizes(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_size for p in sorted(directory.rglob("*")) if p.is_file()}


# Files that record the run, not the model or the optimizer: the pickled TrainingArguments
# hold the output and logging paths (different folders, a timestamp), so their size varies
# with where the test runs. Their presence is still compared.
RUN_RECORDS = {"training_args.bin"}


def assert_same_files(ours: dict[str, int], theirs: dict[str, int]) -> None:
    """Same file names; each file's size within 1 % of torch.optim's run (small text files
    such as logs may differ in the digits of a loss: 1 % or 16 bytes)."""
    assert sorted(ours) == sorted(theirs)
    for name, size in theirs.items():
        if name.rsplit("/", 1)[-1] in RUN_RECORDS:
            continue
        assert abs(ours[name] - size) <= max(SIZE_RTOL * size, 16), f"{name}: {ours[name]} bytes, torch.optim's run {size}"


def assert_no_shared_storage(model: nn.Module, optimizer) -> None:
    for name, _, sharing in storage_layout(model, optimizer):
        assert not sharing, f"{name} shares its storage with {sharing}"


# -- Hugging Face Trainer ----------------------------------------------------------------

VOCAB, CONTEXT = 61, 16


def tiny_gpt2(seed: int = 0):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=CONTEXT,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(config)


class TokenData(torch.utils.data.Dataset):
    """Deterministic random token sequences (language modelling: labels = inputs)."""

    def __init__(self, count: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(0, VOCAB, (count, CONTEXT), generator=generator)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.tokens[index], "labels": self.tokens[index]}


def hf_trainer(library: str, output_dir: Path, max_steps: int = 6):
    transformers = pytest.importorskip("transformers")
    args = transformers.TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        max_steps=max_steps,
        learning_rate=LR,
        weight_decay=WEIGHT_DECAY,
        lr_scheduler_type="linear",
        warmup_steps=1,
        max_grad_norm=1.0,
        save_strategy="steps",
        save_steps=3,
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
    )
    return transformers.Trainer(
        model=tiny_gpt2(),
        args=args,
        train_dataset=TokenData(24),
        # Trainer's own param groups (no decay on biases and LayerNorm weights) go to this class.
        optimizer_cls_and_kwargs=(LIBRARIES[library], dict(lr=LR, **EXTRA[library])),
    )


def unwrap(optimizer):
    """The optimizer inside accelerate's AcceleratedOptimizer (Trainer's wrapper)."""
    return getattr(optimizer, "optimizer", optimizer)


def final_params(model: nn.Module) -> dict:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def losses_of(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@pytest.fixture(scope="module")
def hf_runs(tmp_path_factory):
    """For each library: an uninterrupted 6-step Trainer run (checkpoints at 3 and 6),
    then a fresh Trainer resumed from checkpoint-3, and the model saved by save_pretrained."""
    runs = {}
    for library in LIBRARIES:
        root = tmp_path_factory.mktemp(f"hf-{library}")
        trainer = hf_trainer(library, root / "run")
        trainer.train()
        assert type(unwrap(trainer.optimizer)) is LIBRARIES[library]
        runs[library] = dict(root=root, trainer=trainer)
        if library == "torch-fused":
            continue
        resumed = hf_trainer(library, root / "resumed")
        resumed.train(resume_from_checkpoint=str(root / "run" / "checkpoint-3"))
        trainer.model.save_pretrained(root / "pretrained")
        runs[library].update(resumed=resumed)
    return runs


def test_hf_trainer_trains_like_torch(hf_runs):
    ours, theirs, fused = (hf_runs[library]["trainer"] for library in ("adamkit", "torch", "torch-fused"))
    spread = (fused.model, unwrap(fused.optimizer))
    assert len(losses_of(theirs)) == 6
    assert_losses_close(losses_of(ours), losses_of(theirs), FRAMEWORK_LOSS_RTOL)
    assert_params_close(ours.model, theirs.model, FRAMEWORK_PARAM_RTOL, torch_fused=spread)
    optimizers = (unwrap(ours.optimizer), ours.model, unwrap(theirs.optimizer), theirs.model)
    assert_states_match(*optimizers, FRAMEWORK_STATE_RTOL, torch_fused=spread)
    assert [p.grad is None for p in ours.model.parameters()] == [p.grad is None for p in theirs.model.parameters()]
    assert_no_shared_storage(ours.model, unwrap(ours.optimizer))


def test_hf_trainer_resume_from_checkpoint_is_bit_identical(hf_runs):
    for library in PAIR:
        run = hf_runs[library]
        assert_same(final_params(run["resumed"].model), final_params(run["trainer"].model), f"{library} resumed")
        assert_same(run["resumed"].optimizer.state_dict(), run["trainer"].optimizer.state_dict(), f"{library} resumed optimizer")


def test_hf_trainer_checkpoints_match_torch(hf_runs):
    """Same files as torch.optim's run, same sizes (model.safetensors, optimizer.pt, ...)."""
    for checkpoint in ("checkpoint-3", "checkpoint-6"):
        ours = file_sizes(hf_runs["adamkit"]["root"] / "run" / checkpoint)
        theirs = file_sizes(hf_runs["torch"]["root"] / "run" / checkpoint)
        assert_same_files(ours, theirs)


def test_hf_save_pretrained_from_pretrained_keeps_tied_embeddings(hf_runs):
    transformers = pytest.importorskip("transformers")
    assert_same_files(file_sizes(hf_runs["adamkit"]["root"] / "pretrained"), file_sizes(hf_runs["torch"]["root"] / "pretrained"))
    for library in PAIR:
        run = hf_runs[library]
        loaded = transformers.GPT2LMHeadModel.from_pretrained(run["root"] / "pretrained")
        assert loaded.lm_head.weight is loaded.transformer.wte.weight, f"{library}: tied embeddings lost"
        expected = {k: v.detach() for k, v in run["trainer"].model.state_dict().items()}
        assert_same({k: v for k, v in loaded.state_dict().items()}, expected, f"{library} from_pretrained")


# -- accelerate ----------------------------------------------------------------------------


def token_loader(count: int = 24, batch_size: int = 4, vocab: int = 13):
    tokens = torch.randint(0, vocab, (count, 9), generator=torch.Generator().manual_seed(3))
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(tokens), batch_size=batch_size, shuffle=False)


def lm_loss(model: nn.Module, tokens: torch.Tensor, branch: str = "a") -> torch.Tensor:
    logits = model(tokens[:, :-1], branch)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1))


def reset_accelerate_state() -> None:
    """accelerate keeps process-wide singletons; each set-up (and the tests after) starts clean."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture
def clean_accelerate():
    pytest.importorskip("accelerate")
    reset_accelerate_state()
    yield
    reset_accelerate_state()


def accelerate_setup(library: str):
    accelerate = pytest.importorskip("accelerate")
    reset_accelerate_state()
    accelerator = accelerate.Accelerator(cpu=True)
    model = big_model(0)
    optimizer = optimizer_for(library, model.parameters())
    model, optimizer, loader = accelerator.prepare(model, optimizer, token_loader(vocab=97))
    return accelerator, model, optimizer, loader


def accelerate_steps(accelerator, model, optimizer, batches) -> list[float]:
    losses = []
    for index, (tokens,) in batches:
        optimizer.zero_grad()
        loss = lm_loss(model, tokens, "ab"[index % 2])
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_accelerate_save_state_load_state_and_save_model(tmp_path, clean_accelerate):
    results = {}
    for library in LIBRARIES:
        accelerator, model, optimizer, loader = accelerate_setup(library)
        batches = list(enumerate(loader))
        losses = accelerate_steps(accelerator, model, optimizer, batches[:3])
        accelerator.save_state(str(tmp_path / library / "state"))
        accelerator.save_model(model, str(tmp_path / library / "model"))  # safetensors by default
        at_save = {k: v.detach().clone() for k, v in model.state_dict().items()}
        losses += accelerate_steps(accelerator, model, optimizer, batches[3:])

        # a fresh set-up restored from save_state continues bit for bit
        accelerator2, model2, optimizer2, _ = accelerate_setup(library)
        accelerator2.load_state(str(tmp_path / library / "state"))
        resumed = accelerate_steps(accelerator2, model2, optimizer2, batches[3:])
        assert resumed == losses[3:], library
        assert_same(model2.state_dict(), model.state_dict(), f"{library} after load_state")
        assert_same(optimizer2.state_dict(), optimizer.state_dict(), f"{library} optimizer after load_state")

        # save_model's safetensors holds every tensor of the model as it was at step 3
        safetensors_torch = pytest.importorskip("safetensors.torch")
        saved = {}
        for file in sorted((tmp_path / library / "model").glob("*.safetensors")):
            saved.update(safetensors_torch.load_file(str(file)))
        fresh = big_model(seed=5)
        missing, unexpected = fresh.load_state_dict(saved, strict=False)
        assert not unexpected and set(missing) <= {"head.weight"}, (missing, unexpected)  # the tied copy
        assert_same(saved, {k: at_save[k] for k in saved}, f"{library} save_model")
        results[library] = dict(losses=losses, model=model, optimizer=optimizer, saved=saved)
        assert_no_shared_storage(model, optimizer)
    ours, theirs, fused = (results[library] for library in ("adamkit", "torch", "torch-fused"))
    assert_losses_close(ours["losses"], theirs["losses"], FRAMEWORK_LOSS_RTOL)
    assert_params_close(ours["model"], theirs["model"], FRAMEWORK_PARAM_RTOL, torch_fused=(fused["model"], fused["optimizer"]))
    assert sorted(ours["saved"]) == sorted(theirs["saved"])
    for name, tensor in theirs["saved"].items():
        assert ours["saved"][name].shape == tensor.shape
        error = max_relative_error(ours["saved"][name], tensor)
        assert error <= max(FRAMEWORK_PARAM_RTOL, SPREAD_FACTOR * max_relative_error(fused["saved"][name], tensor)), name
    for kind in ("state", "model"):
        assert_same_files(file_sizes(tmp_path / "adamkit" / kind), file_sizes(tmp_path / "torch" / kind))


# -- Lightning -------------------------------------------------------------------------------


def lightning_module(library: str):
    pl = pytest.importorskip("lightning.pytorch")

    class LitLM(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = big_model(0)  # weights, not adamkit's extra group keys, set the file sizes
            self.losses: list[float] = []

        def training_step(self, batch, batch_index):
            (tokens,) = batch
            loss = lm_loss(self.net, tokens, "ab"[self.global_step % 2])
            self.losses.append(loss.item())
            return loss

        def configure_optimizers(self):
            return optimizer_for(library, self.parameters())

    return LitLM()


def lightning_trainer(max_steps: int, checkpoint_dir: Path | None = None):
    pl = pytest.importorskip("lightning.pytorch")
    callbacks = []
    if checkpoint_dir is not None:  # a checkpoint every 3 steps, kept
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=checkpoint_dir, every_n_train_steps=3, save_top_k=-1))
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision="bf16-mixed",
        gradient_clip_val=1.0,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=bool(callbacks),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def test_lightning_bf16_mixed_with_clipping_and_resume(tmp_path):
    """Trains under bf16-mixed with gradient_clip_val (Lightning refuses optimizers that
    claim to unscale internally) like torch.optim; a fresh Trainer resumed with ckpt_path
    from the step-3 checkpoint ends bit-identical to the uninterrupted run."""
    results = {}
    for library in PAIR:
        full = lightning_module(library)
        lightning_trainer(6, tmp_path / library).fit(full, train_dataloaders=token_loader(12, vocab=97))
        (checkpoint,) = [p for p in (tmp_path / library).iterdir() if "step=3" in p.name]
        resumed = lightning_module(library)
        lightning_trainer(6).fit(resumed, train_dataloaders=token_loader(12, vocab=97), ckpt_path=checkpoint)
        assert resumed.losses == full.losses[3:], library
        assert_same(resumed.state_dict(), full.state_dict(), f"{library} resumed")
        assert_same(resumed.optimizers().optimizer.state_dict(), full.optimizers().optimizer.state_dict(), f"{library} optimizer")
        results[library] = full
    assert_same_files(file_sizes(tmp_path / "adamkit"), file_sizes(tmp_path / "torch"))
    ours, theirs = results["adamkit"], results["torch"]
    assert len(theirs.losses) == 6
    assert_losses_close(ours.losses, theirs.losses, MIXED_LOSS_RTOL)
    assert_params_close(ours.net, theirs.net, MIXED_PARAM_RTOL)
    assert_states_match(ours.optimizers().optimizer, ours.net, theirs.optimizers().optimizer, theirs.net, MIXED_STATE_RTOL)


# -- peft LoRA -------------------------------------------------------------------------------


def test_peft_lora_steps_only_the_adapters_like_torch():
    peft = pytest.importorskip("peft")
    results = {}
    for library in LIBRARIES:
        base = tiny_gpt2()
        frozen = {name: p.detach().clone() for name, p in base.named_parameters()}
        config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["c_attn"], fan_in_fan_out=True)
        model = peft.get_peft_model(base, config)
        # all parameters, frozen base included, as a plain training loop passes them
        optimizer = optimizer_for(library, model.parameters())
        data = TokenData(20, seed=4)
        losses = []
        for step in range(5):
            optimizer.zero_grad()
            inputs = data.tokens[4 * step : 4 * step + 4]
            loss = model(input_ids=inputs, labels=inputs).loss
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        lora = {name: p for name, p in model.named_parameters() if p.requires_grad}
        assert lora and all("lora_" in name for name in lora)
        for name, p in model.named_parameters():
            if not p.requires_grad:
                original = name.replace("base_model.model.", "").replace(".base_layer", "")
                assert torch.equal(p, frozen[original]), f"{library}: frozen {name} changed"
                assert len(optimizer.state.get(p, {})) == 0
        assert all(not torch.equal(p, torch.zeros_like(p)) for name, p in lora.items() if "lora_B" in name)
        results[library] = dict(losses=losses, lora=lora, optimizer=optimizer, model=model)
        assert_no_shared_storage(model, optimizer)
    assert_losses_close(results["adamkit"]["losses"], results["torch"]["losses"], FRAMEWORK_LOSS_RTOL)
    for name, p in results["torch"]["lora"].items():
        error = max_relative_error(results["adamkit"]["lora"][name], p)
        tolerance = max(FRAMEWORK_PARAM_RTOL, SPREAD_FACTOR * max_relative_error(results["torch-fused"]["lora"][name], p))
        assert error <= tolerance, f"{name}: relative error {error:.3g} > {tolerance:.3g}"
