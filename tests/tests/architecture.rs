//! The layering rules, checked on the source tree so that they hold by structure, not
//! by review:
//! - an actor's module never names another actor's module; only the node supervisor
//!   (`node.rs`) names actors, and the shared layer below them names none;
//! - no file outside the storage layer (`nats/src/store*`, with JetStream provisioning)
//!   touches a KV bucket or a stream, except the benchmark's raw JetStream floor (the
//!   baseline it measures the platform against), the local server launcher's readiness
//!   probe, and the test harness, which reads state as an outside observer;
//! - no test waits on log text;
//! - a plain `cargo build` never compiles the echo engine's fault injection;
//! - the gateway's modules import each other without a circle;
//! - actors hold no process-global state (`static … OnceLock`): what an actor knows is
//!   its own (the task manager's admission, the gateway's refusals), except the metrics
//!   registry and the NVIDIA driver's library, which are the process's;
//! - gateway handlers answer typed structs (with schemas in the OpenAPI document), never
//!   `Json<Value>`;
//! - JetStream's types stay in the bus layer (`nats/`): actors answer a delivery through
//!   `store::queue::Delivery`, never with ack kinds or a raw `-NAK`;
//! - no library returns `Result<_, String>`: errors are types (the binary and the tests
//!   may);
//! - bus calls are typed: a request names its subject and reply (`bus-schema/src/call.rs`),
//!   so no call site pairs them by hand (`Bus::call`, `ask`, and the actors' `Server`).

use std::path::{Path, PathBuf};

use bitinglip_tests::workspace_root;

const ACTORS: [&str; 7] =
    ["cluster_manager", "gateway", "heartbeat", "model_manager", "puller", "task_manager", "worker"];

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target" || n == "fuzz" || n.to_string_lossy().starts_with('.')) {
                continue;
            }
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The code of a file without its comment lines.
fn code(path: &Path) -> Vec<(usize, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(i, l)| (i + 1, l.to_string()))
        .collect()
}

/// Every code line of `files` that `hit` holds for, as `path:line: code`.
fn code_lines_where(files: impl IntoIterator<Item = PathBuf>, hit: impl Fn(&str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    for file in files {
        for (n, line) in code(&file) {
            if hit(&line) {
                found.push(format!("{}:{n}: {}", file.display(), line.trim()));
            }
        }
    }
    found
}

/// `line` without its white space.
fn squeezed(line: &str) -> String {
    line.chars().filter(|c| !c.is_whitespace()).collect()
}

/// True when `line` names module `name` as a path (`name::`), as a whole word.
fn names_module(line: &str, name: &str) -> bool {
    let needle = format!("{name}::");
    line.match_indices(&needle).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

#[test]
fn actors_never_reach_into_each_other() {
    let src = workspace_root().join("actors/src");
    let mut violations = Vec::new();
    for file in rust_files(&src) {
        let rel = file.strip_prefix(&src).unwrap().to_string_lossy().to_string();
        let top = rel.split('/').next().unwrap().trim_end_matches(".rs").to_string();
        if top == "node" || top == "lib" {
            continue;
        }
        // An actor may name itself (its own submodules); the shared layer names none.
        let others: Vec<&str> = ACTORS.iter().copied().filter(|a| *a != top).collect();
        for (n, line) in code(&file) {
            for other in &others {
                if names_module(&line, other) {
                    violations.push(format!("actors/src/{rel}:{n} names `{other}`: {}", line.trim()));
                }
            }
            if line.contains("super::super") {
                violations.push(format!("actors/src/{rel}:{n} reaches up two levels: {}", line.trim()));
            }
        }
    }
    assert!(violations.is_empty(), "layering broken:\n{}", violations.join("\n"));
}

#[test]
fn only_the_storage_layer_touches_buckets_and_streams() {
    let root = workspace_root();
    let allowed = [
        "nats/src/store",
        "nats/src/provision.rs",
        "nats/src/bus.rs",
        "nats/src/server.rs",
        "nodes/src/bench/floor.rs",
        "tests/",
    ];
    let handles = [
        "kv::Store",
        "jetstream::new(",
        ".jetstream()",
        "get_key_value(",
        "create_key_value(",
        "get_stream(",
        "get_stream_no_info(",
        "create_consumer(",
        "get_or_create_consumer(",
    ];
    let mut violations = Vec::new();
    for dir in ["bus-schema", "nats", "config", "client", "actors", "nodes", "modelgen", "tests"] {
        for file in rust_files(&root.join(dir)) {
            let rel = file.strip_prefix(&root).unwrap().to_string_lossy().to_string();
            if allowed.iter().any(|a| rel.starts_with(a)) {
                continue;
            }
            for (n, line) in code(&file) {
                if let Some(h) = handles.iter().find(|h| line.contains(*h)) {
                    violations.push(format!("{rel}:{n} uses `{h}`: {}", line.trim()));
                }
            }
        }
    }
    assert!(violations.is_empty(), "storage outside its layer:\n{}", violations.join("\n"));
}

#[test]
fn no_test_waits_on_log_text() {
    let root = workspace_root().join("tests");
    let this = file!().rsplit('/').next().unwrap();
    let files = rust_files(&root).into_iter().filter(|file| file.file_name().is_none_or(|n| n != this));
    let violations = code_lines_where(files, |line| {
        line.contains("wait_for_log") || line.contains("log().contains(") || line.contains("log.contains(")
    });
    assert!(violations.is_empty(), "tests must wait on state, not on log text:\n{}", violations.join("\n"));
}

/// The sibling modules of the gateway a file names: `super::x`, `super::{x, y::…}`,
/// `crate::gateway::x` (in a module's own folder, `super::` is the module itself).
fn gateway_modules_named(text: &str, in_subfolder: bool, modules: &[String]) -> Vec<String> {
    let mut named = Vec::new();
    let mut take = |rest: &str| {
        let rest = rest.trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            // The first name of each item at the group's own depth.
            let (mut depth, mut item_start) = (0, true);
            let mut name = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && depth == 0 && (c.is_alphanumeric() || c == '_') => name.push(c),
                    _ if item_start && !name.is_empty() => {
                        named.push(std::mem::take(&mut name));
                        item_start = false;
                    }
                    _ => {}
                }
            }
            if !name.is_empty() {
                named.push(name);
            }
        } else {
            named.push(rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect());
        }
    };
    for (i, _) in text.match_indices("crate::gateway::") {
        take(&text[i + "crate::gateway::".len()..]);
    }
    if !in_subfolder {
        for (i, _) in text.match_indices("super::") {
            if !text[..i].ends_with("super::") && !text[i + 7..].starts_with("super::") {
                take(&text[i + "super::".len()..]);
            }
        }
    }
    named.retain(|n| modules.contains(n));
    named.sort();
    named.dedup();
    named
}

#[test]
fn the_gateways_modules_import_each_other_without_a_circle() {
    let dir = workspace_root().join("actors/src/gateway");
    let mut modules: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            (p.extension().is_some_and(|x| x == "rs")).then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    modules.sort();
    // What each module (its file and the files of its folder) names, tests left out.
    let mut edges: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for m in &modules {
        let mut files = vec![(dir.join(format!("{m}.rs")), false)];
        if dir.join(m).is_dir() {
            files.extend(rust_files(&dir.join(m)).into_iter().map(|f| (f, true)));
        }
        let mut named = Vec::new();
        for (file, sub) in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let text = text.split("#[cfg(test)]").next().unwrap_or_default();
            let code: String =
                text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
            named.extend(gateway_modules_named(&code, sub, &modules));
        }
        named.retain(|n| n != m);
        named.sort();
        named.dedup();
        edges.insert(m.clone(), named);
    }
    // A depth-first search for a path back to where it started.
    fn circle(
        edges: &std::collections::BTreeMap<String, Vec<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        let last = path.last().unwrap().clone();
        for next in edges.get(&last).into_iter().flatten() {
            if let Some(at) = path.iter().position(|p| p == next) {
                let mut found = path[at..].to_vec();
                found.push(next.clone());
                return Some(found);
            }
            if done.contains(next) {
                continue;
            }
            path.push(next.clone());
            if let Some(found) = circle(edges, path, done) {
                return Some(found);
            }
            path.pop();
        }
        done.insert(last);
        None
    }
    let mut done = Default::default();
    for m in &modules {
        if let Some(found) = circle(&edges, &mut vec![m.clone()], &mut done) {
            panic!("the gateway's modules import each other in a circle: {}", found.join(" → "));
        }
    }
    // The check sees both forms of a name.
    let named = gateway_modules_named(
        "use super::{auth::check, openai::{self, X}};\nuse crate::gateway::submit::gather;",
        false,
        &["auth".into(), "openai".into(), "submit".into()],
    );
    assert_eq!(named, ["auth", "openai", "submit"]);
}

#[test]
fn actors_hold_no_process_global_state() {
    let root = workspace_root().join("actors/src");
    let allowed = [root.join("metrics.rs"), root.join("gpus.rs")];
    let mut found = Vec::new();
    for file in rust_files(&root).into_iter().filter(|f| !allowed.contains(f)) {
        for (n, line) in code(&file) {
            if line.contains("static ")
                && (line.contains("OnceLock") || line.contains("LazyLock") || line.contains("Mutex<"))
            {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "process-global state in actors (own it in the actor instead):\n{}", found.join("\n"));
}

#[test]
fn gateway_handlers_answer_typed_structs() {
    let dir = workspace_root().join("actors/src/gateway");
    let found = code_lines_where(rust_files(&dir), |line| {
        let squeezed = squeezed(line);
        squeezed.contains("Json<Value>") || squeezed.contains("Json<serde_json::Value>")
    });
    assert!(found.is_empty(), "untyped answers (give them a struct with a schema):\n{}", found.join("\n"));
}

#[test]
fn jetstream_stays_in_the_bus_layer() {
    let root = workspace_root();
    let files = ["actors", "client", "bus-schema", "config"].into_iter().flat_map(|dir| rust_files(&root.join(dir)));
    let found = code_lines_where(files, |line| {
        ["async_nats::jetstream", "jetstream::Message", "AckKind", "\"-NAK\"", "\"+ACK\""]
            .iter()
            .any(|h| line.contains(h))
    });
    assert!(found.is_empty(), "JetStream outside `nats/` (use store::queue::Delivery):\n{}", found.join("\n"));
}

#[test]
fn bus_calls_are_typed() {
    let root = workspace_root();
    let files = ["actors", "client", "nodes"]
        .into_iter()
        .flat_map(|dir| rust_files(&root.join(dir)))
        // The benchmark's floor is raw NATS request/reply on purpose: the baseline.
        .filter(|file| !file.ends_with("bench/floor.rs"));
    let found = code_lines_where(files, |line| {
        let squeezed = squeezed(line);
        squeezed.contains("bus.request(") || squeezed.contains(".request::<") || squeezed.contains("spawn_endpoint")
    });
    assert!(
        found.is_empty(),
        "a bus call paired by hand (use Bus::call / ask, or Server::serve):\n{}",
        found.join("\n")
    );
}

/// The error type of the first `Result<T, E>` in `line`, if it has two arguments.
fn result_error(line: &str) -> Option<String> {
    let at = line.find("Result<")?;
    let (mut depth, mut comma) = (0, None);
    for (i, c) in line[at + "Result<".len()..].char_indices() {
        match c {
            '<' | '(' => depth += 1,
            ')' => depth -= 1,
            '>' if depth == 0 => {
                let start = comma?;
                return Some(line[at + "Result<".len() + start + 1..at + "Result<".len() + i].trim().to_string());
            }
            '>' => depth -= 1,
            ',' if depth == 0 => comma = Some(i),
            _ => {}
        }
    }
    None
}

#[test]
fn libraries_return_typed_errors() {
    let root = workspace_root();
    let mut found = Vec::new();
    for dir in ["actors", "nats", "bus-schema", "config", "client", "modelgen/src"] {
        for file in rust_files(&root.join(dir)) {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            // Unit tests may say what they like.
            let text = text.split("#[cfg(test)]").next().unwrap_or_default();
            for (n, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                if result_error(line).is_some_and(|e| e == "String" || e == "&'static str") {
                    found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(found.is_empty(), "`Result<_, String>` in a library (give the error a type):\n{}", found.join("\n"));
    assert_eq!(result_error("fn f() -> Result<Vec<u32>, String> {").as_deref(), Some("String"));
    assert_eq!(result_error("fn f() -> Result<HashMap<u32, String>, E> {").as_deref(), Some("E"));
    assert_eq!(result_error("fn f() -> Result<(u8, String), StoreError> {").as_deref(), Some("StoreError"));
    assert_eq!(result_error("io::Result<()>"), None);
}

#[test]
fn the_module_check_sees_whole_words_only() {
    assert!(names_module("use crate::worker::Foo;", "worker"));
    assert!(names_module("    worker::{A, B},", "worker"));
    assert!(!names_module("ChildKind::worker_id", "worker"));
    assert!(!names_module("let my_worker::x", "worker"));
}

/// The features of `bitinglip-actors` that `cargo tree` sees for `scope`.
fn actors_features(scope: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = std::process::Command::new(cargo)
        .current_dir(workspace_root())
        .args(["tree", "--offline", "--locked", "-e", "features", "-i", "bitinglip-actors"])
        .args(scope)
        .output()
        .expect("cargo tree runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_plain_build_never_compiles_fault_injection() {
    // What `cargo build` builds (the default members): no fault injection.
    let plain = actors_features(&[]);
    assert!(plain.contains("bitinglip-actors"), "{plain}");
    assert!(!plain.contains("fault-injection"), "a plain build turns fault injection on:\n{plain}");
    // The check sees it where it is: the workspace build the tests use.
    assert!(actors_features(&["--workspace"]).contains("fault-injection"));
}
