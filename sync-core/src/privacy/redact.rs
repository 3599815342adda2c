//! Redaction of personal data inside free text: e-mail addresses, phone numbers, payment card
//! numbers (Luhn-checked), IPv4 and IPv6 addresses.
//!
//! Patterns are `regex` expressions; candidates are then checked (Luhn for cards, the standard
//! library's parser for IPv6, octet ranges for IPv4, a digit count for phone numbers) and must
//! not touch a letter or digit on either side. Redaction errs on the side of removing: any run
//! of 7 or more digits written like a phone number is replaced, whatever it was. ISO 8601 dates
//! and times are left alone by the number patterns.

use std::net::Ipv6Addr;
use std::str::FromStr;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A kind of personal data found in free text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PiiKind {
    /// E-mail addresses, replaced by `[email]`.
    Email,
    /// Phone numbers (7 to 15 digits or more, with `+`, spaces, dots, dashes, parentheses),
    /// replaced by `[phone]`.
    Phone,
    /// Payment card numbers (13 to 19 digits passing the Luhn check), replaced by `[card]`.
    Card,
    /// IPv4 addresses, replaced by `[ip]`.
    Ipv4,
    /// IPv6 addresses, replaced by `[ip]`.
    Ipv6,
}

impl PiiKind {
    /// Every kind.
    pub const ALL: [PiiKind; 5] = [
        PiiKind::Email,
        PiiKind::Phone,
        PiiKind::Card,
        PiiKind::Ipv4,
        PiiKind::Ipv6,
    ];

    /// The name used in rule files.
    pub fn as_str(self) -> &'static str {
        match self {
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
            PiiKind::Card => "card",
            PiiKind::Ipv4 => "ipv4",
            PiiKind::Ipv6 => "ipv6",
        }
    }

    /// Parses a rule-file name.
    pub fn parse(name: &str) -> Option<PiiKind> {
        PiiKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

const EMAIL: &str = r"(?i)[a-z0-9._%+\-]+@[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?)*\.[a-z]{2,}";
const IPV6: &str = r"(?i)(?:[0-9a-f]{0,4}:){2,7}(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9a-f]{1,4})?";
const IPV4: &str = r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}";
const CARD: &str = r"[0-9](?:[ \-]?[0-9]){12,18}";
const PHONE: &str =
    r"(?:\+[0-9]{1,3}[ .\-]?)?(?:\([0-9]{1,4}\)[ .\-]?)?[0-9]{1,4}(?:[ .\-]?[0-9]{1,4}){1,7}";
const ISO_DATE_TIME: &str = r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?(?:Z|[+\-][0-9]{2}:?[0-9]{2})?)?";

/// Compiled redaction patterns.
#[derive(Debug)]
pub(crate) struct Redactor {
    email: Regex,
    ipv6: Regex,
    ipv4: Regex,
    card: Regex,
    phone: Regex,
    iso_date_time: Regex,
}

fn compile(pattern: &str) -> Result<Regex> {
    Regex::new(pattern).map_err(|e| Error::internal("a built-in redaction pattern").with_source(e))
}

fn digits(s: &str) -> impl Iterator<Item = u32> + '_ {
    s.chars().filter_map(|c| c.to_digit(10))
}

fn luhn_valid(s: &str) -> bool {
    let ds: Vec<u32> = digits(s).collect();
    if !(13..=19).contains(&ds.len()) {
        return false;
    }
    let sum: u32 = ds
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| match (i % 2 == 1, d * 2) {
            (true, dd) if dd > 9 => dd - 9,
            (true, dd) => dd,
            (false, _) => d,
        })
        .sum();
    sum.is_multiple_of(10)
}

fn ipv4_valid(s: &str) -> bool {
    s.split('.').all(|octet| octet.parse::<u8>().is_ok())
}

fn ipv6_valid(s: &str) -> bool {
    Ipv6Addr::from_str(s).is_ok()
}

fn phone_valid(s: &str) -> bool {
    digits(s).count() >= 7
}

/// Replaces each match of `re` in `text` that `valid` accepts and that is not part of a longer
/// token: no letter or digit next to it on either side, nor an `extra` character followed by
/// a letter or digit (so `1.2.3.4.5` is no IPv4 address, but `10.0.0.1.` ends a sentence).
fn replace(
    text: &str,
    re: &Regex,
    extra: &[char],
    valid: impl Fn(&str) -> bool,
    token: &str,
) -> String {
    let touches = |next: Option<char>, beyond: Option<char>| match next {
        Some(c) if c.is_alphanumeric() => true,
        Some(c) if extra.contains(&c) => beyond.is_some_and(char::is_alphanumeric),
        _ => false,
    };
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for m in re.find_iter(text) {
        let mut before = text[..m.start()].chars().rev();
        let mut after = text[m.end()..].chars();
        let (b1, b2) = (before.next(), before.next());
        let (a1, a2) = (after.next(), after.next());
        if touches(b1, b2) || touches(a1, a2) || !valid(m.as_str()) {
            continue;
        }
        out.push_str(&text[last..m.start()]);
        out.push_str(token);
        last = m.end();
    }
    out.push_str(&text[last..]);
    out
}

impl Redactor {
    pub(crate) fn new() -> Result<Self> {
        Ok(Self {
            email: compile(EMAIL)?,
            ipv6: compile(IPV6)?,
            ipv4: compile(IPV4)?,
            card: compile(CARD)?,
            phone: compile(PHONE)?,
            iso_date_time: compile(ISO_DATE_TIME)?,
        })
    }

    /// Applies `f` to the parts of `text` outside ISO dates and times.
    fn outside_dates(&self, text: &str, f: impl Fn(&str) -> String) -> String {
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for m in self.iso_date_time.find_iter(text) {
            out.push_str(&f(&text[last..m.start()]));
            out.push_str(m.as_str());
            last = m.end();
        }
        out.push_str(&f(&text[last..]));
        out
    }

    /// `text` with every occurrence of `kinds` replaced by its token.
    pub(crate) fn redact(&self, text: &str, kinds: &[PiiKind]) -> String {
        let on = |k: PiiKind| kinds.contains(&k);
        let mut s = text.to_owned();
        if on(PiiKind::Email) {
            s = replace(
                &s,
                &self.email,
                &['.', '@', '_', '%', '+', '-'],
                |_| true,
                "[email]",
            );
        }
        if on(PiiKind::Ipv6) {
            s = replace(&s, &self.ipv6, &[':', '.'], ipv6_valid, "[ip]");
        }
        if on(PiiKind::Ipv4) {
            s = replace(&s, &self.ipv4, &['.'], ipv4_valid, "[ip]");
        }
        if on(PiiKind::Card) {
            s = self.outside_dates(&s, |part| {
                replace(part, &self.card, &[], luhn_valid, "[card]")
            });
        }
        if on(PiiKind::Phone) {
            s = self.outside_dates(&s, |part| {
                replace(part, &self.phone, &['+'], phone_valid, "[phone]")
            });
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(text: &str) -> String {
        Redactor::new()
            .expect("patterns compile")
            .redact(text, &PiiKind::ALL)
    }

    #[test]
    fn emails() {
        assert_eq!(
            r("write to jane.doe+x@mail.example.org."),
            "write to [email]."
        );
        assert_eq!(r("A@B.CO and b_c@d-e.io"), "[email] and [email]");
        assert_eq!(
            r("not an address: a@b, @home"),
            "not an address: a@b, @home"
        );
    }

    #[test]
    fn phones_in_the_formats_people_write() {
        for phone in [
            "+15550123456",
            "+1 555 012 3456",
            "(555) 012-3456",
            "555-012-3456",
            "555.012.3456",
            "5550123456",
            "+44 20 7946 0958",
            "012 3456",
        ] {
            assert_eq!(
                r(&format!("call {phone} now")),
                "call [phone] now",
                "{phone}"
            );
        }
        // Short numbers, versions, dates and times stay.
        for keep in [
            "error 404",
            "port 8080",
            "v1.2.3",
            "at 2026-11-25T10:30:00Z",
            "on 2026-11-25",
            "at 10:30:45",
        ] {
            assert_eq!(r(keep), keep);
        }
    }

    #[test]
    fn cards_are_luhn_checked() {
        assert_eq!(r("card 4111 1111 1111 1111 ok"), "card [card] ok");
        assert_eq!(r("card 4111-1111-1111-1111"), "card [card]");
        assert_eq!(r("card 5555555555554444"), "card [card]");
        // Fails Luhn: not labelled a card, but a long number is still removed.
        assert_eq!(r("ref 4111111111111112"), "ref [phone]");
        assert!(luhn_valid("4012888888881881"));
        assert!(!luhn_valid("4012888888881882"));
    }

    #[test]
    fn ip_addresses() {
        assert_eq!(r("from 192.168.1.20:443"), "from [ip]:443");
        assert_eq!(r("from 10.0.0.1."), "from [ip].");
        assert_eq!(r("not 999.1.1.1"), "not 999.1.1.1");
        assert_eq!(r("version 1.2.3.4.5"), "version 1.2.3.4.5");
        assert_eq!(r("v6 2001:db8::8a2e:370:7334 end"), "v6 [ip] end");
        assert_eq!(r("v6 fe80::1"), "v6 [ip]");
        assert_eq!(r("mapped ::ffff:192.0.2.128"), "mapped [ip]");
        assert_eq!(
            r("mac 00:1a:2b:3c:4d:5e stays"),
            "mac 00:1a:2b:3c:4d:5e stays"
        );
        assert_eq!(r("deadbeef::1"), "deadbeef::1");
    }

    #[test]
    fn only_the_chosen_kinds() {
        let red = Redactor::new().expect("compile");
        assert_eq!(
            red.redact("a@b.io 10.0.0.1", &[PiiKind::Ipv4]),
            "a@b.io [ip]"
        );
        assert_eq!(red.redact("a@b.io 10.0.0.1", &[]), "a@b.io 10.0.0.1");
    }

    #[test]
    fn never_panics_on_odd_text() {
        let red = Redactor::new().expect("compile");
        for s in [
            "",
            "+",
            "()",
            "ü@ß.de",
            "📞 +1 555 012 3456 📞",
            "1",
            "::",
            "a:b:c",
        ] {
            let _ = red.redact(s, &PiiKind::ALL);
        }
        assert_eq!(r("📞 +1 555 012 3456 📞"), "📞 [phone] 📞");
    }
}
