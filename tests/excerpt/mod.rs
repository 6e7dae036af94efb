//! protocol.md §9 quotes values of the vector files in excerpts; the vector tests check that
//! every quoted value is the file's.

use std::collections::BTreeMap;

/// Every hex value protocol.md §9 quotes (whole, or a prefix ending in "...") in the excerpt
/// that follows `marker` must be the file's. Returns how many were checked.
pub fn check_excerpt(marker: &str, file: &str) -> usize {
    let root = env!("CARGO_MANIFEST_DIR");
    let spec = std::fs::read_to_string(format!("{root}/protocol.md")).unwrap();
    let stored: BTreeMap<String, String> = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/tests/vectors/{file}.json")).unwrap(),
    )
    .unwrap();
    let excerpt = spec
        .split(marker)
        .nth(1)
        .and_then(|rest| rest.split("```").nth(1))
        .expect("protocol.md §9 has the excerpt");
    let mut checked = 0;
    for line in excerpt.lines() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        let hex = value.trim_end_matches("...");
        if value.contains("...") && !value.ends_with("...") || hex.len() < 16 {
            continue; // abbreviated inputs such as 5e5e...5e
        }
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let want = stored
            .get(name)
            .unwrap_or_else(|| panic!("protocol.md §9 quotes {name}, which {file} lacks"));
        assert!(want.starts_with(hex), "protocol.md §9: {name} differs");
        checked += 1;
    }
    checked
}
