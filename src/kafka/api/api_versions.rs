//! ApiVersions: what this broker speaks (exactly `versions::SUPPORTED`).
//! From v3 the client names its software; a name or version outside
//! KIP-511's pattern (letters and digits, with `-` and `.` inside) gets
//! INVALID_REQUEST and no API list, as Kafka answers.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::ApiVersionsResponse;
use kafka_protocol::messages::api_versions_response::ApiVersion;

use crate::kafka::dispatch::Request;
use crate::kafka::error_code::NONE;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::kafka::versions::SUPPORTED;

/// The first version that names the client's software (KIP-511).
const SOFTWARE_FROM_VERSION: i16 = 3;

pub fn handle(request: &Request<'_>, body_bytes: bytes::Bytes) -> Result<Response, RequestError> {
    if request.version >= SOFTWARE_FROM_VERSION {
        let asked: kafka_protocol::messages::ApiVersionsRequest =
            super::decode(request, body_bytes)?;
        let valid = is_valid_software_field(asked.client_software_name.as_str())
            && is_valid_software_field(asked.client_software_version.as_str());
        if !valid {
            return request.respond(
                ApiVersionsResponse::default()
                    .with_error_code(ResponseError::InvalidRequest.code()),
            );
        }
    }
    request.respond(body(NONE))
}

/// KIP-511's pattern for the client software name and version:
/// `[a-zA-Z0-9](?:[a-zA-Z0-9\-.]*[a-zA-Z0-9])?`.
fn is_valid_software_field(text: &str) -> bool {
    let bytes = text.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|byte| byte.is_ascii_alphanumeric() || *byte == b'-' || *byte == b'.')
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn software_names_follow_kip_511() {
        for valid in ["librdkafka", "2.16.0", "kafka-python", "a", "1.0.0-rc1"] {
            assert!(is_valid_software_field(valid), "{valid}");
        }
        for invalid in ["", "RP Console", "-lead", "trail.", "a_b", "é"] {
            assert!(!is_valid_software_field(invalid), "{invalid}");
        }
    }
}
