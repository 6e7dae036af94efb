//! The MQTT topic layout (docs/mqtt.md §2). With prefix `P`:
//!
//! | topic | direction | carries |
//! |---|---|---|
//! | `P/{client}/hs/{session}` | device -> any server (shared subscription) | DeviceHello |
//! | `P/{client}/dn/{session}/{instance}` | server instance -> device | ServerHello, alerts, records |
//! | `P/{client}/up/{instance}/{session}` | device -> the server instance that answered | DeviceFinish, records |
//!
//! `{client}` is the device's MQTT client id (or its broker user name), so that a broker ACL
//! such as Mosquitto's `pattern readwrite P/%c/#` confines every device to its own topics.
//! `{session}` is 16 random bytes drawn by the device for each handshake, `{instance}` 8
//! random bytes drawn by each server process; both as lowercase hex.

use super::MqttError;

/// Length in hex digits of a session id (16 random bytes).
pub const SESSION_ID_HEX: usize = 32;
/// Length in hex digits of a server instance id (8 random bytes).
pub const INSTANCE_ID_HEX: usize = 16;
/// Longest `{client}` topic level, in bytes.
pub const MAX_CLIENT_LEVEL: usize = 128;
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
#[non_exhaustive]
pub enum Route<'a> {
    /// `P/{client}/hs/{session}`.
    Hello {
        /// The device's client level.
        client: &'a str,
        /// The device's session id.
        session: &'a str,
    },
    /// `P/{client}/dn/{session}/{instance}`.
    Down {
        /// The device's client level.
        client: &'a str,
        /// The session.
        session: &'a str,
        /// The server instance that sent it.
        instance: &'a str,
    },
    /// `P/{client}/up/{instance}/{session}`.
    Up {
        /// The device's client level.
        client: &'a str,
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

/// Whether `s` can be a `{client}` level: 1 to [`MAX_CLIENT_LEVEL`] bytes of ASCII letters,
/// digits and `-_.:@`. Client ids and user names outside this set cannot be substituted into
/// a broker's ACL pattern safely, so they are refused.
pub fn is_client_level(s: &str) -> bool {
    (1..=MAX_CLIENT_LEVEL).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@".contains(&b))
}

/// Checks a client id or user name used as the `{client}` level.
pub fn check_client_level(what: &'static str, value: &str) -> Result<(), MqttError> {
    if is_client_level(value) {
        return Ok(());
    }
    Err(MqttError::Topic {
        what,
        value: value.to_string(),
        reason: "a device's topic level must be 1 to 128 ASCII letters, digits or -_.:@",
    })
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
    pub fn hello(&self, client: &str, session: &str) -> String {
        format!("{}/{client}/hs/{session}", self.prefix)
    }

    /// The servers' shared subscription to every device's hellos.
    pub fn hello_filter(&self, group: &str) -> String {
        format!("$share/{group}/{}/+/hs/+", self.prefix)
    }

    /// Where a server instance publishes to a device.
    pub fn down(&self, client: &str, session: &str, instance: &str) -> String {
        format!("{}/{client}/dn/{session}/{instance}", self.prefix)
    }

    /// A device's subscription for one session.
    pub fn down_filter(&self, client: &str, session: &str) -> String {
        format!("{}/{client}/dn/{session}/+", self.prefix)
    }

    /// Where a device publishes to the server instance that answered it.
    pub fn up(&self, client: &str, instance: &str, session: &str) -> String {
        format!("{}/{client}/up/{instance}/{session}", self.prefix)
    }

    /// A server instance's subscription to its sessions, every device's.
    pub fn up_filter(&self, instance: &str) -> String {
        format!("{}/+/up/{instance}/+", self.prefix)
    }

    /// Parses a topic; `None` if it is not exactly one of the layout's forms with well-formed
    /// identifiers.
    pub fn parse<'a>(&self, topic: &'a str) -> Option<Route<'a>> {
        let rest = topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('/')?;
        let mut levels = rest.split('/');
        let client = levels.next().filter(|c| is_client_level(c))?;
        let route = match (levels.next()?, levels.next()?, levels.next()) {
            ("hs", session, None) => Route::Hello { client, session },
            ("dn", session, Some(instance)) => Route::Down {
                client,
                session,
                instance,
            },
            ("up", instance, Some(session)) => Route::Up {
                client,
                instance,
                session,
            },
            _ => return None,
        };
        if levels.next().is_some() {
            return None;
        }
        let ok = match &route {
            Route::Hello { session, .. } => is_id(session, SESSION_ID_HEX),
            Route::Down {
                session, instance, ..
            }
            | Route::Up {
                instance, session, ..
            } => is_id(session, SESSION_ID_HEX) && is_id(instance, INSTANCE_ID_HEX),
        };
        ok.then_some(route)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "0123456789abcdef0123456789abcdef";
    const I: &str = "fedcba9876543210";
    const C: &str = "sensor-7";

    #[test]
    fn layout_round_trips() {
        let t = Topics::new("site/secchan").unwrap();
        assert_eq!(t.hello(C, S), format!("site/secchan/{C}/hs/{S}"));
        assert_eq!(
            t.parse(&t.hello(C, S)),
            Some(Route::Hello {
                client: C,
                session: S
            })
        );
        assert_eq!(
            t.parse(&t.down(C, S, I)),
            Some(Route::Down {
                client: C,
                session: S,
                instance: I
            })
        );
        assert_eq!(
            t.parse(&t.up(C, I, S)),
            Some(Route::Up {
                client: C,
                instance: I,
                session: S
            })
        );
        assert_eq!(t.hello_filter("g"), "$share/g/site/secchan/+/hs/+");
        assert_eq!(t.down_filter(C, S), format!("site/secchan/{C}/dn/{S}/+"));
        assert_eq!(t.up_filter(I), format!("site/secchan/+/up/{I}/+"));
    }

    #[test]
    fn foreign_topics_do_not_parse() {
        let t = Topics::default();
        for topic in [
            format!("secchan/{C}/hs/{}", &S[1..]),
            format!("secchan/{C}/hs/{}", S.to_uppercase()),
            format!("secchan/{C}/hs/{S}/x"),
            format!("secchan/{C}/dn/{S}"),
            format!("secchan/{C}/dn/{S}/{I}/x"),
            format!("secchan/{C}/up/{S}/{I}"),
            format!("secchan/hs/{S}"),
            format!("secchan/a b/hs/{S}"),
            format!("secchan//hs/{S}"),
            format!("secchan/{}/hs/{S}", "x".repeat(MAX_CLIENT_LEVEL + 1)),
            format!("secchanx/{C}/hs/{S}"),
            format!("other/{C}/hs/{S}"),
            "secchan".to_string(),
            "secchan/".to_string(),
            format!("secchan/{C}/zz/{S}"),
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
        for c in ["", "a/b", "a+", "#", "é", "a b"] {
            assert!(check_client_level("client id", c).is_err(), "{c:?}");
        }
        for c in ["secchan-0a1b", "dev_1.site:7", "pi@greenhouse"] {
            assert!(check_client_level("client id", c).is_ok(), "{c:?}");
        }
    }
}
