//! ApiVersions: what this broker speaks (exactly `versions::SUPPORTED`).

use kafka_protocol::ResponseError;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::ApiVersionsResponse;
use kafka_protocol::messages::api_versions_response::ApiVersion;

use crate::kafka::dispatch::Request;
use crate::kafka::error_code::NONE;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::kafka::versions::SUPPORTED;

pub fn handle(request: &Request<'_>) -> Result<Response, RequestError> {
    request.respond(&body(NONE))
}

/// The reply to an ApiVersions request of a version this broker does not
/// speak: error UNSUPPORTED_VERSION in the v0 layout, which every client
/// can read, listing the supported ranges (KIP-511).
pub fn unsupported_version(correlation_id: i32) -> Result<Response, RequestError> {
    Response::encode(
        correlation_id,
        0,
        &body(ResponseError::UnsupportedVersion.code()),
        0,
    )
    .map_err(|source| RequestError::Encode {
        key: ApiKey::ApiVersions,
        version: 0,
        source,
    })
}

fn body(error_code: i16) -> ApiVersionsResponse {
    let api_keys = SUPPORTED
        .iter()
        .map(|supported| {
            ApiVersion::default()
                .with_api_key(supported.key as i16)
                .with_min_version(supported.min)
                .with_max_version(supported.max)
        })
        .collect();
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(api_keys)
}
