//! One client connection: read requests, serve them in order, write each
//! response before reading the next request.
//!
//! Requests on a connection are served one at a time, as Kafka brokers do,
//! so responses go out in request order. Clients pipeline by sending more
//! requests meanwhile; they wait in the socket buffer and the read buffer
//! (bounded by `kafka.request_max_bytes` per request), and TCP flow control
//! pushes back on the client beyond that. A connection idle for
//! `kafka.idle_timeout_ms` is closed.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use compio::net::TcpStream;

use super::dispatch::{self, Outcome};
use super::frame::{FrameError, FrameReader};
use super::response::ResponseWriter;
use crate::broker::Broker;
use crate::io::IoBackend;
use crate::shard::ShardContext;

pub async fn serve(
    shard: Rc<ShardContext>,
    broker: Arc<Broker>,
    mut stream: TcpStream,
    peer: SocketAddr,
    backend: IoBackend,
) {
    let kafka = &broker.config.kafka;
    let mut reader = FrameReader::new(kafka.request_max_bytes);
    let mut writer = ResponseWriter::new(backend);
    let idle = Duration::from_millis(kafka.idle_timeout_ms);
    let _ = stream.set_nodelay(true);
    loop {
        let frame = match compio::time::timeout(idle, reader.next_frame(&mut stream)).await {
            Err(_) => {
                tracing::debug!(%peer, "closing a connection idle for {} ms", idle.as_millis());
                return;
            }
            Ok(Err(FrameError::Closed)) => return,
            Ok(Err(error)) => {
                tracing::warn!(%peer, %error, "closing connection");
                return;
            }
            Ok(Ok(frame)) => frame,
        };
        match dispatch::handle(&shard, &broker, frame).await {
            Outcome::Respond(response) => {
                if let Err(error) = writer.send(&mut stream, response).await {
                    tracing::debug!(%peer, %error, "could not send a response; closing");
                    return;
                }
            }
            Outcome::Silent => {}
            Outcome::Close(reason) => {
                tracing::warn!(%peer, %reason, "closing connection after a bad request");
                return;
            }
        }
    }
}
