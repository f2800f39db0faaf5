#!/usr/bin/env python3
"""What the A -> B hop of a two-hop mTLS chain actually negotiates, seen on the wire.

    handshake-probe.py --relay PORT --upstream PORT --client PORT [--count 20] [--payload 64]

Listens on 127.0.0.1:RELAY and relays every connection to 127.0.0.1:UPSTREAM (proxy B's
TLS listener), reading the first TLS record each way (ClientHello and ServerHello are
cleartext in TLS 1.3) without changing a byte. Then it makes COUNT short connections, one
after another, to 127.0.0.1:CLIENT: a second instance of proxy A whose upstream is the
relay. Each sends PAYLOAD bytes and reads the echo. Prints one JSON object:

    {"count":20,"ok":20,"offered_psk":19,"resumed":19,"full":1,"hrr":0,
     "version":{"TLS1.3":20},"cipher":{"TLS_AES_256_GCM_SHA384":20},
     "group":{"X25519MLKEM768":20},"client_groups":{"X25519MLKEM768,X25519":20},
     "client_hello_bytes":1400}

`resumed` counts ServerHellos that accepted a pre-shared key (a resumed handshake: no
certificates are sent or verified); `full` the others. Bounded by --timeout. Stdlib only.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import struct

GROUPS = {
    0x0017: "P-256", 0x0018: "P-384", 0x0019: "P-521", 0x001D: "X25519", 0x001E: "X448",
    0x11EB: "SecP256r1MLKEM768", 0x11EC: "X25519MLKEM768", 0x11ED: "SecP384r1MLKEM1024",
    0x6399: "X25519Kyber768Draft00",
}
CIPHERS = {
    0x1301: "TLS_AES_128_GCM_SHA256", 0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
    0xC02B: "ECDHE-ECDSA-AES128-GCM-SHA256", 0xC02C: "ECDHE-ECDSA-AES256-GCM-SHA384",
    0xCCA9: "ECDHE-ECDSA-CHACHA20-POLY1305",
}
VERSIONS = {0x0304: "TLS1.3", 0x0303: "TLS1.2", 0x0302: "TLS1.1", 0x0301: "TLS1.0"}
# ServerHello.random of a HelloRetryRequest (RFC 8446 4.1.3)
HRR_RANDOM = bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")

stats: dict = {
    "offered_psk": 0, "resumed": 0, "full": 0, "hrr": 0, "parse_errors": 0,
    "version": collections.Counter(), "cipher": collections.Counter(),
    "group": collections.Counter(), "client_groups": collections.Counter(),
    "client_hello_bytes": [],
}


def name(table: dict, code: int) -> str:
    return table.get(code, f"0x{code:04x}")


def extensions(body: bytes, p: int) -> dict[int, bytes]:
    out = {}
    if p + 2 > len(body):
        return out
    end = p + 2 + struct.unpack(">H", body[p:p + 2])[0]
    p += 2
    while p + 4 <= end:
        t, n = struct.unpack(">HH", body[p:p + 4])
        out[t] = body[p + 4:p + 4 + n]
        p += 4 + n
    return out


def parse_client_hello(rec: bytes) -> None:
    body = rec[5:]
    if body[0] != 1:
        raise ValueError("not a ClientHello")
    p = 4 + 2 + 32
    p += 1 + body[p]                                      # session id
    p += 2 + struct.unpack(">H", body[p:p + 2])[0]        # cipher suites
    p += 1 + body[p]                                      # compression methods
    ext = extensions(body, p)
    if 41 in ext:
        stats["offered_psk"] += 1
    groups = []
    ks = ext.get(51, b"")
    q = 2
    while q + 4 <= len(ks):
        g, n = struct.unpack(">HH", ks[q:q + 4])
        groups.append(name(GROUPS, g))
        q += 4 + n
    stats["client_groups"][",".join(groups) or "none"] += 1
    stats["client_hello_bytes"].append(len(rec))


def parse_server_hello(rec: bytes) -> None:
    body = rec[5:]
    if body[0] != 2:
        raise ValueError("not a ServerHello")
    p = 4
    legacy = struct.unpack(">H", body[p:p + 2])[0]
    random = body[p + 2:p + 34]
    p += 2 + 32
    p += 1 + body[p]
    cipher = struct.unpack(">H", body[p:p + 2])[0]
    p += 2 + 1
    ext = extensions(body, p)
    if random == HRR_RANDOM:
        stats["hrr"] += 1
    version = struct.unpack(">H", ext[43])[0] if len(ext.get(43, b"")) == 2 else legacy
    stats["version"][name(VERSIONS, version)] += 1
    stats["cipher"][name(CIPHERS, cipher)] += 1
    if len(ext.get(51, b"")) >= 2:
        stats["group"][name(GROUPS, struct.unpack(">H", ext[51][:2])[0])] += 1
    stats["resumed" if 41 in ext else "full"] += 1


async def read_record(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(5)
    return head + await reader.readexactly(struct.unpack(">H", head[3:5])[0])


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except Exception:  # noqa: BLE001 - either side may reset; the relay just stops
        writer.close()


async def relay(upstream: int, creader, cwriter) -> None:
    try:
        ureader, uwriter = await asyncio.open_connection("127.0.0.1", upstream)
    except OSError:
        cwriter.close()
        return
    try:
        hello = await read_record(creader)
        uwriter.write(hello)
        try:
            parse_client_hello(hello)
        except Exception:  # noqa: BLE001
            stats["parse_errors"] += 1
        answer = await read_record(ureader)
        cwriter.write(answer)
        try:
            parse_server_hello(answer)
        except Exception:  # noqa: BLE001
            stats["parse_errors"] += 1
        await asyncio.gather(pump(creader, uwriter), pump(ureader, cwriter))
    except Exception:  # noqa: BLE001
        pass
    finally:
        cwriter.close()
        uwriter.close()


async def client(port: int, payload: bytes) -> bool:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        await writer.drain()
        ok = await asyncio.wait_for(reader.readexactly(len(payload)), timeout=5) == payload
        writer.close()
        await writer.wait_closed()
        return ok
    except Exception:  # noqa: BLE001
        return False


async def main_async(args: argparse.Namespace) -> dict:
    server = await asyncio.start_server(
        lambda r, w: relay(args.upstream, r, w), "127.0.0.1", args.relay)
    ok = 0
    payload = b"p" * args.payload
    for _ in range(args.count):
        ok += await client(args.client, payload)
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    server.close()
    sizes = stats.pop("client_hello_bytes")
    out = {"count": args.count, "ok": ok}
    for k, v in stats.items():
        out[k] = dict(v) if isinstance(v, collections.Counter) else v
    out["client_hello_bytes"] = max(sizes) if sizes else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--relay", type=int, required=True)
    ap.add_argument("--upstream", type=int, required=True)
    ap.add_argument("--client", type=int, required=True)
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--payload", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=60)
    args = ap.parse_args()
    try:
        out = asyncio.run(asyncio.wait_for(main_async(args), timeout=args.timeout))
    except Exception as e:  # noqa: BLE001
        out = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
