"""The iteration-based training loop: one job, no model or data construction.

It takes a network that returns named outputs, a loss over those outputs, a deterministic batch source
(``get(iteration) -> (silhouettes, labels)``) and an optimizer; it logs to TensorBoard and a JSONL file, saves
atomic checkpoints and resumes exactly: batches and the learning rate are pure functions of the iteration,
and the checkpoint carries the model, optimizer, AMP scaler and RNG state.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .checkpoint import CheckpointError, load_checkpoint, save_atomic
from .distributed import DistContext, barrier, broadcast_flag


class BatchSource(Protocol):
    def get(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]: ...


class TrainingInterrupted(RuntimeError):
    """Raised after a Ctrl-C / SIGTERM once the checkpoint of the last finished iteration is written."""


class Trainer:
    """Runs ``iterations`` optimisation steps of ``net`` on ``batches``.

    Args:
        net: module ``silhouettes [n, T, H, W] -> dict of named outputs`` (e.g. :class:`GaitWithHead`).
        loss_fn: ``(outputs, labels) -> (scalar, info dict)``.
        batches: deterministic batch source.
        optimizer: optimizer over ``net``'s trainable parameters; its learning rate is set every iteration
            from ``lr_fn(iteration)``.
        iterations: total iterations of this run (resuming continues up to it).
        out_dir: where ``checkpoint_name``, ``tb/`` and ``train_log.jsonl`` go.
        ctx: distributed context (rank, world size, device).
        amp: ``"none"``, ``"bf16"`` (CPU or GPU autocast) or ``"fp16"`` (GPU, with a grad scaler).
        extra_outputs: ``silhouettes -> dict`` merged into the outputs (e.g. a frozen teacher's embeddings).
        hooks: callables ``(iteration) -> None`` run before each step (e.g. an annealing schedule).
        evaluate_fn: ``(module, iteration) -> dict of floats``, run on rank 0 every ``eval_every`` iterations.
        train_mode_fn: called instead of ``net.train()`` before training (e.g. to keep a part in eval mode).
    """

    def __init__(
        self,
        net: nn.Module,
        loss_fn: nn.Module,
        batches: BatchSource,
        optimizer: torch.optim.Optimizer,
        lr_fn: Callable[[int], float],
        iterations: int,
        out_dir: str | Path,
        ctx: DistContext,
        *,
        log_every: int = 50,
        save_every: int = 1000,
        eval_every: int = 0,
        amp: str = "none",
        compile: bool = False,
        extra_outputs: Callable[[torch.Tensor], dict] | None = None,
        hooks: Sequence[Callable[[int], None]] = (),
        evaluate_fn: Callable[[nn.Module, int], dict] | None = None,
        train_mode_fn: Callable[[nn.Module], None] | None = None,
        checkpoint_name: str = "last.pt",
        config: dict | None = None,
        progress: bool = True,
        tag: str = "train",
    ) -> None:
        self.net, self.loss_fn, self.batches, self.optimizer = net, loss_fn, batches, optimizer
        self.lr_fn, self.iterations, self.ctx = lr_fn, iterations, ctx
        self.out_dir = Path(out_dir)
        self.log_every, self.save_every, self.eval_every = log_every, save_every, eval_every
        self.amp, self.extra_outputs, self.hooks = amp, extra_outputs, list(hooks)
        self.evaluate_fn, self.train_mode_fn = evaluate_fn, train_mode_fn
        self.ckpt_path = self.out_dir / checkpoint_name
        self.config, self.progress, self.tag = config or {}, progress, tag
        self.iteration = 0
        self.resumed_from = 0  # the iteration the last fit() started from (0: a fresh start)
        self._stop = False
        self.scaler = torch.amp.GradScaler("cuda") if amp == "fp16" and ctx.device.type == "cuda" else None
        runner: nn.Module = net
        if ctx.distributed:
            runner = DistributedDataParallel(net, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        self.runner = torch.compile(runner) if compile else runner

    # ----------------------------------------------------------------- checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "kind": "qgait-train",
            "tag": self.tag,
            "iteration": self.iteration,
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "torch_rng": torch.get_rng_state(),
            "config": self.config,
        }

    def save(self) -> None:
        if self.ctx.is_main:
            save_atomic(self.state(), self.ckpt_path)
        barrier(self.ctx)

    def try_resume(self) -> bool:
        """Load ``checkpoint_name`` from ``out_dir`` if present; True if resumed.

        Raises:
            CheckpointError: the checkpoint is unreadable, or its weights / optimizer state do not fit this
                network (a run made with another architecture).
        """
        if not self.ckpt_path.is_file():
            return False
        ck = load_checkpoint(self.ckpt_path, required=("iteration", "model", "optimizer"))
        try:
            self.net.load_state_dict(ck["model"])
            self.optimizer.load_state_dict(ck["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{self.ckpt_path}: cannot resume, the checkpoint does not fit this network "
                                  f"(made with another architecture? {first}); give another --output-dir or "
                                  "start over with --restart") from None
        if self.scaler is not None and ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        if ck.get("torch_rng") is not None:
            torch.set_rng_state(ck["torch_rng"])
        self.iteration = int(ck["iteration"])
        return True

    # ----------------------------------------------------------------- one step
    def _autocast(self):
        if self.amp == "none":
            return nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(self.ctx.device.type, dtype=dtype)

    def step(self, iteration: int) -> dict[str, float]:
        """One optimisation step at ``iteration``; returns the loss terms and statistics."""
        for hook in self.hooks:
            hook(iteration)
        lr = self.lr_fn(iteration)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        x, labels = self.batches.get(iteration)
        x, labels = x.to(self.ctx.device, non_blocking=True), labels.to(self.ctx.device, non_blocking=True)
        with self._autocast():
            outputs = self.runner(x)
            if self.extra_outputs is not None:
                outputs = {**outputs, **self.extra_outputs(x)}
        loss, info = self.loss_fn(outputs, labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at iteration {iteration}: {info}")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        info["lr"] = lr
        return info

    # ----------------------------------------------------------------- loop
    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        self._stop = True

    def fit(self, resume: bool = True) -> list[dict]:
        """Train until ``iterations``; returns the periodic evaluation records.

        Raises:
            TrainingInterrupted: after SIGINT/SIGTERM, once the checkpoint is saved (re-run to resume).
        """
        if resume:
            self.try_resume()
        self.resumed_from = self.iteration
        writer = None
        log_file = None
        if self.ctx.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.out_dir.mkdir(parents=True, exist_ok=True)
            writer = SummaryWriter(str(self.out_dir / "tb"))
            log_file = open(self.out_dir / "train_log.jsonl", "a")
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        evals: list[dict] = []
        bar = tqdm(
            total=self.iterations, initial=self.iteration, desc=self.tag, disable=not (self.progress and self.ctx.is_main),
            dynamic_ncols=True,
        )
        t0 = time.perf_counter()
        try:
            (self.train_mode_fn or (lambda m: m.train()))(self.net)
            while self.iteration < self.iterations:
                info = self.step(self.iteration)
                self.iteration += 1
                bar.update(1)
                if self.iteration % self.log_every == 0 or self.iteration == self.iterations:
                    info["sec_per_iter"] = (time.perf_counter() - t0) / self.log_every
                    t0 = time.perf_counter()
                    bar.set_postfix(loss=f"{info['loss/total']:.3f}", lr=f"{info['lr']:.2g}")
                    if writer is not None:
                        for k, v in info.items():
                            writer.add_scalar(f"{self.tag}/{k}", v, self.iteration)
                        log_file.write(json.dumps({"stage": self.tag, "iteration": self.iteration, **info}) + "\n")
                        log_file.flush()
                stop = broadcast_flag(self.ctx, self._stop)
                if self.iteration % self.save_every == 0 or self.iteration == self.iterations or stop:
                    self.save()
                if stop:
                    raise TrainingInterrupted(
                        f"interrupted at iteration {self.iteration}; checkpoint saved to {self.ckpt_path}"
                    )
                if self.evaluate_fn and self.eval_every and self.iteration % self.eval_every == 0:
                    if self.ctx.is_main:
                        res = self.evaluate_fn(self.net, self.iteration)
                        evals.append({"iteration": self.iteration, **res})
                        for k, v in res.items():
                            if isinstance(v, (int, float)) and writer is not None:
                                writer.add_scalar(f"{self.tag}_eval/{k}", v, self.iteration)
                    barrier(self.ctx)
                    (self.train_mode_fn or (lambda m: m.train()))(self.net)
        finally:
            bar.close()
            for s, h in old.items():
                signal.signal(s, h)
            if writer is not None:
                writer.close()
                log_file.close()
        return evals
