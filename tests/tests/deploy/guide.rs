//! The guide itself: its `sh` blocks and commands, read from docs/DEPLOY.md, and the
//! mechanical substitutions that put them on a test host.

use super::*;

/// docs/DEPLOY.md: its `sh` blocks as commands, and its prose.
pub(crate) struct Guide {
    pub(crate) blocks: Vec<Vec<String>>,
    /// The whole text with every run of whitespace one space.
    pub(crate) prose: String,
}

impl Guide {
    pub(crate) fn load() -> Guide {
        let text = fs::read_to_string(workspace_root().join("docs/DEPLOY.md")).expect("docs/DEPLOY.md");
        let mut blocks = Vec::new();
        let mut block: Option<Vec<String>> = None;
        for line in text.lines().map(str::trim) {
            if let Some(lines) = &mut block {
                if line != "```" {
                    lines.push(line.to_string());
                    continue;
                }
                blocks.push(commands(lines));
                block = None;
            } else if line == "```sh" {
                block = Some(Vec::new());
            }
        }
        Guide { blocks, prose: text.split_whitespace().collect::<Vec<_>>().join(" ") }
    }

    /// The one block that holds `marker`.
    pub(crate) fn block(&self, marker: &str) -> Vec<String> {
        let found: Vec<&Vec<String>> = self.blocks.iter().filter(|b| b.join("\n").contains(marker)).collect();
        assert_eq!(found.len(), 1, "docs/DEPLOY.md should have one sh block holding {marker:?}: {found:#?}");
        found[0].clone()
    }

    /// The command equal to `marker`, else the one command holding it.
    pub(crate) fn command(&self, marker: &str) -> String {
        let all = self.blocks.iter().flatten();
        if all.clone().any(|c| c == marker) {
            return marker.to_string();
        }
        let mut found: Vec<&String> = all.filter(|c| c.contains(marker)).collect();
        found.sort();
        found.dedup();
        assert_eq!(found.len(), 1, "docs/DEPLOY.md should have one command holding {marker:?}: {found:#?}");
        found[0].clone()
    }

    /// What the guide says between `before` and the next `after`.
    pub(crate) fn says(&self, before: &str, after: &str) -> String {
        let start = self.prose.find(before).unwrap_or_else(|| panic!("docs/DEPLOY.md no longer says {before:?}"));
        let rest = &self.prose[start + before.len()..];
        rest[..rest.find(after).expect("the end of the quote")].to_string()
    }
}

/// A block's lines as commands: a line ending in `\` goes on with the next, and a
/// `for … do` goes on to its `done`.
pub(crate) fn commands(lines: &[String]) -> Vec<String> {
    let (mut out, mut current, mut depth) = (Vec::new(), Vec::new(), 0);
    for line in lines {
        if line.is_empty() && current.is_empty() {
            continue;
        }
        current.push(line.as_str());
        if (line.starts_with("for ") || line.starts_with("while ")) && line.ends_with("do") {
            depth += 1;
        }
        if line == "done" {
            depth -= 1;
        }
        if depth == 0 && !line.ends_with('\\') {
            out.push(current.join("\n"));
            current.clear();
        }
    }
    assert!(current.is_empty(), "an unfinished command in docs/DEPLOY.md: {current:?}");
    out
}

/// `text` with each `from` replaced by its `to` in one pass (a replacement is not replaced
/// again; the first `from` that matches wins). A path matches only where a path starts
/// (not after a letter, a digit, `_`, `.` or `/`), an address only where one ends (not
/// before a digit).
pub(crate) fn substitute(text: &str, map: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while let Some(c) = text[i..].chars().next() {
        let rest = &text[i..];
        let prev = text[..i].chars().next_back();
        let hit = map.iter().find(|(from, _)| {
            rest.starts_with(from.as_str())
                && if from.starts_with('/') {
                    !prev.is_some_and(|p| p.is_alphanumeric() || "_./".contains(p))
                } else {
                    !rest[from.len()..].starts_with(|n: char| n.is_ascii_digit())
                }
        });
        match hit {
            Some((from, to)) => {
                out.push_str(to);
                i += from.len();
            }
            None => {
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

/// Panics if the guide's `cmd` names a folder of this machine that `map` does not move into
/// a host's folder: the test must never write outside its temporary folder.
pub(crate) fn assert_contained(cmd: &str, map: &[(String, String)]) {
    let erased: Vec<(String, String)> = map.iter().map(|(from, _)| (from.clone(), String::new())).collect();
    let rest = substitute(cmd, &erased);
    for root in ["/etc/", "/var/", "/run/", "/usr/", "/opt/", "/root/", "/home/", "/srv/", "/tmp/"] {
        let marked = substitute(&rest, &[(root.to_string(), "\u{0}".to_string())]);
        assert_eq!(marked, rest, "the test would not move {root} of `{cmd}` into a host's folder");
    }
}

/// An `install` command without its `-o USER` and `-g GROUP`.
pub(crate) fn without_owners(words: &[&str]) -> String {
    let mut kept = Vec::new();
    let mut skip = false;
    for w in words {
        if std::mem::take(&mut skip) {
            continue;
        }
        if *w == "-o" || *w == "-g" {
            skip = true;
        } else {
            kept.push(*w);
        }
    }
    kept.join(" ")
}
