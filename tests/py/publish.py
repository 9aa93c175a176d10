"""A device-side MQTT publisher (paho-mqtt, MQTT 3.1.1) for the e2e tests.

Publishes `--count` QoS 1 JSON messages round-robin over `--topics` topics
`building/b<k % 7>/r<k>/env`, each `{"temperature", "seq", "ts"}` with a distinct
millisecond time (at `--rate` messages per second if given), plus a poison payload (not UTF-8, not JSON) as every `--poison-every`-th
message. Persistent session (clean session off, fixed client id) and automatic
reconnection: paho resends every message not yet PUBACKed after it reconnects, which is
what a device does when the server crashes under it.

Waits until every message is acknowledged (or `--deadline` seconds pass) and prints one
JSON line: {"sent", "acked", "poison", "good", "reconnects"}. When `--progress-file` is
given it writes the number of acknowledged messages there as they arrive, so a test can
crash the server at a chosen point without sleeping blindly.
"""

import argparse
import json
import os
import sys
import threading
import time

import paho.mqtt.client as mqtt

BASE_MS = 1_764_028_800_000


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--client-id", default="test-device")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--topics", type=int, default=50)
    ap.add_argument("--poison-every", type=int, default=0)
    ap.add_argument("--username")
    ap.add_argument("--password")
    ap.add_argument("--inflight", type=int, default=200)
    ap.add_argument("--deadline", type=float, default=240)
    ap.add_argument("--progress-file")
    ap.add_argument(
        "--rate", type=float, default=0, help="messages per second (0: as fast as possible)"
    )
    a = ap.parse_args()

    acked = 0
    reconnects = -1
    lock = threading.Lock()
    connected = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        nonlocal reconnects
        if reason_code == 0:
            with lock:
                reconnects += 1
            connected.set()

    def on_publish(client, userdata, mid, reason_code, properties):
        nonlocal acked
        with lock:
            acked += 1

    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=a.client_id,
        clean_session=False,
        protocol=mqtt.MQTTv311,
    )
    if a.username is not None:
        c.username_pw_set(a.username, a.password)
    c.max_inflight_messages_set(a.inflight)
    c.max_queued_messages_set(0)
    c.reconnect_delay_set(min_delay=0.05, max_delay=0.5)
    c.on_connect = on_connect
    c.on_publish = on_publish
    c.connect(a.host, a.port, keepalive=30)
    c.loop_start()
    if not connected.wait(30):
        print(json.dumps({"error": "no CONNACK"}))
        return 1

    finished = threading.Event()

    def report_progress():
        last = -1
        while True:
            done = finished.is_set()
            with lock:
                n = acked
            if n != last:
                with open(a.progress_file + ".tmp", "w") as f:
                    f.write(str(n))
                os.replace(a.progress_file + ".tmp", a.progress_file)
                last = n
            if done:
                return
            time.sleep(0.02)

    reporter = None
    if a.progress_file:
        reporter = threading.Thread(target=report_progress, daemon=True)
        reporter.start()

    poison = 0
    infos = []
    began = time.monotonic()
    for i in range(a.start, a.start + a.count):
        if a.rate > 0:
            # a steady stream: message n leaves at n / rate seconds
            ahead = began + (i - a.start) / a.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        # paho's message ids are 16 bits: keep well under 65535 unacknowledged
        while len(infos) - acked > 20000:
            time.sleep(0.005)
        k = i % a.topics
        topic = f"building/b{k % 7}/r{k}/env"
        if a.poison_every and i % a.poison_every == a.poison_every - 1:
            payload = b"\xff\xfe poison " + str(i).encode()
            poison += 1
        else:
            payload = json.dumps(
                {"temperature": 20 + (i % 50) / 10, "seq": i, "ts": BASE_MS + i}
            ).encode()
        infos.append(c.publish(topic, payload, qos=1))

    deadline = time.monotonic() + a.deadline
    while time.monotonic() < deadline:
        with lock:
            n = acked
        if n >= a.count and all(info.is_published() for info in infos):
            break
        time.sleep(0.02)
    finished.set()
    if reporter is not None:
        reporter.join()
    done = sum(1 for info in infos if info.is_published())
    c.disconnect()
    c.loop_stop()
    print(
        json.dumps(
            {
                "sent": a.count,
                "acked": done,
                "poison": poison,
                "good": a.count - poison,
                "reconnects": reconnects,
            }
        )
    )
    return 0 if done == a.count else 2


if __name__ == "__main__":
    sys.exit(main())
