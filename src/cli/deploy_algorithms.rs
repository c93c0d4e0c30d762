//! `compox deploy-algorithms` (`algorithms.md` §8, `platform.md` §1.5): deploys folders. When a
//! server already listens on the configured port the folders go through its deploy endpoint, so
//! its deployer stays the only writer and its index stays true; otherwise the same deployer actor
//! runs in this process against the configured storage.

use crate::actors::deployer::{DeleteAlgorithm, DeployPath};
use crate::config::{load_settings, parse_loose_overrides, Settings};
use crate::deploy::DeployOverrides;
use std::path::{Path, PathBuf};

pub struct Options {
    pub config: Option<String>,
    pub path: Option<String>,
    pub names: Vec<String>,
    pub delete_existing: bool,
    pub verbose: bool,
    pub extra: Vec<String>,
}

/// The folders to deploy, in order, or the error to print.
pub fn select_folders(root: &Path, names: &[String]) -> Result<Vec<PathBuf>, String> {
    if !root.is_dir() {
        return Err(format!(
            "Algorithms directory not found: {}",
            root.display()
        ));
    }
    if !names.is_empty() {
        let mut missing: Vec<&str> = names
            .iter()
            .filter(|n| {
                let single = Path::new(n.as_str()).components().count() == 1
                    && !n.contains('/')
                    && *n != ".."
                    && *n != ".";
                !single || !root.join(n.as_str()).is_dir()
            })
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            missing.sort();
            return Err(format!(
                "Algorithm folders not found in {}: {}",
                root.display(),
                missing.join(", ")
            ));
        }
        return Ok(names.iter().map(|n| root.join(n)).collect());
    }
    let mut dirs: Vec<String> = std::fs::read_dir(root)
        .map_err(|e| format!("cannot read {}: {e}", root.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut out = Vec::new();
    for d in dirs {
        if d == "algorithm_template" {
            continue;
        }
        if d.starts_with('.') || d == "__pycache__" {
            eprintln!("Skipping {d} (hidden or cache folder).");
            continue;
        }
        out.push(root.join(d));
    }
    Ok(out)
}

/// Whether something answers on the configured port (taken to be a compox server).
pub(super) fn server_running(settings: &Settings) -> bool {
    let addr = format!("127.0.0.1:{}", settings.port);
    addr.parse().ok().is_some_and(|a| {
        std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_millis(300)).is_ok()
    })
}

fn progress(n: usize) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if n < 2 || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(n as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}

pub fn run(o: Options) -> i32 {
    let overrides = parse_loose_overrides(&o.extra);
    let settings = match load_settings(
        o.config.as_deref().map(Path::new),
        &overrides,
        std::env::vars(),
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    crate::logging::init_default();
    let root = crate::config::absolute(Path::new(
        o.path
            .as_deref()
            .unwrap_or(&settings.deploy_algorithms_from),
    ));
    if o.verbose {
        println!(
            "{}",
            String::from_utf8_lossy(&crate::deploy::record::to_pretty_bytes(
                &serde_json::to_value(&settings).unwrap_or_default()
            ))
        );
    }
    let folders = match select_folders(&root, &o.names) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    if server_running(&settings) {
        println!(
            "Port {} is already in use. Assuming server already running.",
            settings.port
        );
        via_server(&settings, &folders, o.delete_existing)
    } else {
        offline(&settings, &folders, o.delete_existing)
    }
}

fn report(
    result: Result<String, String>,
    folder: &Path,
    bar: &Option<indicatif::ProgressBar>,
) -> bool {
    match result {
        Ok(line) => {
            match bar {
                Some(b) => {
                    b.set_message(line.clone());
                    b.inc(1);
                }
                None => println!("{line}"),
            }
            true
        }
        Err(e) => {
            if let Some(b) = bar {
                b.abandon();
            }
            eprintln!("Deploying {} failed: {e}", folder.display());
            false
        }
    }
}

fn offline(settings: &Settings, folders: &[PathBuf], delete_existing: bool) -> i32 {
    let system = actix::System::new();
    let work = async {
        let base = format!("http://127.0.0.1:{}", settings.port);
        let core = match crate::server::start_core(settings, base, false).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e:#}");
                return 1;
            }
        };
        let bar = progress(folders.len());
        for folder in folders {
            if delete_existing {
                delete_existing_offline(&core, folder).await;
            }
            let result = core
                .deployer
                .send(DeployPath {
                    path: folder.clone(),
                    overrides: DeployOverrides::default(),
                    cli: true,
                    trusted: true,
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| describe(&e)))
                .map(|r| {
                    format!(
                        "Deployed {} {}.{} ({})",
                        r.algorithm_name,
                        r.algorithm_major_version,
                        r.algorithm_minor_version,
                        r.algorithm_id
                    )
                });
            if !report(result, folder, &bar) {
                return 1;
            }
        }
        if let Some(b) = bar {
            b.finish();
        }
        0
    };
    system.block_on(async {
        crate::server::with_minio(settings, work)
            .await
            .unwrap_or_else(|e| {
                eprintln!("{e:#}");
                1
            })
    })
}

/// The message of a deploy error, with the real text even for 5xx classes.
fn describe(e: &crate::errors::ApiError) -> String {
    e.to_string()
}

async fn delete_existing_offline(core: &crate::server::Core, folder: &Path) {
    let Ok(cfg) = crate::deploy::pyproject::read(folder) else {
        return;
    };
    let lookup = core
        .deployer
        .send(crate::actors::deployer::GetAlgorithm {
            name: cfg.name.clone(),
            major: cfg.major.clone(),
        })
        .await;
    let found = lookup
        .ok()
        .and_then(Result::ok)
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    if let Some(v) = found {
        if let Some(id) = v["algorithm_id"].as_str() {
            let r = core
                .deployer
                .send(DeleteAlgorithm {
                    algorithm_id: id.to_string(),
                    minor: None,
                    force: true,
                })
                .await;
            if !matches!(r, Ok(Ok(_))) {
                eprintln!("Could not delete algorithm {} {}.", cfg.name, cfg.major);
            }
        }
    }
}

fn via_server(settings: &Settings, folders: &[PathBuf], delete_existing: bool) -> i32 {
    let scheme = if settings.ssl.use_ssl {
        "https"
    } else {
        "http"
    };
    let base = format!("{scheme}://127.0.0.1:{}", settings.port);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap_or_default();
        let bar = progress(folders.len());
        for folder in folders {
            if delete_existing {
                if let Ok(cfg) = crate::deploy::pyproject::read(folder) {
                    let found = client
                        .get(format!(
                            "{base}/api/v0/algorithm/{}/{}",
                            cfg.name, cfg.major
                        ))
                        .send()
                        .await;
                    if let Ok(r) = found {
                        if let Ok(v) = r.json::<serde_json::Value>().await {
                            if let Some(id) = v["algorithm_id"].as_str() {
                                let del = client
                                    .delete(format!("{base}/api/v0/deploy/algorithm/{id}"))
                                    .query(&[("origin", "deploy-algorithms")])
                                    .send()
                                    .await;
                                if !del.is_ok_and(|r| r.status().is_success()) {
                                    eprintln!(
                                        "Could not delete algorithm {} {}.",
                                        cfg.name, cfg.major
                                    );
                                }
                            }
                        }
                    }
                }
            }
            let abs = folder.display().to_string();
            let result = async {
                let resp = client
                    .post(format!("{base}/api/v0/deploy/local"))
                    .query(&[("path", abs.as_str()), ("origin", "deploy-algorithms")])
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let ok = resp.status().is_success();
                let v: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
                if !ok {
                    return Err(v["detail"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()));
                }
                Ok(format!(
                    "Deployed {} {}.{} ({})",
                    v["algorithm_name"].as_str().unwrap_or(""),
                    v["algorithm_major_version"].as_str().unwrap_or(""),
                    v["algorithm_minor_version"].as_str().unwrap_or(""),
                    v["algorithm_id"].as_str().unwrap_or("")
                ))
            }
            .await;
            if !report(result, folder, &bar) {
                return 1;
            }
        }
        if let Some(b) = bar {
            b.finish();
        }
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_selection() {
        let d = tempfile::tempdir().unwrap();
        for n in ["b", "a", ".git", "__pycache__", "algorithm_template"] {
            std::fs::create_dir_all(d.path().join(n)).unwrap();
        }
        let got = select_folders(d.path(), &[]).unwrap();
        assert_eq!(got, vec![d.path().join("a"), d.path().join("b")]);
        let err = select_folders(d.path(), &["z".into(), "y".into(), "a".into()]).unwrap_err();
        assert!(err.ends_with(": y, z"), "{err}");
        assert!(select_folders(d.path(), &["../etc".into()]).is_err());
        assert!(select_folders(&d.path().join("nope"), &[])
            .unwrap_err()
            .starts_with("Algorithms directory not found"));
    }
}
