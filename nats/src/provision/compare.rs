//! Comparing an existing stream's config with the one provisioning wants (pure): what a
//! change would drop of the stored data, whether there is a change at all, and which
//! settings provisioning never makes (a stream someone else made first).

use async_nats::jetstream::stream;

/// A limit as a number where "unlimited" (0 or -1) is the largest.
fn limit(v: i64) -> i64 {
    if v <= 0 {
        i64::MAX
    } else {
        v
    }
}

/// What going from `have` to `want` would drop of the stored messages (pure): lowered
/// byte, message, per-subject and age limits, and subjects no longer captured.
pub(crate) fn drops_data(have: &stream::Config, want: &stream::Config) -> Vec<String> {
    let mut drops = Vec::new();
    let lowered = |what: &str, have: i64, want: i64, drops: &mut Vec<String>| {
        if limit(want) < limit(have) {
            drops.push(format!("{what} lowered to {want}"));
        }
    };
    lowered("max_bytes", have.max_bytes, want.max_bytes, &mut drops);
    lowered("max_messages", have.max_messages, want.max_messages, &mut drops);
    lowered("max_messages_per_subject", have.max_messages_per_subject, want.max_messages_per_subject, &mut drops);
    let age = |d: std::time::Duration| if d.is_zero() { i64::MAX } else { d.as_millis() as i64 };
    if age(want.max_age) < age(have.max_age) {
        drops.push(format!("max_age lowered to {:?}", want.max_age));
    }
    if have.subjects.iter().any(|s| !want.subjects.contains(s)) {
        drops.push("subjects removed".into());
    }
    drops
}

pub(super) fn differs(have: &stream::Config, want: &stream::Config) -> bool {
    // The server reports "unlimited" as -1 where the config says 0, and fills in a
    // duplicate window where the config leaves it out.
    have.subjects != want.subjects
        || have.max_age != want.max_age
        || (!want.duplicate_window.is_zero() && have.duplicate_window != want.duplicate_window)
        || have.max_bytes.max(0) != want.max_bytes.max(0)
        || have.max_messages.max(0) != want.max_messages.max(0)
        || have.max_message_size.max(0) != want.max_message_size.max(0)
        || have.num_replicas.max(1) != want.num_replicas.max(1)
        || have.max_messages_per_subject.max(0) != want.max_messages_per_subject.max(0)
        || have.discard != want.discard
}

/// The settings of an existing stream that provisioning never makes (pure): a republish,
/// a mirror, sources or a subject transform (each copies, takes in or passes on messages),
/// and subjects other than `own` or, when given, outside `root` (`<root>.`).
pub(super) fn foreign(have: &stream::Config, own: &[String], root: Option<&str>) -> Vec<String> {
    let mut found = Vec::new();
    if have.republish.is_some() {
        found.push("a republish".to_string());
    }
    if have.mirror.is_some() {
        found.push("a mirror".to_string());
    }
    if have.sources.as_ref().is_some_and(|s| !s.is_empty()) {
        found.push("sources".to_string());
    }
    if have.subject_transform.is_some() {
        found.push("a subject transform".to_string());
    }
    let others: Vec<&String> =
        have.subjects.iter().filter(|s| !own.contains(s) && !root.is_some_and(|r| s.starts_with(r))).collect();
    if !others.is_empty() {
        found
            .push(format!("subjects not its own: {}", others.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_with_settings_provisioning_never_makes_is_foreign() {
        let own = vec!["$KV.keys.>".to_string()];
        let ours = stream::Config { name: "KV_keys".into(), subjects: own.clone(), ..Default::default() };
        assert!(foreign(&ours, &own, None).is_empty());
        let republish = stream::Config {
            republish: Some(stream::Republish {
                source: ">".into(),
                destination: "evil.>".into(),
                headers_only: false,
            }),
            ..ours.clone()
        };
        assert_eq!(foreign(&republish, &own, None), vec!["a republish".to_string()]);
        let more = stream::Config { subjects: vec!["$KV.keys.>".into(), "evil.>".into()], ..ours.clone() };
        assert_eq!(foreign(&more, &own, None), vec!["subjects not its own: evil.>".to_string()]);
        // A stream's subjects under its root are its own, from any version.
        let tasks =
            stream::Config { subjects: vec!["bl.v1.queue.>".into(), "bl.v0.queue.>".into()], ..Default::default() };
        assert!(foreign(&tasks, &["bl.v1.queue.>".to_string()], Some("bl.")).is_empty());
        let sourced = stream::Config { sources: Some(vec![stream::Source::default()]), ..ours.clone() };
        assert_eq!(foreign(&sourced, &own, None), vec!["sources".to_string()]);
        let mirrored = stream::Config { mirror: Some(stream::Source::default()), subjects: vec![], ..ours };
        assert_eq!(foreign(&mirrored, &own, None), vec!["a mirror".to_string()]);
    }

    #[test]
    fn lowering_a_limit_or_an_age_drops_data_raising_does_not() {
        let have = stream::Config {
            subjects: vec!["a.>".into()],
            max_bytes: 100,
            max_age: std::time::Duration::from_secs(60),
            ..Default::default()
        };
        let raised = stream::Config { max_bytes: 200, max_age: std::time::Duration::ZERO, ..have.clone() };
        assert!(drops_data(&have, &raised).is_empty());
        let more_subjects = stream::Config { subjects: vec!["a.>".into(), "b.>".into()], ..have.clone() };
        assert!(drops_data(&have, &more_subjects).is_empty());
        let lowered = stream::Config { max_bytes: 50, max_age: std::time::Duration::from_secs(1), ..have.clone() };
        assert_eq!(drops_data(&have, &lowered).len(), 2);
        // Unlimited (0 or -1) to a limit is lowering.
        let unlimited = stream::Config { max_bytes: -1, ..have.clone() };
        assert_eq!(drops_data(&unlimited, &have).len(), 1);
        let fewer_subjects = stream::Config { subjects: vec!["b.>".into()], ..have.clone() };
        assert_eq!(drops_data(&have, &fewer_subjects), vec!["subjects removed".to_string()]);
    }
}
