//! Rebuild when a migration is added or changed (`sqlx::migrate!` embeds
//! them), and embed the commit this build comes from, so every run records the
//! exact code that ran: `BACKFILL_GIT_SHA` is the commit, with `-dirty` when
//! tracked files differ from it. Without git (a source tarball) it stays unset
//! and the version says so.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-env-changed=BACKFILL_GIT_SHA");
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        // A new commit or a checkout moves HEAD (or the ref it names).
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{head}");
        }
        println!("cargo:rerun-if-changed={dir}/index");
    }
    if std::env::var_os("BACKFILL_GIT_SHA").is_some() {
        return;
    }
    if let Some(sha) = git(&["rev-parse", "HEAD"]).filter(|s| !s.is_empty()) {
        let dirty =
            git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        println!(
            "cargo:rustc-env=BACKFILL_GIT_SHA={sha}{}",
            if dirty { "-dirty" } else { "" }
        );
    }
}
