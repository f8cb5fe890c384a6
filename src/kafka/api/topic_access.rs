//! Per-partition authorization for requests that name many partitions of
//! many topics (OffsetCommit, TxnOffsetCommit, OffsetDelete): the
//! partitions whose topic the principal may not touch are taken out before
//! the work, and answered with TOPIC_AUTHORIZATION_FAILED in their place
//! after it, as Kafka's `KafkaApis` does.

use std::collections::HashMap;

use kafka_protocol::ResponseError;

/// Which of a request's items were refused, in request order.
pub struct Refused(Vec<bool>);

/// Split `items` into those whose topic `allowed` admits (in order) and a
/// record of which were refused. `allowed` is asked once per topic.
pub fn split<T>(
    items: Vec<T>,
    topic: impl Fn(&T) -> &str,
    allowed: impl Fn(&str) -> bool,
) -> (Vec<T>, Refused) {
    let mut decided: HashMap<String, bool> = HashMap::new();
    let mut refused = Vec::with_capacity(items.len());
    let mut kept = Vec::with_capacity(items.len());
    for item in items {
        let name = topic(&item);
        let ok = match decided.get(name) {
            Some(ok) => *ok,
            None => {
                let ok = allowed(name);
                decided.insert(name.to_owned(), ok);
                ok
            }
        };
        refused.push(!ok);
        if ok {
            kept.push(item);
        }
    }
    (kept, Refused(refused))
}

impl Refused {
    /// Whether every item was refused (the work can be skipped).
    pub fn all(&self) -> bool {
        self.0.iter().all(|refused| *refused)
    }

    /// Every item's code in request order: the kept items' `codes` in
    /// turn, TOPIC_AUTHORIZATION_FAILED for the refused.
    pub fn merge(&self, codes: Vec<i16>) -> Vec<i16> {
        let mut codes = codes.into_iter();
        self.0
            .iter()
            .map(|refused| {
                if *refused {
                    ResponseError::TopicAuthorizationFailed.code()
                } else {
                    codes.next().unwrap_or(0)
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_items_are_answered_in_their_places() {
        let items = vec![("a", 1), ("b", 2), ("a", 3), ("c", 4)];
        let (kept, refused) = split(items, |item| item.0, |topic| topic != "a");
        assert_eq!(kept, vec![("b", 2), ("c", 4)]);
        assert!(!refused.all());
        let denied = ResponseError::TopicAuthorizationFailed.code();
        assert_eq!(refused.merge(vec![7, 8]), vec![denied, 7, denied, 8]);
    }
}
