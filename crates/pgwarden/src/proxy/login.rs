//! Waiting for a client's first packet before a backend is opened.
//!
//! Postgres forks a backend for every TCP connection it accepts, and that
//! backend waits up to `authentication_timeout` (a minute) for the startup
//! packet. A proxy that connected to postgres as soon as a client connected
//! would let any port scanner hold `max_connections` backends without
//! logging in. So the accept path first reads the client's whole first
//! packet (bounded by
//! [`pgwarden_core::startup::MAX_LENGTH`]), checks it with the pure
//! [`pgwarden_core::startup`] rules, and only then connects and hands the
//! packet on. After an SSLRequest or GSSENCRequest the backend answers and
//! the rest (TLS, or the startup that follows a refusal) is relayed
//! untouched: TLS still runs from the client to postgres.
//!
//! The time limit is the caller's (`--client-login-timeout`), so that it
//! also covers a client that sends half a header and stops.

use std::io;

use pgwarden_core::startup::{self, Header, Refused, HEADER_LENGTH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why no first packet is there to relay.
#[derive(Debug)]
pub enum NoPacket {
    /// The client closed before sending a whole packet.
    Closed,
    /// The packet breaks the protocol; the client has been told.
    Refused(Refused),
    /// Reading failed.
    Io(io::Error),
}

/// A complete, well-formed first packet.
#[derive(Debug)]
pub struct FirstPacket {
    /// What it is.
    pub header: Header,
    /// All of its bytes, header included, to send to the backend as they came.
    pub bytes: Vec<u8>,
}

/// Reads the first packet from `client`. A malformed one is answered with a
/// postgres `ErrorResponse` naming the problem, and the client's side is
/// shut down, before this returns [`NoPacket::Refused`].
pub async fn first_packet<C>(client: &mut C) -> Result<FirstPacket, NoPacket>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let mut head = [0u8; HEADER_LENGTH];
    read_exact(client, &mut head).await?;
    let header = match startup::header(head) {
        Ok(h) => h,
        Err(why) => return Err(refuse(client, why).await),
    };
    // Bounded by MAX_LENGTH, which header() checked.
    let mut bytes = Vec::with_capacity(header.length as usize);
    bytes.extend_from_slice(&head);
    bytes.resize(header.length as usize, 0);
    read_exact(client, &mut bytes[HEADER_LENGTH..]).await?;
    if let Err(why) = startup::check_body(&header, &bytes[HEADER_LENGTH..]) {
        return Err(refuse(client, why).await);
    }
    Ok(FirstPacket { header, bytes })
}

async fn read_exact<C: AsyncRead + Unpin>(client: &mut C, buf: &mut [u8]) -> Result<(), NoPacket> {
    match client.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(NoPacket::Closed),
        Err(e) => Err(NoPacket::Io(e)),
    }
}

/// Tells the client why, as postgres would; a client that is gone already
/// changes nothing.
async fn refuse<C: AsyncWrite + Unpin>(client: &mut C, why: Refused) -> NoPacket {
    let message = format!("pgwarden proxy: {why}");
    let _ = client.write_all(&startup::error_response(&message)).await;
    let _ = client.shutdown().await;
    NoPacket::Refused(why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwarden_core::startup::Kind;
    use tokio::io::duplex;

    fn startup_message() -> Vec<u8> {
        let params = b"user\0postgres\0database\0postgres\0\0";
        let mut p = ((8 + params.len()) as u32).to_be_bytes().to_vec();
        p.extend((3u32 << 16).to_be_bytes());
        p.extend(params);
        p
    }

    #[tokio::test]
    async fn a_startup_message_is_read_whole_and_nothing_after_it() {
        let (mut client, mut proxy) = duplex(1024);
        let mut sent = startup_message();
        let len = sent.len();
        sent.extend(b"after");
        client.write_all(&sent).await.unwrap();
        let packet = first_packet(&mut proxy).await.unwrap();
        assert_eq!(packet.header.kind, Kind::Startup { minor: 0 });
        assert_eq!(packet.bytes, sent[..len]);
        let mut rest = [0u8; 5];
        proxy.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"after");
    }

    #[tokio::test]
    async fn an_ssl_request_is_eight_bytes_and_the_tls_after_it_is_not_read() {
        let (mut client, mut proxy) = duplex(1024);
        let mut sent = 8u32.to_be_bytes().to_vec();
        sent.extend(startup::SSL_REQUEST.to_be_bytes());
        client.write_all(&sent).await.unwrap();
        client.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
        let packet = first_packet(&mut proxy).await.unwrap();
        assert_eq!((packet.header.kind, packet.bytes), (Kind::SslRequest, sent));
    }

    #[tokio::test]
    async fn garbage_is_answered_with_an_error_response_and_a_close() {
        let (mut client, mut proxy) = duplex(1024);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let got = first_packet(&mut proxy).await.unwrap_err();
        assert!(
            matches!(got, NoPacket::Refused(Refused::TooLong { .. })),
            "{got:?}"
        );
        let mut answer = Vec::new();
        drop(proxy);
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer[0], b'E');
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.contains("Mpgwarden proxy: invalid length of startup packet"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_oversized_length_is_refused_without_reading_the_body() {
        // Room for the header and the answer, not for a body.
        let (mut client, mut proxy) = duplex(256);
        let mut sent = 1_000_000u32.to_be_bytes().to_vec();
        sent.extend((3u32 << 16).to_be_bytes());
        client.write_all(&sent).await.unwrap();
        assert!(matches!(
            first_packet(&mut proxy).await.unwrap_err(),
            NoPacket::Refused(Refused::TooLong { length: 1_000_000 })
        ));
    }

    #[tokio::test]
    async fn an_unterminated_startup_is_refused() {
        let (mut client, mut proxy) = duplex(1024);
        let mut sent = startup_message();
        *sent.last_mut().unwrap() = b'x';
        client.write_all(&sent).await.unwrap();
        assert!(matches!(
            first_packet(&mut proxy).await.unwrap_err(),
            NoPacket::Refused(Refused::Unterminated)
        ));
    }

    #[tokio::test]
    async fn a_client_closing_mid_packet_is_closed_not_refused() {
        let (mut client, mut proxy) = duplex(1024);
        client.write_all(&startup_message()[..11]).await.unwrap();
        drop(client);
        assert!(matches!(
            first_packet(&mut proxy).await.unwrap_err(),
            NoPacket::Closed
        ));
    }
}
