"""Start a moto server for opsy-ami-operator's tests and local sandbox.

The server listens on a loopback port chosen by the kernel and prints one JSON line,
{"port": N}, once it accepts connections. It stops when its standard input closes, so a
test process that dies for any reason never leaves it running.

AMIs are seeded from the JSON file named by MOTO_AMIS_PATH (moto's own mechanism), in every
region, and again after each reset (POST /moto-api/reset). opsy_moto_ext adds the AWS calls
moto lacks, error injection and request counting.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    import opsy_moto_ext

    opsy_moto_ext.install()
    app = opsy_moto_ext.Middleware(DomainDispatcherApplication(create_backend_app))
    server = make_server(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"port": server.server_port}), flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def watch_stdin() -> None:
        # Blocks until the parent closes the pipe or exits.
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
