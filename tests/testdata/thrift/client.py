#!/usr/bin/python3
"""The codec tests' Thrift client: calls the Calculator service (see calculator.py) on one
connection and prints one line per call.

    /usr/bin/python3 client.py --host H --port P [--protocol binary|compact]
        [--transport framed|buffered] [--calls N] [--timeout SECONDS] OP...

OP is one of (all of them are run in order, the whole list --calls times):

    add:A:B         prints `add SUM`
    echo:TEXT       prints `echo ANSWER`
    echo-size:N     echoes N bytes; prints `echo-size N ok`, or what differs
    fail:WHY        expects the declared exception; prints `fail CalcError: WHY`
    ping            the oneway call; prints `ping sent`
    pings           prints `pings COUNT`, the pings the server has received
    whoami          prints `whoami NAME`
    call:METHOD     calls METHOD with no arguments (an unknown one gets a TApplicationException)

A TApplicationException ends the run: `client.py: METHOD: TApplicationException TYPE: MESSAGE`
on stderr, exit status 1. A transport or protocol failure: the same with its text, status 2.
"""

import argparse
import sys

from thrift.protocol import TBinaryProtocol, TCompactProtocol
from thrift.Thrift import TApplicationException, TException, TMessageType
from thrift.transport import TSocket, TTransport

import calculator as calc


class Client(object):
    def __init__(self, iprot, oprot):
        self.iprot = iprot
        self.oprot = oprot
        self.seqid = 0

    def call(self, method, values):
        """Calls `method`; its result (None for a oneway call), or raises CalcError or
        TApplicationException."""
        self.seqid += 1
        seqid = self.seqid
        self.oprot.writeMessageBegin(method, calc.message_type(method), seqid)
        if method in calc.ARGS:
            fields = calc.args_fields(method, values)
        else:
            fields = []
        calc.write_struct(self.oprot, method + "_args", fields)
        self.oprot.writeMessageEnd()
        self.oprot.trans.flush()
        if method in calc.ONEWAY:
            return None

        iprot = self.iprot
        name, mtype, rseqid = iprot.readMessageBegin()
        if mtype == TMessageType.EXCEPTION:
            x = TApplicationException()
            x.read(iprot)
            iprot.readMessageEnd()
            raise x
        result = calc.read_struct(iprot, calc.result_spec(method))
        iprot.readMessageEnd()
        if name != method or rseqid != seqid:
            raise TException(
                "answer to %s #%d, expected %s #%d" % (name, rseqid, method, seqid)
            )
        if "err" in result:
            raise calc.CalcError(result["err"].get("why", ""))
        if calc.RESULT.get(method) is not None and "success" not in result:
            raise TException("%s: no result" % method)
        return result.get("success")


def run(client, op):
    """Runs one OP; the line to print."""
    name, _, rest = op.partition(":")
    if name == "add":
        a, _, b = rest.partition(":")
        return "add %d" % client.call("add", [int(a), int(b)])
    if name == "echo":
        return "echo %s" % client.call("echo", [rest])
    if name == "echo-size":
        n = int(rest)
        sent = "".join(chr(ord("a") + i % 26) for i in range(n))
        got = client.call("echo", [sent])
        if got == sent:
            return "echo-size %d ok" % n
        return "echo-size %d differs: got %d bytes starting %r" % (n, len(got), got[:60])
    if name == "fail":
        try:
            client.call("fail", [rest])
        except calc.CalcError as e:
            return "fail CalcError: %s" % e.why
        return "fail returned without its exception"
    if name == "ping":
        client.call("ping", [])
        return "ping sent"
    if name in ("pings", "whoami"):
        return "%s %s" % (name, client.call(name, []))
    if name == "call":
        return "call %s %r" % (rest, client.call(rest, []))
    raise SystemExit("client.py: unknown OP %r" % op)


def main():
    parser = argparse.ArgumentParser(description="A Calculator Thrift client.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--protocol", choices=["binary", "compact"], default="binary")
    parser.add_argument("--transport", choices=["framed", "buffered"], default="framed")
    parser.add_argument("--calls", type=int, default=1, help="how many times to run the OPs")
    parser.add_argument("--timeout", type=float, default=10.0, help="socket timeout, seconds")
    parser.add_argument("ops", nargs="+", metavar="OP")
    opts = parser.parse_args()

    sock = TSocket.TSocket(opts.host, opts.port)
    sock.setTimeout(opts.timeout * 1000)
    if opts.transport == "framed":
        trans = TTransport.TFramedTransport(sock)
    else:
        trans = TTransport.TBufferedTransport(sock)
    if opts.protocol == "compact":
        prot = TCompactProtocol.TCompactProtocol(trans)
    else:
        prot = TBinaryProtocol.TBinaryProtocol(trans)
    client = Client(prot, prot)
    op = "connect"
    try:
        trans.open()
        for _ in range(opts.calls):
            for op in opts.ops:
                print(run(client, op), flush=True)
    except TApplicationException as x:
        print(
            "client.py: %s: TApplicationException %s: %s"
            % (op, calc.application_exception_name(x.type), x.message),
            file=sys.stderr,
        )
        return 1
    except (TException, OSError, EOFError) as x:
        print("client.py: %s: %s: %s" % (op, type(x).__name__, x), file=sys.stderr)
        return 2
    finally:
        trans.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
