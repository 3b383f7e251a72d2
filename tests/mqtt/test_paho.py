"""Interop with a real MQTT client: paho-mqtt subscribes to a real Mosquitto that a real
`tidings` binary (TIDINGS_BIN) bridges to. Checks the topic names, that the payload is the
notification exactly as the REST API shows it, and the retained unread count."""

import base64, hashlib, hmac, json, os, queue, socket, subprocess, tempfile, time, unittest
import urllib.request

import paho.mqtt.client as mqtt

SECRET = "paho-interop-secret-that-is-at-least-32-chars"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(sub, scope=None):
    claims = {"sub": sub, "exp": int(time.time()) + 3600}
    if scope:
        claims["scope"] = scope
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def wait_port(port, within=30):
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")


class Subscriber:
    def __init__(self, port, topic):
        self.messages = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def next(self, within=30):
        return self.messages.get(timeout=within)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


class PahoInterop(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory()
        cls.broker_port, cls.http_port = free_port(), free_port()
        conf = os.path.join(cls.dir.name, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {cls.broker_port} 127.0.0.1\nallow_anonymous true\n")
        cls.broker = subprocess.Popen(["mosquitto", "-c", conf], stderr=subprocess.DEVNULL)
        wait_port(cls.broker_port)
        env = dict(
            os.environ,
            TIDINGS__SERVER__LISTEN=f"127.0.0.1:{cls.http_port}",
            TIDINGS__GRPC__LISTEN="127.0.0.1:0",
            TIDINGS__DATABASE__URL=f"sqlite://{cls.dir.name}/tidings.db",
            TIDINGS__AUTH__JWT_SECRET=SECRET,
            TIDINGS__MQTT__URL=f"mqtt://127.0.0.1:{cls.broker_port}",
            TIDINGS__MQTT__TOPIC_PREFIX="interop/tidings",
        )
        cls.server = subprocess.Popen([os.environ["TIDINGS_BIN"]], env=env, cwd=cls.dir.name,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(cls.http_port)

    @classmethod
    def tearDownClass(cls):
        for p in (cls.server, cls.broker):
            p.terminate()
            p.wait(timeout=30)
        cls.dir.cleanup()

    def http(self, method, path, tok, body=None):
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def test_topics_payload_and_retained_unread(self):
        sub = Subscriber(self.broker_port, "interop/tidings/users/paho-alice/#")
        try:
            self.http("POST", "/v1/notifications", token("billing", "notifications:publish"), {
                "recipients": ["paho-alice"], "type": "order.shipped", "title": "Shipped",
                "body": "On its way", "data": {"order_id": 7}, "link": "https://shop.example/7"})
            got = {}
            while len(got) < 2:
                m = sub.next()
                got[m.topic] = m
            note = got["interop/tidings/users/paho-alice/notifications"]
            self.assertEqual(note.qos, 1)
            listed = self.http("GET", "/v1/notifications?after=0", token("paho-alice"))
            self.assertEqual(json.loads(note.payload), listed["notifications"][0])
            unread = json.loads(got["interop/tidings/users/paho-alice/unread"].payload)
            rest = self.http("GET", "/v1/notifications/unread-count", token("paho-alice"))
            self.assertEqual((unread["unread"], unread["seq"]), (rest["unread"], rest["seq"]))
        finally:
            sub.close()

        self.http("POST", "/v1/notifications/read", token("paho-alice"), {"up_to": 1})
        # A late subscriber gets the retained count, already updated by the read.
        deadline = time.time() + 30
        while True:
            late = Subscriber(self.broker_port, "interop/tidings/users/paho-alice/unread")
            try:
                m = late.next()
            finally:
                late.close()
            self.assertTrue(m.retain)
            if json.loads(m.payload)["unread"] == 0 or time.time() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(json.loads(m.payload)["unread"], 0)


if __name__ == "__main__":
    unittest.main()
