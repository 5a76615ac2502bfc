//! Build script: records the git revision the binary is built from, for
//! `disruptor --version`. Outside a git checkout (a source tarball, a
//! container build without `.git`) it is `unknown`, unless the builder
//! sets `DISRUPTOR_GIT_REV` itself.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=DISRUPTOR_GIT_REV");
    let rev = std::env::var("DISRUPTOR_GIT_REV")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(git_rev)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=DISRUPTOR_GIT_REV={rev}");
}

/// The short hash of HEAD, and which files to watch so that a new commit
/// re-runs this script (HEAD, the branch it points to, packed refs).
fn git_rev() -> Option<String> {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let dir = git(&["rev-parse", "--git-dir"])?;
    // Only files that exist: cargo takes a missing one as changed, and
    // would run this script, and rebuild the crate, on every build.
    let mut watch = vec![
        format!("{dir}/HEAD"),
        format!("{dir}/packed-refs"),
        format!("{dir}/refs/heads"),
    ];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(format!("{dir}/{branch}"));
    }
    for path in watch.iter().filter(|p| std::path::Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={path}");
    }
    git(&["rev-parse", "--short=12", "HEAD"])
}
