#!/usr/bin/env python3
"""A skelpi port program: multiplies every element by its argument (2 if
none). Run by an agent started with `--ports examples/ports` as the kernel
`port:scale.py`, e.g. `farm(seq(port:scale.py(3)))`.

Frames on stdin/stdout, as Erlang's {packet,4}: a 4-byte big-endian
length, then the payload.
- request: argument count, rows, columns (4-byte little-endian integers;
  rows 0 for a list), then the arguments and the input's elements as
  8-byte little-endian floats;
- reply: a 4-byte little-endian status, then for 0 the output's elements
  as 8-byte little-endian floats, for 1 an error message (UTF-8).
The program answers calls until the agent kills it (when the job ends).
"""
import struct
import sys

OK, ERROR = struct.pack("<I", 0), struct.pack("<I", 1)


def answer(body):
    nargs, _rows, _cols = struct.unpack_from("<III", body, 0)
    values = struct.unpack_from("<%dd" % ((len(body) - 12) // 8), body, 12)
    args, data = values[:nargs], values[nargs:]
    if nargs > 1:
        return ERROR + b"scale.py takes at most one argument, got %d" % nargs
    factor = args[0] if args else 2.0
    return OK + struct.pack("<%dd" % len(data), *(x * factor for x in data))


def main():
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = inp.read(4)
        if len(head) < 4:
            return
        (length,) = struct.unpack(">I", head)
        reply = answer(inp.read(length))
        out.write(struct.pack(">I", len(reply)) + reply)
        out.flush()


if __name__ == "__main__":
    main()
