//! DescribeCluster: a cluster's registered nodes and its controller leader,
//! or, for a single node, this broker as the whole cluster. As in Kafka,
//! any principal may ask; the cluster's authorized operations (KIP-430)
//! are those the principal is allowed.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::{decode, str_bytes};
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::{CLUSTER_NAME, ResourceType};

/// DescribeCluster endpoint type asking for broker listeners (KIP-919).
const ENDPOINT_TYPE_BROKERS: i8 = 1;

pub fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let describe: DescribeClusterRequest = decode(request, body)?;
    let broker = request.broker;
    let mut response = DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(&broker.metadata.snapshot().cluster_id))
        .with_controller_id(BrokerId(broker.controller_id()))
        .with_cluster_authorized_operations(request.authorizer().operations(
            describe.include_cluster_authorized_operations,
            ResourceType::Cluster,
            CLUSTER_NAME,
        ));
    if request.version >= 1 {
        response = response.with_endpoint_type(describe.endpoint_type);
    }
    if request.version >= 1 && describe.endpoint_type != ENDPOINT_TYPE_BROKERS {
        response = response
            .with_error_code(ResponseError::UnsupportedEndpointType.code())
            .with_error_message(Some(str_bytes("only broker endpoints (type 1) are served")));
    } else {
        response = response.with_brokers(
            broker
                .brokers(request.session.listener())
                .into_iter()
                .map(|(id, host, port)| {
                    DescribeClusterBroker::default()
                        .with_broker_id(BrokerId(id))
                        .with_host(str_bytes(&host))
                        .with_port(i32::from(port))
                })
                .collect(),
        );
    }
    request.respond(response)
}
