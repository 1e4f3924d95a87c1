"""Time from process start to the first finished training step: a first start against a resume and a replaced pod,
with MindSpore's graph compile cache (convit/train/compile_cache.py) and without it, in one run.

    .venv/bin/python bench/restart.py [--amp O2] [--batch 4]

Each case is one `python -m convit.train` process on a generated sample: it trains 2 steps (first start), resumes
from that checkpoint and trains 2 more in the same cache dir (resume: a restarted container), then resumes and
trains 2 more with a new, empty cache dir (replaced pod: the compile cache comes from object storage, here the
file:// checkpoint URI, where the first start uploaded it). The time is measured to the first progress line,
which the trainer prints after its first step (logging.interval_steps=1).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def first_step_seconds(args: list[str], env: dict[str, str]) -> float:
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "convit.train", *args], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    seconds = float("nan")
    for line in proc.stdout:
        if line.startswith("epoch ") and seconds != seconds:
            seconds = time.monotonic() - start
    if proc.wait() != 0:
        raise SystemExit(f"trainer failed: {args}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--amp", default="O2")
    parser.add_argument("--batch", type=int, default=4)
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="convit-restart-"))
    subprocess.run(
        [sys.executable, "-m", "convit.data", "make-sample", "--dst", f"file://{work}/data", "--classes", "2",
         "--per-class", "8", "--val-per-class", "1"],
        cwd=REPO, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    rows = []
    for cached in (False, True):
        out = work / ("cached" if cached else "plain")
        env = {**os.environ, "CONVIT_CACHE_DIR": str(out / "cache"), "CONVIT_COMPILE_CACHE": "1" if cached else "0"}
        env.pop("MS_COMPILER_CACHE_PATH", None)
        env.pop("MS_COMPILER_CACHE_ENABLE", None)
        sets = [
            f"data.uri=file://{work}/data", "data.layout=imagefolder", "data.workers=1",
            f"checkpoint.uri=file://{out}/ckpt", f"train.batch_size={opts.batch}", f"train.amp_level={opts.amp}",
            "train.epochs=4", "train.warmup_epochs=1", "logging.interval_steps=1", "eval.interval_epochs=0",
            "model.num_classes=2",
        ]  # fmt: skip
        args = ["--job", "convit_tiny", *[a for s in sets for a in ("--set", s)]]
        first = first_step_seconds([*args, "--max-steps", "2"], env)
        resume = first_step_seconds([*args, "--max-steps", "4"], env)
        replaced = first_step_seconds([*args, "--max-steps", "6"], {**env, "CONVIT_CACHE_DIR": str(out / "cache2")})
        rows.append(("compile cache" if cached else "no cache", first, resume, replaced))
    print(f"convit_tiny, AMP {opts.amp}, batch {opts.batch}, CPU ({os.cpu_count()} cores): start -> first step")
    header = ("case", "first start s", "resume s", "resume/first", "replaced pod s", "replaced/first")
    print(f"{header[0]:<16}" + "".join(f"{h:>16}" for h in header[1:]))
    for label, first, resume, replaced in rows:
        figures = (
            f"{first:.1f}",
            f"{resume:.1f}",
            f"{resume / first:.2f}",
            f"{replaced:.1f}",
            f"{replaced / first:.2f}",
        )
        print(f"{label:<16}" + "".join(f"{f:>16}" for f in figures))


if __name__ == "__main__":
    main()
