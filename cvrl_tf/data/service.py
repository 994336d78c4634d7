r"""tf.data service: the input pipeline on CPU machines beside the accelerators.

When one host's CPUs cannot decode and crop clips as fast as its accelerators train,
TensorFlow's tf.data service runs the pipeline on other machines: a dispatcher hands out
work, workers run the pipeline, and training reads finished batches from them over gRPC.

    python -m cvrl_tf.data.service --dispatcher --port 5050 [--work_dir gs://BUCKET/dispatcher]
    python -m cvrl_tf.data.service --worker --dispatcher_address HOST:5050 --port 5051 \
        [--worker_address THIS_HOST:5051]

Each server prints one line with its address and serves until interrupted (Ctrl-C, SIGTERM).
Training uses them with run.data_service_address='grpc://HOST:5050' (job.py calls
`distribute`). WORKSPACE.md says how to run them next to a TPU VM.
"""
if __name__ == "__main__":  # A command: settle the process before TensorFlow starts.
    from cvrl_tf.runtime import cli as _cli
    _cli.start()

# pylint: disable=wrong-import-position
import argparse
import os
import signal
import socket
import sys
import threading
from typing import Optional, Sequence

import tensorflow as tf

from cvrl_tf.runtime import internals
from cvrl_tf.runtime import cli

PROTOCOL = "grpc"
CONNECT_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 30.0
_service = tf.data.experimental.service


def parse_address(address: str) -> tuple[str, int]:
    """'grpc://HOST:PORT' or 'HOST:PORT' -> (HOST, PORT); ValueError naming the value else."""
    rest = address.strip()
    if "://" in rest:
        protocol, rest = rest.split("://", 1)
        if protocol != PROTOCOL:
            raise ValueError(f"tf.data service address {address!r} uses protocol {protocol!r}; "
                             f"only '{PROTOCOL}://HOST:PORT' (or 'HOST:PORT') is served.")
    host, _, port = rest.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [IPv6]
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in host:
        raise ValueError(f"tf.data service address {address!r} is not 'grpc://HOST:PORT' or "
                         f"'HOST:PORT' with a port in 1..65535 (e.g. 'grpc://10.0.0.5:5050').")
    return host, int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raises ValueError unless a TCP connection to the dispatcher at `address` opens (the
    service's own client would instead retry silently for up to an hour)."""
    host, port = parse_address(address)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise ValueError(
            f"The tf.data service dispatcher at {address} cannot be reached ({e}); start it "
            f"there with `python -m cvrl_tf.data.service --dispatcher --port {port}`, open the "
            f"port in the firewall, or fix the address.") from e


def distribute(dataset: tf.data.Dataset, address: str, job_name: Optional[str] = None, *,
               max_outstanding_requests: Optional[int] = None,
               check: bool = True) -> tf.data.Dataset:
    """`dataset` computed by the tf.data service workers at `address`, its source dynamically
    sharded among them (ShardingPolicy.DYNAMIC); elements pass through unchanged.

    Where: on the finished per-input-pipeline dataset of `pipeline.build_dataset`, i.e. the
    batched stream. Every CPU-heavy stage (read, parse, JPEG decode of the crop window,
    resize, augmentation parameters) and the batching run on the workers; the trainer host
    only receives finished batches (large messages, few RPCs: what the service does best;
    distributing single videos and batching on the trainer would cost it one RPC and one
    copy per video), batch shapes stay static (drop_remainder on the workers) and every field
    build_dataset yields ('video', 'aug_params', 'label', 'id' and any it adds) arrives as
    built. Dynamic sharding needs a splittable source: the dispatcher splits the pipeline's
    source dataset (build_dataset's file list: one split per file; a reader that starts from
    a range of epochs is split by epoch) and hands splits to workers as they ask, each visited
    once per epoch (at most once if a worker dies). A batch holds videos of one worker's
    splits, mixed by its interleave and shuffle buffer as on a single host. Elements arrive
    in no fixed order: a run reading from the service cannot be replayed or resumed exactly.

    job_name: None gives the dataset its own job (one consumer). A name shares one job
    among all datasets iterated with it, whatever their graph (the service then silently
    serves the first one's elements): use a name only for consumers of one dataset, and
    never reuse it for another run while the service lives.
    check: first open a TCP connection to the dispatcher, for a clear error in seconds.
    """
    host, port = parse_address(address)
    if check:
        check_reachable(address)
    served = dataset.apply(_service.distribute(
        processing_mode=_service.ShardingPolicy.DYNAMIC,
        service=f"{PROTOCOL}://{_join(host, port)}", job_name=job_name,
        max_outstanding_requests=max_outstanding_requests))
    options = tf.data.Options()  # The service shards; tf.distribute must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return served.with_options(options)


def start_dispatcher(port: int, work_dir: Optional[str] = None) -> _service.DispatchServer:
    """A started dispatcher on `port` (0: any free port). With `work_dir` it journals its
    state there (fault-tolerant mode), so a restarted dispatcher keeps its datasets and jobs."""
    return _service.DispatchServer(_service.DispatcherConfig(
        port=port, protocol=PROTOCOL, work_dir=work_dir or None,
        fault_tolerant_mode=bool(work_dir)))


def start_worker(dispatcher_address: str, port: int,
                 worker_address: Optional[str] = None) -> _service.WorkerServer:
    """A started worker on `port` (0: any free port), registered with the dispatcher; clients
    reach it at `advertised_address(dispatcher_address, worker_address)`. Blocks until the
    dispatcher answers (the service retries for up to an hour)."""
    host, dispatcher_port = parse_address(dispatcher_address)
    return _service.WorkerServer(_service.WorkerConfig(
        dispatcher_address=_join(host, dispatcher_port),
        worker_address=advertised_address(dispatcher_address, worker_address), port=port,
        protocol=PROTOCOL))


def advertised_address(dispatcher_address: str, worker_address: Optional[str] = None) -> str:
    """Where clients reach a worker: `worker_address` ('HOST' or 'HOST:PORT'), by default
    this machine's IP on the route to the dispatcher; '%port%' stands for the bound port."""
    address = worker_address or local_ip_towards(*parse_address(dispatcher_address))
    if address.startswith("["):
        return address if "]:" in address else f"{address}:%port%"
    if address.count(":") > 1:  # A bare IPv6 address.
        return f"[{address}]:%port%"
    return address if ":" in address else f"{address}:%port%"


def local_ip_towards(host: str, port: int) -> str:
    """This machine's IP address on the route to host:port (no packet is sent), else its
    host name."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, port))
            return probe.getsockname()[0]
    except OSError:
        return socket.gethostname()


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_port_free(port: int) -> None:
    """ValueError if `port` is taken: gRPC binds with SO_REUSEPORT, so a second server on a
    taken port would start without error and share the port with the first."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("", port))
        except OSError as e:
            raise ValueError(f"Port {port} is in use on this machine ({e.strerror}); stop "
                             f"what holds it or pass another --port.") from e


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cvrl_tf.data.service",
                                     description=__doc__.splitlines()[0])
    role = parser.add_mutually_exclusive_group(required=True)
    role.add_argument("--dispatcher", action="store_true", help="run a dispatcher")
    role.add_argument("--worker", action="store_true", help="run a worker")
    parser.add_argument("--port", type=int, default=None,
                        help="port to serve on (default 5050 dispatcher, 5051 worker; 0: any)")
    parser.add_argument("--work_dir", default=None,
                        help="dispatcher: directory (or gs:// path) journaling its state")
    parser.add_argument("--dispatcher_address", default=None,
                        help="worker: the dispatcher's HOST:PORT (or grpc://HOST:PORT)")
    parser.add_argument("--worker_address", default=None,
                        help="worker: HOST[:PORT] clients reach it at (default: this "
                             "machine's IP towards the dispatcher)")
    args = parser.parse_args(argv)
    role_name = "--dispatcher" if args.dispatcher else "--worker"
    misplaced = ([("--dispatcher_address", args.dispatcher_address),
                  ("--worker_address", args.worker_address)] if args.dispatcher
                 else [("--work_dir", args.work_dir)])
    for flag, value in misplaced:
        if value is not None:
            parser.error(f"{flag} does not apply to {role_name}.")
    if args.worker and not args.dispatcher_address:
        parser.error("--worker needs --dispatcher_address HOST:PORT (the dispatcher's).")
    if args.port is None:
        args.port = 5050 if args.dispatcher else 5051
    if not 0 <= args.port < 65536:
        parser.error(f"--port {args.port} is not in 0..65535.")
    try:
        if args.worker:
            parse_address(args.dispatcher_address)
        _check_port_free(args.port)
    except ValueError as e:
        parser.error(str(e))
    return args


def _wait(stop: threading.Event, server) -> bool:
    """Serves until SIGINT/SIGTERM, then stops `server` (False: not within STOP_TIMEOUT_S);
    a dispatcher prints its number of registered workers whenever it changes."""
    workers = None
    while not stop.wait(2.0):
        if isinstance(server, _service.DispatchServer):
            count = internals.data_service_num_workers(server)
            if count != workers:
                print(f"{count} worker(s) registered.", flush=True)
                workers = count
    # A worker's stop waits for its tasks, and a task asking a dispatcher that is gone for
    # work retries for an hour: stop in a thread, give up after a while.
    stopper = threading.Thread(target=server.stop, daemon=True)
    stopper.start()
    stopper.join(STOP_TIMEOUT_S)
    return not stopper.is_alive()


def _wait_for_dispatcher(address: str, stop: threading.Event) -> bool:
    """Polls the dispatcher's port until it answers (True) or a signal arrives (False), so
    that Ctrl-C works while a worker waits (the service's own wait cannot be interrupted)."""
    try:
        check_reachable(address, timeout=2.0)
        return True
    except ValueError:
        print(f"Waiting for the dispatcher at {address} ...", flush=True)
    while not stop.wait(2.0):
        try:
            check_reachable(address, timeout=2.0)
            return True
        except ValueError:
            pass
    return False


@cli.guard
def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: start the dispatcher or a worker, print its address, serve until
    interrupted. Exit 0 after an interrupt, 1 when the server cannot start or stop, 2 on bad
    flags."""
    args = _parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    role = "dispatcher" if args.dispatcher else "worker"
    try:
        if args.dispatcher:
            server = start_dispatcher(args.port, args.work_dir)
            port = int(server.target.rsplit(":", 1)[1])
            address = _join(socket.gethostname(), port)
            print(f"tf.data service dispatcher at {PROTOCOL}://{address}: train with "
                  f"run.data_service_address='{PROTOCOL}://{address}', start workers with "
                  f"--dispatcher_address {address}; Ctrl-C stops it.", flush=True)
        else:
            if not _wait_for_dispatcher(args.dispatcher_address, stop):
                return 0
            advertised = advertised_address(args.dispatcher_address, args.worker_address)
            server = start_worker(args.dispatcher_address, args.port, args.worker_address)
            port = internals.data_service_worker_address(server).rsplit(":", 1)[1]
            print(f"tf.data service worker at {advertised.replace('%port%', port)} for the "
                  f"dispatcher at {args.dispatcher_address}; Ctrl-C stops it.", flush=True)
    except (tf.errors.OpError, RuntimeError, ValueError) as e:
        print(f"cvrl_tf.data.service: the {role} could not start: {e}", file=sys.stderr)
        return 1
    if not _wait(stop, server):
        print(f"cvrl_tf.data.service: the {role} did not stop within {STOP_TIMEOUT_S:.0f} s "
              f"(a task may be waiting for a dispatcher that is gone); exiting anyway.",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)  # The server's threads would keep the process alive.
    return 0


if __name__ == "__main__":
    sys.exit(main())
