//! The library's modules form layers that import downwards only, with no
//! cycle (see docs/how-it-works.md, "The modules, in layers"). Read from the
//! `crate::` paths of `src/`, as `../shared/tools/module_cycles.py` reads
//! them: comments and a file's `#[cfg(test)] mod tests` are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each module's layer, from the top (imports only go to the same layer or
/// further down). `lib.rs` is the root and is left out.
const LAYERS: &[(&str, &[&str])] = &[
    ("public face", &["server", "handle"]),
    (
        "a generation",
        &[
            "generation",
            "accepting",
            "probation",
            "keep_pid",
            "drain",
            "config",
            "control",
            "ready",
            "portable/generation",
        ],
    ),
    (
        "restart policy",
        &[
            "restart",
            "children",
            "events",
            "signal",
            "signal/console",
            "signal/unix",
            "succession",
            "systemd",
            "watch",
        ],
    ),
    (
        "serving",
        &[
            "connections",
            "connections/conn_signal",
            "connections/counted_io",
            "connections/http",
            "connections/launch",
            "connections/protocol",
            "connections/request",
            "connections/serve",
            "connections/sweeper",
            "tls",
            "no_tls",
            "tickets",
            "conn_info",
            "service",
            "quic",
            "http3",
            "http3/bench",
            "http3/body",
            "http3/cid",
            "http3/config",
            "http3/listener",
            "http3/pair",
            "http3/router",
            "http3/serve",
            "http3/tests",
            "http3/wire",
        ],
    ),
    (
        "hand-over",
        &[
            "handover",
            "link",
            "listener",
            "listener/address",
            "listener/given",
            "listener/permissions",
            "listener/socket_file",
            "sockets",
            "state",
            "exe",
            "pid_file",
            "lifecycle",
            "portable",
        ],
    ),
    (
        "leaves",
        &["error", "counters", "metrics", "bin/endlessctl"],
    ),
];

/// Every module of `src` (as `a` or `a/b`) and the text of its file.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut name = rel.to_string_lossy().replace('\\', "/");
            if let Some(parent) = name.strip_suffix("/mod") {
                name = parent.to_owned();
            }
            if name == "lib" || name == "main" {
                continue;
            }
            out.insert(name, std::fs::read_to_string(&path).unwrap());
        }
    }
    out
}

/// `text` without comments and without a trailing test module.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules each module's code names through `crate::` (or, in a
/// folder, `super::`).
fn edges(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let resolve = |path: &[&str]| -> Option<String> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].join("/"))
            .find(|c| mods.contains_key(c))
    };
    let mut edges = BTreeMap::new();
    for (m, text) in mods {
        let text = code(text);
        let mut to = BTreeSet::new();
        for (prefix, base) in [
            ("crate::", None),
            ("super::", m.rsplit_once('/').map(|(p, _)| p)),
        ] {
            if prefix == "super::" && base.is_none() {
                continue;
            }
            for (i, _) in text.match_indices(prefix) {
                let rest = &text[i + prefix.len()..];
                let groups: Vec<&str> = match rest.strip_prefix('{') {
                    Some(g) => g.split('}').next().unwrap_or("").split(',').collect(),
                    None => vec![rest],
                };
                for g in groups {
                    let path: Vec<&str> = g
                        .trim()
                        .split("::")
                        .map(|p| p.trim_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
                        .take_while(|p| {
                            !p.is_empty()
                                && p.chars().all(|c| {
                                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
                                })
                        })
                        .collect();
                    let mut full: Vec<&str> =
                        base.map(|b| b.split('/').collect()).unwrap_or_default();
                    full.extend(path);
                    if let Some(t) = resolve(&full).filter(|t| t != m) {
                        to.insert(t);
                    }
                }
            }
        }
        edges.insert(m.clone(), to);
    }
    edges
}

/// The cycles among `edges`: each strongly connected set of more than one
/// module (Tarjan's algorithm).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                if t.edges.contains_key(w) {
                    visit(t, w);
                    let lw = t.low[w];
                    let lv = t.low[v];
                    t.low.insert(v, lv.min(lw));
                }
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low[v];
                t.low.insert(v, lv.min(iw));
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// Imports that go up the layers: `(from, to)`.
fn upward(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<(String, String)> {
    let layer = |m: &str| LAYERS.iter().position(|(_, ms)| ms.contains(&m));
    let mut out = Vec::new();
    for (from, tos) in edges {
        for to in tos {
            if let (Some(a), Some(b)) = (layer(from), layer(to)) {
                if b < a {
                    out.push((from.clone(), to.clone()));
                }
            }
        }
    }
    out
}

#[test]
fn the_modules_form_layers_with_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&src);
    let unplaced: Vec<&String> = mods
        .keys()
        .filter(|m| !LAYERS.iter().any(|(_, ms)| ms.contains(&m.as_str())))
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules in no layer (add them to LAYERS): {unplaced:?}"
    );
    let edges = edges(&mods);
    let found = cycles(&edges);
    assert!(
        found.is_empty(),
        "import cycles: {found:?}\nedges: {:#?}",
        found
            .iter()
            .flatten()
            .map(|m| (m, &edges[m]))
            .collect::<Vec<_>>()
    );
    let up = upward(&edges);
    assert!(
        up.is_empty(),
        "imports that go up the layers (from, to): {up:?}"
    );
}

/// The checker itself finds a cycle and an upward import where there is one.
#[test]
fn the_check_sees_a_cycle_and_an_upward_import() {
    let mods: BTreeMap<String, String> = [
        ("events", "use crate::lifecycle::Lifecycle;"),
        (
            "lifecycle",
            "// use crate::server; (a comment)\nuse crate::{events::Event, listener};",
        ),
        (
            "listener",
            "use super::x; fn f() { crate::error::Error::NotRunning; }",
        ),
        ("error", ""),
        ("listener/address", "use super::permissions::X;"),
        ("listener/permissions", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let edges = edges(&mods);
    assert_eq!(
        edges["lifecycle"],
        ["events", "listener"].map(String::from).into()
    );
    assert_eq!(
        edges["listener/address"],
        ["listener/permissions"].map(String::from).into()
    );
    assert_eq!(
        cycles(&edges),
        vec![vec!["events".to_owned(), "lifecycle".to_owned()]]
    );
    assert_eq!(
        upward(&edges),
        vec![("lifecycle".to_owned(), "events".to_owned())]
    );
}
