"""stomp.py (PyPI), over its WebSocket transport, against a real `tidings serve`.

Run with `python3 -m unittest -v test_stomp_py` from this directory (tests/stomp/run.sh does).
The server binary is target/debug/tidings (or $TIDINGS_BIN); each run starts one on a free port
with a fresh SQLite file, and every test uses fresh users.
"""

import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

import stomp

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
BIN = os.environ.get("TIDINGS_BIN") or os.path.join(
    os.path.abspath(os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR", "target"))), "debug", "tidings"
)
SECRET = "stomp-py-tests-secret-0123456789-abcdefghijklmnop"
SERVER_HEARTBEAT_MS = 1000
SLOW = float(os.environ.get("TIDINGS_STOMP_SLOWDOWN", "1") or 1)
WAIT = 10 * SLOW


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwt(claims):
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def user_token(sub, ttl=3600):
    return jwt({"sub": sub, "exp": int(time.time()) + ttl})


def service_token():
    return jwt({"sub": "stomp-py-tests", "exp": int(time.time()) + 3600, "scope": "notifications:publish"})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="tidings-stomp-py-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(self.dir, "server.log")
        self.proc = None

    def start(self):
        if not os.path.exists(BIN):
            raise RuntimeError(f"no server binary at {BIN} (run: cargo build --locked --bin tidings)")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS") and k != "RUST_LOG"}
        env.update({
            "TIDINGS_PROFILE": "local",
            "TIDINGS__AUTH__JWT_SECRET": SECRET,
            "TIDINGS__SERVER__LISTEN": f"127.0.0.1:{self.port}",
            "TIDINGS__GRPC__LISTEN": "127.0.0.1:0",
            "TIDINGS__DATABASE__URL": f"sqlite://{os.path.join(self.dir, 'tidings.db')}",
            "TIDINGS__SERVER__HEARTBEAT_SECONDS": str(SERVER_HEARTBEAT_MS // 1000),
            "TIDINGS__SERVER__SHUTDOWN_GRACE_SECONDS": "1",
            "TIDINGS__LOG__LEVEL": "info,tidings::transports::stomp=debug",
            "NO_COLOR": "1",
        })
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([BIN, "serve"], cwd=self.dir, env=env, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30 * SLOW
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited during start:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the server did not become ready:\n{self.tail()}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        if not os.environ.get("TIDINGS_STOMP_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def tail(self, lines=40):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def request(self, method, path, token, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                text = r.read().decode()
                return r.status, (json.loads(text) if text else None)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read().decode() or "null")

    def publish(self, body):
        status, doc = self.request("POST", "/v1/notifications", service_token(), body)
        assert status == 201, (status, doc)
        return doc

    def subscribe_to_topic(self, topic, user):
        status, doc = self.request("PUT", f"/v1/topics/{topic}/subscribers/{user}", service_token())
        assert status in (200, 204), (status, doc)

    def unread(self, user):
        status, doc = self.request("GET", "/v1/notifications/unread-count", user_token(user))
        assert status == 200, (status, doc)
        return doc


SERVER = None
COUNTER = 0


def setUpModule():
    global SERVER
    SERVER = Server().start()


def tearDownModule():
    if SERVER:
        SERVER.stop()


def fresh_user(name):
    global COUNTER
    COUNTER += 1
    return f"{name}-py-{os.getpid()}-{COUNTER}"


class Recorder(stomp.ConnectionListener):
    """Records every frame and event; `wait_for` polls a condition with a hard limit."""

    def __init__(self):
        self.lock = threading.Condition()
        self.connected = []
        self.messages = []
        self.receipts = []
        self.errors = []
        self.order = []
        self.disconnected = 0
        self.heartbeats = 0
        self.heartbeat_timeouts = 0

    def _add(self, kind, item):
        with self.lock:
            getattr(self, kind).append(item)
            self.lock.notify_all()

    def on_connected(self, frame):
        self._add("connected", frame)

    def on_message(self, frame):
        self._add("messages", frame)

    def on_receipt(self, frame):
        self._add("receipts", frame.headers.get("receipt-id"))

    def on_error(self, frame):
        with self.lock:
            self.errors.append(frame)
            self.order.append("ERROR")
            self.lock.notify_all()

    def on_disconnected(self):
        with self.lock:
            self.disconnected += 1
            self.order.append("close")
            self.lock.notify_all()

    def on_heartbeat(self):
        with self.lock:
            self.heartbeats += 1

    def on_heartbeat_timeout(self):
        with self.lock:
            self.heartbeat_timeouts += 1

    def wait_for(self, predicate, what, timeout=WAIT):
        deadline = time.monotonic() + timeout
        with self.lock:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
                self.lock.wait(left)

    def events(self, kind, subscription=None):
        return [
            m for m in list(self.messages)
            if m.headers.get("x-tidings-event") == kind
            and (subscription is None or m.headers.get("subscription") == subscription)
        ]

    def notifications(self, subscription=None):
        return [json.loads(m.body) for m in self.events("notification", subscription)]


def open_connection(heartbeats=(0, 0)):
    conn = stomp.WSStompConnection(
        [("127.0.0.1", SERVER.port)],
        ws_path="/v1/stomp",
        heartbeats=heartbeats,
        reconnect_attempts_max=1,
        header={"Sec-WebSocket-Protocol": "v12.stomp"},
    )
    rec = Recorder()
    conn.set_listener("recorder", rec)
    return conn, rec


def with_receipt(conn, rec, send):
    receipt = f"r-{time.monotonic_ns()}"
    send(receipt)
    rec.wait_for(lambda: receipt in rec.receipts, f"RECEIPT {receipt}")


def barrier(conn, rec):
    """A SEND that changes nothing, with a receipt: every frame before it took effect."""
    with_receipt(conn, rec, lambda r: conn.send("/app/read", json.dumps({"up_to": 0}), receipt=r))


class StompPyTests(unittest.TestCase):
    def tearDown(self):
        for conn in getattr(self, "_conns", []):
            try:
                if conn.is_connected():
                    conn.disconnect()
            except Exception:
                pass

    def connect(self, user, heartbeats=(0, 0), **kw):
        conn, rec = open_connection(heartbeats)
        self._conns = getattr(self, "_conns", []) + [conn]
        conn.connect(user, user_token(user), wait=True, **kw)
        # stomp.py may return from connect() before its listeners have seen CONNECTED.
        rec.wait_for(lambda: rec.connected, "CONNECTED")
        return conn, rec

    def test_connect_with_passcode(self):
        user = fresh_user("carol")
        conn, rec = self.connect(user)
        h = rec.connected[0].headers
        self.assertEqual(h["version"], "1.2")
        self.assertEqual(h["user-name"], user)
        self.assertTrue(h["server"].startswith("tidings/"))
        self.assertTrue(h["session"])

    def test_feed_and_topic_receive_ack_and_mark_read(self):
        user = fresh_user("alice")
        topic = f"builds-py-{os.getpid()}"
        SERVER.subscribe_to_topic(topic, user)
        conn, rec = self.connect(user)
        with_receipt(conn, rec, lambda r: conn.subscribe(
            "/user/queue/notifications", "feed", ack="client-individual",
            headers={"x-tidings-after": "0"}, receipt=r))
        with_receipt(conn, rec, lambda r: conn.subscribe(f"/topic/{topic}", "topic", ack="client", receipt=r))

        SERVER.publish({"recipients": [user], "type": "order.shipped", "title": "Shipped"})
        reached = SERVER.publish({"topic": topic, "type": "build.failed", "title": "Build 7 failed"})
        self.assertEqual(reached["recipients"], 1)
        rec.wait_for(lambda: len(rec.notifications("feed")) == 2, "two notifications on the feed")
        rec.wait_for(lambda: len(rec.notifications("topic")) == 1, "one on the topic")
        feed = rec.notifications("feed")
        self.assertEqual([n["seq"] for n in feed], [1, 2])
        self.assertEqual(feed[1]["topic"], topic)
        self.assertEqual(rec.notifications("topic")[0]["seq"], 2)
        m = rec.events("notification", "feed")[0]
        self.assertEqual(m.headers["destination"], "/user/queue/notifications")
        self.assertEqual(m.headers["content-type"], "application/json")
        self.assertEqual(m.headers["x-tidings-seq"], "1")
        self.assertIn("message-id", m.headers)

        # Acknowledge: every feed message on its own, the topic's cumulatively by its last one.
        for msg in [x for x in rec.messages if x.headers["subscription"] == "feed"]:
            conn.ack(msg.headers["ack"])
        conn.ack(rec.events("notification", "topic")[-1].headers["ack"])
        barrier(conn, rec)
        self.assertEqual(rec.errors, [])

        with_receipt(conn, rec, lambda r: conn.send(
            "/app/read", json.dumps({"up_to": 1}), content_type="application/json", receipt=r))
        self.assertEqual(SERVER.unread(user), {"unread": 1, "seq": 2})
        rec.wait_for(lambda: any(json.loads(u.body)["unread"] == 1 for u in rec.events("unread", "feed")),
                     "unread 1 pushed to the feed")
        with_receipt(conn, rec, lambda r: conn.send("/app/read", json.dumps({"ids": [feed[1]["id"]]}), receipt=r))
        self.assertEqual(SERVER.unread(user), {"unread": 0, "seq": 2})

    def test_committed_transaction_takes_effect_and_aborted_does_not(self):
        user = fresh_user("dave")
        ids = [SERVER.publish({"recipients": [user], "type": "note", "title": f"n{i}"})["notifications"][0]["id"]
               for i in range(3)]
        conn, rec = self.connect(user)
        kept = conn.begin()
        dropped = conn.begin()
        with_receipt(conn, rec, lambda r: conn.send(
            "/app/read", json.dumps({"ids": ids[:2]}), transaction=kept, receipt=r))
        with_receipt(conn, rec, lambda r: conn.send(
            "/app/read", json.dumps({"up_to": 3}), transaction=dropped, receipt=r))
        self.assertEqual(SERVER.unread(user)["unread"], 3, "held until COMMIT")
        conn.abort(dropped)
        barrier(conn, rec)
        self.assertEqual(SERVER.unread(user)["unread"], 3, "the aborted transaction changed nothing")
        conn.commit(kept)
        barrier(conn, rec)
        self.assertEqual(SERVER.unread(user), {"unread": 1, "seq": 3})
        self.assertEqual(rec.errors, [])

    def test_heartbeats_keep_an_idle_connection_open(self):
        user = fresh_user("frank")
        conn, rec = self.connect(user, heartbeats=(500, 500))
        self.assertEqual(rec.connected[0].headers["heart-beat"], f"250,{SERVER_HEARTBEAT_MS}")
        time.sleep(4 * SERVER_HEARTBEAT_MS / 1000)
        self.assertTrue(conn.is_connected())
        self.assertEqual(rec.disconnected, 0)
        self.assertEqual(rec.errors, [])
        self.assertEqual(rec.heartbeat_timeouts, 0)
        self.assertGreaterEqual(rec.heartbeats, 5)
        barrier(conn, rec)

    def test_client_that_stops_heartbeating_is_dropped(self):
        user = fresh_user("gina")
        conn, rec = self.connect(user, heartbeats=(500, 0))
        time.sleep(1.5)
        self.assertEqual(rec.disconnected, 0)
        transmit = conn.transport.transmit
        # A heart-beat is a frame without a command: stop sending those, and only those.
        conn.transport.transmit = lambda frame: None if frame.cmd is None else transmit(frame)
        stopped = time.monotonic()
        rec.wait_for(lambda: rec.disconnected >= 1, "the server to drop the silent client")
        took = time.monotonic() - stopped
        self.assertTrue(1.0 <= took < 5.0 * SLOW, f"dropped after {took:.2f} s")
        self.assertEqual(len(rec.errors), 1)
        self.assertIn("no heart-beat from the client", rec.errors[0].headers["message"])
        self.assertEqual(rec.order, ["ERROR", "close"])

    def test_wrong_token_gets_error_then_close(self):
        conn, rec = open_connection()
        self._conns = [conn]
        with self.assertRaises(stomp.exception.ConnectFailedException):
            conn.connect("mallory", "not-a-jwt", wait=True)
        rec.wait_for(lambda: rec.disconnected >= 1, "the close")
        self.assertEqual(rec.order[:2], ["ERROR", "close"])
        self.assertIn("bad token", rec.errors[0].headers["message"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
