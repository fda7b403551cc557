#!/usr/bin/env python3
"""A delaying TCP relay: makes one replica slow without netem (this kernel has none).

    python3 tools/fleet/relay.py --listen 10.77.0.11:7701 --target 10.77.0.11:7700 --delay-ms 50

Every chunk read from a client waits --delay-ms before it is forwarded to the target (chunks
stay in order, so a keep-alive HTTP request of one chunk is delayed by exactly that); answers
flow back at once. `--drop-every N` closes every N-th connection after its first chunk without
forwarding it. Runs until SIGTERM/SIGINT, or --max-seconds (a bound, so a forgotten relay ends).
Prints one JSON line of counters on exit. The Rust twin for tests is
crates/earshot-testkit/src/relay.rs.
"""
import argparse
import asyncio
import json
import signal
import sys

STATS = {"accepted": 0, "chunks": 0, "dropped": 0, "connect_failures": 0}


def split(hostport):
    host, port = hostport.rsplit(":", 1)
    return host, int(port)


async def pump_delayed(reader, writer, delay):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(data)
            await writer.drain()
            STATS["chunks"] += 1
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            pass


async def pump(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except (OSError, RuntimeError):
            pass


async def handle(creader, cwriter, args):
    STATS["accepted"] += 1
    n = STATS["accepted"]
    if args.drop_every and n % args.drop_every == 0:
        await creader.read(1)
        STATS["dropped"] += 1
        cwriter.close()
        return
    host, port = split(args.target)
    try:
        ureader, uwriter = await asyncio.open_connection(host, port)
    except OSError:
        STATS["connect_failures"] += 1
        cwriter.close()
        return
    await asyncio.gather(
        pump_delayed(creader, uwriter, args.delay_ms / 1000.0),
        pump(ureader, cwriter),
    )
    cwriter.close()


async def main(args):
    host, port = split(args.listen)
    server = await asyncio.start_server(lambda r, w: handle(r, w, args), host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"relay": args.listen, "target": args.target, "delay_ms": args.delay_ms}),
          flush=True)
    try:
        await asyncio.wait_for(stop.wait(), timeout=args.max_seconds)
    except asyncio.TimeoutError:
        pass
    server.close()
    print(json.dumps(STATS), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", required=True, help="HOST:PORT to accept on")
    p.add_argument("--target", required=True, help="HOST:PORT to forward to")
    p.add_argument("--delay-ms", type=float, default=50.0)
    p.add_argument("--drop-every", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=3600.0)
    sys.exit(asyncio.run(main(p.parse_args())))
