//! A Kafka connection's byte stream: plain TCP, or TLS over it
//! ([`TlsStream`], rustls driven by hand over compio's TCP stream).
//!
//! The connection's reader and writer run at once on one shard (see
//! `connection.rs`), so both sides share the stream by reference:
//! [`AsyncRead`] and [`AsyncWrite`] are implemented for `&Transport`. For
//! TLS the rustls state sits in a `RefCell` borrowed only between awaits,
//! and socket writes (the writer's records, and the alerts or handshake
//! messages the reader's input calls for) are serialised by an async lock.
//!
//! Received ciphertext is kept in `incoming` and handed to rustls as it
//! drains plaintext, so rustls's bounded plaintext buffer never overflows;
//! what the connection reads is bounded by what it asks for.
//!
//! Zero-copy fetch (`splice`) needs the file's bytes to go to the socket as
//! they are; over TLS they must be encrypted first, so fetch responses on a
//! TLS connection are read into memory and written through rustls
//! (`response.rs`). Kernel TLS would keep splice, but needs the kernel's
//! `tls` module (CONFIG_TLS), which the machines Sluice is built on lack.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use compio::BufResult;
use compio::buf::{IoBuf, IoBufMut, SetLen};
use compio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use compio::net::TcpStream;
use futures_util::lock::Mutex;
use rustls::{ServerConfig, ServerConnection};

/// Ciphertext read from the socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Plaintext rustls may hold unsent before a write waits for the socket
/// (rustls's own default): what a connection that stops reading pins.
const SEND_BUFFER_BYTES: usize = 64 * 1024;

/// A connection's stream.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Transport {
    /// The TCP socket under it (hang-up probes, socket options).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(stream) => stream,
            Transport::Tls(stream) => &stream.tcp,
        }
    }

    /// Whether bytes from a file may be spliced to the socket as they are.
    pub fn splices(&self) -> bool {
        matches!(self, Transport::Plain(_))
    }
}

impl AsFd for Transport {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.tcp().as_fd()
    }
}

/// A server-side TLS stream.
pub struct TlsStream {
    tcp: TcpStream,
    session: RefCell<ServerConnection>,
    /// Ciphertext received and not yet given to rustls.
    incoming: RefCell<Vec<u8>>,
    /// Held while ciphertext is written to the socket.
    writing: Mutex<()>,
}

/// Why a TLS handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("the TLS handshake took longer than {0:?}")]
    Timeout(Duration),
    #[error("the TLS handshake failed: {0}")]
    Failed(io::Error),
}

fn tls_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

impl TlsStream {
    /// Run the server side of a handshake on `tcp`, within `timeout`.
    pub async fn accept(
        tcp: TcpStream,
        config: Arc<ServerConfig>,
        timeout: Duration,
    ) -> Result<TlsStream, HandshakeError> {
        let mut session = ServerConnection::new(config)
            .map_err(|error| HandshakeError::Failed(tls_error(error)))?;
        session.set_buffer_limit(Some(SEND_BUFFER_BYTES));
        let stream = TlsStream {
            tcp,
            session: RefCell::new(session),
            incoming: RefCell::new(Vec::new()),
            writing: Mutex::new(()),
        };
        let handshake = async {
            while stream.session.borrow().is_handshaking() {
                stream.flush_records().await?;
                if !stream.session.borrow().is_handshaking() {
                    break;
                }
                if !stream.receive().await? {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed the connection during the handshake",
                    ));
                }
            }
            stream.flush_records().await
        };
        match compio::time::timeout(timeout, handshake).await {
            Err(_) => Err(HandshakeError::Timeout(timeout)),
            Ok(Err(error)) => Err(HandshakeError::Failed(error)),
            Ok(Ok(())) => Ok(stream),
        }
    }

    /// The client's certificate chain (leaf first), if it sent a verified one.
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        let session = self.session.borrow();
        let chain = session.peer_certificates()?;
        chain.first().map(|leaf| leaf.as_ref().to_vec())
    }

    /// Give rustls the ciphertext received so far (as much as it takes),
    /// reading more from the socket when there is none; false at the end of
    /// the stream. A record rustls refuses fails the stream, after its alert
    /// is sent.
    async fn receive(&self) -> io::Result<bool> {
        if self.incoming.borrow().is_empty() {
            let buffer = Vec::with_capacity(READ_CHUNK_BYTES);
            let mut tcp = &self.tcp;
            let BufResult(read, buffer) = tcp.read(buffer).await;
            if read? == 0 {
                return Ok(false);
            }
            *self.incoming.borrow_mut() = buffer;
        }
        let processed = {
            let mut session = self.session.borrow_mut();
            let mut incoming = self.incoming.borrow_mut();
            let mut unread = incoming.as_slice();
            let taken = session.read_tls(&mut unread)?;
            incoming.drain(..taken);
            session.process_new_packets().map(|_| ())
        };
        if let Err(error) = processed {
            // The alert rustls queued tells the client why.
            let _ = self.flush_records().await;
            return Err(tls_error(error));
        }
        self.flush_records().await?;
        Ok(true)
    }

    /// Write every record rustls has ready.
    async fn flush_records(&self) -> io::Result<()> {
        let _writing = self.writing.lock().await;
        loop {
            let records = {
                let mut session = self.session.borrow_mut();
                if !session.wants_write() {
                    return Ok(());
                }
                let mut records = Vec::new();
                session.write_tls(&mut records)?;
                records
            };
            let mut tcp = &self.tcp;
            let BufResult(written, _) = tcp.write_all(records).await;
            written?;
        }
    }

    /// Read plaintext into `destination`: 0 at the end of the stream.
    async fn read_plaintext(&self, destination: &mut [u8]) -> io::Result<usize> {
        loop {
            let read = self.session.borrow_mut().reader().read(destination);
            match read {
                Ok(count) => return Ok(count),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                // The client closed the TCP stream without close_notify.
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(error) => return Err(error),
            }
            if !self.receive().await? {
                return Ok(0);
            }
        }
    }

    /// Encrypt and send `plaintext`; returns how much rustls took (all of
    /// it unless its buffer was full, then at least one byte once the
    /// socket drained).
    async fn write_plaintext(&self, plaintext: &[u8]) -> io::Result<usize> {
        loop {
            let taken = self.session.borrow_mut().writer().write(plaintext)?;
            self.flush_records().await?;
            if taken > 0 || plaintext.is_empty() {
                return Ok(taken);
            }
        }
    }
}

impl AsyncRead for &Transport {
    async fn read<B: IoBufMut>(&mut self, mut buffer: B) -> BufResult<usize, B> {
        match self {
            Transport::Plain(stream) => {
                let mut stream = stream;
                stream.read(buffer).await
            }
            Transport::Tls(stream) => {
                // At most a chunk per read: initialising the whole spare
                // capacity of a large frame's buffer on every read would
                // cost the square of its size.
                let spare = buffer.as_uninit();
                let chunk = spare.len().min(READ_CHUNK_BYTES);
                let spare = &mut spare[..chunk];
                spare.fill(MaybeUninit::new(0));
                // SAFETY: every byte of `spare` was just initialised.
                let spare = unsafe { &mut *(spare as *mut [MaybeUninit<u8>] as *mut [u8]) };
                let read = stream.read_plaintext(spare).await;
                if let Ok(count) = read {
                    // SAFETY: the first `count` bytes were written by rustls.
                    unsafe { SetLen::advance_to(&mut buffer, count) };
                }
                BufResult(read, buffer)
            }
        }
    }
}

impl AsyncWrite for &Transport {
    async fn write<T: IoBuf>(&mut self, buffer: T) -> BufResult<usize, T> {
        match self {
            Transport::Plain(stream) => {
                let mut stream = stream;
                stream.write(buffer).await
            }
            Transport::Tls(stream) => {
                let written = stream.write_plaintext(buffer.as_init()).await;
                BufResult(written, buffer)
            }
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => {
                let mut stream = stream;
                stream.flush().await
            }
            Transport::Tls(stream) => stream.flush_records().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => {
                let mut stream = stream;
                stream.shutdown().await
            }
            Transport::Tls(stream) => {
                stream.session.borrow_mut().send_close_notify();
                stream.flush_records().await?;
                let mut tcp = &stream.tcp;
                tcp.shutdown().await
            }
        }
    }
}
