"""A plexus peer over raw WebSocket frames, written from PROTOCOL.md alone, for the scripts
that check plexus from outside (relay-conformance, cluster-conformance)."""

import asyncio
import json
import socket

import msgpack
from websockets.asyncio.client import connect

TIMEOUT = 5.0


class Failed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failed(message)


class Peer:
    """One connection speaking plexus.v1.json or plexus.v1.msgpack."""

    def __init__(self, ws, codec, name):
        self.ws, self.codec, self.name = ws, codec, name

    @classmethod
    async def open(cls, url, codec, name):
        ws = await connect(url, subprotocols=[f"plexus.v1.{codec}"], max_size=4 << 20)
        check(ws.subprotocol == f"plexus.v1.{codec}", f"{name}: subprotocol {ws.subprotocol}")
        peer = cls(ws, codec, name)
        welcome = await peer.recv()
        check(welcome["t"] == "welcome", f"{name}: expected welcome, got {welcome}")
        peer.welcome = welcome
        return peer

    async def send(self, frame):
        if self.codec == "json":
            await self.ws.send(json.dumps(frame))
        else:
            await self.ws.send(msgpack.packb(frame, use_bin_type=True))

    async def recv(self, timeout=TIMEOUT):
        try:
            message = await asyncio.wait_for(self.ws.recv(), timeout)
        except asyncio.TimeoutError:
            raise Failed(f"{self.name}: nothing within {timeout}s") from None
        if self.codec == "json":
            check(isinstance(message, str), f"{self.name}: a binary message on JSON")
            return json.loads(message)
        check(isinstance(message, bytes), f"{self.name}: a text message on MessagePack")
        return msgpack.unpackb(message, raw=False)

    async def silent(self, seconds):
        try:
            frame = await asyncio.wait_for(self.ws.recv(), seconds)
        except asyncio.TimeoutError:
            return
        raise Failed(f"{self.name}: expected nothing, got {frame!r}")

    async def call(self, id, method, data=None, **extra):
        await self.send({"t": "req", "id": id, "m": method, "d": data, **extra})
        frame = await self.recv()
        check(frame.get("id") == id, f"{self.name}: answer to {id} expected, got {frame}")
        return frame

    async def provide(self, node, services):
        frame = await self.call(1, "$provide", {"node": node, "services": services})
        check(frame == {"t": "res", "id": 1, "d": {"node": node}}, f"$provide: {frame}")

    async def close(self):
        await self.ws.close()

    def abort(self):
        """Drops the TCP connection without a close frame."""
        self.ws.transport.abort()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_listening(port, process, name="plexus"):
    for _ in range(300):
        if process.poll() is not None:
            raise SystemExit(f"{name} exited (code {process.returncode})")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise SystemExit(f"{name} does not listen on {port}")
