//! `disruptor keygen`: new secrets, made here; no peer is involved.
//!
//! - Without `--admin`: a pre-shared key for a private mesh. Every peer
//!   given it (`peer --psk-file`) can connect only to peers holding the
//!   same key. It goes to `--out FILE` (mode 0600), else to stdout.
//! - With `--admin`: an Ed25519 admin key, whose holder signs `start`,
//!   `stop` and `deploy` decisions (`--key FILE`). The private key goes to
//!   `--out FILE` (required: a secret is not for the terminal), the public
//!   key, one line, to stdout: peers trust it with `peer --admin PUBKEY`.
//!
//! An existing file is overwritten only with `--force`.

use std::io::Write;

use super::UsageError;
use crate::cli::KeygenArgs;
use crate::config;
use crate::mesh::trust::AdminSecret;

/// `disruptor keygen`: writes a new pre-shared key, or an admin key.
pub fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    if args.admin {
        return keygen_admin(&args);
    }
    let key = config::generate_psk();
    let text = key.to_string();
    match args.out {
        Some(path) => {
            crate::secret_file::write_private_file(&path, text.as_bytes(), args.force)?;
            eprintln!(
                "wrote pre-shared key {} (fingerprint {}); give it to every peer with --psk-file",
                path.display(),
                key.fingerprint()
            );
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
    }
    Ok(())
}

/// `keygen --admin --out FILE`: the private key to FILE (0600), the public
/// key, one line, to stdout (for `peer --admin`).
fn keygen_admin(args: &KeygenArgs) -> anyhow::Result<()> {
    let Some(path) = &args.out else {
        return Err(UsageError(
            "an admin key is a secret: name its file with --out FILE (the public key is printed)"
                .into(),
        )
        .into());
    };
    let key = AdminSecret::generate();
    crate::secret_file::write_private_file(path, key.to_file_text().as_bytes(), args.force)?;
    let public = key.public();
    eprintln!(
        "wrote admin key {} (keep it private); start peers with --admin {public}, and sign with --key {}",
        path.display(),
        path.display()
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "{public}")?;
    out.flush()?;
    Ok(())
}
