#!/usr/bin/env python3
"""Calls a method of berth's varlink service with fds attached (SCM_RIGHTS), over a plain
socket: `fdcall.py SOCKET METHOD JSON-PARAMETERS [r:PATH | w:PATH]... [--more]`.

Each `r:PATH` opens PATH for reading, each `w:PATH` creates PATH for writing; they are sent with
the call in that order, so the parameters name them by index (0, 1, ...). Prints each reply
as one JSON line ({"parameters": ...} or {"error": ..., "parameters": ...}) and exits 1 after
an error reply."""

import json
import os
import socket
import sys


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    more = "--more" in sys.argv[1:]
    sock_path, method, params = args[0], args[1], json.loads(args[2])
    fds = []
    for spec in args[3:]:
        mode, path = spec.split(":", 1)
        if mode == "r":
            fds.append(os.open(path, os.O_RDONLY))
        else:
            fds.append(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
    call = {"method": "org.berth.Berth." + method, "parameters": params}
    if more:
        call["more"] = True
    data = json.dumps(call).encode() + b"\0"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    sent = socket.send_fds(s, [data], fds) if fds else s.send(data)
    s.sendall(data[sent:])
    for fd in fds:
        os.close(fd)
    buf = b""
    while True:
        while b"\0" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                print(json.dumps({"error": "closed"}))
                return 1
            buf += chunk
        msg, buf = buf.split(b"\0", 1)
        reply = json.loads(msg)
        print(json.dumps(reply), flush=True)
        if "error" in reply:
            return 1
        if not reply.get("continues"):
            return 0


if __name__ == "__main__":
    sys.exit(main())
