#!/usr/bin/env python3
"""A real nats.py client check, driven by the Rust integration tests.

Usage:
  python tests/interop/nats_py_peel.py --url URL --creds FILE [--ca FILE]
      --own SUBJECT [--own-sub SUBJECT] --foreign SUBJECT [--foreign-sub SUBJECT]
      [--name NAME] [--inbox-prefix PREFIX] [--request SUBJECT]

Steps:
  1. connect with user_credentials=FILE (allow_reconnect=False, max_reconnect_attempts=0,
     connect_timeout=5; the first error while connecting ends the attempt, at most 6 s).
     With --ca: TLS through an ssl.SSLContext that verifies the server certificate
     (and host name) against FILE, TLS 1.3 minimum; a session that ends up plaintext
     counts as a failed connection;
  2. own publish: publish a unique payload on --own. With --own-sub, subscribe there
     first and require the payload to come back within 2 s (so --own-sub must match
     --own). Either way the publish only counts as OK when no
     "Permissions Violation for Publish to <own>" arrived (see the ordering note below);
  3. publish on --foreign (right after the own publish) and wait up to 2 s for the
     server's async "Permissions Violation for Publish to <foreign>" (via error_cb);
  4. with --foreign-sub: subscribe there and wait up to 2 s for
     "Permissions Violation for Subscription to <foreign-sub>";
  5. with --request: send a request with payload "test.ping" there (3 s timeout) and
     report the reply text as "request_reply" (null when none came; the reason goes to
     "error"). The key is only present with --request.

Ordering note: nats.py's flush() writes PING straight to the socket while PUB/SUB wait
in its pending buffer, so a flush PONG is no barrier for -ERRs. The server handles the
PUBs in order, so the foreign violation arriving proves the own PUB was judged already;
when it never comes, the own check waited the full 2 s anyway.

Prints ONE JSON object on stdout:
  {"connected": bool, "error": str|null, "own_publish_ok": bool,
   "foreign_publish_violation": bool, "foreign_subscribe_violation": bool|null}
foreign_subscribe_violation is null when --foreign-sub was not given. "error" holds the
connection failure (e.g. "Authorization Violation") or any other unexpected error.
Exit status 0 whenever the JSON was produced (also when the connection failed);
2 on a usage error.

nats.py (2.x) lower-cases every -ERR text before handing it to error_cb, so matching is
case-insensitive here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
import uuid

WAIT_SECONDS = 2.0
CONNECT_TIMEOUT = 5
OVERALL_TIMEOUT = 30.0


def _clean(msg: str) -> str:
    """'nats: \\'Authorization Violation\\'' -> 'Authorization Violation'."""
    msg = msg.strip()
    if msg.startswith("nats: "):
        msg = msg[len("nats: ") :]
    return msg.strip().strip("'").strip()


def _describe(exc: BaseException) -> str:
    text = _clean(str(exc))
    if not text:
        text = type(exc).__name__
        if isinstance(exc, asyncio.TimeoutError):
            text += " (connect/handshake timed out)"
    return text


class Recorder:
    """Collects every error nats.py reports through error_cb."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._cond = asyncio.Condition()

    async def error_cb(self, exc: Exception) -> None:
        async with self._cond:
            self.errors.append(_describe(exc))
            self._cond.notify_all()

    async def wait_any(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: bool(self.errors))

    def seen(self, needle: str) -> bool:
        needle = needle.lower()
        return any(needle in e.lower() for e in self.errors)

    async def wait_for(self, needle: str, timeout: float) -> bool:
        async def _wait() -> None:
            async with self._cond:
                await self._cond.wait_for(lambda: self.seen(needle))

        try:
            await asyncio.wait_for(_wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return self.seen(needle)


def pub_violation(subject: str) -> str:
    return f'Permissions Violation for Publish to "{subject}"'


def sub_violation(subject: str) -> str:
    # the server appends ` using queue "q"` for queue subscriptions; the prefix matches both
    return f'Permissions Violation for Subscription to "{subject}"'


def _tls_version(nc) -> str | None:
    """The TLS version of the live connection, None when it is plaintext."""
    try:
        writer = nc._transport._io_writer  # TcpTransport internals (nats-py 2.x)
        ssl_obj = writer.get_extra_info("ssl_object")
    except Exception:  # noqa: BLE001
        return None
    return ssl_obj.version() if ssl_obj is not None else None


def make_tls(ca_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def run(args: argparse.Namespace) -> dict:
    # imported here so a missing module still yields the JSON line
    from nats.aio.client import Client as NATS

    result: dict = {
        "connected": False,
        "error": None,
        "own_publish_ok": False,
        "foreign_publish_violation": False,
        "foreign_subscribe_violation": None,
    }
    rec = Recorder()

    async def disconnected_cb() -> None:
        pass

    kwargs: dict = {
        "servers": [args.url],
        "user_credentials": args.creds,
        "error_cb": rec.error_cb,
        "disconnected_cb": disconnected_cb,
        "allow_reconnect": False,
        "max_reconnect_attempts": 0,
        "connect_timeout": CONNECT_TIMEOUT,
        "name": args.name,
        "verbose": False,
        "pedantic": False,
    }
    if args.inbox_prefix:
        kwargs["inbox_prefix"] = args.inbox_prefix
    if args.ca:
        kwargs["tls"] = make_tls(args.ca)
        host = args.tls_hostname
        if host:
            kwargs["tls_hostname"] = host

    if not os.path.isfile(args.creds):
        result["error"] = f"creds file not found: {args.creds}"
        return result

    # nats.py's initial connect loop treats max_reconnect_attempts=0 as "no limit": with a
    # refused TCP connection it retries forever (every reconnect_time_wait) even with
    # allow_reconnect=False. So the first error reported while connecting ends the attempt,
    # and the whole connect is bounded by CONNECT_TIMEOUT + 1 s.
    nc = NATS()
    connect_task = asyncio.create_task(nc.connect(**kwargs))
    first_error = asyncio.create_task(rec.wait_any())
    done, _ = await asyncio.wait(
        {connect_task, first_error},
        timeout=CONNECT_TIMEOUT + 1,
        return_when=asyncio.FIRST_COMPLETED,
    )
    reason = None
    if connect_task in done and connect_task.exception() is None:
        pass
    elif connect_task in done:
        reason = _describe(connect_task.exception())
        # NoServersError hides the cause (refused, TLS failure…): it went to error_cb.
        if "no servers available" in reason.lower() and rec.errors:
            reason = f"{reason}: {rec.errors[-1]}"
    elif first_error in done:
        # let a connect() that is about to raise the same error finish first
        await asyncio.wait({connect_task}, timeout=0.2)
        if connect_task.done() and connect_task.exception() is not None:
            reason = _describe(connect_task.exception())
        elif connect_task.done():
            reason = None
        else:
            reason = rec.errors[0]
    else:
        reason = f"connect timeout after {CONNECT_TIMEOUT + 1} s"
    first_error.cancel()
    if reason is not None or not connect_task.done():
        if not connect_task.done():
            connect_task.cancel()
            await asyncio.gather(connect_task, return_exceptions=True)
        # close() of a client whose connect failed can hang (seen after a TLS
        # verification failure): bound it tightly and drop the socket ourselves.
        try:
            await asyncio.wait_for(nc.close(), 0.3)
        except Exception:  # noqa: BLE001
            pass
        try:
            if nc._transport is not None:
                nc._transport.close()
        except Exception:  # noqa: BLE001
            pass
        result["error"] = reason or "connect failed"
        return result
    rec.errors.clear()  # errors before the connection was up are not session errors

    result["connected"] = True
    try:
        if args.ca and _tls_version(nc) is None:
            # nats.py only upgrades when the server's INFO says tls_required: never
            # silently accept a plaintext session when a CA was given.
            result["connected"] = False
            result["error"] = "connected without TLS although --ca was given"
            return result

        # ---- own publish (+ optional own subscription), then the foreign publish.
        # nats.py's flush() writes its PING straight to the socket while PUBs wait in
        # the pending buffer for the flusher task, so a PONG is no barrier for -ERRs.
        # The server handles PUBs in order, though: once the violation for the foreign
        # PUB (sent after the own PUB) has arrived, any violation for the own PUB has
        # arrived too. Without such a barrier (foreign allowed) we wait WAIT_SECONDS.
        sub = None
        if args.own_sub:
            sub = await nc.subscribe(args.own_sub)
        token = uuid.uuid4().hex.encode()
        await nc.publish(args.own, token)
        await nc.publish(args.foreign, b"should-be-refused")
        for _ in range(2):
            try:
                await nc.flush(timeout=WAIT_SECONDS)
            except Exception:  # noqa: BLE001
                break
        result["foreign_publish_violation"] = await rec.wait_for(
            pub_violation(args.foreign), WAIT_SECONDS
        )

        own_ok = nc.is_connected
        if sub is not None:
            got = False
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT_SECONDS
            while not got:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    msg = await sub.next_msg(timeout=left)
                except Exception:  # noqa: BLE001 - nats.errors.TimeoutError and friends
                    break
                got = msg.data == token
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001
                pass
            own_ok = own_ok and got and not rec.seen(sub_violation(args.own_sub))
        result["own_publish_ok"] = bool(own_ok and not rec.seen(pub_violation(args.own)))

        # ---- foreign subscribe
        if args.foreign_sub:
            try:
                fsub = await nc.subscribe(args.foreign_sub)
                try:
                    await nc.flush(timeout=WAIT_SECONDS)
                except Exception:
                    pass
            except Exception as e:  # noqa: BLE001
                fsub = None
                if result["error"] is None:
                    result["error"] = _describe(e)
            result["foreign_subscribe_violation"] = await rec.wait_for(
                sub_violation(args.foreign_sub), WAIT_SECONDS
            )
            if fsub is not None:
                try:
                    await fsub.unsubscribe()
                except Exception:
                    pass

        # ---- request/reply
        if args.request:
            result["request_reply"] = None
            try:
                reply = await nc.request(args.request, b"test.ping", timeout=3)
                result["request_reply"] = reply.data.decode()
            except Exception as e:  # noqa: BLE001
                if result["error"] is None:
                    result["error"] = f"request {args.request}: {_describe(e)}"
    except Exception as e:  # noqa: BLE001
        if result["error"] is None:
            result["error"] = _describe(e)
    finally:
        if args.foreign_sub and result["foreign_subscribe_violation"] is None:
            result["foreign_subscribe_violation"] = rec.seen(sub_violation(args.foreign_sub))
        # Report errors that are not the expected permission violations (e.g. the
        # server closed the connection).
        if result["error"] is None:
            expected = [pub_violation(args.foreign).lower()]
            if args.foreign_sub:
                expected.append(sub_violation(args.foreign_sub).lower())
            others = [e for e in rec.errors if not any(x in e.lower() for x in expected)]
            if others:
                result["error"] = "; ".join(others)
        try:
            await asyncio.wait_for(nc.close(), WAIT_SECONDS)
        except Exception:  # noqa: BLE001
            pass
    return result


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="nats.py peel permission check (prints one JSON line)")
    p.add_argument("--url", required=True, help="server URL, e.g. nats://127.0.0.1:4222 or tls://…")
    p.add_argument("--creds", required=True, help="decorated user creds file")
    p.add_argument("--ca", help="CA file: enables TLS (verified, TLS 1.3 minimum)")
    p.add_argument("--tls-hostname", help="hostname to verify in the server certificate (default: URL host)")
    p.add_argument("--own", required=True, help="subject the user may publish to")
    p.add_argument("--own-sub", help="subject to subscribe to before publishing on --own (must match --own)")
    p.add_argument("--foreign", required=True, help="subject the user must NOT be allowed to publish to")
    p.add_argument("--foreign-sub", help="subject the user must NOT be allowed to subscribe to")
    p.add_argument("--name", default="zester-interop-nats-py", help="client connection name")
    p.add_argument("--inbox-prefix", help="custom inbox prefix (e.g. _INBOX.<id>)")
    p.add_argument("--request", help="send a test.ping request there and report the reply")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)  # exits 2 on usage errors
    try:
        result = asyncio.run(asyncio.wait_for(run(args), OVERALL_TIMEOUT))
    except asyncio.TimeoutError:
        result = {
            "connected": False,
            "error": f"overall timeout after {OVERALL_TIMEOUT:.0f} s",
            "own_publish_ok": False,
            "foreign_publish_violation": False,
            "foreign_subscribe_violation": None,
        }
    except Exception as e:  # noqa: BLE001 - e.g. nats-py not installed
        result = {
            "connected": False,
            "error": f"{type(e).__name__}: {e}",
            "own_publish_ok": False,
            "foreign_publish_violation": False,
            "foreign_subscribe_violation": None,
        }
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
