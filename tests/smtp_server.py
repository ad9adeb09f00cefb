#!/usr/bin/env python3
"""A throwaway SMTP server for tests/notify.rs, on 127.0.0.1 only.

Each delivered message becomes one JSON file in --dir (written to a temporary name, then
renamed): the envelope, the parsed headers, the text body, the attachments (decoded) and the
raw message. Prints "ready PORT" once it accepts connections, and stops when its stdin closes
or on SIGTERM.

    smtp_server.py --dir DIR [--starttls CERT KEY | --implicit-tls CERT KEY] [--auth USER PASS]
"""

import argparse
import email
import email.policy
import itertools
import json
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import warnings

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Sink:
    def __init__(self, folder):
        self.folder = folder
        self.numbers = itertools.count(1)
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        message = email.message_from_bytes(raw, policy=email.policy.default)
        body = message.get_body(preferencelist=("plain",))
        attachments = [
            {"filename": part.get_filename(), "content": part.get_content()}
            for part in message.iter_attachments()
        ]
        record = {
            "mailFrom": envelope.mail_from,
            "rcptTos": envelope.rcpt_tos,
            "authenticated": bool(getattr(session, "authenticated", False)),
            "tls": session.ssl is not None
            or server.transport.get_extra_info("ssl_object") is not None,
            "headers": [[name, str(value)] for name, value in message.items()],
            "subject": str(message["subject"]),
            "to": str(message["to"]),
            "from": str(message["from"]),
            "body": body.get_content() if body is not None else None,
            "attachments": attachments,
            "raw": raw.decode("utf-8", "replace"),
        }
        with self.lock:
            number = next(self.numbers)
        final = os.path.join(self.folder, f"message-{number:04}.json")
        temporary = final + ".tmp"
        with open(temporary, "w", encoding="utf-8") as out:
            json.dump(record, out, indent=1)
        os.rename(temporary, final)
        return "250 OK delivered"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    # aiosmtpd warns about AUTH without TLS, which the plain-text tests use on purpose.
    warnings.filterwarnings("ignore")
    # A refused handshake (the test without the CA) is expected; its traceback is noise.
    logging.getLogger("mail.log").setLevel(logging.CRITICAL)
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--starttls", nargs=2, metavar=("CERT", "KEY"))
    parser.add_argument("--implicit-tls", nargs=2, metavar=("CERT", "KEY"))
    parser.add_argument("--auth", nargs=2, metavar=("USER", "PASS"))
    args = parser.parse_args()

    kwargs = {}
    tls_files = args.starttls or args.implicit_tls
    if tls_files:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*tls_files)
        if args.starttls:
            kwargs["tls_context"] = context
            kwargs["require_starttls"] = True
        else:
            kwargs["ssl_context"] = context
    if args.auth:
        user, password = (value.encode() for value in args.auth)

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (
                isinstance(auth_data, LoginPassword)
                and auth_data.login == user
                and auth_data.password == password
            )
            return AuthResult(success=ok, handled=False)

        kwargs["authenticator"] = authenticator
        kwargs["auth_required"] = True
        # aiosmtpd counts only STARTTLS as TLS for this check; an implicit TLS connection is
        # encrypted from the start anyway.
        kwargs["auth_require_tls"] = bool(args.starttls)

    controller = Controller(
        Sink(args.dir), hostname="127.0.0.1", port=free_port(), **kwargs
    )
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(
        target=lambda: (sys.stdin.read(), stop.set()), daemon=True
    ).start()
    print(f"ready {controller.port}", flush=True)
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
