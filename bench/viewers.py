"""WebSocket viewers for the benchmark, run as a separate process so they do not share the
service's GIL: one connection per session, every frame_result timed on arrival.

    python bench/viewers.py --out FILE --seconds S URL [URL ...]

Each URL carries its own `format=binary|json` query parameter.

Writes an .npz with, per URL i, arrays r{i} (receive wall time), t{i} (the frame's `timestamp`,
its decode wall time), f{i} (frame_index) and x{i} (the negotiated Sec-WebSocket-Extensions).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import struct
import sys
import time

import numpy as np
from websockets.asyncio.client import connect

HEAD_CHARS = 512
_TIMESTAMP = re.compile(r'"timestamp":([0-9.eE+-]+)')
_FRAME_INDEX = re.compile(r'"frame_index":(\d+)')


async def _watch(url: str, compression: str | None, until: float, out: dict) -> None:
    received, stamps, indices = [], [], []
    out[url] = (received, stamps, indices, "")
    async with connect(url, max_size=None, compression=compression, open_timeout=30) as ws:
        out[url] = (received, stamps, indices, ws.response.headers.get("Sec-WebSocket-Extensions", ""))
        while True:
            remaining = until - time.time()
            if remaining <= 0:
                break
            try:
                message = await asyncio.wait_for(ws.recv(), remaining)
            except TimeoutError:
                break
            now = time.time()
            if isinstance(message, bytes):
                (length,) = struct.unpack_from(">I", message)
                header = json.loads(message[4 : 4 + length])
                stamp, index = header["timestamp"], header["frame_index"]
            else:
                # The JSON frame carries the base64 JPEG last: read the header fields from the
                # start instead of parsing ~270 KB per message (which would make the viewer,
                # not the service, the bottleneck at 16 streams a process).
                head = message[:HEAD_CHARS]
                if '"type":"frame_result"' not in head:
                    continue
                stamp_match, index_match = _TIMESTAMP.search(head), _FRAME_INDEX.search(head)
                if stamp_match is None or index_match is None:
                    header = json.loads(message)
                    stamp, index = header["timestamp"], header["frame_index"]
                else:
                    stamp, index = float(stamp_match.group(1)), int(index_match.group(1))
            received.append(now)
            stamps.append(stamp)
            indices.append(index)


async def _main(args: argparse.Namespace) -> int:
    until = time.time() + args.seconds
    out: dict = {}
    compression = None if args.compression == "none" else "deflate"
    results = await asyncio.gather(*(_watch(url, compression, until, out) for url in args.urls), return_exceptions=True)
    errors = [f"{url}: {r!r}" for url, r in zip(args.urls, results, strict=False) if isinstance(r, BaseException)]
    arrays = {}
    for i, url in enumerate(args.urls):
        received, stamps, indices, extensions = out.get(url, ([], [], [], ""))
        arrays[f"r{i}"] = np.asarray(received, np.float64)
        arrays[f"t{i}"] = np.asarray(stamps, np.float64)
        arrays[f"f{i}"] = np.asarray(indices, np.int64)
        arrays[f"x{i}"] = np.asarray(extensions)
    np.savez(args.out, **arrays)
    for error in errors:
        print(f"viewer error: {error}", file=sys.stderr)
    return 1 if errors else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument(
        "--compression",
        choices=("deflate", "none"),
        default="deflate",
        help="permessage-deflate offer; browsers offer it, so does the default",
    )
    parser.add_argument("urls", nargs="+")
    return asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
