//! The MQTT topic layout (docs/mqtt.md §2). With prefix `P`:
//!
//! | topic | direction | carries |
//! |---|---|---|
//! | `P/hs/{session}` | device -> any server (shared subscription) | DeviceHello |
//! | `P/dn/{session}/{instance}` | server instance -> device | ServerHello, alerts, records |
//! | `P/up/{instance}/{session}` | device -> the server instance that answered | DeviceFinish, records |
//!
//! `{session}` is 16 random bytes drawn by the device for each handshake, `{instance}` 8
//! random bytes drawn by each server process; both as lowercase hex. Neither says anything
//! about who the device is.

use super::MqttError;

/// Length in hex digits of a session id (16 random bytes).
pub const SESSION_ID_HEX: usize = 32;
/// Length in hex digits of a server instance id (8 random bytes).
pub const INSTANCE_ID_HEX: usize = 16;
/// Default topic prefix.
pub const DEFAULT_PREFIX: &str = "secchan";
/// Default shared-subscription group of the servers.
pub const DEFAULT_SHARE_GROUP: &str = "secchan-servers";

/// The topics of one secchan deployment on a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_string(),
        }
    }
}

/// A message's place in the layout, parsed from its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `P/hs/{session}`.
    Hello {
        /// The device's session id.
        session: &'a str,
    },
    /// `P/dn/{session}/{instance}`.
    Down {
        /// The session.
        session: &'a str,
        /// The server instance that sent it.
        instance: &'a str,
    },
    /// `P/up/{instance}/{session}`.
    Up {
        /// The server instance addressed.
        instance: &'a str,
        /// The session.
        session: &'a str,
    },
}

/// Whether `s` is exactly `len` lowercase hex digits.
fn is_id(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks a name used inside topics: not empty, no wildcard, no NUL, not a `$` topic.
fn check_name(what: &'static str, value: &str, allow_slash: bool) -> Result<(), MqttError> {
    let reason = if value.is_empty() {
        Some("must not be empty")
    } else if value.contains(['+', '#', '\0']) {
        Some("must not contain +, # or NUL")
    } else if value.starts_with('$') {
        Some("must not start with $ (reserved by the broker)")
    } else if !allow_slash && value.contains('/') {
        Some("must not contain /")
    } else if value.starts_with('/') || value.ends_with('/') || value.contains("//") {
        Some("must not have empty topic levels")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(MqttError::Topic {
            what,
            value: value.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Checks a shared-subscription group name.
pub fn check_share_group(group: &str) -> Result<(), MqttError> {
    check_name("shared-subscription group", group, false)
}

impl Topics {
    /// Topics under `prefix` (one or more topic levels, e.g. `secchan` or `site-7/secchan`).
    pub fn new(prefix: &str) -> Result<Self, MqttError> {
        check_name("topic prefix", prefix, true)?;
        Ok(Self {
            prefix: prefix.to_string(),
        })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Where a device publishes its hello.
    pub fn hello(&self, session: &str) -> String {
        format!("{}/hs/{session}", self.prefix)
    }

    /// The servers' shared subscription to every hello.
    pub fn hello_filter(&self, group: &str) -> String {
        format!("$share/{group}/{}/hs/+", self.prefix)
    }

    /// Where a server instance publishes to a device.
    pub fn down(&self, session: &str, instance: &str) -> String {
        format!("{}/dn/{session}/{instance}", self.prefix)
    }

    /// A device's subscription for one session.
    pub fn down_filter(&self, session: &str) -> String {
        format!("{}/dn/{session}/+", self.prefix)
    }

    /// Where a device publishes to the server instance that answered it.
    pub fn up(&self, instance: &str, session: &str) -> String {
        format!("{}/up/{instance}/{session}", self.prefix)
    }

    /// A server instance's subscription to its sessions.
    pub fn up_filter(&self, instance: &str) -> String {
        format!("{}/up/{instance}/+", self.prefix)
    }

    /// Parses a topic; `None` if it is not exactly one of the layout's forms with well-formed
    /// identifiers.
    pub fn parse<'a>(&self, topic: &'a str) -> Option<Route<'a>> {
        let rest = topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('/')?;
        let mut levels = rest.split('/');
        let route = match (levels.next()?, levels.next()?, levels.next()) {
            ("hs", session, None) => Route::Hello { session },
            ("dn", session, Some(instance)) => Route::Down { session, instance },
            ("up", instance, Some(session)) => Route::Up { instance, session },
            _ => return None,
        };
        if levels.next().is_some() {
            return None;
        }
        let ok = match &route {
            Route::Hello { session } => is_id(session, SESSION_ID_HEX),
            Route::Down { session, instance } | Route::Up { instance, session } => {
                is_id(session, SESSION_ID_HEX) && is_id(instance, INSTANCE_ID_HEX)
            }
        };
        ok.then_some(route)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "0123456789abcdef0123456789abcdef";
    const I: &str = "fedcba9876543210";

    #[test]
    fn layout_round_trips() {
        let t = Topics::new("site/secchan").unwrap();
        assert_eq!(t.hello(S), format!("site/secchan/hs/{S}"));
        assert_eq!(t.parse(&t.hello(S)), Some(Route::Hello { session: S }));
        assert_eq!(
            t.parse(&t.down(S, I)),
            Some(Route::Down {
                session: S,
                instance: I
            })
        );
        assert_eq!(
            t.parse(&t.up(I, S)),
            Some(Route::Up {
                instance: I,
                session: S
            })
        );
        assert_eq!(t.hello_filter("g"), "$share/g/site/secchan/hs/+");
        assert_eq!(t.down_filter(S), format!("site/secchan/dn/{S}/+"));
        assert_eq!(t.up_filter(I), format!("site/secchan/up/{I}/+"));
    }

    #[test]
    fn foreign_topics_do_not_parse() {
        let t = Topics::default();
        for topic in [
            format!("secchan/hs/{}", &S[1..]),
            format!("secchan/hs/{}", S.to_uppercase()),
            format!("secchan/hs/{S}/x"),
            format!("secchan/dn/{S}"),
            format!("secchan/dn/{S}/{I}/x"),
            format!("secchan/up/{S}/{I}"),
            format!("secchanx/hs/{S}"),
            format!("other/hs/{S}"),
            "secchan".to_string(),
            "secchan/".to_string(),
            format!("secchan/zz/{S}"),
        ] {
            assert_eq!(t.parse(&topic), None, "{topic}");
        }
    }

    #[test]
    fn bad_names_are_refused() {
        for p in ["", "a/+", "#", "$SYS", "/a", "a/", "a//b", "a\0"] {
            assert!(Topics::new(p).is_err(), "{p:?}");
        }
        assert!(check_share_group("a/b").is_err());
        assert!(check_share_group("servers").is_ok());
    }
}
