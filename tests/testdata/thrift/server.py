#!/usr/bin/python3
"""The codec tests' Thrift server: the Calculator service (see calculator.py) on a threaded
server, a thread per connection, many connections.

Each connection's transport and protocol are told from its first bytes: framed (a 4-byte
length first, as TFramedTransport writes) or not, and the binary (0x80 0x01) or compact (0x82)
protocol; it is answered in kind. With `--protocol binary` (or `compact`) it speaks that one
alone, as a server built with one protocol factory does: a connection in the other is closed.
Prints `listening on HOST:PORT` once it accepts connections.

    /usr/bin/python3 server.py --port 9090 [--host 0.0.0.0] [--name thrift]
        [--protocol any|binary|compact] [--echo-prefix P]
"""

import argparse
import sys
import threading

from thrift.protocol import TBinaryProtocol, TCompactProtocol, TProtocol
from thrift.server import TServer
from thrift.Thrift import TApplicationException, TMessageType, TType
from thrift.transport import TSocket, TTransport

import calculator as calc


class Handler(object):
    """What the methods do."""

    def __init__(self, name, echo_prefix):
        self.name = name
        self.echo_prefix = echo_prefix
        self.lock = threading.Lock()
        self.ping_count = 0

    def call(self, method, args):
        """The result of two-way `method`, or raises CalcError."""
        if method == "add":
            total = args.get("a", 0) + args.get("b", 0)
            # i32 arithmetic wraps.
            return (total + 2**31) % 2**32 - 2**31
        if method == "echo":
            return self.echo_prefix + args.get("s", "")
        if method == "fail":
            raise calc.CalcError(args.get("why", ""))
        if method == "pings":
            with self.lock:
                return self.ping_count
        if method == "whoami":
            return self.name
        raise ValueError("no such method " + method)

    def ping(self):
        with self.lock:
            self.ping_count += 1


class Prefixed(TTransport.TTransportBase):
    """A transport that reads `prefix` first, then from `trans`: the bytes a detection read."""

    def __init__(self, prefix, trans):
        self.prefix = prefix
        self.trans = trans

    def isOpen(self):
        return self.trans.isOpen()

    def read(self, sz):
        if self.prefix:
            out, self.prefix = self.prefix[:sz], self.prefix[sz:]
            return out
        return self.trans.read(sz)


class Detect(object):
    """The input "protocol" of a connection: on the first call, reads the first bytes and
    makes the connection's real input and output protocols."""

    def __init__(self, sock, allowed):
        self.sock = sock
        self.allowed = allowed
        self.protocols = None

    def resolve(self):
        if self.protocols is None:
            first = self.sock.readAll(1)
            if first[0] in (0x80, 0x82):
                itrans = TTransport.TBufferedTransport(Prefixed(first, self.sock))
                otrans = TTransport.TBufferedTransport(self.sock)
                kind = first[0]
            else:
                framed = TTransport.TFramedTransport(Prefixed(first, self.sock))
                kind = framed.readAll(1)
                itrans = Prefixed(kind, framed)
                otrans = TTransport.TFramedTransport(self.sock)
                kind = kind[0]
            if kind == 0x82:
                name, make = "compact", TCompactProtocol.TCompactProtocol
            else:
                name, make = "binary", TBinaryProtocol.TBinaryProtocol
            if self.allowed not in ("any", name):
                raise TProtocol.TProtocolException(
                    TProtocol.TProtocolException.BAD_VERSION,
                    "a %s message, this server speaks %s" % (name, self.allowed),
                )
            self.protocols = (make(itrans), make(otrans))
        return self.protocols


class DetectFactory(object):
    def __init__(self, allowed):
        self.allowed = allowed

    def getProtocol(self, trans):
        return Detect(trans, self.allowed)


class Unused(object):
    """The output protocol factory: the output protocol is made by Detect."""

    def getProtocol(self, trans):
        return None


class Processor(object):
    """Reads one call, answers it."""

    def __init__(self, handler):
        self.handler = handler

    def process(self, detect, _unused):
        iprot, oprot = detect.resolve()
        name, mtype, seqid = iprot.readMessageBegin()
        spec = calc.ARGS.get(name)
        if spec is None:
            iprot.skip(TType.STRUCT)
            iprot.readMessageEnd()
            calc.write_application_exception(
                oprot,
                name,
                seqid,
                TApplicationException.UNKNOWN_METHOD,
                "unknown method " + name,
            )
            return
        args = calc.read_struct(iprot, spec)
        iprot.readMessageEnd()
        if name in calc.ONEWAY or mtype == TMessageType.ONEWAY:
            if name == "ping":
                self.handler.ping()
            return
        result_type = calc.RESULT[name]
        try:
            value = self.handler.call(name, args)
            fields = [(0, "success", result_type, value)] if result_type is not None else []
        except calc.CalcError as e:
            fid, fname = calc.EXCEPTION_FIELD
            fields = [
                (fid, fname, TType.STRUCT, ("CalcError", [(1, "why", TType.STRING, e.why)]))
            ]
        except Exception as e:  # a bug of the handler: the client gets it as INTERNAL_ERROR
            calc.write_application_exception(
                oprot, name, seqid, TApplicationException.INTERNAL_ERROR, str(e)
            )
            return
        oprot.writeMessageBegin(name, TMessageType.REPLY, seqid)
        calc.write_struct(oprot, name + "_result", fields)
        oprot.writeMessageEnd()
        oprot.trans.flush()


class Listening(object):
    """A server socket that already listens: TThreadedServer's listen() is then a no-op."""

    def __init__(self, sock):
        self.sock = sock

    def listen(self):
        pass

    def accept(self):
        return self.sock.accept()


def main():
    parser = argparse.ArgumentParser(description="The Calculator Thrift server.")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--name", default="thrift", help="what whoami answers")
    parser.add_argument("--echo-prefix", default="", help="what echo puts before its string")
    parser.add_argument(
        "--protocol",
        choices=["any", "binary", "compact"],
        default="any",
        help="the protocols it speaks",
    )
    opts = parser.parse_args()

    sock = TSocket.TServerSocket(host=opts.host, port=opts.port)
    sock.listen()
    server = TServer.TThreadedServer(
        Processor(Handler(opts.name, opts.echo_prefix)),
        Listening(sock),
        TTransport.TTransportFactoryBase(),
        TTransport.TTransportFactoryBase(),
        DetectFactory(opts.protocol),
        Unused(),
        daemon=True,
    )
    print("listening on %s:%d" % (opts.host, opts.port), flush=True)
    try:
        server.serve()
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
