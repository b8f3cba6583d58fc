#!/usr/bin/env python3
"""A skelpi port program: multiplies every element by its argument (2 if
none). Run by an agent started with `--ports examples/ports` as the kernel
`port:scale.py`, e.g. `farm(seq(port:scale.py(3)))`.

Frames on stdin/stdout, as Erlang's {packet,4}: a 4-byte big-endian
length, then the payload.
- request: the argument count (4-byte little-endian), then the arguments
  and the input's elements as 8-byte little-endian floats;
- reply: the output's elements as 8-byte little-endian floats, or
  b"error: <message>" for a failure of its own.
The program is started once and answers calls until its input closes.
"""
import struct
import sys


def answer(body):
    (nargs,) = struct.unpack_from("<I", body, 0)
    values = struct.unpack_from("<%dd" % ((len(body) - 4) // 8), body, 4)
    args, data = values[:nargs], values[nargs:]
    if nargs > 1:
        return b"error: scale.py takes at most one argument, got %d" % nargs
    factor = args[0] if args else 2.0
    return struct.pack("<%dd" % len(data), *(x * factor for x in data))


def main():
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = inp.read(4)
        if len(head) < 4:
            return  # the agent closed our input: the job has ended
        (length,) = struct.unpack(">I", head)
        reply = answer(inp.read(length))
        out.write(struct.pack(">I", len(reply)) + reply)
        out.flush()


if __name__ == "__main__":
    main()
