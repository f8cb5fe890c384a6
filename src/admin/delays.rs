//! `sluice delays count|list`: the delayed records a broker holds, per topic
//! and by when they are due (issue 18).
//!
//! Read from the broker's metrics listener (`metrics.listen`), where every
//! shard publishes, at each metrics refresh (`metrics.refresh_interval_ms`,
//! 5 s by default), `sluice_delay_pending_topic_records{shard, topic, due}`
//! and `sluice_delay_next_due_timestamp_seconds{shard, topic}`; the figures
//! are as of the last refresh. Fetched with hyper's HTTP/1.1 client.

use std::collections::BTreeMap;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};

use super::AdminResult;
use super::table::Table;
use crate::telemetry::names;
use crate::telemetry::refresh::DUE_WITHIN;

/// How long the metrics listener may take to answer.
const HTTP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What the metrics say of one topic's pending delayed records.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopicDelays {
    /// By `due` label: `overdue`, then [`DUE_WITHIN`]'s labels.
    pub by_due: BTreeMap<String, u64>,
    /// The earliest next due minute over the shards, epoch seconds.
    pub next_due_s: Option<f64>,
}

impl TopicDelays {
    pub fn pending(&self) -> u64 {
        self.by_due.values().sum()
    }
}

/// `sluice delays count`: pending delayed records per topic, and when the
/// next one is due.
pub fn count(metrics: &str) -> AdminResult {
    let topics = fetch(metrics)?;
    let now_s = crate::broker::delay::clock_ms() as f64 / 1000.0;
    let mut table = Table::new(&["TOPIC", "PENDING", "NEXT-DUE"]);
    let mut total = 0;
    for (topic, delays) in &topics {
        total += delays.pending();
        table.row(vec![
            topic.clone(),
            delays.pending().to_string(),
            delays
                .next_due_s
                .map_or_else(|| "-".to_owned(), |minute| due_minute(minute, now_s)),
        ]);
    }
    print!("{}", table.render());
    println!(
        "{total} delayed record(s) pending in {} topic(s)",
        topics.len()
    );
    Ok(())
}

/// `sluice delays list`: pending delayed records per topic by when they are
/// due.
pub fn list(metrics: &str) -> AdminResult {
    let topics = fetch(metrics)?;
    let labels: Vec<&str> = std::iter::once("overdue")
        .chain(DUE_WITHIN.iter().map(|(label, _)| *label))
        .collect();
    let headers: Vec<String> = std::iter::once("TOPIC".to_owned())
        .chain(labels.iter().map(|label| match *label {
            "overdue" | "later" => label.to_uppercase(),
            within => format!("<{}", within.to_uppercase()),
        }))
        .collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let mut table = Table::new(&headers);
    for (topic, delays) in &topics {
        let mut row = vec![topic.clone()];
        row.extend(
            labels
                .iter()
                .map(|label| delays.by_due.get(*label).copied().unwrap_or(0).to_string()),
        );
        table.row(row);
    }
    print!("{}", table.render());
    println!(
        "due times by minute, as of the brokers' last metrics refresh; {} topic(s) with pending records",
        topics.len()
    );
    Ok(())
}

/// Every topic with pending delayed records on the brokers whose metrics
/// listeners `metrics` names (HOST:PORT[,HOST:PORT…]), summed over shards
/// and brokers.
fn fetch(metrics: &str) -> anyhow::Result<BTreeMap<String, TopicDelays>> {
    let mut topics = BTreeMap::new();
    for address in metrics.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let text = get_metrics(address)?;
        merge(&mut topics, &text);
    }
    topics.retain(|_, delays: &mut TopicDelays| delays.pending() > 0);
    Ok(topics)
}

/// Add the delay samples of the Prometheus exposition `text` to `topics`.
pub fn merge(topics: &mut BTreeMap<String, TopicDelays>, text: &str) {
    for line in text.lines() {
        let Some((name, labels, value)) = sample(line) else {
            continue;
        };
        let Some(topic) = labels.get("topic") else {
            continue;
        };
        if name == names::DELAY_PENDING_BY_TOPIC
            && let Some(due) = labels.get("due")
        {
            let delays = topics.entry(topic.clone()).or_default();
            *delays.by_due.entry(due.clone()).or_default() += value.max(0.0) as u64;
        } else if name == names::DELAY_NEXT_DUE && value > 0.0 {
            let delays = topics.entry(topic.clone()).or_default();
            delays.next_due_s = Some(delays.next_due_s.map_or(value, |next| next.min(value)));
        }
    }
}

/// A Prometheus text sample: `name{label="value",…} number`.
fn sample(line: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    let (name, rest) = line.split_once('{')?;
    let (labels, value) = rest.rsplit_once('}')?;
    let value = value.trim().parse().ok()?;
    let labels = labels
        .split(',')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            Some((key.to_owned(), value.trim_matches('"').to_owned()))
        })
        .collect();
    Some((name, labels, value))
}

/// When records due in the minute starting at `minute_s` (epoch seconds)
/// are due, seen at `now_s`: `overdue`, `this minute`, or `in 9m` (whole
/// minutes to the minute's start: the grain the broker counts in).
pub fn due_minute(minute_s: f64, now_s: f64) -> String {
    if minute_s + 60.0 <= now_s {
        "overdue".to_owned()
    } else if minute_s <= now_s {
        "this minute".to_owned()
    } else {
        let minutes = ((minute_s - now_s) / 60.0).ceil() * 60.0;
        relative(minutes)
    }
}

/// `seconds` from now as `in 3m 20s` or `2h 5m ago`.
pub fn relative(seconds: f64) -> String {
    let whole = seconds.abs().round() as u64;
    let text = match whole {
        0..60 => format!("{whole}s"),
        60..3_600 if whole.is_multiple_of(60) => format!("{}m", whole / 60),
        60..3_600 => format!("{}m {}s", whole / 60, whole % 60),
        3_600..86_400 => format!("{}h {}m", whole / 3_600, whole % 3_600 / 60),
        _ => format!("{}d {}h", whole / 86_400, whole % 86_400 / 3_600),
    };
    if seconds < 0.0 {
        format!("{text} ago")
    } else {
        format!("in {text}")
    }
}

/// GET `/metrics` from `address`, with hyper's client on a current-thread
/// tokio runtime.
fn get_metrics(address: &str) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the HTTP client's runtime")?;
    let fetch = async {
        let stream = tokio::net::TcpStream::connect(address).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = hyper::Request::get("/metrics")
            .header(hyper::header::HOST, address)
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::ensure!(status.is_success(), "{status}");
        Ok::<_, anyhow::Error>(String::from_utf8_lossy(&body).into_owned())
    };
    let fetched = runtime
        .block_on(async { tokio::time::timeout(HTTP_TIMEOUT, fetch).await })
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {HTTP_TIMEOUT:?}")));
    fetched.with_context(|| {
        format!("cannot read the metrics of {address} (the broker's metrics.listen; see --metrics)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_summed_over_shards_and_brokers() {
        let text = "\
# HELP sluice_delay_pending_topic_records Delayed records
sluice_delay_pending_topic_records{shard=\"0\",topic=\"a\",due=\"1m\"} 3
sluice_delay_pending_topic_records{shard=\"1\",topic=\"a\",due=\"1m\"} 4
sluice_delay_pending_topic_records{shard=\"1\",topic=\"a\",due=\"later\"} 1
sluice_delay_pending_topic_records{shard=\"0\",topic=\"b\",due=\"1h\"} 0
sluice_delay_next_due_timestamp_seconds{shard=\"0\",topic=\"a\"} 1700000060
sluice_delay_next_due_timestamp_seconds{shard=\"1\",topic=\"a\"} 1700000000
sluice_delay_pending_records{shard=\"0\"} 8
";
        let mut topics = BTreeMap::new();
        merge(&mut topics, text);
        merge(&mut topics, text);
        let a = &topics["a"];
        assert_eq!(a.by_due["1m"], 14);
        assert_eq!(a.by_due["later"], 2);
        assert_eq!(a.pending(), 16);
        assert_eq!(a.next_due_s, Some(1_700_000_000.0));
        assert_eq!(topics["b"].pending(), 0);
    }

    #[test]
    fn next_due_reads_to_the_minute() {
        assert_eq!(due_minute(1_000.0, 1_061.0), "overdue");
        assert_eq!(due_minute(1_000.0, 1_030.0), "this minute");
        assert_eq!(due_minute(1_000.0, 990.0), "in 1m");
        assert_eq!(due_minute(1_000.0, 455.0), "in 10m");
    }

    #[test]
    fn due_times_read_as_from_now() {
        assert_eq!(relative(0.2), "in 0s");
        assert_eq!(relative(200.0), "in 3m 20s");
        assert_eq!(relative(-7_500.0), "2h 5m ago");
        assert_eq!(relative(90_000.0), "in 1d 1h");
    }
}
