//! Kafka's `ssl.principal.mapping.rules` (KIP-371): how the subject of a
//! client certificate, as RFC 2253 prints it (`CN=alice,OU=eng,O=Example`),
//! becomes the user name of the connection's principal.
//!
//! The rules are tried in order; the first that matches decides:
//! - `RULE:<regex>/<replacement>/[L|U]`: if the regex matches the whole
//!   subject, the replacement (with `$1`… for its groups), lower- or
//!   upper-cased with `L` or `U`;
//! - `DEFAULT`: the subject itself.
//!
//! Rules are separated by commas (a comma inside a rule's regex is part of
//! it); `\/` writes a slash inside a regex or replacement. No rules means
//! `DEFAULT`. A subject no rule matches has no principal, and its
//! connection is refused, as in Kafka.

use regex::Regex;

/// One rule.
#[derive(Clone, Debug)]
enum Rule {
    Default,
    Replace {
        pattern: Regex,
        replacement: String,
        case: Case,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    Keep,
    Lower,
    Upper,
}

/// Parsed rules.
#[derive(Clone, Debug)]
pub struct Rules(Vec<Rule>);

/// Read up to the next unescaped `/`; `\/` becomes `/`, other escapes stay.
fn until_slash(text: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, '/')) => out.push('/'),
                Some((_, other)) => {
                    out.push('\\');
                    out.push(other);
                }
                None => return None,
            },
            '/' => return Some((out, &text[at + 1..])),
            other => out.push(other),
        }
    }
    None
}

/// A Java `Matcher.replaceAll` replacement in the regex crate's syntax:
/// `$` and the digits after it name a group (`$1_x` is group 1, then
/// `_x`), `\\c` is a literal `c`, and a literal `$` is `$$`.
fn java_replacement(replacement: &str) -> String {
    let mut out = String::new();
    let mut chars = replacement.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('$') => out.push_str("$$"),
                Some(other) => out.push(other),
                None => {}
            },
            '$' => {
                let mut digits = String::new();
                while let Some(digit) = chars.peek().filter(|c| c.is_ascii_digit()) {
                    digits.push(*digit);
                    chars.next();
                }
                if digits.is_empty() {
                    out.push_str("$$");
                } else {
                    out.push_str(&format!("${{{digits}}}"));
                }
            }
            other => out.push(other),
        }
    }
    out
}

impl Rules {
    /// Parse `text`, or say what is wrong with it.
    pub fn parse(text: &str) -> Result<Rules, String> {
        let mut rules = Vec::new();
        let mut rest = text.trim();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("DEFAULT") {
                rules.push(Rule::Default);
                rest = after;
            } else if let Some(after) = rest.strip_prefix("RULE:") {
                let (pattern, after) = until_slash(after)
                    .ok_or_else(|| format!("rule {rest:?} has no '/' after its regex"))?;
                let (replacement, after) = until_slash(after)
                    .ok_or_else(|| format!("rule {rest:?} has no '/' after its replacement"))?;
                let (case, after) = match after.chars().next() {
                    Some('L') => (Case::Lower, &after[1..]),
                    Some('U') => (Case::Upper, &after[1..]),
                    _ => (Case::Keep, after),
                };
                let pattern = Regex::new(&format!("^(?:{pattern})$"))
                    .map_err(|error| format!("rule {rest:?}: {error}"))?;
                rules.push(Rule::Replace {
                    pattern,
                    replacement: java_replacement(&replacement),
                    case,
                });
                rest = after;
            } else {
                return Err(format!(
                    "expected RULE:<regex>/<replacement>/[L|U] or DEFAULT at {rest:?}"
                ));
            }
            rest = rest.trim_start();
            match rest.strip_prefix(',') {
                Some(after) => rest = after.trim_start(),
                None if rest.is_empty() => {}
                None => return Err(format!("expected ',' between rules at {rest:?}")),
            }
        }
        if rules.is_empty() {
            rules.push(Rule::Default);
        }
        Ok(Rules(rules))
    }

    /// The user name for certificate subject `subject`, or `None` when no
    /// rule matches.
    pub fn map(&self, subject: &str) -> Option<String> {
        self.0.iter().find_map(|rule| match rule {
            Rule::Default => Some(subject.to_owned()),
            Rule::Replace {
                pattern,
                replacement,
                case,
            } => {
                let captures = pattern.captures(subject)?;
                let mut name = String::new();
                captures.expand(replacement, &mut name);
                Some(match case {
                    Case::Keep => name,
                    Case::Lower => name.to_lowercase(),
                    Case::Upper => name.to_uppercase(),
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafkas_examples_map_as_documented() {
        let rules = Rules::parse(
            "RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/, RULE:^CN=(.*?),OU=(.*?),O=(.*?),L=(.*?),ST=(.*?),C=(.*?)$/$1@$2/L, DEFAULT",
        )
        .unwrap();
        assert_eq!(
            rules.map("CN=serviceuser,OU=ServiceUsers,O=Unknown,L=Unknown,ST=Unknown,C=Unknown"),
            Some("serviceuser".to_owned())
        );
        assert_eq!(
            rules.map("CN=adminUser,OU=Admin,O=Unknown,L=Unknown,ST=Unknown,C=Unknown"),
            Some("adminuser@admin".to_owned())
        );
        assert_eq!(rules.map("CN=x"), Some("CN=x".to_owned()));
    }

    #[test]
    fn no_rules_is_default_and_an_unmatched_subject_has_no_principal() {
        assert_eq!(
            Rules::parse("").unwrap().map("CN=a"),
            Some("CN=a".to_owned())
        );
        let only = Rules::parse("RULE:^CN=([a-z]+)$/$1/U").unwrap();
        assert_eq!(only.map("CN=bob"), Some("BOB".to_owned()));
        assert_eq!(only.map("CN=bob,O=x"), None);
        let slash = Rules::parse(r"RULE:^CN=(.*)\/x$/$1\/y/").unwrap();
        assert_eq!(slash.map("CN=a/x"), Some("a/y".to_owned()));
    }

    #[test]
    fn group_references_end_at_the_last_digit_as_in_java() {
        let rules = Rules::parse("RULE:^O=([^,]+),OU=([^,]+),CN=([^,]+)$/$3_$2/").unwrap();
        assert_eq!(
            rules.map("O=Example,OU=eng,CN=alice"),
            Some("alice_eng".to_owned())
        );
    }

    #[test]
    fn malformed_rules_are_refused() {
        for text in [
            "RULE:abc",
            "RULE:a/b",
            "NOPE",
            "DEFAULT DEFAULT",
            "RULE:(/x/",
        ] {
            assert!(Rules::parse(text).is_err(), "{text}");
        }
    }
}
