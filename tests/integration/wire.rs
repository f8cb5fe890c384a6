//! A raw Kafka protocol client for tests that need exact requests (bad
//! input, APIs librdkafka does not expose): kafka-protocol's encoders over a
//! plain blocking socket.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

pub struct Wire {
    stream: TcpStream,
    next_correlation_id: i32,
}

impl Wire {
    pub fn connect(address: &str) -> Wire {
        let stream = TcpStream::connect(address).expect("broker accepts connections");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Wire {
            stream,
            next_correlation_id: 1,
        }
    }

    /// Wait this long for an answer (10 s by default).
    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
    }

    /// Send a request and decode its response.
    pub fn call<R: Request>(&mut self, version: i16, body: &R) -> R::Response {
        let correlation_id = self.send(version, body);
        let mut frame = self.read_frame().expect("the broker answers");
        let key = ApiKey::try_from(R::KEY).unwrap();
        let header =
            ResponseHeader::decode(&mut frame, key.response_header_version(version)).unwrap();
        assert_eq!(header.correlation_id, correlation_id);
        R::Response::decode(&mut frame, version).unwrap()
    }

    /// Send a request; returns its correlation id.
    pub fn send<R: Request>(&mut self, version: i16, body: &R) -> i32 {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("sluice-tests")));
        let mut frame = BytesMut::new();
        header
            .encode(&mut frame, R::header_version(version))
            .unwrap();
        body.encode(&mut frame, version).unwrap();
        self.send_raw(&frame);
        correlation_id
    }

    /// Send `body` as one frame (size prefix added).
    pub fn send_raw(&mut self, body: &[u8]) {
        let mut frame = (body.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        self.send_bytes(&frame);
    }

    /// Send bytes exactly as given.
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn read_frame(&mut self) -> std::io::Result<Bytes> {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size)?;
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut body)?;
        Ok(Bytes::from(body))
    }

    /// Close the sending side; responses can still be read.
    pub fn shutdown(&mut self, how: std::net::Shutdown) {
        self.stream.shutdown(how).unwrap();
    }

    /// True when the broker closed the connection (EOF or reset) in time.
    pub fn closed_by_broker(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(error) => matches!(
                error.kind(),
                ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
            ),
        }
    }
}
