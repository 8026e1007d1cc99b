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
        .map_err(|e| e.to_string())?;
    c.set_buffer_limit(Some(BUFFER_LIMIT));
    Ok(c)
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
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Got::Bytes(0)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
