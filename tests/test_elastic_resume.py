"""Resuming at another world size, exactly: the per-rank plan continues with exactly the samples an epoch has not
seen yet, the LR follows the samples, and (end to end) a 2-rank job resumes on 1 rank and says so."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from convit.data.order import EpochPlan, Segment, epoch_plan, rank_plan
from convit.jobspec import load_job
from convit.train.schedule import PartialEpoch, first_slot, lr_schedule

SEED = 42


def _plans(n: int, epoch: int, world: int, batch: int, block: int, done: Sequence[Segment]) -> list[EpochPlan]:
    return [
        epoch_plan(n, seed=SEED, epoch=epoch, rank=r, world=world, batch=batch, block=block, done=done)
        for r in range(world)
    ]


def _train_epoch(
    n: int, shapes: Sequence[tuple[int, int, int | None]], *, block: int = 1, epoch: int = 3
) -> tuple[list[np.ndarray], EpochPlan, tuple[Segment, ...]]:
    """Train one epoch in stretches of (world, batch, steps or None for the rest), resuming between them from the
    recorded position only; every step's samples of every rank, the last plan and the position reached."""
    done: tuple[Segment, ...] = ()
    batches: list[np.ndarray] = []
    plan: EpochPlan | None = None
    for world, batch, steps in shapes:
        plans = _plans(n, epoch, world, batch, block, done)
        plan = plans[0]
        assert {(p.start, p.steps, p.done_steps, p.done_samples) for p in plans} == {
            (plan.start, plan.steps, plan.done_steps, plan.done_samples)
        }
        assert plan.done_samples == sum(len(b) for b in batches)
        todo = plan.steps - plan.start if steps is None else steps
        assert 0 <= todo <= plan.steps - plan.start
        for step in range(plan.start, plan.start + todo):
            parts = [p.indices[step * batch : (step + 1) * batch] for p in plans]
            assert all(len(part) == batch for part in parts)  # equal across ranks
            batches.append(np.concatenate(parts))
        done = plan.segments(todo)
    assert plan is not None
    return batches, plan, done


def _assert_every_kept_sample_once(n: int, batches: list[np.ndarray], last: EpochPlan) -> None:
    seen = np.concatenate(batches)
    assert len(np.unique(seen)) == len(seen), "a sample was trained twice in the epoch"
    assert len(seen) == last.kept_samples == last.done_samples + (last.steps - last.start) * last.world * last.batch
    assert n - len(seen) < last.world * last.batch  # only what cannot fill the last global batch is dropped
    assert seen.min() >= 0 and seen.max() < n


@pytest.mark.parametrize("block", [1, 32])
@pytest.mark.parametrize(
    ("n", "shapes"),
    [
        (48, [(2, 4, 4), (1, 4, None)]),  # the issue's case: 2 ranks to step 4, then 1 rank to the end
        (48, [(1, 4, 3), (2, 4, None)]),  # 1 -> 2
        (50, [(2, 4, 4), (3, 4, None)]),  # 2 -> 3, an odd remainder
        (1003, [(2, 7, 30), (3, 7, None)]),
        (1003, [(1, 7, 11), (2, 7, 20), (5, 7, 3), (3, 7, None)]),  # resized again and again
        (1003, [(2, 7, 30), (2, 5, 10), (1, 9, None)]),  # the batch per rank changes too
        (5000, [(4, 8, 100), (1, 8, 1), (6, 8, None)]),  # several local-shuffle windows per rank
    ],
)
def test_an_epoch_resumed_at_other_world_sizes_trains_every_kept_sample_once(
    n: int, shapes: list[tuple[int, int, int | None]], block: int
) -> None:
    batches, last, _ = _train_epoch(n, shapes, block=block)
    _assert_every_kept_sample_once(n, batches, last)


def test_the_issue_numbers() -> None:
    _, _, done = _train_epoch(48, [(2, 4, 4)])
    assert done == (Segment(2, 4, 4),)
    resumed = _plans(48, 3, 1, 4, 1, done)[0]
    # resume=step 4 (epoch 1, 32 of 48 samples) from world size 2 to 1
    assert (resumed.done_samples, resumed.kept_samples, resumed.done_steps) == (32, 48, 4)
    assert (resumed.start, resumed.steps, resumed.epoch_steps, resumed.elastic) == (0, 4, 8, True)
    # 2 -> 3 with 50 samples: 18 left, one global batch of 12, 6 dropped
    _, _, done = _train_epoch(50, [(2, 4, 4)])
    three = _plans(50, 3, 3, 4, 1, done)[0]
    assert (three.done_samples, three.steps, three.kept_samples) == (32, 1, 44)


@pytest.mark.parametrize("block", [1, 32])
def test_the_same_world_size_keeps_its_plan_and_continues_it(block: int) -> None:
    n, batch, world = 1003, 7, 3
    for rank in range(world):
        fresh = rank_plan(n, seed=SEED, epoch=2, rank=rank, world=world, batch=batch, block=block)
        cont = epoch_plan(
            n, seed=SEED, epoch=2, rank=rank, world=world, batch=batch, block=block, done=[Segment(world, batch, 9)]
        )
        assert np.array_equal(fresh, cont.indices) and cont.start == 9 and not cont.elastic
    # After an elastic resume, a resume at that same shape continues its segment: same samples, same order.
    first = [Segment(2, batch, 20)]
    a = epoch_plan(n, seed=SEED, epoch=2, rank=1, world=3, batch=batch, block=block, done=first)
    b = epoch_plan(
        n, seed=SEED, epoch=2, rank=1, world=3, batch=batch, block=block, done=[*first, Segment(3, batch, 5)]
    )
    assert np.array_equal(a.indices, b.indices) and (a.start, b.start) == (0, 5) and a.steps == b.steps
    assert a.fraction == b.fraction and b.done_steps == 25


def test_the_plan_of_a_run_that_never_changes_shape_is_unchanged() -> None:
    """Pinned from the plan before elastic resume existed: same-size runs (and their resumes) stay bit-exact."""
    a = rank_plan(100, seed=42, epoch=1, rank=1, world=2, batch=4, block=1)
    assert a[:12].tolist() == [93, 48, 26, 7, 53, 87, 24, 58, 68, 38, 52, 4]
    b = rank_plan(1000, seed=7, epoch=0, rank=2, world=3, batch=5, block=32)
    assert b[:12].tolist() == [661, 973, 727, 589, 399, 592, 605, 579, 711, 669, 641, 385]


def test_shards_keep_block_locality_after_a_resize() -> None:
    n, block = 5000, 32
    _, _, done = _train_epoch(n, [(2, 8, 100)], block=block)
    plans = _plans(n, 3, 3, 8, block, done)
    owners: dict[int, set[int]] = {}
    for r, plan in enumerate(plans):
        for b in np.unique(plan.indices // block):
            owners.setdefault(int(b), set()).add(r)
    split = sum(len(o) > 1 for o in owners.values())
    assert split <= 0.05 * len(owners), f"{split} of {len(owners)} blocks are read by more than one rank"


def test_a_history_that_does_not_fit_the_data_is_an_error() -> None:
    from convit.data import DataError

    with pytest.raises(DataError, match="the data set changed"):
        epoch_plan(48, seed=SEED, epoch=0, rank=0, world=1, batch=4, done=[Segment(2, 4, 7)])


# ---- the LR follows the samples -------------------------------------------------------------------------------


def _train(reference_batch: int, epochs: int = 4, warmup: int = 1):  # type: ignore[no-untyped-def]
    return load_job(
        "convit_tiny",
        [f"train.epochs={epochs}", f"train.warmup_epochs={warmup}", f"train.reference_batch={reference_batch}"],
    ).train


def _resumed_table(n: int, batch: int, old_world: int, steps: int, new_world: int, reference_batch: int):  # type: ignore[no-untyped-def]
    """The old run's table and next slot, and the resumed run's table, slot and plan, `steps` into the run."""
    t = _train(reference_batch)
    spe_old, spe_new = n // (batch * old_world), n // (batch * new_world)
    old = lr_schedule(t, spe_old, t.peak_lr(batch * old_world))
    epoch, in_epoch = divmod(steps, spe_old)
    plan = epoch_plan(
        n, seed=SEED, epoch=epoch, rank=0, world=new_world, batch=batch, done=[Segment(old_world, batch, in_epoch)]
    )
    partial = PartialEpoch(epoch, plan.fraction, plan.steps)
    new = lr_schedule(t, spe_new, t.peak_lr(batch * new_world), partial)
    return t, old, steps, new, first_slot(spe_new, partial) + plan.start, plan, spe_new


@pytest.mark.parametrize("steps", [4, 6 + 4, 3 * 6 + 1])  # in the warmup, in the cosine, in the last epoch
def test_the_lr_is_continuous_across_a_resume_and_follows_samples(steps: int) -> None:
    # 48 samples, 4 per rank: 2 ranks have 6 steps per epoch, 1 rank 12. No scaling: the same peak.
    t, old, at, new, slot, plan, spe = _resumed_table(48, 4, 2, steps, 1, reference_batch=0)
    assert new[slot] == pytest.approx(old[at], rel=1e-6)  # the LR the next step would have had
    # With nothing dropped, the resumed run's LRs are a 1-rank run's at the same sample positions ...
    fresh = lr_schedule(t, spe, t.lr)
    position = plan.epoch * spe + plan.done_samples // 4
    assert slot == position
    assert np.array_equal(new, fresh)
    # ... and every later step of the old run had the LR of the same samples: steps 2k and 2k+1 of 1 rank.
    for k in range(at, len(old)):
        assert old[k] == pytest.approx(new[slot + 2 * (k - at)], rel=1e-6)


@pytest.mark.parametrize("steps", [4, 6 + 4])
def test_the_lr_follows_the_linear_rule_from_the_resume_on(steps: int) -> None:
    t, old, at, new, slot, _, spe = _resumed_table(48, 4, 2, steps, 1, reference_batch=2048)
    assert t.peak_lr(4) == pytest.approx(t.peak_lr(8) / 2)
    assert np.array_equal(new, lr_schedule(t, spe, t.peak_lr(4)))  # a 1-rank run's, at the same samples
    if steps < 6:  # in the warmup, the LR is proportional to the peak
        assert new[slot] == pytest.approx(old[at] / 2, rel=1e-6)


@pytest.mark.parametrize("steps", [4, 6 + 4])
def test_with_a_remainder_the_lr_is_continuous_at_the_resume_and_at_the_epoch_end(steps: int) -> None:
    # 50 samples: 2 ranks x 4 keep 48 (6 steps per epoch), 3 ranks x 4 keep 48 (4 steps) of what is left.
    t, old, at, new, slot, plan, spe = _resumed_table(50, 4, 2, steps, 3, reference_batch=0)
    assert new[slot] == pytest.approx(old[at], rel=1e-6)
    fresh = lr_schedule(t, spe, t.lr)
    end = (plan.epoch + 1) * spe  # the next epoch's first slot: a 3-rank run's
    assert slot + plan.steps - plan.start == end
    assert np.array_equal(new[end:], fresh[end:]) and np.array_equal(new[: end - plan.steps], fresh[: end - plan.steps])
    # In between, the LR moves monotonically from the resume's towards the next epoch's.
    part = np.concatenate([new[slot:end], new[end : end + 1]]).astype(np.float64)
    steps_ = np.diff(part)
    assert np.all(steps_ >= 0) or np.all(steps_ <= 0)
    x = spe * (plan.epoch + float(plan.fraction))
    warm = t.warmup_epochs * spe
    expect = t.lr * x / warm if x < warm else None
    if expect is not None:
        assert new[slot] == pytest.approx(expect, rel=1e-6)
    else:
        progress = (x - warm) / (t.epochs * spe - warm)
        cosine = t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * progress))
        assert new[slot] == pytest.approx(cosine, rel=1e-6)


# ---- end to end: 2 ranks to step 4, then 1 rank ----------------------------------------------------------------


@pytest.mark.slow
def test_two_ranks_then_one_resumes_exactly_and_finishes(tmp_path: Path) -> None:
    from tests.support.trainrun import REPO, make_sample, pod_env, run_pod

    data, ckpt = f"file://{tmp_path}/data", f"file://{tmp_path}/ckpt"
    make_sample(data, classes=4, per_class=12, val_per_class=1)  # 48 training images
    sets = [
        "train.batch_size=4",
        "train.epochs=2",
        "train.warmup_epochs=1",
        "train.reference_batch=0",  # one peak for both shapes, so the LR itself is continuous
        "model.drop_path_rate=0.1",
        "model.num_classes=4",
        "data.workers=1",
        "data.layout=imagefolder",
        f"data.uri={data}",
        f"checkpoint.uri={ckpt}",
        "logging.interval_steps=1",
        "eval.interval_epochs=1",
    ]

    def args(*extra: str) -> list[str]:
        return ["--job", "convit_tiny", *[a for s in [*sets, *extra] for a in ("--set", s)]]

    # 2 ranks x 4 (2 micro-batches of 2 accumulated): 6 steps per epoch; stop after step 4 (32 of the epoch's 48
    # samples), checkpointed. The position counts samples per optimizer step, so accumulation resumes elastically.
    code, log = run_pod(
        args("train.max_steps=4", "train.batch_size=2", "train.grad_accum_steps=2"), tmp_path, "two", local=2
    )
    assert code == 0, log[-4000:]
    assert "world_size=2" in log and "global_batch=8 grad_accum_steps=2" in log and "checkpoint step 4" in log

    # The same job on 1 rank: 16 samples of epoch 1 are left (4 steps), then 12 steps of epoch 2; stop at step 10.
    proc = subprocess.run(
        [sys.executable, "-m", "convit.train", *args("train.max_steps=10")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**pod_env(1, 1, 0, 0), "MS_LOCAL_WORKER": ""},
    )
    out = proc.stdout
    assert proc.returncode == 0, (out + proc.stderr)[-4000:]
    assert "resume=step 4 (epoch 1, 32 of 48 samples) from world size 2 to 1" in out
    assert "world_size=1" in out and "total_steps=10" in out
    assert "epoch 1/2 step 8/10" in out and "validation epoch 1 step 8" in out
    assert "epoch 2/2 step 10/10" in out and "finished" in out
    # The LR goes on from where it was: in the warmup (6 steps of 8 samples), step 5 is at 4/6 of the peak.
    lr1 = {int(m[1]): float(m[2]) for m in re.finditer(r"step (\d+)/\d+ loss \S+ lr (\S+)", log)}
    lr2 = {int(m[1]): float(m[2]) for m in re.finditer(r"step (\d+)/\d+ loss \S+ lr (\S+)", out)}
    peak = load_job("convit_tiny").train.lr
    assert lr1[4] == pytest.approx(peak * 3 / 6, rel=1e-2)
    assert lr2[5] == pytest.approx(peak * 4 / 6, rel=1e-2) and lr2[8] == pytest.approx(peak * 5.5 / 6, rel=1e-2)

    import json

    from convit.storage import open_storage

    meta = json.loads(open_storage(ckpt).get("checkpoints/step-000000010/meta.json"))
    assert (meta["epoch"], meta["epoch_step"], meta["epoch_samples"], meta["segments"]) == (1, 2, 8, [[1, 4, 2]])
    assert meta["world_size"] == 1
    # The optimizer's step counter indexes the LR table: it was moved to the 1-rank slots (4 steps ahead: the
    # 2-rank steps 1-4 are 1-rank slots 1-8), less the updates skipped for overflow.
    import mindspore as ms

    weights = tmp_path / "step10.ckpt"
    weights.write_bytes(open_storage(ckpt).get("checkpoints/step-000000010/weights.ckpt"))
    state = {k: v.asnumpy() for k, v in ms.load_checkpoint(str(weights)).items()}
    assert "learning_rate" not in state
    assert int(state["global_step"].reshape(-1)[0]) == 10 + 4 - int(state["overflow_steps"])
