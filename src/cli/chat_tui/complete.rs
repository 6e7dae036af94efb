//! Tab completion of `@NAME` at the start of the input line.

/// What Tab makes of `input`: `@` and a prefix of one name becomes `@NAME ` (a space after
/// it, ready for the message), a prefix of several becomes their longest common prefix.
/// `None` when there is nothing to complete (no `@`, a message already started, no name).
pub fn complete(input: &str, names: &[String]) -> Option<String> {
    let prefix = input.strip_prefix('@')?;
    if prefix.contains(' ') {
        return None;
    }
    let mut matching = names.iter().filter(|n| n.starts_with(prefix));
    let first = matching.next()?;
    let common = matching.fold(first.as_str(), |common, name| {
        let len = common
            .char_indices()
            .zip(name.chars())
            .find(|((_, a), b)| a != b)
            .map_or(common.len().min(name.len()), |((i, _), _)| i);
        &common[..len]
    });
    if common == first {
        return Some(format!("@{first} "));
    }
    (common.len() > prefix.len()).then(|| format!("@{common}"))
}

/// The names to complete: `known` (pinned peers, registry names) and `seen`, sorted, each once.
pub fn names<'a>(
    known: impl IntoIterator<Item = &'a str>,
    seen: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let mut v: Vec<String> = known.into_iter().chain(seen).map(str::to_string).collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<String> {
        names(["sensor-2", "sensor-10", "bob"], ["bob", "alice"])
    }

    #[test]
    fn names_are_sorted_once_each() {
        assert_eq!(known(), ["alice", "bob", "sensor-10", "sensor-2"]);
    }

    #[test]
    fn a_unique_prefix_completes_the_name_and_a_space() {
        assert_eq!(complete("@b", &known()).as_deref(), Some("@bob "));
        assert_eq!(complete("@alice", &known()).as_deref(), Some("@alice "));
    }

    #[test]
    fn a_shared_prefix_completes_to_what_the_names_have_in_common() {
        assert_eq!(complete("@s", &known()).as_deref(), Some("@sensor-"));
        // Nothing more in common: Tab leaves the line as it is.
        assert_eq!(complete("@sensor-", &known()), None);
        assert_eq!(
            complete("@sensor-1", &known()).as_deref(),
            Some("@sensor-10 ")
        );
    }

    #[test]
    fn nothing_completes_without_an_at_a_match_or_once_the_message_started() {
        assert_eq!(complete("hello", &known()), None);
        assert_eq!(complete("@zed", &known()), None);
        assert_eq!(complete("@bob hi", &known()), None);
        assert_eq!(complete("@", &[]), None);
        // `@` alone: the names' common prefix, here none.
        assert_eq!(complete("@", &known()), None);
        assert_eq!(
            complete("@", &["solo".to_string()]).as_deref(),
            Some("@solo ")
        );
    }
}
