#!/usr/bin/python3
"""Test SMTP server for internal/notify: Debian's python3-aiosmtpd with
STARTTLS (or implicit TLS) and AUTH for one user, writing every accepted
message to OUTDIR as <n>.eml plus <n>.json (envelope and login).

Run by the Go tests only; prints READY when it accepts connections and exits
when its stdin closes (so it cannot outlive the test).
"""
import argparse
import json
import os
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--outdir", required=True)
    p.add_argument("--only-mech", default="", help="offer only this AUTH mechanism (LOGIN or PLAIN)")
    p.add_argument("--implicit-tls", action="store_true")
    a = p.parse_args()

    lock = threading.Lock()
    state = {"n": len([f for f in os.listdir(a.outdir) if f.endswith(".eml")])}

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login == a.user.encode()
              and auth_data.password == a.password.encode())
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            with lock:
                state["n"] += 1
                n = state["n"]
            base = os.path.join(a.outdir, "%04d" % n)
            meta = {"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos,
                    "login": (session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None),
                    "tls": session.ssl is not None or bool(
                        getattr(server, "transport", None)
                        and server.transport.get_extra_info("ssl_object") is not None)}
            # Write then rename so the test never reads half a message.
            for ext, data in ((".json", json.dumps(meta).encode()), (".eml", envelope.content)):
                with open(base + ext + ".tmp", "wb") as f:
                    f.write(data)
                os.rename(base + ext + ".tmp", base + ext)
            return "250 Message accepted for delivery"

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(a.cert, a.key)
    exclude = [m for m in ("LOGIN", "PLAIN") if a.only_mech and m != a.only_mech]
    # ready_timeout: a loaded CI machine can take longer than the 1 s default.
    kwargs = dict(ready_timeout=30, authenticator=authenticator, auth_require_tls=True, auth_exclude_mechanism=exclude)
    if a.implicit_tls:
        # aiosmtpd 1.4 only counts STARTTLS as TLS for auth_require_tls; the
        # implicit-TLS socket is encrypted from the first byte anyway.
        kwargs["auth_require_tls"] = False
        c = Controller(Handler(), hostname=a.host, port=a.port, ssl_context=ctx, server_hostname="localhost", **kwargs)
    else:
        c = Controller(Handler(), hostname=a.host, port=a.port, tls_context=ctx, require_starttls=True, **kwargs)
    c.start()
    print("READY", flush=True)
    sys.stdin.read()
    c.stop()


if __name__ == "__main__":
    main()
