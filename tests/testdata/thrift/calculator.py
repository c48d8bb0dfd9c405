"""The Calculator service of the codec tests, written by hand with the `thrift` package alone:
what the Thrift compiler would generate from

    exception CalcError { 1: string why }
    service Calculator {
        i32 add(1: i32 a, 2: i32 b)
        string echo(1: string s)
        void fail(1: string why) throws (1: CalcError err)
        oneway void ping()
        i32 pings()        // how many pings this server has received
        string whoami()    // the server's --name
    }

Shared by server.py and client.py: the argument and result structs of each method, read and
written field by field with a protocol's readMessageBegin/readStructBegin/... calls.
"""

from thrift.Thrift import TApplicationException, TMessageType, TType

# Each method's argument struct: field id -> (name, type).
ARGS = {
    "add": {1: ("a", TType.I32), 2: ("b", TType.I32)},
    "echo": {1: ("s", TType.STRING)},
    "fail": {1: ("why", TType.STRING)},
    "ping": {},
    "pings": {},
    "whoami": {},
}

# Each two-way method's result type (None: void).
RESULT = {
    "add": TType.I32,
    "echo": TType.STRING,
    "fail": None,
    "pings": TType.I32,
    "whoami": TType.STRING,
}

ONEWAY = {"ping"}

# The declared exception, CalcError: field id -> (name, type).
CALC_ERROR = {1: ("why", TType.STRING)}

# Field 1 of fail's result struct is its declared exception.
EXCEPTION_FIELD = (1, "err")


class CalcError(Exception):
    """The declared exception of `fail`."""

    def __init__(self, why):
        Exception.__init__(self, why)
        self.why = why


def message_type(method):
    """The message type a client sends for `method`."""
    return TMessageType.ONEWAY if method in ONEWAY else TMessageType.CALL


def write_struct(prot, name, fields):
    """Writes a struct: `fields` is a list of (id, name, type, value); a None value is left
    out; a STRUCT value is itself a (struct name, fields) pair."""
    prot.writeStructBegin(name)
    for fid, fname, ftype, value in fields:
        if value is None:
            continue
        prot.writeFieldBegin(fname, ftype, fid)
        if ftype == TType.I32:
            prot.writeI32(value)
        elif ftype == TType.STRING:
            prot.writeString(value)
        elif ftype == TType.STRUCT:
            write_struct(prot, value[0], value[1])
        else:
            raise ValueError("cannot write type %d" % ftype)
        prot.writeFieldEnd()
    prot.writeFieldStop()
    prot.writeStructEnd()


def read_struct(prot, spec):
    """Reads a struct into a dict by `spec` (field id -> (name, type) or (name, STRUCT,
    nested spec)); fields it does not know, or of another type, are skipped."""
    out = {}
    prot.readStructBegin()
    while True:
        _, ftype, fid = prot.readFieldBegin()
        if ftype == TType.STOP:
            break
        known = spec.get(fid)
        if known is None or known[1] != ftype:
            prot.skip(ftype)
        elif ftype == TType.I32:
            out[known[0]] = prot.readI32()
        elif ftype == TType.STRING:
            out[known[0]] = prot.readString()
        elif ftype == TType.STRUCT:
            out[known[0]] = read_struct(prot, known[2])
        else:
            prot.skip(ftype)
        prot.readFieldEnd()
    prot.readStructEnd()
    return out


def args_fields(method, values):
    """The argument struct's fields of `method` from `values` (a list, in field order)."""
    spec = ARGS[method]
    return [
        (fid, spec[fid][0], spec[fid][1], value)
        for fid, value in zip(sorted(spec), values)
    ]


def result_spec(method):
    """The spec of `method`'s result struct, for read_struct."""
    spec = {}
    if RESULT.get(method) is not None:
        spec[0] = ("success", RESULT[method])
    if method == "fail":
        fid, name = EXCEPTION_FIELD
        spec[fid] = (name, TType.STRUCT, CALC_ERROR)
    return spec


def write_application_exception(oprot, name, seqid, kind, message):
    """Answers a call with a TApplicationException."""
    oprot.writeMessageBegin(name, TMessageType.EXCEPTION, seqid)
    TApplicationException(kind, message).write(oprot)
    oprot.writeMessageEnd()
    oprot.trans.flush()


def application_exception_name(kind):
    """The name of a TApplicationException type, e.g. INTERNAL_ERROR."""
    for attr in dir(TApplicationException):
        if attr.isupper() and getattr(TApplicationException, attr) == kind:
            return attr
    return "UNKNOWN"
