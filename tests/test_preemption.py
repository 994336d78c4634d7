"""cvrl_tf.training.preemption: a notice becomes the training loop's stop flag at once."""
import http.server
import os
import signal
import threading
import time

import tensorflow as tf

from cvrl_tf.training import preemption


def _wait_for(flag, seconds=10.0):
    deadline = time.time() + seconds
    while not bool(flag.numpy()) and time.time() < deadline:
        time.sleep(0.01)
    return bool(flag.numpy())


def test_sigterm_raises_the_flag_and_the_handlers_come_back():
    flag = tf.Variable(False)
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with preemption.Notice(flag) as notice:
        assert not bool(flag.numpy())
        os.kill(os.getpid(), signal.SIGTERM)
        assert _wait_for(flag) and notice.reason == "SIGTERM"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_sigint_is_a_notice_too():
    flag = tf.Variable(False)
    with preemption.Notice(flag) as notice:
        os.kill(os.getpid(), signal.SIGINT)
        assert _wait_for(flag) and notice.reason == "SIGINT"


def test_the_metadata_server_notice():
    answers = {"/preempted": b"FALSE", "/maintenance-event": b"NONE"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = answers[self.path] if self.headers["Metadata-Flavor"] == "Google" else b""
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        poll = preemption.metadata_poller(f"http://127.0.0.1:{server.server_port}/")
        assert poll() is None
        answers["/maintenance-event"] = b"TERMINATE_ON_HOST_MAINTENANCE"
        assert poll() == "GCE metadata maintenance-event=TERMINATE_ON_HOST_MAINTENANCE"
        answers["/preempted"] = b"TRUE"
        assert poll() == "GCE metadata preempted=TRUE"
    finally:
        server.shutdown()
    assert preemption.metadata_poller("http://127.0.0.1:9/")() is None  # Unreachable: quiet.
