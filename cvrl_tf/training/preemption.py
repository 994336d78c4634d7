"""Notice of a coming preemption: SIGTERM / SIGINT, and Google Cloud's maintenance notice.

A spot (preemptible) VM gets SIGTERM about 30 s before it stops; Ctrl-C sends SIGINT; a
Cloud TPU or GCE VM also announces maintenance and preemption on its metadata server.
`Notice` turns any of them into one thing: a boolean tf.Variable that the training loop reads
at every step (trainer.Trainer agrees on it across replicas and workers, stops after the
step, and the job saves a checkpoint and exits 0).

Python runs signal handlers only between bytecodes of the main thread, which sits inside a
long tf.function while training; so the C-level handler's wake-up byte is read by a thread
(`signal.set_wakeup_fd`) that sets the flag at once. A second Ctrl-C interrupts as usual.
"""
import os
import signal
import socket
import threading
import urllib.request
from typing import Callable, Optional

from absl import logging
import tensorflow as tf

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_METADATA = "http://metadata.google.internal/computeMetadata/v1/instance/"


def _gce_notice() -> Optional[Callable[[], Optional[str]]]:
    """A poller of the GCE metadata server's preemption/maintenance notice, off GCE None.

    TensorFlow's own PreemptionCheckpointHandler polls the same two keys on GCE GPU VMs
    (failure_handling_util); in TF 2.20 it does not support Cloud TPU VMs, so we poll here.
    """
    try:
        socket.getaddrinfo("metadata.google.internal", 80)
    except OSError:
        return None
    return metadata_poller(_METADATA)


def metadata_poller(base_url: str) -> Callable[[], Optional[str]]:
    """poll() -> a reason when the metadata server at base_url announces a preemption or a
    maintenance event, else None (unreachable counts as quiet)."""
    def poll() -> Optional[str]:
        for key, quiet in (("preempted", "FALSE"), ("maintenance-event", "NONE")):
            request = urllib.request.Request(base_url + key,
                                             headers={"Metadata-Flavor": "Google"})
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    value = response.read().decode().strip()
            except OSError:
                continue
            if value and value != quiet:
                return f"GCE metadata {key}={value}"
        return None

    return poll


class Stopped(Exception):
    """A run stopped on a notice outside the training loop; the message says in which phase
    and what was and was not saved."""


class Notice:
    """Sets `flag` (a bool tf.Variable) when the process is told it will be stopped.

    Use as a context manager around training; handlers are restored on exit. `reason` says
    what arrived. Signals can only be caught from the main thread; elsewhere (or with
    `signals=False`) only the GCE notice is watched.
    """

    def __init__(self, flag: tf.Variable, signals: bool = True, poll_seconds: float = 5.0):
        self.flag = flag
        self.reason: Optional[str] = None
        self._signals = signals and threading.current_thread() is threading.main_thread()
        self._poll_seconds = poll_seconds
        self._previous = {}
        self._previous_fd = None
        self._pipe = None
        self._stop = threading.Event()
        self._threads = []

    def request(self, reason: str) -> None:
        """Records the first notice and raises the flag."""
        if self.reason is None:
            self.reason = reason
            logging.warning("Preemption notice: %s; stopping after the current step.", reason)
            print(f"Stop notice ({reason}): stopping cleanly after the current step or phase.",
                  flush=True)
        self.flag.assign(True)

    def stopped(self, phase: str, saved: str) -> Stopped:
        """The Stopped error of a notice that arrived during `phase` ('while ...')."""
        return Stopped(f"({self.reason}) {phase}: {saved}")

    def check(self, phase: str, saved: str) -> None:
        """Raises Stopped when a notice arrived (call it at the end of a phase)."""
        if self.reason is not None:
            raise self.stopped(phase, saved)

    def __enter__(self) -> "Notice":
        if self._signals:
            read_fd, write_fd = os.pipe()
            os.set_blocking(write_fd, False)
            self._pipe = (read_fd, write_fd)
            self._previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
            self._start(self._read_wakeups)
        poll = _gce_notice()
        if poll is not None:
            self._start(lambda: self._poll(poll))
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._signals:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(self._previous_fd if self._previous_fd is not None else -1)
            os.write(self._pipe[1], b"\0")  # Wakes the reader so it can end.
        for thread in self._threads:
            thread.join(timeout=5)
        if self._pipe:
            for fd in self._pipe:
                os.close(fd)

    def _start(self, target) -> None:
        thread = threading.Thread(target=target, daemon=True, name="cvrl_tf_preemption")
        thread.start()
        self._threads.append(thread)

    def _on_signal(self, signum, frame) -> None:  # Main thread, once the loop yields.
        del frame
        if signum == signal.SIGINT and self.reason is not None:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        self.request(signal.Signals(signum).name)

    def _read_wakeups(self) -> None:  # Right away, whatever the main thread is doing.
        while not self._stop.is_set():
            try:
                data = os.read(self._pipe[0], 16)
            except OSError:
                return
            for byte in data:
                if byte in [int(s) for s in SIGNALS] and not self._stop.is_set():
                    self.request(signal.Signals(byte).name)

    def _poll(self, poll) -> None:
        while not self._stop.wait(self._poll_seconds):
            reason = poll()
            if reason:
                self.request(reason)
                return
