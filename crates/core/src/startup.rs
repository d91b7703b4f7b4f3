//! The first packet a postgres client sends, as the proxy sees it.
//!
//! The proxy opens a backend connection only once the client has sent a
//! complete, well-formed first packet, so that a client that connects and
//! says nothing (a port scanner, a stuck pool) never costs postgres a
//! backend process. This module is the pure half of that: it reads the
//! 8-byte header (length, code), says how long the whole packet is, checks
//! its body, and renders the `ErrorResponse` a refused client is shown.
//!
//! The rules follow postgres' own `ProcessStartupPacket`: every first packet
//! starts with its length (counting itself) and a 32-bit code; SSLRequest and
//! GSSENCRequest are exactly 8 bytes, CancelRequest exactly 16, and a
//! StartupMessage carries protocol 3.x followed by NUL-terminated name/value
//! pairs and a final NUL, at most [`MAX_LENGTH`] bytes in all. Nothing past
//! the first packet is looked at: after it, the proxy relays bytes.

use std::fmt;

/// Bytes of the header every first packet starts with: length and code.
pub const HEADER_LENGTH: usize = 8;
/// The longest first packet accepted; postgres' `MAX_STARTUP_PACKET_LENGTH`.
pub const MAX_LENGTH: u32 = 10_000;

/// Code of an SSLRequest (1234 in the high half, 5679 in the low one).
pub const SSL_REQUEST: u32 = 80_877_103;
/// Code of a GSSENCRequest.
pub const GSSENC_REQUEST: u32 = 80_877_104;
/// Code of a CancelRequest.
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// The major protocol version a StartupMessage must carry.
pub const PROTOCOL_MAJOR: u16 = 3;
/// Length of a CancelRequest: header, process id, secret key.
const CANCEL_LENGTH: u32 = 16;

/// Which first packet a client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Asks for TLS; the backend answers one byte, then TLS or a startup follows.
    SslRequest,
    /// Asks for GSSAPI encryption; likewise.
    GssEncRequest,
    /// Asks the backend to cancel another session's query.
    CancelRequest,
    /// Starts a session with protocol `3.minor`.
    Startup {
        /// The minor protocol version asked for (postgres negotiates it down).
        minor: u16,
    },
}

/// A valid header: what the packet is and how many bytes it has in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The packet's kind.
    pub kind: Kind,
    /// The packet's whole length, header included.
    pub length: u32,
}

impl Header {
    /// Bytes that follow the header.
    pub fn body_length(&self) -> usize {
        self.length as usize - HEADER_LENGTH
    }
}

/// Why a first packet was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The length cannot even hold the header.
    TooShort {
        /// The length the client sent.
        length: u32,
    },
    /// Longer than [`MAX_LENGTH`].
    TooLong {
        /// The length the client sent.
        length: u32,
    },
    /// A fixed-size request with another length.
    WrongLength {
        /// The request.
        kind: Kind,
        /// The length the client sent.
        length: u32,
    },
    /// A StartupMessage with a protocol other than 3.x.
    UnsupportedProtocol {
        /// The major version asked for.
        major: u16,
        /// The minor version asked for.
        minor: u16,
    },
    /// A StartupMessage whose parameters do not end in a NUL byte.
    Unterminated,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::TooShort { length } => write!(
                f,
                "invalid length of startup packet: {length} bytes, less than its {HEADER_LENGTH}-byte header"
            ),
            Refused::TooLong { length } => write!(
                f,
                "invalid length of startup packet: {length} bytes, more than the {MAX_LENGTH} allowed"
            ),
            Refused::WrongLength { kind, length } => {
                let want = match kind {
                    Kind::CancelRequest => CANCEL_LENGTH,
                    _ => HEADER_LENGTH as u32,
                };
                write!(f, "invalid length of {kind}: {length} bytes, not {want}")
            }
            Refused::UnsupportedProtocol { major, minor } => write!(
                f,
                "unsupported frontend protocol {major}.{minor}: only 3.x is served (is this a postgres client?)"
            ),
            Refused::Unterminated => f.write_str(
                "invalid startup packet layout: the parameters do not end in a NUL byte",
            ),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::SslRequest => f.write_str("SSLRequest"),
            Kind::GssEncRequest => f.write_str("GSSENCRequest"),
            Kind::CancelRequest => f.write_str("CancelRequest"),
            Kind::Startup { minor } => write!(f, "StartupMessage (protocol 3.{minor})"),
        }
    }
}

/// Reads the 8-byte header: the packet's kind and whole length, or why the
/// client is refused before another byte is read.
pub fn header(bytes: [u8; HEADER_LENGTH]) -> Result<Header, Refused> {
    let length = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let code = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if length < HEADER_LENGTH as u32 {
        return Err(Refused::TooShort { length });
    }
    if length > MAX_LENGTH {
        return Err(Refused::TooLong { length });
    }
    let (kind, fixed) = match code {
        SSL_REQUEST => (Kind::SslRequest, Some(HEADER_LENGTH as u32)),
        GSSENC_REQUEST => (Kind::GssEncRequest, Some(HEADER_LENGTH as u32)),
        CANCEL_REQUEST => (Kind::CancelRequest, Some(CANCEL_LENGTH)),
        _ => {
            let (major, minor) = ((code >> 16) as u16, code as u16);
            if major != PROTOCOL_MAJOR {
                return Err(Refused::UnsupportedProtocol { major, minor });
            }
            (Kind::Startup { minor }, None)
        }
    };
    match fixed {
        Some(want) if want != length => Err(Refused::WrongLength { kind, length }),
        // At least the final NUL after the header.
        None if length == HEADER_LENGTH as u32 => Err(Refused::Unterminated),
        _ => Ok(Header { kind, length }),
    }
}

/// Checks the bytes after the header (exactly [`Header::body_length`] of them).
pub fn check_body(header: &Header, body: &[u8]) -> Result<(), Refused> {
    match header.kind {
        Kind::Startup { .. } if body.last() != Some(&0) => Err(Refused::Unterminated),
        _ => Ok(()),
    }
}

/// A FATAL `ErrorResponse` with SQLSTATE 08P01 (protocol_violation): what
/// postgres itself sends for a bad startup packet, so that every client
/// shows `message` as it would show the server's own.
pub fn error_response(message: &str) -> Vec<u8> {
    let mut fields = Vec::with_capacity(message.len() + 32);
    for (code, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "08P01"),
        (b'M', message),
    ] {
        fields.push(code);
        // A NUL inside would end the field early; the messages are ours, but be safe.
        fields.extend(value.bytes().filter(|b| *b != 0));
        fields.push(0);
    }
    fields.push(0);
    let mut out = Vec::with_capacity(fields.len() + 5);
    out.push(b'E');
    out.extend(((fields.len() + 4) as u32).to_be_bytes());
    out.extend(fields);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(length: u32, code: u32) -> [u8; 8] {
        let mut h = [0u8; 8];
        h[..4].copy_from_slice(&length.to_be_bytes());
        h[4..].copy_from_slice(&code.to_be_bytes());
        h
    }

    #[test]
    fn the_four_first_packets_are_recognised() {
        assert_eq!(
            header(head(8, SSL_REQUEST)),
            Ok(Header {
                kind: Kind::SslRequest,
                length: 8
            })
        );
        assert_eq!(
            header(head(8, GSSENC_REQUEST)),
            Ok(Header {
                kind: Kind::GssEncRequest,
                length: 8
            })
        );
        let cancel = header(head(16, CANCEL_REQUEST)).unwrap();
        assert_eq!(
            (cancel.kind, cancel.body_length()),
            (Kind::CancelRequest, 8)
        );
        let startup = header(head(41, 3 << 16)).unwrap();
        assert_eq!(
            (startup.kind, startup.body_length()),
            (Kind::Startup { minor: 0 }, 33)
        );
        // Protocol 3.2 (postgres 18) is passed on; postgres negotiates.
        assert_eq!(
            header(head(41, (3 << 16) | 2)).unwrap().kind,
            Kind::Startup { minor: 2 }
        );
    }

    #[test]
    fn lengths_outside_the_bounds_are_refused_before_the_body_is_read() {
        assert_eq!(
            header(head(0, 3 << 16)),
            Err(Refused::TooShort { length: 0 })
        );
        assert_eq!(
            header(head(7, SSL_REQUEST)),
            Err(Refused::TooShort { length: 7 })
        );
        assert_eq!(
            header(head(10_001, 3 << 16)),
            Err(Refused::TooLong { length: 10_001 })
        );
        assert_eq!(
            header(head(u32::MAX, 3 << 16)),
            Err(Refused::TooLong { length: u32::MAX })
        );
        assert!(header(head(MAX_LENGTH, 3 << 16)).is_ok());
    }

    #[test]
    fn fixed_size_requests_must_have_their_size() {
        assert_eq!(
            header(head(12, SSL_REQUEST)),
            Err(Refused::WrongLength {
                kind: Kind::SslRequest,
                length: 12
            })
        );
        assert_eq!(
            header(head(8, CANCEL_REQUEST)),
            Err(Refused::WrongLength {
                kind: Kind::CancelRequest,
                length: 8
            })
        );
        assert_eq!(
            header(head(16, GSSENC_REQUEST)).unwrap_err().to_string(),
            "invalid length of GSSENCRequest: 16 bytes, not 8"
        );
    }

    #[test]
    fn unknown_codes_are_refused_as_unsupported_protocols() {
        // Protocol 2 (removed from postgres 14), an HTTP request, TLS sent
        // without an SSLRequest first.
        assert_eq!(
            header(head(100, 2 << 16)),
            Err(Refused::UnsupportedProtocol { major: 2, minor: 0 })
        );
        let http = *b"GET / HT";
        assert!(header(http).is_err());
        let tls_hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01];
        assert!(header(tls_hello).is_err());
        assert_eq!(
            header(head(100, 0x1234_5678)).unwrap_err().to_string(),
            "unsupported frontend protocol 4660.22136: only 3.x is served (is this a postgres client?)"
        );
    }

    #[test]
    fn a_startup_message_needs_parameters_ending_in_nul() {
        assert_eq!(header(head(8, 3 << 16)), Err(Refused::Unterminated));
        let h = header(head(14, 3 << 16)).unwrap();
        assert_eq!(check_body(&h, b"user\0\0"), Ok(()));
        assert_eq!(check_body(&h, b"user\0x"), Err(Refused::Unterminated));
        // Fixed-size requests carry nothing to check.
        let c = header(head(16, CANCEL_REQUEST)).unwrap();
        assert_eq!(check_body(&c, &[1; 8]), Ok(()));
    }

    #[test]
    fn the_error_response_is_a_well_formed_fatal_protocol_violation() {
        let e = error_response("bad");
        let mut want = vec![b'E'];
        let fields = b"SFATAL\0VFATAL\0C08P01\0Mbad\0\0";
        want.extend(((fields.len() + 4) as u32).to_be_bytes());
        want.extend(fields);
        assert_eq!(e, want);
        // The length field covers everything after the type byte.
        let length = u32::from_be_bytes([e[1], e[2], e[3], e[4]]) as usize;
        assert_eq!(length, e.len() - 1);
        assert!(!error_response("a\0b").windows(3).any(|w| w == b"a\0b"));
    }
}
