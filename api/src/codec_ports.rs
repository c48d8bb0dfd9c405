//! `config.mesh.io/codec-ports` (the injector) and `MESH_PROXY_INBOUND_CODEC_PORTS` (the
//! proxy): which inbound ports carry which codec's protocol.

use std::fmt;

/// One entry of `config.mesh.io/codec-ports` / `MESH_PROXY_INBOUND_CODEC_PORTS`: a port or an
/// inclusive range, and the codec its connections carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodecPorts {
    /// The first port of the range.
    pub first: u16,
    /// The last port of the range (`first` for a single port).
    pub last: u16,
    /// One of [`CODECS`].
    pub codec: String,
}

impl fmt::Display for CodecPorts {
    /// The entry as [`parse_codec_ports`] reads it: `6379=redis`, `9090-9091=thrift`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}={}", self.first, self.codec)
        } else {
            write!(f, "{}-{}={}", self.first, self.last, self.codec)
        }
    }
}

/// The codecs the proxy has.
pub const CODECS: [&str; 2] = ["redis", "thrift"];

/// The prefix of a Service port's `appProtocol` that names a codec: `mesh.io/redis`.
pub const CODEC_APP_PROTOCOL_PREFIX: &str = "mesh.io/";

/// The codec a Service port's `appProtocol` names, if it is `mesh.io/<codec>` with a codec of
/// [`CODECS`]; any other `appProtocol` (`http`, `kubernetes.io/h2c`, `mesh.io/memcached`) is none.
///
/// ```
/// use mesh_api::codec_ports::app_protocol_codec;
/// assert_eq!(app_protocol_codec("mesh.io/redis"), Some("redis"));
/// assert_eq!(app_protocol_codec("redis"), None);
/// ```
pub fn app_protocol_codec(app_protocol: &str) -> Option<&'static str> {
    let name = app_protocol.strip_prefix(CODEC_APP_PROTOCOL_PREFIX)?;
    CODECS.into_iter().find(|c| *c == name)
}

/// The normalized text of parsed codec ports: entries as [`CodecPorts`] displays them, joined
/// by commas (`6379=redis,9090-9091=thrift`), what the injector gives the proxy.
pub fn format_codec_ports(ports: &[CodecPorts]) -> String {
    ports
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `PORT=CODEC` entries separated by commas (`6379=redis, 9090-9091=thrift`); a codec
/// must be one of [`CODECS`], a port 1–65535, a range ascending. An empty string is no ports.
pub fn parse_codec_ports(value: &str) -> Result<Vec<CodecPorts>, String> {
    let mut out = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (ports, codec) = entry
            .split_once('=')
            .ok_or_else(|| format!("{entry:?}: expected PORT=CODEC (6379=redis)"))?;
        let codec = codec.trim();
        if !CODECS.contains(&codec) {
            return Err(format!(
                "{entry:?}: unknown codec {codec:?} (known: {})",
                CODECS.join(", ")
            ));
        }
        let port = |p: &str| -> Result<u16, String> {
            match p.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(format!("{entry:?}: {:?} is not a port (1-65535)", p.trim())),
                Ok(p) => Ok(p),
            }
        };
        let (first, last) = match ports.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(ports)?;
                (p, p)
            }
        };
        if first > last {
            return Err(format!("{entry:?}: the range is descending"));
        }
        out.push(CodecPorts {
            first,
            last,
            codec: codec.to_owned(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ports_and_ranges() {
        let got = parse_codec_ports(" 6379=redis, 9090-9091=thrift,").unwrap();
        assert_eq!(
            got,
            vec![
                CodecPorts {
                    first: 6379,
                    last: 6379,
                    codec: "redis".into()
                },
                CodecPorts {
                    first: 9090,
                    last: 9091,
                    codec: "thrift".into()
                },
            ]
        );
        assert_eq!(parse_codec_ports("").unwrap(), vec![]);
        assert_eq!(format_codec_ports(&got), "6379=redis,9090-9091=thrift");
        assert_eq!(parse_codec_ports(&format_codec_ports(&got)).unwrap(), got);
    }

    #[test]
    fn app_protocols_name_codecs() {
        for (app_protocol, codec) in [
            ("mesh.io/redis", Some("redis")),
            ("mesh.io/thrift", Some("thrift")),
            ("mesh.io/memcached", None),
            ("mesh.io/", None),
            ("redis", None),
            ("kubernetes.io/h2c", None),
            ("http", None),
        ] {
            assert_eq!(app_protocol_codec(app_protocol), codec, "{app_protocol}");
        }
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        for bad in [
            "6379",
            "6379=memcached",
            "0=redis",
            "x=redis",
            "9-1=thrift",
            "70000=redis",
        ] {
            assert!(parse_codec_ports(bad).is_err(), "{bad}");
        }
    }
}
