#!/usr/bin/env python3
"""Calls berth's varlink service with the reference Python `varlink` package (PyPI), a client
not written for berth: `client.py SOCKET METHOD [JSON-PARAMETERS] [--more] [--describe]`.

Prints each reply's parameters as one JSON line; an error prints
{"error": NAME, "parameters": {...}} and exits 1. `--describe` prints what
org.varlink.service.GetInterfaceDescription says of METHOD (here an interface name)."""

import json
import sys

import varlink


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    flags = {a for a in sys.argv[1:] if a.startswith("--")}
    sock, method = args[0], args[1]
    params = json.loads(args[2]) if len(args) > 2 else {}
    with varlink.Client(address="unix:" + sock) as client:
        if "--describe" in flags:
            with client.open("org.varlink.service", namespaced=False) as svc:
                reply = svc.GetInterfaceDescription(method)
                sys.stdout.write(reply["description"])
            return 0
        if "--info" in flags:
            with client.open("org.varlink.service", namespaced=False) as svc:
                print(json.dumps(svc.GetInfo()))
            return 0
        with client.open("org.berth.Berth", namespaced=False) as conn:
            call = getattr(conn, method)
            try:
                if "--more" in flags:
                    for reply in call(**params, _more=True):
                        print(json.dumps(reply), flush=True)
                else:
                    print(json.dumps(call(**params)), flush=True)
            except varlink.VarlinkError as e:
                print(json.dumps({"error": e.error(), "parameters": e.parameters()}))
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
