"""A live progress line for long commands on a terminal; silent when output is not a TTY."""

import time


class Progress:
    def __init__(self, stream, label, total=None, min_interval=0.2):
        self.stream = stream
        self.label = label
        self.total = total
        self.live = bool(getattr(stream, "isatty", lambda: False)())
        self.min_interval = min_interval
        self._last = 0.0

    def update(self, done, extra=""):
        if not self.live:
            return
        now = time.monotonic()
        if now - self._last < self.min_interval and (self.total is None or done < self.total):
            return
        self._last = now
        if self.total:
            width = 30
            filled = int(width * min(done / self.total, 1))
            bar = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total}"
        else:
            bar = str(done)
        self.stream.write(f"\r{self.label} {bar} {extra}".ljust(79))
        self.stream.flush()

    def finish(self):
        if self.live:
            self.stream.write("\n")
            self.stream.flush()
