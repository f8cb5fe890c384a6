//! `sluice bench delivery`: how fast a shard's timer delivers records that
//! fall due together (issue 18). Producers send, for `--produce-for`
//! seconds, records that all carry `sluice.deliver.at.ms: T`, T lying
//! `--lead` seconds after the start; the run then watches the topic's end
//! offsets until every record was delivered (each delivery takes an offset
//! of its own after the origin offsets) and reports the delivery rate
//! (records ÷ seconds from T to the last delivery) and how late the last
//! and the first were.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::produce::{self, ProduceLoad, Window};
use super::{DeliveryArgs, LATEST, partition_offsets};
use crate::client::KafkaClient;

/// How often the end offsets are read while waiting for deliveries.
const POLL: Duration = Duration::from_millis(5);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

pub fn run(args: &DeliveryArgs, mut load: ProduceLoad) -> anyhow::Result<()> {
    let produce_for = super::seconds("--produce-for", args.produce_for)?;
    let lead = super::seconds("--lead", args.lead)?;
    if lead <= produce_for {
        anyhow::bail!(
            "--lead ({} s) must exceed --produce-for ({} s): every record must be stored before \
             it falls due",
            args.lead,
            args.produce_for
        );
    }
    let mut client = KafkaClient::connect(&args.target.brokers)?;
    let before: i64 = partition_offsets(&mut client, &load.topic, load.partitions, LATEST)?
        .values()
        .sum();
    let due_ms = now_ms() + lead.as_millis() as i64;
    load.record_headers.push((
        crate::broker::delay::DELIVER_AT_MS.to_owned(),
        due_ms.to_string().into_bytes(),
    ));
    let produced = produce::run(&load, Window::new(Duration::ZERO, produce_for))?;
    if produced.acks.errors > 0 {
        anyhow::bail!(
            "{} produce request(s) failed, first: {}",
            produced.acks.errors,
            produced.acks.first_error.as_deref().unwrap_or("?")
        );
    }
    let end = |client: &mut KafkaClient| -> anyhow::Result<i64> {
        Ok(
            partition_offsets(client, &load.topic, load.partitions, LATEST)?
                .values()
                .sum(),
        )
    };
    let stored = end(&mut client)? - before;
    let records = produced.acks.records as i64;
    if stored != records {
        anyhow::bail!(
            "{records} records acknowledged but the end offsets moved by {stored}: something \
             was delivered before its due time ({due_ms})"
        );
    }
    let target = before + 2 * records;
    let mut first_late_ms = None;
    let deadline = Instant::now() + lead + Duration::from_secs(600);
    let last_late_ms = loop {
        let now = end(&mut client)?;
        let late = now_ms() - due_ms;
        if now > before + records && first_late_ms.is_none() {
            first_late_ms = Some(late);
        }
        if now >= target {
            break late;
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "{} of {records} records delivered 10 minutes after their due time",
                now - before - records
            );
        }
        std::thread::sleep(POLL);
    };
    let seconds = (last_late_ms.max(1) as f64) / 1000.0;
    let rate = records as f64 / seconds;
    let report = json!({
        "test": "delivery",
        "settings": {
            "topic": load.topic,
            "partitions": load.partitions,
            "producers": load.producers,
            "record_size": load.record_size,
            "batch_records": load.batch_records,
            "produce_for_s": args.produce_for,
            "lead_s": args.lead,
        },
        "records": records,
        "delivered_per_s": rate.round(),
        "first_late_ms": first_late_ms,
        "last_late_ms": last_late_ms,
    });
    if args.output.json {
        println!("{report}");
    } else {
        println!(
            "delivery: {records} records due at once on {} partition(s): all delivered {} ms \
             after their due time ({:.0} records/s); the first {} ms after it",
            load.partitions,
            last_late_ms,
            rate,
            first_late_ms.unwrap_or(last_late_ms)
        );
    }
    Ok(())
}
