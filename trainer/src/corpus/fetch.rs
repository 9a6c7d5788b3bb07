//! Obtaining SWORD modules from Debian packages without installing them:
//! `apt-get download <package>` into `<cache>/debs/`, then `dpkg-deb -x` into
//! `<cache>/<package>/` (extracted into a staging folder first and renamed, so an interrupted
//! extraction is never mistaken for a complete one). The module's library root is then
//! `<cache>/<package>/usr/share/sword` (holding `mods.d/` and `modules/`).
//!
//! On a fresh machine the apt package lists may be empty: when `apt-get download` says the
//! package is unknown, `apt-get update` is run once (it needs root) and the download retried.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::sword::find_conf;
use super::{Error, Result};

/// A Debian package that carries a SWORD module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwordPackage {
    /// Debian package name, e.g. `sword-text-kjv`.
    pub package: &'static str,
    /// Module name inside it, e.g. `engKJV2006eb`.
    pub module: &'static str,
}

/// The default cache folder: `$XDG_CACHE_HOME/seqforge/sword`, else
/// `$HOME/.cache/seqforge/sword`, else `.cache/seqforge/sword` in the current folder.
pub fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| Path::new(&h).join(".cache"))
        })
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("seqforge").join("sword")
}

/// Where a package's SWORD library root lands in the cache.
pub fn cached_root(cache_dir: &Path, package: &str) -> PathBuf {
    cache_dir.join(package).join("usr/share/sword")
}

/// Whether the cache already holds the package's module (its `mods.d` entry).
pub fn is_cached(cache_dir: &Path, pkg: SwordPackage) -> bool {
    find_conf(&cached_root(cache_dir, pkg.package), pkg.module).is_ok()
}

/// Fetches packages into a cache folder, running `apt-get update` at most once.
#[derive(Debug)]
pub struct Fetcher {
    cache_dir: PathBuf,
    updated: bool,
}

impl Fetcher {
    /// A fetcher using this cache folder (created on demand).
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self { cache_dir: cache_dir.into(), updated: false }
    }

    /// The cache folder.
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Returns the SWORD library root holding `pkg.module`, downloading and extracting the
    /// package first unless the cache already has it. Returns the root and whether a download
    /// happened.
    pub fn ensure(&mut self, pkg: SwordPackage) -> Result<(PathBuf, bool)> {
        let root = cached_root(&self.cache_dir, pkg.package);
        if is_cached(&self.cache_dir, pkg) {
            tracing::info!(module = pkg.module, root = %root.display(), "using cached module");
            return Ok((root, false));
        }
        let debs = self.cache_dir.join("debs");
        fs::create_dir_all(&debs).map_err(|e| Error::io(&debs, e))?;
        let deb = self.download(pkg, &debs)?;
        self.extract(pkg, &deb)?;
        find_conf(&root, pkg.module).map_err(|_| Error::Tool {
            action: format!("extracting {} from {}", pkg.module, deb.display()),
            message: format!(
                "the package has no mods.d/ entry for {} under {}",
                pkg.module,
                root.display()
            ),
            hint: "the package layout may have changed; pass --sword-dir with the module instead"
                .into(),
        })?;
        Ok((root, true))
    }

    fn download(&mut self, pkg: SwordPackage, debs: &Path) -> Result<PathBuf> {
        let action =
            format!("fetching {} (SWORD module {}) with apt-get download", pkg.package, pkg.module);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let out = run_tool(
                Command::new("apt-get").arg("download").arg(pkg.package).current_dir(debs),
                &action,
                debs,
            )?;
            if out.status.success() {
                return newest_deb(debs, pkg.package).ok_or_else(|| Error::Tool {
                    action: action.clone(),
                    message: format!(
                        "apt-get succeeded but no {}_*.deb is in {}",
                        pkg.package,
                        debs.display()
                    ),
                    hint: "check that the folder is writable".into(),
                });
            }
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            let unknown = ["Unable to locate package", "Can't select", "no installation candidate"]
                .iter()
                .any(|m| stderr.contains(m));
            if unknown && !self.updated && attempt == 1 {
                tracing::warn!(
                    package = pkg.package,
                    "apt does not know the package (empty package lists?): running apt-get update once"
                );
                self.apt_update()?;
                continue;
            }
            return Err(Error::Tool {
                action,
                message: format!(
                    "`apt-get download {}` failed ({}): {}",
                    pkg.package,
                    describe(&out),
                    tail(&stderr)
                ),
                hint: if unknown {
                    format!(
                        "{} is in Debian main; check /etc/apt/sources.list(.d) \
                         and network access, or download the module yourself and pass --sword-dir \
                         DIR (a folder with mods.d/ and modules/)",
                        pkg.package
                    )
                } else {
                    "check network access and that apt works (`apt-get download` needs a \
                     writable current folder), or pass --sword-dir DIR"
                        .into()
                },
            });
        }
    }

    fn apt_update(&mut self) -> Result<()> {
        self.updated = true;
        let action = "updating the apt package lists (apt-get update)".to_string();
        let out = run_tool(Command::new("apt-get").arg("update"), &action, &self.cache_dir)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Tool {
                action,
                message: format!(
                    "`apt-get update` failed ({}): {}",
                    describe(&out),
                    tail(&String::from_utf8_lossy(&out.stderr))
                ),
                hint: "apt-get update needs root (run as root or with sudo once), or pass \
                       --sword-dir DIR with the modules already on disk"
                    .into(),
            })
        }
    }

    fn extract(&self, pkg: SwordPackage, deb: &Path) -> Result<()> {
        let action = format!("extracting {} with dpkg-deb -x", deb.display());
        let target = self.cache_dir.join(pkg.package);
        let staging = self.cache_dir.join(format!(".{}.partial", pkg.package));
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        }
        let out = run_tool(
            Command::new("dpkg-deb").arg("-x").arg(deb).arg(&staging),
            &action,
            &self.cache_dir,
        )?;
        if !out.status.success() {
            return Err(Error::Tool {
                action,
                message: format!(
                    "`dpkg-deb -x` failed ({}): {}",
                    describe(&out),
                    tail(&String::from_utf8_lossy(&out.stderr))
                ),
                hint: format!("the .deb may be damaged: delete {} and retry", deb.display()),
            });
        }
        if target.exists() {
            fs::remove_dir_all(&target).map_err(|e| Error::io(&target, e))?;
        }
        fs::rename(&staging, &target).map_err(|e| Error::io(&target, e))
    }
}

/// Runs a tool, logging the command line; a missing executable becomes a clear error.
fn run_tool(cmd: &mut Command, action: &str, cwd: &Path) -> Result<Output> {
    let program = cmd.get_program().to_string_lossy().to_string();
    let line = std::iter::once(program.clone())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let dir = cmd
        .get_current_dir()
        .map_or_else(|| cwd.display().to_string(), |d| d.display().to_string());
    tracing::info!("running `{line}` (in {dir})");
    cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Tool {
                action: action.to_string(),
                message: format!("`{program}` not found"),
                hint: "this step needs a Debian/Ubuntu system with apt and dpkg; elsewhere, get \
                       the SWORD modules yourself and pass --sword-dir DIR (a folder with \
                       mods.d/ and modules/)"
                    .into(),
            }
        } else {
            Error::Tool {
                action: action.to_string(),
                message: format!("could not run `{program}`: {e}"),
                hint: "check that it is executable".into(),
            }
        }
    })
}

fn describe(out: &Output) -> String {
    match out.status.code() {
        Some(c) => format!("exit status {c}"),
        None => "killed by a signal".into(),
    }
}

/// The last few lines of a tool's stderr.
fn tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(4);
    let t = lines[start..].join(" | ");
    if t.is_empty() { "(no error output)".into() } else { t }
}

/// The most recently modified `<package>_*.deb` in a folder.
fn newest_deb(dir: &Path, package: &str) -> Option<PathBuf> {
    let prefix = format!("{package}_");
    fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .max_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_layout() {
        let c = Path::new("/c");
        assert_eq!(
            cached_root(c, "sword-text-kjv"),
            Path::new("/c/sword-text-kjv/usr/share/sword")
        );
        assert!(default_cache_dir().ends_with("seqforge/sword"));
    }

    #[test]
    fn finds_the_newest_deb() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        assert_eq!(newest_deb(tmp.path(), "sword-text-kjv"), None);
        fs::write(tmp.path().join("sword-text-kjv_14.3-1_all.deb"), b"")?;
        fs::write(tmp.path().join("sword-text-kjva_1_all.deb"), b"")?;
        assert_eq!(
            newest_deb(tmp.path(), "sword-text-kjv"),
            Some(tmp.path().join("sword-text-kjv_14.3-1_all.deb"))
        );
        Ok(())
    }

    #[test]
    fn missing_tool_is_a_clear_error() {
        let r =
            run_tool(&mut Command::new("seqforge-no-such-tool-xyz"), "fetching x", Path::new("."));
        let msg = r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("fetching x") && msg.contains("not found") && msg.contains("--sword-dir"),
            "{msg}"
        );
    }

    #[test]
    fn stderr_tail() {
        assert_eq!(tail(""), "(no error output)");
        assert_eq!(tail("a\n\nb\nc\nd\ne\n"), "b | c | d | e");
    }
}
