//! `fwagent check-config`: what an admin sees for a good and a broken configuration.

use std::process::Command;

fn check(text: &str) -> (Option<i32>, String, String) {
    let dir = std::env::temp_dir().join(format!("fwagent-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!(
        "{:x}.toml",
        text.len() * 31 + text.bytes().map(usize::from).sum::<usize>()
    ));
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fwagent"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    // Empty once the last test of this process is done with it.
    let _ = std::fs::remove_dir(&dir);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).replace(path.to_str().unwrap(), "CFG"),
        String::from_utf8_lossy(&out.stderr).replace(path.to_str().unwrap(), "CFG"),
    )
}

#[test]
fn a_good_config_prints_the_effective_values() {
    let (code, out, _) = check("[ban]\ntime = \"12h\"\n[rules.sshd]\nmax_hits = 3\n");
    assert_eq!(code, Some(0));
    assert!(out.starts_with("# configuration OK: CFG"), "{out}");
    assert!(out.contains("time = \"12h\""), "{out}");
    assert!(out.contains("path = \"/var/log/exim4/mainlog\""), "{out}");
    // Every rule as it will run, built-in defaults included, overrides applied.
    assert!(
        out.contains("#   exim-ratelimit  max_hits = 3, find_time = 1h, ban_time = 1d\n"),
        "{out}"
    );
    assert!(
        out.contains(
            "#   sshd            max_hits = 3, find_time = 10m, ban_time = 1h  (no source uses it)"
        ),
        "{out}"
    );
}

#[test]
fn rule_mistakes_are_config_errors_with_file_line_and_key() {
    let (code, _, err) = check("[rules.my]\nmax_hits = 2\npatterns = ['(unclosed']\n");
    assert_eq!(code, Some(2));
    assert!(
        err.starts_with("fwagent: CFG:3: key rules.my.patterns:"),
        "{err}"
    );
    let (code, _, err) = check("[[source]]\npath = \"/var/log/x\"\nrules = [\"nope\"]\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("CFG:3"), "{err}");
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn a_missing_file_is_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_fwagent"))
        .args(["check-config", "--config", "/nonexistent/fwagent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "fwagent: reading config /nonexistent/fwagent.toml: No such file or directory (os error 2)"
    );
}
