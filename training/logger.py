"""Scalar logging (TensorBoard when available, else JSONL) and a dependency-free progress bar.

:class:`ScalarLogger` writes every scalar to ``<dir>/scalars.jsonl`` (one JSON object per line:
``{"step", "tag", "value", "wall_time"}``), always: it is greppable, needs nothing installed, and
is what the tests read. When ``torch.utils.tensorboard`` imports (the ``tensorboard`` package is
installed), the same tags also go to TensorBoard event files in ``<dir>``; without it the JSONL
file is the only log and :attr:`ScalarLogger.backend` says so (``"jsonl"``).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import TextIO


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` can be imported (needs the ``tensorboard`` package)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except Exception:  # ImportError, or a broken / incompatible install
        return False
    return True


class ScalarLogger:
    """Scalars to JSONL (always) and TensorBoard (when available).

    Args:
        log_dir: created if needed.
        use_tensorboard: None: when available; False: never.
        append: keep an existing JSONL log (resume) instead of truncating it.
    """

    def __init__(
        self, log_dir: str | Path, use_tensorboard: bool | None = None, append: bool = False
    ) -> None:
        self.dir = Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.dir / "scalars.jsonl"
        self._file = self.jsonl_path.open("a" if append else "w")
        self._tb = None
        if use_tensorboard is None:
            use_tensorboard = tensorboard_available()
        if use_tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.dir))
        self.backend = "tensorboard+jsonl" if self._tb is not None else "jsonl"

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """One value per tag at ``step`` (non-finite values are written as null in JSONL)."""
        now = time.time()
        for tag, value in scalars.items():
            v = float(value)
            rec = {"step": int(step), "tag": tag, "value": v if math.isfinite(v) else None}
            rec["wall_time"] = round(now, 3)
            self._file.write(json.dumps(rec) + "\n")
            if self._tb is not None:
                self._tb.add_scalar(tag, v, step, walltime=now)
        self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_scalars(path: str | Path) -> dict[str, list[tuple[int, float | None]]]:
    """A JSONL log -> tag -> [(step, value)] (later lines win for a repeated step)."""
    out: dict[str, dict[int, float | None]] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out.setdefault(r["tag"], {})[int(r["step"])] = r["value"]
    return {k: sorted(v.items()) for k, v in out.items()}


def _fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


class ProgressBar:
    """``step/total [bar] rate ETA key=value ...`` on one line.

    On a terminal the line is redrawn in place; otherwise (a log file, ``nohup``) a full line is
    printed every ``every`` updates so that the log stays readable.
    """

    def __init__(
        self, total: int, initial: int = 0, stream: TextIO | None = None, every: int = 10
    ) -> None:
        self.total = total
        self.start_step = initial
        self.stream = stream or sys.stderr
        self.every = max(1, every)
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.monotonic()
        self._count = 0

    def update(self, step: int, info: dict[str, float | str]) -> None:
        self._count += 1
        if not self.tty and self._count % self.every and step != self.total:
            return
        elapsed = time.monotonic() - self.t0
        done = step - self.start_step
        rate = done / elapsed if elapsed > 0 else float("nan")
        eta = (self.total - step) / rate if rate and rate > 0 else float("nan")
        frac = step / self.total if self.total else 1.0
        width = 20
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        parts = [
            f"{step}/{self.total}",
            f"[{bar}]",
            f"{1 / rate:.2f}s/it" if rate and rate > 0 else "?s/it",
            f"eta {_fmt_time(eta)}",
        ]
        for k, v in info.items():
            parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
        line = " ".join(parts)
        if self.tty:
            self.stream.write("\r" + line + "\033[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


__all__ = ["ProgressBar", "ScalarLogger", "read_scalars", "tensorboard_available"]
