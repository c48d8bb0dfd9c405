//! `mesh completion SHELL`: each shell's script is generated from the command definitions, names
//! the subcommands, and (where the shell is installed) passes its syntax check.

mod support;

use std::process::Command;

use support::{mesh, stderr, stdout};

fn script(shell: &str) -> String {
    let out = mesh(&["completion", shell], None);
    assert!(out.status.success(), "{shell}: {}", stderr(&out));
    let text = stdout(&out);
    for command in [
        "install",
        "inject",
        "check",
        "viz",
        "version",
        "diagnostics",
        "completion",
    ] {
        assert!(text.contains(command), "{shell}: no {command} in\n{text}");
    }
    // A nested subcommand and a flag of it: the whole tree, not just the top level.
    for word in ["proxy-metrics", "endpoints", "kubeconfig"] {
        assert!(text.contains(word), "{shell}: no {word}");
    }
    text
}

/// Runs `SHELL -n` (parse only) on the script, when the shell is installed.
fn syntax_check(shell: &str, text: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("mesh.{shell}"));
    std::fs::write(&path, text).unwrap();
    match Command::new(shell).arg("-n").arg(&path).output() {
        Ok(out) => assert!(
            out.status.success(),
            "{shell} -n: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("{shell} is not installed: its script's syntax is not checked")
        }
        Err(e) => panic!("running {shell}: {e}"),
    }
}

#[test]
fn bash_completion() {
    let text = script("bash");
    assert!(text.contains("complete -F _mesh"), "{text}");
    syntax_check("bash", &text);
}

#[test]
fn zsh_completion() {
    let text = script("zsh");
    assert!(text.starts_with("#compdef mesh"), "{text}");
    syntax_check("zsh", &text);
}

#[test]
fn fish_completion() {
    let text = script("fish");
    assert!(text.contains("complete -c mesh"), "{text}");
    syntax_check("fish", &text);
}

#[test]
fn an_unknown_shell_is_a_usage_error() {
    let out = mesh(&["completion", "tcsh"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("possible values: bash"),
        "{}",
        stderr(&out)
    );
}
