"""A dependency-free progress bar on stderr: redrawn in place on a terminal, one line
per step otherwise (CI logs, pipes)."""
import sys
import time


class Progress:
    def __init__(self, total, width=28, stream=sys.stderr):
        self.total, self.width, self.stream = max(total, 1), width, stream
        self.done, self.start = 0, time.perf_counter()
        self.tty = stream.isatty()

    def _bar(self, label):
        frac = self.done / self.total
        filled = int(frac * self.width)
        elapsed = time.perf_counter() - self.start
        eta = f", ~{elapsed / self.done * (self.total - self.done):.0f} s left" if self.done else ""
        return f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {elapsed:.0f} s{eta}  {label}"

    def message(self, text):
        self._emit(text)

    def step(self, label):
        """Announces the step about to run (counted as done once the next one starts)."""
        self._emit(self._bar(label))
        self.done += 1

    def close(self):
        self.done = min(self.done, self.total)
        self._emit(self._bar("done"))
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()

    def _emit(self, text):
        if self.tty:
            self.stream.write("\r\033[K" + text[:200])
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
