//! Under a real supervisord (installed from PyPI by this test's set-up):
//! with `keep_pid`, reloads by `supervisorctl signal` leave supervisord
//! seeing the program RUNNING under its original PID, and lose no request.

use endless_tests as support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::time::Duration;

use support::load::{self, Mode};
use support::{fixture, served_pid, Spec};

/// Installs supervisor (once) into cargo's temporary directory for this
/// project and returns the directory to put on PYTHONPATH.
fn supervisor() -> PathBuf {
    static INSTALL: Once = Once::new();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("supervisor-pkg");
    INSTALL.call_once(|| {
        if dir.join("supervisor").join("supervisord.py").exists() {
            return;
        }
        let out = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
            ])
            .arg("--target")
            .arg(&dir)
            .arg("supervisor")
            .output()
            .expect("python3 with pip is needed to install supervisor");
        assert!(
            out.status.success(),
            "pip install supervisor failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    dir
}

fn ctl(pythonpath: &Path, conf: &Path, args: &[&str]) -> String {
    let out = Command::new("python3")
        .env("PYTHONPATH", pythonpath)
        .args(["-m", "supervisor.supervisorctl", "-c"])
        .arg(conf)
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `READY` lines the program printed (supervisord writes its stdout to a file).
fn readies(out: &Path) -> Vec<(u32, String)> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("READY pid="))
        .filter_map(|l| {
            let (pid, rest) = l.split_once(' ')?;
            let addr = rest
                .split("addrs=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .to_owned();
            Some((pid.parse().ok()?, addr))
        })
        .collect()
}

fn wait_readies(out: &Path, n: usize) -> Vec<(u32, String)> {
    let what = format!("{n} READY lines in {}", out.display());
    support::eventually(&what, Duration::from_secs(30), || {
        let r = readies(out);
        if r.len() >= n {
            Ok(r)
        } else {
            Err(format!("{} lines", r.len()))
        }
    })
}

#[test]
fn supervisord_keeps_seeing_the_same_pid_across_reloads() {
    let _heavy = support::heavy();
    let pythonpath = supervisor();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("app.out");
    let conf = d.join("supervisord.conf");
    std::fs::write(
        &conf,
        format!(
            "[supervisord]\n\
             nodaemon=true\n\
             logfile={d}/supervisord.log\n\
             pidfile={d}/supervisord.pid\n\
             [unix_http_server]\n\
             file={d}/supervisor.sock\n\
             [supervisorctl]\n\
             serverurl=unix://{d}/supervisor.sock\n\
             [rpcinterface:supervisor]\n\
             supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\
             [program:app]\n\
             command={fixture} 127.0.0.1:0\n\
             environment={keep_pid},{log}\n\
             stdout_logfile={out}\n\
             stderr_logfile={d}/app.err\n\
             autorestart=false\n\
             startsecs=1\n\
             stopsignal=TERM\n\
             stopwaitsecs=30\n",
            d = d.display(),
            fixture = support::fixture().display(),
            keep_pid = fixture::KEEP_PID.assignment(()),
            log = fixture::LOG.assignment("info".into()),
            out = out.display(),
        ),
    )
    .unwrap();
    let supervisord = Spec::new("python3")
        .env("PYTHONPATH", pythonpath.to_str().unwrap())
        .arg("-m")
        .arg("supervisor.supervisord")
        .arg("-c")
        .arg(conf.to_str().unwrap())
        .spawn();

    let (pid, addr) = wait_readies(&out, 1)[0].clone();
    let status = |ctl_out: String| {
        ctl_out
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let first = supervisord.eventually("app RUNNING", Duration::from_secs(20), || {
        let s = status(ctl(&pythonpath, &conf, &["status", "app"]));
        if s.get(1).map(String::as_str) == Some("RUNNING") {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    });
    assert_eq!(first[3], format!("{pid},"), "{first:?}");

    let rt = load::runtime();
    let l = load::start(rt.handle(), &addr, Mode::KeepAlive, 16, "/");
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..3 {
        let signal = if i % 2 == 0 { "HUP" } else { "USR1" };
        let said = ctl(&pythonpath, &conf, &["signal", signal, "app"]);
        assert!(said.contains("signalled"), "{said}");
        // The temporary generation's READY and the original PID's (in
        // either order: each is printed by a task of its own).
        let r = wait_readies(&out, 3 + 2 * i);
        assert!(
            r[1 + 2 * i].0 == pid || r[2 + 2 * i].0 == pid,
            "the PID changed: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let stats = l.finish();
    assert_eq!(stats.failed, 0, "{:?}", stats.errors);
    assert!(
        stats.ok > 500,
        "too little load to mean anything: {stats:?}"
    );
    assert!(stats.bodies.keys().any(|b| served_pid(b) == pid));

    let s = status(ctl(&pythonpath, &conf, &["status", "app"]));
    assert_eq!(s[1], "RUNNING", "{s:?}");
    assert_eq!(
        s[3],
        format!("{pid},"),
        "supervisord sees another PID: {s:?}"
    );

    // A graceful stop through supervisord, then supervisord itself.
    let stopped = ctl(&pythonpath, &conf, &["stop", "app"]);
    assert!(stopped.contains("stopped"), "{stopped}");
    ctl(&pythonpath, &conf, &["shutdown"]);
    let mut supervisord = supervisord;
    let sd = supervisord.first_pid();
    supervisord
        .wait_exit(sd, Duration::from_secs(30))
        .expect("supervisord exits");
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "still listening after stop"
    );
}
