//! TLS on a connection's non-blocking socket, with rustls: the outbox writes plaintext into
//! rustls and its records go to the socket as far as the socket takes them; reads take
//! records from the socket and hand the plaintext to the packet framing.
//!
//! A message counts as written once rustls has it encrypted for the socket. rustls holds at
//! most [`BUFFER_LIMIT`] bytes of records the socket has not taken yet: the write that would
//! pass it waits (would block) like a full socket, so the count runs ahead of the socket by
//! at most that much, and a run's end (DISCONNECT, close_notify, every record out) proves
//! everything reached it.

use std::io::{self, Read, Write};

use mio::net::TcpStream;
use rustls::ClientConnection;

/// Records rustls may hold for the socket.
pub const BUFFER_LIMIT: usize = 64 << 10;

/// A new client connection for `settings`.
pub fn connect(settings: &crate::settings::TlsSettings) -> Result<ClientConnection, String> {
    let mut c = ClientConnection::new(settings.config.clone(), settings.server_name.clone())
        .map_err(|e| describe(&e))?;
    c.set_buffer_limit(Some(BUFFER_LIMIT));
    Ok(c)
}

/// One line on a failed handshake that says what to change, for the errors people meet
/// (an unknown issuer, a name or date mismatch, an algorithm ring does not verify, a plain
/// MQTT port, a broker wanting a client certificate); rustls's own text otherwise, bounded.
pub fn describe(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "the broker's certificate is signed by an issuer this host does \
                not trust; pass that CA's certificate with --ca-file"
                .into(),
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "the broker's certificate is not issued for this host name; put the name it \
                 was issued for in --broker"
                    .into()
            }
            C::Expired | C::ExpiredContext { .. } => "the broker's certificate has expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "the broker's certificate is not valid yet (is this host's clock right?)".into()
            }
            C::BadSignature => "the broker's certificate has a bad signature".into(),
            C::UnsupportedSignatureAlgorithmContext { .. }
            | C::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                "the broker's certificate chain is signed with an algorithm this client does \
                 not verify (it takes ECDSA P-256/P-384, RSA of 2048 bits or more with \
                 SHA-256/384/512, and Ed25519); reissue it, or --insecure to test without \
                 verification"
                    .into()
            }
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                "the broker's certificate is not for TLS servers (extendedKeyUsage)".into()
            }
            C::Revoked => "the broker's certificate is revoked".into(),
            other => bounded(&format!("the broker's certificate is refused: {other}")),
        },
        E::AlertReceived(A::CertificateRequired) => {
            "the broker asks for a client certificate; pass --cert and --key".into()
        }
        E::AlertReceived(A::HandshakeFailure) => {
            "the broker ended the handshake (handshake failure): does it want a client \
             certificate (--cert, --key) or a TLS version this client lacks?"
                .into()
        }
        E::AlertReceived(A::UnknownCA | A::BadCertificate | A::CertificateUnknown) => {
            "the broker does not accept the client certificate (--cert)".into()
        }
        E::AlertReceived(a) => bounded(&format!("the broker ended the handshake: {a:?}")),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            "what answered does not speak TLS (a plain MQTT port? use mqtt://)".into()
        }
        E::PeerIncompatible(_) => {
            "no TLS version or cipher suite in common with the broker (TLS 1.2 or 1.3 needed)"
                .into()
        }
        other => bounded(&other.to_string()),
    }
}

/// At most a line's worth of someone else's text.
fn bounded(s: &str) -> String {
    const MAX: usize = 300;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// Writes the records rustls holds; `Ok(true)` when none is left, `Ok(false)` when the
/// socket would block first.
pub fn push(tls: &mut ClientConnection, sock: &mut TcpStream) -> io::Result<bool> {
    while tls.wants_write() {
        match tls.write_tls(sock) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The socket, through TLS when there is some: what the outbox writes to.
pub struct Io<'a> {
    pub sock: &'a mut TcpStream,
    pub tls: Option<&'a mut ClientConnection>,
}

impl Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return self.sock.write(buf);
        };
        // Records first, so that rustls's buffer has room; a full socket blocks the write.
        if !push(tls, self.sock)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = tls.writer().write(buf)?;
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        push(tls, self.sock)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a read through TLS brought.
#[derive(Debug, PartialEq, Eq)]
pub enum Got {
    /// Plaintext bytes in the buffer (0: none yet, the socket is drained).
    Bytes(usize),
    /// The broker closed the connection (an end of stream or a close_notify).
    Closed,
}

/// Reads records from the socket and returns plaintext into `buf`. A TLS error (a
/// certificate refused, a bad record) is an `io::Error` of kind `InvalidData` that carries
/// rustls's message.
pub fn read(tls: &mut ClientConnection, sock: &mut TcpStream, buf: &mut [u8]) -> io::Result<Got> {
    loop {
        // Plaintext already decrypted goes first.
        match tls.reader().read(buf) {
            Ok(0) => return Ok(Got::Closed), // close_notify
            Ok(n) => return Ok(Got::Bytes(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Got::Closed),
            Err(e) => return Err(e),
        }
        match tls.read_tls(sock) {
            Ok(0) => return Ok(Got::Closed),
            Ok(_) => {
                tls.process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, describe(&e)))?;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Got::Bytes(0)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
