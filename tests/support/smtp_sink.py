#!/usr/bin/python3
"""A loopback SMTP sink for the black-box tests.

Usage: smtp_sink.py PORT DIR [DELAY]

Listens on 127.0.0.1:PORT (0 picks a free port) and saves every message it accepts as
DIR/NNNN.eml (the raw message) with DIR/NNNN.json beside it (the SMTP envelope). Each file is
written under a temporary name and renamed, so a reader never sees half a message. The first
line on stdout is the bound port. Runs until killed, or until its stdin reaches end of file (so
it never outlives a test process that holds the other end of a pipe). With DELAY (seconds), each
message is accepted only after that long, as a slow mail server would.
"""

import asyncio
import json
import os
import socket
import sys
import threading

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, directory, delay=0.0):
        self.directory = directory
        self.delay = delay
        self.lock = threading.Lock()
        self.count = 0

    def _write(self, name, data):
        tmp = os.path.join(self.directory, name + ".part")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(self.directory, name))

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            await asyncio.sleep(self.delay)
        with self.lock:
            self.count += 1
            n = self.count
        meta = {"mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos)}
        # The envelope first: once the .eml exists, everything about the message is on disk.
        self._write("%04d.json" % n, json.dumps(meta).encode())
        self._write("%04d.eml" % n, envelope.original_content)
        return "250 OK"


class BoundController(Controller):
    """A Controller serving on a socket bound beforehand, so port 0 works."""

    def __init__(self, handler, sock):
        self._sock = sock
        super().__init__(handler, hostname="127.0.0.1", port=sock.getsockname()[1])

    def _create_server(self):
        return self.loop.create_server(self._factory_invoker, sock=self._sock)


def main():
    if len(sys.argv) not in (3, 4):
        sys.stderr.write("usage: smtp_sink.py PORT DIR [DELAY]\n")
        sys.exit(2)
    port, directory = int(sys.argv[1]), sys.argv[2]
    delay = float(sys.argv[3]) if len(sys.argv) == 4 else 0.0
    os.makedirs(directory, exist_ok=True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    controller = BoundController(Sink(directory, delay), sock)
    controller.start()
    sys.stdout.write("%d\n" % sock.getsockname()[1])
    sys.stdout.flush()
    sys.stdin.buffer.read()
    os._exit(0)


if __name__ == "__main__":
    main()
