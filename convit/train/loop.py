"""The trainer: resume, train with progress lines, validate, checkpoint, stop cleanly on SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from convit.cluster import contract
from convit.data.order import EpochPlan, Segment, advance, epoch_rng
from convit.errors import STOPPED_EXIT, ConvitError
from convit.jobspec import JobSpec, job_values
from convit.train.checkpoints import CheckpointMeta, CheckpointStore
from convit.train.compile_cache import enable_compile_cache
from convit.train.curves import TrainingCurves
from convit.train.evaluate import evaluate
from convit.train.metrics import TrainMetrics, metrics_port
from convit.train.progress import PodState, Progress
from convit.train.runtime import AllReduceSum, Runtime, exit_lost_peer, node_name, peer_failure
from convit.train.schedule import PartialEpoch, first_slot, lr_schedule
from convit.train.stall import StallWatch
from convit.train.step import (
    EMA_PREFIX,
    GRAD_SUM_PREFIX,
    build_optimizer,
    build_train_step,
    drop_noise,
    step_outputs,
)
from convit.train.stop import StopRequest
from convit.train.termination import TerminationMessage

log = logging.getLogger("convit.train")
_DERIVED = {"learning_rate"}  # optimizer state recomputed from the recipe, never restored


def _is_state(name: str) -> bool:
    """A parameter of the train step that checkpoints carry: not the LR table, not the accumulation buffer (zero
    at every optimizer step, where checkpoints are written)."""
    return name not in _DERIVED and not name.startswith(GRAD_SUM_PREFIX + ".")


class Trainer:
    def __init__(self, spec: JobSpec, runtime: Runtime, *, resume_uri: str = "") -> None:
        # Rank 0's container termination message (convit/train/termination.py): recent lines and the result.
        self.termination = TerminationMessage(enabled=runtime.is_main)
        self.progress = Progress(spec.logging.format, enabled=runtime.is_main)
        self.last_loss: float | None = None
        self.last_top1: float | None = None
        self.last_top5: float | None = None
        self.last_checkpoint = ""
        self.restarts = 0  # starts of this job that resumed from a checkpoint, this one included
        with self._reported():
            self._build(spec, runtime, resume_uri)

    def _build(self, spec: JobSpec, runtime: Runtime, resume_uri: str) -> None:
        import mindspore as ms

        from convit.data import build_train_loader, build_val_loader
        from convit.data.index import checked_class_names
        from convit.models import count_params, create_model

        self.spec = spec
        self.runtime = runtime
        self.pod_state = PodState(node_name())  # the last finished step, for the pod supervisor's messages
        self.stop = StopRequest()
        self.reduce = AllReduceSum(runtime)
        self.resume_uri = resume_uri

        ms.set_seed(spec.train.seed)  # identical initial weights on every rank: nothing is broadcast
        np.random.seed(spec.train.seed)
        self.model = create_model(
            spec.model.name, num_classes=spec.model.num_classes, drop_path_rate=spec.model.drop_path_rate
        )
        self.train_loader = build_train_loader(spec, runtime.rank, runtime.world_size)
        self.val_loader = build_val_loader(spec, runtime.rank, runtime.world_size)
        # The data's class names (one per model output, or one clear error): they travel in every checkpoint.
        self.classes = checked_class_names(self.train_loader.table, spec.model.num_classes, spec.data.uri)
        self.steps_per_epoch = int(self.train_loader.steps_per_epoch)
        self.total_steps = spec.train.epochs * self.steps_per_epoch
        if spec.train.max_steps:
            self.total_steps = min(self.total_steps, spec.train.max_steps)
        self.global_batch = spec.train.step_batch * runtime.world_size  # per optimizer step
        self.peak_lr = spec.train.peak_lr(self.global_batch)
        self.lrs = lr_schedule(spec.train, self.steps_per_epoch, self.peak_lr)
        self.optimizer = build_optimizer(self.model, spec, self.lrs)
        self.train_step = build_train_step(self.model, self.optimizer, spec)
        # Before anything compiles: the graphs depend on the LR table's length too (a Parameter of the step).
        self.compile_cache = enable_compile_cache(
            spec, runtime.world_size, lr_table=len(self.lrs), rank=runtime.rank, note=self.progress.info
        )
        staging = Path(os.environ.get(contract.ENV_CACHE_DIR, "/tmp/convit-cache")) / spec.name / f"rank-{runtime.rank}"
        self.checkpoints = CheckpointStore(
            spec.checkpoint.uri, staging, spec.checkpoint.keep_last, spec.checkpoint.keep_best
        )
        # Rank 0's Prometheus metrics (convit/train/metrics.py), fed by the progress lines and the checkpoint uploads.
        port = metrics_port() if runtime.is_main else 0
        self.metrics_port = port
        self.metrics = TrainMetrics() if port else None
        if self.metrics is not None:
            metrics = self.metrics
            self.progress.metrics = metrics
            self.checkpoints.on_published = lambda info, seconds: metrics.checkpoint_uploaded(
                step=info.step, seconds=seconds
            )
        self.params = count_params(self.model)
        self.global_step = 0
        self.epoch = 0
        self.epoch_step = 0
        self.segments: tuple[Segment, ...] = ()  # the epoch's position: see convit.data.order
        self.lr_offset = 0  # LR table slot minus global step (not 0 after an epoch resumed at another shape)
        self.curves = TrainingCurves("", Path(), first_step=1, enabled=False)  # opened by run() once resumed

    # ---- state ----------------------------------------------------------------------------------------------
    def _state_params(self) -> list[Any]:
        """Everything a bit-exact resume needs from MindSpore: weights, AdamW moments, the optimizer's step.

        The LR table is left out: it is derived from the recipe, and a resumed job may extend the schedule.
        """
        return [p for name, p in self.train_step.parameters_dict().items() if _is_state(name)]

    def _write_checkpoint(self, path: Path) -> None:
        import mindspore as ms

        seen: set[str] = set()
        params = []
        for param in self._state_params():
            if param.name not in seen:
                seen.add(param.name)
                params.append({"name": param.name, "data": param})
        ms.save_checkpoint(params, str(path))

    def _apply_checkpoint(self, meta: CheckpointMeta, path: Path) -> None:
        import mindspore as ms

        from convit.train.checkpoints import CheckpointError

        if meta.model != self.spec.model.name:
            raise CheckpointError(f"it holds {meta.model}, not {self.spec.model.name}")
        try:
            values = ms.load_checkpoint(str(path))
        except (RuntimeError, ValueError) as exc:
            raise CheckpointError(f"MindSpore cannot read it ({str(exc).splitlines()[0][:200]})") from None
        params = self.train_step.parameters_dict()
        own = {name: p for name, p in params.items() if _is_state(name)}
        # EMA switched on at a resume: the average starts from the checkpoint's weights.
        ema_started = self.spec.train.ema_decay > 0 and not any(k.startswith(EMA_PREFIX + ".") for k in values)
        if ema_started:
            ema = EMA_PREFIX + "."
            raw = {k: k[len(ema) :] for k in own if k.startswith(ema) and k[len(ema) :] in values}
            values |= {k: ms.Tensor(values[w].asnumpy().copy()) for k, w in raw.items()}  # a copy, not an alias
            values.setdefault("ema_updates", params["ema_updates"])
        missing = sorted(set(own) - set(values))
        mismatched = [k for k in own if k in values and tuple(values[k].shape) != tuple(own[k].shape)]
        if missing or mismatched:
            what = f"missing {missing[:3]}" if missing else f"shape mismatch {mismatched[:3]}"
            raise CheckpointError(f"it does not fit this model ({what})")
        # The derived ones are kept as they are, but named, so MindSpore does not warn about them in the user's log.
        transient = {name: p for name, p in params.items() if not _is_state(name)}
        restored = {k: values[k] for k in own} | transient
        ms.load_param_into_net(self.train_step, restored, strict_load=True)
        if ema_started:
            self.progress.info("EMA of the weights starts from this checkpoint's weights (it holds none)")
        self.global_step, self.epoch, self.epoch_step = meta.step, meta.epoch, meta.epoch_step
        if meta.segments:
            self.segments = tuple(Segment(*seg) for seg in meta.segments)
        else:  # written before elastic resume (or at an epoch's start): steps of this world size
            self.segments = advance((), self.runtime.world_size, self.spec.train.step_batch, meta.epoch_step)

    def resume(self) -> CheckpointMeta | None:
        store = self.checkpoints
        if self.resume_uri:
            store = CheckpointStore(self.resume_uri, store.staging / "resume")
        meta = store.restore(self._apply_checkpoint)
        if meta is None and self.resume_uri:
            from convit.train.checkpoints import CheckpointError

            raise CheckpointError(f"no usable checkpoint under {self.resume_uri}")
        if meta is None and self.spec.model.pretrained:
            self._load_pretrained(self.spec.model.pretrained)
        if meta is not None:
            self.restarts = meta.restarts + 1
            self.last_top1 = meta.top1
            self.last_checkpoint = f"{store.uri}/checkpoints/{meta.name}"
        if self.metrics is not None:
            at = (meta.step, meta.saved_at) if meta is not None else (None, None)
            self.metrics.resumed(restarts=self.restarts, step=at[0], saved_at=at[1])
        return meta

    def _position(self) -> EpochPlan:
        """Fit the schedule to the data position (restored or fresh): the step count, LR table and optimizer step.

        The LR table keeps its shape (epochs x steps_per_epoch of this world size, the one a fresh run compiles
        into its graph) and stays indexed by the optimizer's step counter. When the epoch was begun at another
        shape, its remaining steps take the last slots of the epoch's row with LRs continuing from the epoch's
        position (convit.train.schedule), and the optimizer's counter is moved to those slots here rather than
        stretching or re-indexing the table: every later epoch then uses exactly a fresh run's slots. The
        counter lags the slot by the overflowed steps (a skipped update does not advance it), so it is set to
        slot - overflow_steps, which is what it holds already when the whole run kept one shape.
        """
        import mindspore as ms

        t = self.spec.train
        plan = self.train_loader.plan(self.epoch, self.segments)
        spe = self.steps_per_epoch
        partial = PartialEpoch(self.epoch, plan.fraction, plan.steps)
        if plan.elastic:
            self.lrs = lr_schedule(t, spe, self.peak_lr, partial)
            self.train_step.parameters_dict()["learning_rate"].set_data(ms.Tensor(self.lrs))  # same shape
        slot = first_slot(spe, partial) + plan.start  # == epoch x spe + epoch_step when the epoch kept one shape
        self.lr_offset = slot - self.global_step
        overflows = int(self.train_step.overflow_steps.asnumpy())
        counter = self.optimizer.global_step
        wanted = max(0, slot - overflows)
        if int(counter.asnumpy().reshape(-1)[0]) != wanted:
            counter.set_data(ms.Tensor(np.full(counter.shape, wanted, np.int32)))
        rest = (plan.steps - plan.start) + (t.epochs - self.epoch - 1) * spe if self.epoch < t.epochs else 0
        self.total_steps = self.global_step + rest
        if t.max_steps:
            self.total_steps = min(self.total_steps, t.max_steps)
        return plan

    def _options(self) -> dict[str, Any]:
        """The start line's training options, those switched on: accumulation (the global batch above includes
        it: batch x ranks x grad_accum_steps), EMA and clipping."""
        t = self.spec.train
        options: dict[str, Any] = {}
        if t.grad_accum_steps > 1:
            options["grad_accum_steps"] = t.grad_accum_steps
        if t.ema_decay:
            options["ema_decay"] = t.ema_decay
        if t.clip_grad:
            options["clip_grad"] = t.clip_grad
        return options

    def _resume_line(self, meta: CheckpointMeta | None, plan: EpochPlan) -> str:
        if meta is None:
            return "none"
        text = f"step {meta.step} (epoch {self.epoch + 1}, {plan.done_samples} of {plan.kept_samples} samples)"
        world, batch = self.runtime.world_size, self.spec.train.step_batch
        if meta.world_size and meta.world_size != world:
            text += f" from world size {meta.world_size} to {world}"
        elif meta.batch_size and meta.batch_size != batch:
            text += f" from batch {meta.batch_size} to {batch} per rank"
        return text

    def _load_pretrained(self, uri: str) -> None:
        """Fine-tuning start: weights only (MindCV or our own checkpoint), optimizer state fresh."""
        import mindspore as ms

        from convit.models import load_weights
        from convit.storage.base import open_storage

        parent, _, key = uri.rpartition("/")
        local = self.checkpoints.staging / "pretrained.ckpt"
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(open_storage(parent).get(key))
        try:
            values = ms.load_checkpoint(str(local))
        except (RuntimeError, ValueError) as exc:
            raise ConvitError(
                f"{uri}: not a readable MindSpore checkpoint ({str(exc).splitlines()[0][:160]})"
            ) from None
        own = {p.name: tuple(p.shape) for p in self.model.get_parameters()}
        # Fine-tuning to another class count: everything but the classifier comes from the checkpoint.
        fresh = [
            k for k in ("classifier.weight", "classifier.bias") if k in values and tuple(values[k].shape) != own[k]
        ]
        for name in fresh:
            values.pop(name)
            values[name] = next(p for p in self.model.get_parameters() if p.name == name)
        load_weights(self.model, values, strict=True)
        note = " (classifier re-initialised for the new class count)" if fresh else ""
        self.progress.info(f"loaded pretrained weights from {uri}{note}")

    def save(self, reason: str, *, background: bool = True) -> None:
        if not self.runtime.is_main:
            return
        started = time.monotonic()
        meta = {
            "step": self.global_step,
            "epoch": self.epoch,
            "epoch_step": self.epoch_step,
            "model": self.spec.model.name,
            "top1": self.last_top1,
            "reason": reason,
            "recipe": job_values(self.spec),
            "world_size": self.runtime.world_size,
            "batch_size": self.spec.train.step_batch,  # samples per rank per optimizer step
            "epoch_samples": sum(seg.samples for seg in self.segments),
            "segments": [[seg.world, seg.batch, seg.steps] for seg in self.segments],
            "restarts": self.restarts,
            "classes": self.classes,
        }
        self.checkpoints.save(self._write_checkpoint, meta, background=background)
        uri = f"{self.spec.checkpoint.uri}/checkpoints/step-{self.global_step:09d}"
        self.progress.checkpoint(step=self.global_step, uri=uri, seconds=time.monotonic() - started, reason=reason)
        self.last_checkpoint = uri
        self.termination.write(self.progress.recent.values())  # a pod killed from now on shows this much
        self.curves.sync()  # the curves follow each checkpoint to object storage

    # ---- the termination message ------------------------------------------------------------------------------
    def _result(self, reason: str) -> str:
        """The run's result line: `trained N steps (REASON): loss L top1 A top5 B checkpoint URI`."""
        details = []
        if self.last_loss is not None:
            details.append(f"loss {self.last_loss:.4f}")
        if self.last_top1 is not None:
            details.append(f"top1 {self.last_top1:.2f}")
        if self.last_top5 is not None:
            details.append(f"top5 {self.last_top5:.2f}")
        if self.last_checkpoint:
            details.append(f"checkpoint {self.last_checkpoint}")
        head = f"trained {self.global_step} steps ({reason})"
        return f"{head}: {' '.join(details)}" if details else head

    def _finish(self, line: str) -> None:
        """The termination message at exit: the last progress, validation and checkpoint lines, then `line`."""
        self.termination.write([*self.progress.recent.values(), line])

    @contextmanager
    def _reported(self) -> Iterator[None]:
        """An exception leaving the trainer ends the termination message with its `ERROR:` line."""
        try:
            yield
        except ConvitError as exc:
            self._finish(f"ERROR: {exc}")
            raise
        except Exception as exc:
            first = (str(exc).splitlines() or [""])[0][:500]
            self._finish(f"ERROR: {type(exc).__name__}: {first}")
            raise

    # ---- the loop -------------------------------------------------------------------------------------------
    def validate(self) -> None:
        started = time.monotonic()
        with self._ema_in_model():
            top1, top5, samples = evaluate(self.model, self.val_loader, self.spec.train.batch_size, self.reduce)
        self.compile_cache.compiled("eval")  # the first evaluation compiled the eval graph: kept in object storage
        self.last_top1, self.last_top5 = top1, top5
        self.curves.validation(self.global_step, top1=top1, top5=top5)
        self.progress.validation(
            epoch=self.epoch + (1 if self.epoch_step else 0),
            step=self.global_step,
            top1=top1,
            top5=top5,
            samples=samples,
            seconds=time.monotonic() - started,
        )

    @contextmanager
    def _ema_in_model(self) -> Iterator[None]:
        """With EMA on, the model holds the EMA weights inside the block (MindCV validates on them too)."""
        if not self.spec.train.ema_decay:
            yield
            return
        import mindspore as ms

        weights, averages = self.train_step.model_weights, self.train_step.ema_weights
        raw = [w.asnumpy().copy() for w in weights]
        for w, a in zip(weights, averages, strict=True):
            w.set_data(ms.Tensor(a.asnumpy().copy()))
        try:
            yield
        finally:
            for w, value in zip(weights, raw, strict=True):
                w.set_data(ms.Tensor(value))

    def _should_stop(self) -> bool:
        """All ranks agree to stop at the same step, or the collectives of the next step would hang."""
        local = 1.0 if self.stop.signal is not None else 0.0
        if not self.runtime.distributed:
            return local > 0
        return self.reduce([local])[0] > 0

    def run(self) -> int:
        with self._reported():
            try:
                return self._run()
            finally:
                if self.metrics is not None:
                    self.metrics.close()

    def _run(self) -> int:
        # The watcher only where a supervisor marks the pod's own stops: elsewhere a SIGTERM may be the kubelet's.
        supervised = self.runtime.distributed and self.pod_state.dir is not None
        self.stop.install(on_stuck=self._stuck if supervised else None)
        if self.metrics is not None:
            self.metrics.serve(self.metrics_port)  # before the resume: restarts and the checkpoint's age at once
        resumed = self.resume()
        plan = self._position()
        spec, rt = self.spec, self.runtime
        global_batch = self.global_batch
        self.progress.start(
            model=spec.model.name,
            params=self.params,
            world_size=rt.world_size,
            device=rt.device,
            batch_per_card=spec.train.batch_size,
            global_batch=global_batch,
            **self._options(),
            peak_lr=f"{self.peak_lr:.3e}",
            amp=spec.train.amp_level,
            train_samples=self.train_loader.num_samples,
            val_samples=self.val_loader.num_samples,
            steps_per_epoch=self.steps_per_epoch,
            total_steps=self.total_steps,
            resume=self._resume_line(resumed, plan),
        )
        if self.global_step >= self.total_steps:
            self.progress.done(step=self.global_step, reason="already complete")
            self._finish(self._result("already complete"))
            return 0
        self.curves = TrainingCurves(
            spec.checkpoint.uri,
            self.checkpoints.staging,
            first_step=self.global_step + 1,
            enabled=rt.is_main and spec.logging.tensorboard,
        )
        try:
            return self._train(plan)
        except RuntimeError as exc:
            # A peer rank died: the collectives fail (or hang until MindSpore's timeouts) on every survivor. One line
            # and a retriable exit instead of a traceback; a RuntimeError that is not about a peer stays a bug.
            reason = peer_failure(str(exc)) if rt.distributed else None
            if reason is None:
                raise
        finally:
            self.curves.close()  # whatever ended the run, its curves are uploaded
            self.compile_cache.close()
        self._end_lost_peer(f"lost a peer rank after step {self.global_step} (MindSpore: {reason})")

    def _end_lost_peer(self, what: str) -> NoReturn:
        try:
            self.checkpoints.wait()  # an upload begun before the loss still completes, so the restart can use it
        except ConvitError as exc:
            log.warning("the last checkpoint upload failed: %s", exc)
        self._close_loaders()
        message = f"{what}; exiting so the controller restarts the job"
        self._finish(f"ERROR: {message}")
        exit_lost_peer(message)

    def _close_loaders(self) -> None:
        """Their worker processes and shared memory, before the exit (else Python's resource tracker warns)."""
        for loader in (self.train_loader, self.val_loader):
            loader.close()

    def _stalled(self, seconds: float) -> None:
        """StallWatch's thread: this step's collectives have waited past cluster.step_timeout."""
        self._end_lost_peer(
            f"lost a peer rank: step {self.global_step + 1} waited {seconds:.0f}s for the other ranks "
            f"(cluster.step_timeout {self.spec.cluster.step_timeout}s)"
        )

    def _stuck(self, signum: int) -> None:
        """StopRequest's watcher: a signal whose handler could not run (convit/train/stop.py)."""
        if self.pod_state.stop_was_requested():
            return  # the pod's own stop (the kubelet's SIGTERM): its grace period decides
        self._end_lost_peer(
            f"lost the MindSpore cluster after step {self.global_step}: MindSpore sent "
            f"{signal.Signals(signum).name} (its scheduler is gone) while this rank waited in a collective for "
            f"{self.stop.grace:g}s"
        )

    def _train(self, plan: EpochPlan) -> int:
        import mindspore as ms

        spec, rt = self.spec, self.runtime
        global_batch = self.global_batch
        interval = spec.logging.interval_steps
        window_start, window_steps = time.monotonic(), 0
        window_wait = 0.0  # seconds of the logging interval spent waiting for the next batch
        step_times: list[float] = []
        accum, micro = spec.train.grad_accum_steps, 0  # micro-batches per optimizer step, and of this one so far
        stall = StallWatch(spec.cluster.step_timeout, self._stalled)
        warm = False  # the first step of a start compiles: unwatched (convit/train/stall.py)
        while self.global_step < self.total_steps:
            epoch = self.epoch
            if plan.epoch != epoch:
                plan = self.train_loader.plan(epoch, self.segments)
            end = plan.epoch_steps  # the epoch step at which this epoch ends
            if plan.start >= plan.steps:  # resumed at a shape that cannot fill a global batch of what is left
                self.epoch, self.epoch_step, self.segments = epoch + 1, 0, ()
            batches = self.train_loader.epoch(epoch, plan=plan) if self.epoch == epoch else iter(())
            waiting = time.monotonic()
            for images, targets in batches:
                tick = time.monotonic()
                window_wait += tick - waiting
                if warm and rt.distributed:
                    stall.arm()
                noise = drop_noise(  # numbered by micro-batch: with accum 1, by step
                    self.model,
                    len(images),
                    epoch_rng(spec.train.seed, epoch, rt.rank, self.epoch_step * accum + micro, 11),
                )
                micro += 1
                output = self.train_step(
                    ms.Tensor(images), ms.Tensor(targets), ms.Tensor(noise), ms.Tensor(micro == accum)
                )
                if micro < accum:  # gradients accumulated; the optimizer steps with the last micro-batch
                    stall.disarm()
                    waiting = time.monotonic()
                    continue
                micro = 0
                self.global_step += 1
                self.epoch_step += 1
                self.segments = advance(self.segments, rt.world_size, spec.train.step_batch)
                window_steps += 1
                if self.global_step % interval == 0 or self.global_step == self.total_steps:
                    loss, overflows = step_outputs(output)  # the only host sync of a step
                    if not np.isfinite(loss):
                        log.error("loss is %s at step %d; stopping", loss, self.global_step)
                        self._finish(f"ERROR: loss is {loss} at step {self.global_step}; stopping")
                        self._close_loaders()
                        return 3
                    self.last_loss = loss
                    now = time.monotonic()
                    step_time = (now - window_start) / window_steps
                    step_times.append(step_time)
                    lr = float(self.lrs[min(self.global_step + self.lr_offset, len(self.lrs)) - 1])
                    images_per_s = global_batch / step_time
                    self.progress.step(
                        epoch=epoch + 1,
                        epochs=spec.train.epochs,
                        step=self.global_step,
                        steps=self.total_steps,
                        loss=loss,
                        lr=lr,
                        images_per_s=images_per_s,
                        step_time=step_time,
                        eta_s=step_time * (self.total_steps - self.global_step),
                        overflows=overflows,
                        data_wait_s=window_wait,
                    )
                    self.curves.train(
                        self.global_step, loss=loss, lr=lr, images_per_s=images_per_s, overflows=overflows
                    )
                    window_start, window_steps, window_wait = now, 0, 0.0
                del tick
                if self.epoch_step == end:
                    self.epoch, self.epoch_step, self.segments = epoch + 1, 0, ()
                every = spec.checkpoint.interval_steps
                final = self.global_step >= self.total_steps  # the final checkpoint follows below
                if every and self.global_step % every == 0 and self.epoch_step != 0 and not final:
                    self.save("interval")
                stop = self._should_stop()  # in a cluster an AllReduce: every rank has finished this step
                stall.disarm()
                warm = True
                self.pod_state.step(self.global_step)
                if stop:
                    self.save(f"signal {self.stop.signal or 'from another rank'}", background=False)
                    self.progress.done(step=self.global_step, reason="stopped by signal, checkpoint saved")
                    self._finish(self._result("stopped by signal, checkpoint saved"))
                    self._close_loaders()
                    return STOPPED_EXIT  # not finished: never 0 (see convit/errors.py)
                self.compile_cache.compiled("step")  # the first step compiled its graphs: kept in object storage
                if self.global_step >= self.total_steps:
                    break
                waiting = time.monotonic()
            if self.epoch_step == 0:  # an epoch just ended
                every_epochs = spec.eval.interval_epochs
                last = self.global_step >= self.total_steps
                if last or (every_epochs and self.epoch % every_epochs == 0):
                    self.validate()
                self.save("epoch")
            elif self.global_step >= self.total_steps:  # max_steps inside an epoch
                self.validate()
                self.save("final")
        self.checkpoints.wait()
        self._close_loaders()
        self.progress.done(step=self.global_step, reason="finished")
        self._finish(self._result("finished"))
        return 0
