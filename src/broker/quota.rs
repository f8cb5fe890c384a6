//! Client quotas (issue 20 item 5): Kafka's `producer_byte_rate` and
//! `consumer_byte_rate` (KIP-13) and `request_percentage` (KIP-124) for
//! users, client ids and both (KIP-55, managed with KIP-546's
//! DescribeClientQuotas / AlterClientQuotas), kept
//! in the cluster metadata and enforced on every shard against one shared
//! account per quota, with KIP-219's throttling: the response carries
//! `throttle_time_ms` and the connection reads nothing more until then.
//!
//! **Which quota applies** to a request of user `u` with client id `c` is
//! Kafka's order (`ClientQuotaManager`): the first of
//! `/users/u/clients/c`, `/users/u/clients/<default>`, `/users/u`,
//! `/users/<default>/clients/c`, `/users/<default>/clients/<default>`,
//! `/users/<default>`, `/clients/c`, `/clients/<default>` that sets the key.
//! Its account is keyed by the entity's parts with `<default>` replaced by
//! the request's own user or client id, so a default quota limits each user
//! (or client id) on its own, and a named one all of that user's clients
//! together.
//!
//! **Measurement** (Kafka's sampled `Rate`): `kafka.quota_window_samples`
//! samples of `kafka.quota_window_ms` each; the rate is the bytes in the
//! samples over their span, at least `samples - 1` windows (so a client's
//! first burst is measured over the whole window, as in Kafka). A request
//! that takes the rate over the quota is served and answered with
//! `throttle_time_ms = (rate - quota) / quota × span`, capped at the whole
//! window; a Fetch that arrives while its consumer is over the quota is
//! answered without records (`kafka/api/fetch.rs`).
//!
//! **Request time** (KIP-124): `request_percentage` is the share of one
//! thread a client may keep busy, in percent (Kafka's unit: 100 is one
//! whole thread; a broker has `shards` × 100 in all, as Kafka has
//! `num.io.threads` × 100). What counts is the time the shard thread spends
//! running the request's handler (the time its future is polled, so not its
//! waits for the disk, a long poll or the controller), counted in
//! microseconds; its throttle goes in every response's `throttle_time_ms`
//! (the larger of it and a byte-rate throttle). ApiVersions, SaslHandshake
//! and SaslAuthenticate are exempt, as their responses carry no throttle.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Bytes a user or client id may produce per second (Kafka's key).
pub const PRODUCER_BYTE_RATE: &str = "producer_byte_rate";
/// Bytes a user or client id may fetch per second (Kafka's key).
pub const CONSUMER_BYTE_RATE: &str = "consumer_byte_rate";
/// The percentage of one thread's time a user or client id may take
/// (Kafka's key, KIP-124).
pub const REQUEST_PERCENTAGE: &str = "request_percentage";
/// The quota keys Sluice enforces.
pub const QUOTA_KEYS: [&str; 3] = [PRODUCER_BYTE_RATE, CONSUMER_BYTE_RATE, REQUEST_PERCENTAGE];
/// The most quota entities a cluster keeps.
pub const QUOTA_ENTITIES_MAX: usize = 10_000;
/// The longest user or client id a quota names, in bytes.
pub const QUOTA_NAME_BYTES_MAX: usize = 1024;
/// The largest quota value, bytes per second or percent (no limit in
/// practice).
pub const QUOTA_VALUE_MAX: u64 = 1 << 50;

/// One part of a quota entity: a name, or Kafka's `<default>` (a null
/// name on the wire).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EntityName {
    Default,
    Named(String),
}

impl EntityName {
    pub fn from_wire(name: Option<&str>) -> EntityName {
        match name {
            None => EntityName::Default,
            Some(name) => EntityName::Named(name.to_owned()),
        }
    }

    pub fn to_wire(&self) -> Option<&str> {
        match self {
            EntityName::Default => None,
            EntityName::Named(name) => Some(name),
        }
    }

    /// The account tag for a request whose own name is `own`.
    fn tag(&self, own: &str) -> String {
        match self {
            EntityName::Default => own.to_owned(),
            EntityName::Named(name) => name.clone(),
        }
    }
}

/// What a quota is set on: a user, a client id, or both.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QuotaEntity {
    pub user: Option<EntityName>,
    pub client_id: Option<EntityName>,
}

/// Every entity's quotas: key → bytes per second.
pub type Quotas = BTreeMap<QuotaEntity, BTreeMap<String, u64>>;

/// A throttle as Kafka's `throttle_time_ms` field carries it.
pub fn throttle_ms(throttle: Duration) -> i32 {
    i32::try_from(throttle.as_millis()).unwrap_or(i32::MAX)
}

/// Which quota a request counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuotaKind {
    /// Bytes produced.
    Produce,
    /// Bytes fetched.
    Fetch,
    /// Microseconds of a shard thread's time.
    Request,
}

/// Microseconds per second in one percent of a thread.
const MICROS_PER_SECOND_PER_PERCENT: u64 = 10_000;

impl QuotaKind {
    pub fn key(self) -> &'static str {
        match self {
            QuotaKind::Produce => PRODUCER_BYTE_RATE,
            QuotaKind::Fetch => CONSUMER_BYTE_RATE,
            QuotaKind::Request => REQUEST_PERCENTAGE,
        }
    }

    /// A quota's value (bytes per second, or percent) as units of what this
    /// kind counts per second.
    fn per_second(self, value: u64) -> u64 {
        match self {
            QuotaKind::Produce | QuotaKind::Fetch => value,
            QuotaKind::Request => value.saturating_mul(MICROS_PER_SECOND_PER_PERCENT),
        }
    }
}

/// Kafka's order of the entities that may hold a request's quota.
fn candidates(user: &str, client_id: &str) -> [QuotaEntity; 8] {
    use EntityName::{Default, Named};
    let named_user = || Some(Named(user.to_owned()));
    let named_client = || Some(Named(client_id.to_owned()));
    [
        QuotaEntity {
            user: named_user(),
            client_id: named_client(),
        },
        QuotaEntity {
            user: named_user(),
            client_id: Some(Default),
        },
        QuotaEntity {
            user: named_user(),
            client_id: None,
        },
        QuotaEntity {
            user: Some(Default),
            client_id: named_client(),
        },
        QuotaEntity {
            user: Some(Default),
            client_id: Some(Default),
        },
        QuotaEntity {
            user: Some(Default),
            client_id: None,
        },
        QuotaEntity {
            user: None,
            client_id: named_client(),
        },
        QuotaEntity {
            user: None,
            client_id: Some(Default),
        },
    ]
}

/// The account a request counts against, and its quota in units per
/// second (bytes, or microseconds of thread time), or `None` when no quota
/// applies.
pub fn resolve(
    quotas: &Quotas,
    kind: QuotaKind,
    user: &str,
    client_id: &str,
) -> Option<(Account, u64)> {
    if quotas.is_empty() {
        return None;
    }
    candidates(user, client_id).into_iter().find_map(|entity| {
        let quota = *quotas.get(&entity)?.get(kind.key())?;
        let account = Account {
            kind,
            user: entity.user.as_ref().map(|name| name.tag(user)),
            client_id: entity.client_id.as_ref().map(|name| name.tag(client_id)),
            overflow: false,
        };
        Some((account, kind.per_second(quota)))
    })
}

/// Whether any quota (of any kind) applies to requests of `user` with
/// `client_id`: such a connection is served one request at a time
/// (`kafka/dispatch.rs`), so that each throttle holds the next request.
pub fn any_applies(quotas: &Quotas, user: &str, client_id: &str) -> bool {
    !quotas.is_empty()
        && candidates(user, client_id)
            .iter()
            .any(|entity| quotas.get(entity).is_some_and(|keys| !keys.is_empty()))
}

/// One quota's shared count of bytes (or microseconds).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Account {
    kind: QuotaKind,
    user: Option<String>,
    client_id: Option<String>,
    /// The one account of this kind that clients share once
    /// [`ACCOUNTS_MAX`] others are live.
    overflow: bool,
}

impl Account {
    fn overflow(kind: QuotaKind) -> Account {
        Account {
            kind,
            user: None,
            client_id: None,
            overflow: true,
        }
    }
}

/// The sampled window of one account.
#[derive(Debug, Default)]
struct Window {
    /// (sample start, bytes), oldest first.
    samples: VecDeque<(Instant, u64)>,
}

/// Every account's window, shared by the shards.
pub struct QuotaAccounts {
    sample: Duration,
    samples: usize,
    windows: Mutex<Windows>,
}

#[derive(Default)]
struct Windows {
    by_account: HashMap<Account, Window>,
    /// When idle accounts were last dropped.
    pruned_at: Option<Instant>,
}

/// The most accounts kept (each can hold a client id of up to 32 KiB).
/// When that many are live, idle ones (nothing in the whole window) are
/// dropped, at most once a sample; if none is idle, new clients share one
/// overflow account per kind, so a client that changes its client id on
/// every request neither grows memory nor resets anyone else's account.
const ACCOUNTS_MAX: usize = 10_000;

impl QuotaAccounts {
    /// Windows of `samples` samples of `sample` each (Kafka's
    /// `quota.window.num` and `quota.window.size.seconds`).
    pub fn new(sample: Duration, samples: usize) -> QuotaAccounts {
        QuotaAccounts {
            sample: sample.max(Duration::from_millis(1)),
            samples: samples.max(2),
            windows: Mutex::new(Windows::default()),
        }
    }

    /// Count `bytes` against `account` at `now`; the throttle time once
    /// they take its rate over `quota` bytes per second (zero otherwise).
    pub fn record(&self, account: &Account, quota: u64, bytes: u64, now: Instant) -> Duration {
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let account = self.admit(&mut windows, account, now);
        let window = windows.by_account.entry(account).or_default();
        self.add(window, bytes, now);
        self.throttle(window, quota, now)
    }

    /// The account to count against: `account` when it is live or there
    /// is room for it (after dropping idle accounts, at most once a
    /// sample), else its kind's overflow account.
    fn admit(&self, windows: &mut Windows, account: &Account, now: Instant) -> Account {
        if windows.by_account.len() < ACCOUNTS_MAX || windows.by_account.contains_key(account) {
            return account.clone();
        }
        if windows
            .pruned_at
            .is_none_or(|at| now.duration_since(at) >= self.sample)
        {
            windows.pruned_at = Some(now);
            let horizon = self.sample * self.samples as u32;
            windows.by_account.retain(|_, window| {
                window
                    .samples
                    .back()
                    .is_some_and(|(start, _)| now.duration_since(*start) < horizon)
            });
        }
        if windows.by_account.len() < ACCOUNTS_MAX {
            account.clone()
        } else {
            Account::overflow(account.kind)
        }
    }

    /// The throttle `account` is under at `now` before anything more is
    /// counted: a Fetch that finds it over its quota sends nothing.
    pub fn throttle_now(&self, account: &Account, quota: u64, now: Instant) -> Duration {
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // An account not kept while all are live counts in the overflow one.
        let overflow = Account::overflow(account.kind);
        let counted = if windows.by_account.contains_key(account)
            || windows.by_account.len() < ACCOUNTS_MAX
        {
            account
        } else {
            &overflow
        };
        match windows.by_account.get_mut(counted) {
            Some(window) => {
                self.add(window, 0, now);
                self.throttle(window, quota, now)
            }
            None => Duration::ZERO,
        }
    }

    fn add(&self, window: &mut Window, bytes: u64, now: Instant) {
        let span = self.sample * self.samples as u32;
        while window
            .samples
            .front()
            .is_some_and(|(start, _)| now.duration_since(*start) >= span)
        {
            window.samples.pop_front();
        }
        match window.samples.back_mut() {
            Some((start, total)) if now.duration_since(*start) < self.sample => *total += bytes,
            _ => window.samples.push_back((now, bytes)),
        }
    }

    fn throttle(&self, window: &Window, quota: u64, now: Instant) -> Duration {
        let total: u64 = window.samples.iter().map(|(_, bytes)| bytes).sum();
        let oldest = window.samples.front().map_or(now, |(start, _)| *start);
        let floor = self.sample * (self.samples as u32 - 1);
        let span = now.duration_since(oldest).max(floor);
        let rate = total as f64 / span.as_secs_f64();
        let quota = quota.max(1) as f64;
        if rate <= quota {
            return Duration::ZERO;
        }
        let throttle = span.mul_f64((rate - quota) / quota);
        throttle.min(self.sample * self.samples as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(entries: &[(Option<EntityName>, Option<EntityName>, &str, u64)]) -> Quotas {
        let mut quotas = Quotas::new();
        for (user, client_id, key, value) in entries {
            quotas
                .entry(QuotaEntity {
                    user: user.clone(),
                    client_id: client_id.clone(),
                })
                .or_default()
                .insert((*key).to_owned(), *value);
        }
        quotas
    }

    fn named(name: &str) -> Option<EntityName> {
        Some(EntityName::Named(name.to_owned()))
    }

    #[test]
    fn the_most_specific_entity_wins_in_kafkas_order() {
        let quotas = quotas(&[
            (named("alice"), None, PRODUCER_BYTE_RATE, 100),
            (named("alice"), named("app"), PRODUCER_BYTE_RATE, 10),
            (Some(EntityName::Default), None, PRODUCER_BYTE_RATE, 1000),
            (None, named("app"), CONSUMER_BYTE_RATE, 7),
        ]);
        let quota = |user, client, kind| resolve(&quotas, kind, user, client).map(|(_, q)| q);
        assert_eq!(quota("alice", "app", QuotaKind::Produce), Some(10));
        assert_eq!(quota("alice", "other", QuotaKind::Produce), Some(100));
        assert_eq!(quota("bob", "app", QuotaKind::Produce), Some(1000));
        assert_eq!(quota("bob", "app", QuotaKind::Fetch), Some(7));
        assert_eq!(quota("bob", "other", QuotaKind::Fetch), None);
        // A default quota is each user's own; a named one is shared.
        let (bob, _) = resolve(&quotas, QuotaKind::Produce, "bob", "x").unwrap();
        let (carol, _) = resolve(&quotas, QuotaKind::Produce, "carol", "x").unwrap();
        assert_ne!(bob, carol);
        let (one, _) = resolve(&quotas, QuotaKind::Produce, "alice", "x").unwrap();
        let (two, _) = resolve(&quotas, QuotaKind::Produce, "alice", "y").unwrap();
        assert_eq!(one, two);
    }

    #[test]
    fn a_request_percentage_is_microseconds_of_thread_time_per_second() {
        let quotas = quotas(&[(named("a"), None, REQUEST_PERCENTAGE, 50)]);
        let (account, per_second) = resolve(&quotas, QuotaKind::Request, "a", "c").unwrap();
        // Half a thread: 500 ms of every second.
        assert_eq!(per_second, 500_000);
        assert_eq!(resolve(&quotas, QuotaKind::Produce, "a", "c"), None);
        let accounts = QuotaAccounts::new(Duration::from_secs(1), 11);
        let start = Instant::now();
        // 10 s of floor × 0.5 s per second: 5 s of thread time pass, 6 s
        // are a fifth over, throttled for a fifth of the span.
        assert_eq!(
            accounts.record(&account, per_second, 5_000_000, start),
            Duration::ZERO
        );
        assert_eq!(
            accounts.record(&account, per_second, 1_000_000, start),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn past_the_account_cap_new_clients_share_one_overflow_account() {
        let quotas = quotas(&[(None, Some(EntityName::Default), PRODUCER_BYTE_RATE, 1000)]);
        let accounts = QuotaAccounts::new(Duration::from_secs(1), 11);
        let start = Instant::now();
        for index in 0..ACCOUNTS_MAX {
            let (account, quota) =
                resolve(&quotas, QuotaKind::Produce, "u", &format!("c{index}")).unwrap();
            accounts.record(&account, quota, 1, start);
        }
        let live = || accounts.windows.lock().unwrap().by_account.len();
        assert_eq!(live(), ACCOUNTS_MAX);
        // Every new client id while all are live: one shared account, and
        // its bytes add up there.
        for index in 0..100 {
            let (account, quota) =
                resolve(&quotas, QuotaKind::Produce, "u", &format!("new{index}")).unwrap();
            accounts.record(&account, quota, 200, start);
        }
        assert_eq!(live(), ACCOUNTS_MAX + 1);
        let (newest, quota) = resolve(&quotas, QuotaKind::Produce, "u", "new-x").unwrap();
        assert!(accounts.throttle_now(&newest, quota, start) > Duration::ZERO);
        // Once the others are idle for a whole window, they are dropped and
        // a new client gets its own account again.
        let later = start + Duration::from_secs(12);
        assert_eq!(accounts.record(&newest, quota, 1, later), Duration::ZERO);
        assert!(live() < 10);
    }

    #[test]
    fn a_rate_over_the_quota_is_throttled_in_proportion() {
        let accounts = QuotaAccounts::new(Duration::from_secs(1), 11);
        let (account, _) = resolve(
            &quotas(&[(named("a"), None, PRODUCER_BYTE_RATE, 1000)]),
            QuotaKind::Produce,
            "a",
            "c",
        )
        .unwrap();
        let start = Instant::now();
        // 1000 B/s over the 10 s floor: 10 000 bytes pass at once.
        assert_eq!(
            accounts.record(&account, 1000, 10_000, start),
            Duration::ZERO
        );
        // 15 000 bytes: half as much again over, throttled for half the span.
        let throttle = accounts.record(&account, 1000, 5000, start);
        assert_eq!(throttle, Duration::from_secs(5));
        assert_eq!(
            accounts.throttle_now(&account, 1000, start),
            Duration::from_secs(5)
        );
        // The cap is the whole window.
        let throttle = accounts.record(&account, 1000, 1_000_000, start);
        assert_eq!(throttle, Duration::from_secs(11));
    }
}
