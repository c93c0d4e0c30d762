//! HTTP-client commands: `deploy-local`, `delete-algorithm`, `export-algorithm`
//! (`platform.md` §1.6–§1.8). Their default URL keeps the original's port 5471 (the server's is
//! 5481), so pass `--server-url`.

use futures_util::StreamExt;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

pub const DEFAULT_URL: &str = "http://127.0.0.1:5471";

/// `http://` added when missing, one trailing `/` removed.
pub fn normalize_url(url: &str) -> String {
    let with_scheme = if url.starts_with("http") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    with_scheme
        .strip_suffix('/')
        .map(str::to_string)
        .unwrap_or(with_scheme)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn parse_flag(name: &str, raw: &str) -> Result<bool, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "y" => Ok(true),
        "false" | "0" | "no" | "n" => Ok(false),
        _ => Err(format!("Invalid value for --{name}. Use true/false.")),
    }
}

pub struct DeployLocal {
    pub path: String,
    pub server_url: String,
    pub algorithm_name: Option<String>,
    pub algorithm_major_version: Option<String>,
    pub removable: Option<String>,
    pub exportable: Option<String>,
    pub is_async: bool,
    pub poll: bool,
    pub timeout_s: u64,
    pub poll_interval_s: f64,
}

pub fn deploy_local(o: DeployLocal) -> i32 {
    let base = normalize_url(&o.server_url);
    let abs = crate::config::absolute(std::path::Path::new(&o.path))
        .display()
        .to_string();
    let mut query: Vec<(String, String)> = vec![("path".into(), abs)];
    if let Some(n) = &o.algorithm_name {
        query.push(("algorithm_name".into(), n.clone()));
    }
    if let Some(m) = &o.algorithm_major_version {
        query.push(("algorithm_major_version".into(), m.clone()));
    }
    for (name, raw) in [("removable", &o.removable), ("exportable", &o.exportable)] {
        if let Some(raw) = raw {
            match parse_flag(name, raw) {
                Ok(b) => query.push((name.into(), b.to_string())),
                Err(e) => {
                    println!("{e}");
                    return 1;
                }
            }
        }
    }
    let endpoint = if o.is_async { "local-async" } else { "local" };
    runtime().block_on(async move {
        let client = reqwest::Client::new();
        let resp = match client
            .post(format!("{base}/api/v0/deploy/{endpoint}"))
            .query(&query)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("compox deploy-local: cannot reach {base}: {e}");
                return 1;
            }
        };
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        println!("{body}");
        let deploy_id = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("deploy_id")
                    .and_then(|d| d.as_str())
                    .map(str::to_string)
            });
        if !(o.is_async && o.poll && status.is_success()) {
            return 0;
        }
        let Some(id) = deploy_id else { return 0 };
        let deadline = Instant::now() + Duration::from_secs(o.timeout_s);
        while Instant::now() < deadline {
            if let Ok(r) = client
                .get(format!("{base}/api/v0/deploy/{id}"))
                .send()
                .await
            {
                let ok = r.status().is_success();
                let text = r.text().await.unwrap_or_default();
                println!("{text}");
                let status = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["status"].as_str().map(str::to_string));
                if ok && matches!(status.as_deref(), Some("COMPLETED") | Some("FAILED")) {
                    return 0;
                }
            }
            tokio::time::sleep(Duration::from_secs_f64(o.poll_interval_s.max(0.01))).await;
        }
        println!("Timed out waiting for deploy to complete.");
        0
    })
}

pub fn delete_algorithm(name: &str, major: &str, server_url: &str, minor: Option<&str>) -> i32 {
    let base = normalize_url(server_url);
    runtime().block_on(async move {
        let client = reqwest::Client::new();
        let resp = match client
            .get(format!("{base}/api/v0/algorithm/{name}/{major}"))
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("compox delete-algorithm: cannot reach {base}: {e}");
                return 1;
            }
        };
        let ok = resp.status().is_success();
        let text = resp.text().await.unwrap_or_default();
        if !ok {
            println!("{text}");
            return 1;
        }
        let Some(id) = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["algorithm_id"].as_str().map(str::to_string))
        else {
            println!("Algorithm id not found in response.");
            return 1;
        };
        let mut req = client.delete(format!("{base}/api/v0/deploy/algorithm/{id}"));
        if let Some(m) = minor {
            req = req.query(&[("algorithm_minor_version", m)]);
        }
        match req.send().await {
            Ok(r) => {
                println!("{}", r.text().await.unwrap_or_default());
                0
            }
            Err(e) => {
                eprintln!("compox delete-algorithm: {e}");
                1
            }
        }
    })
}

pub fn export_algorithm(
    name: &str,
    major: &str,
    server_url: &str,
    minor: Option<String>,
    checkpoint: Option<String>,
    output_dir: Option<String>,
) -> i32 {
    let base = normalize_url(server_url);
    let file_name = format!("{name}_{major}.zip");
    let out = match output_dir {
        Some(d) => crate::config::absolute(std::path::Path::new(&d)).join(&file_name),
        None => std::path::PathBuf::from(&file_name),
    };
    runtime().block_on(async move {
        let mut query = Vec::new();
        if let Some(m) = minor {
            query.push(("algorithm_minor_version", m));
        }
        if let Some(c) = checkpoint {
            query.push(("checkpoint_id", c));
        }
        let resp = match reqwest::Client::new()
            .get(format!("{base}/api/v0/algorithm/{name}/{major}/export"))
            .query(&query)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("compox export-algorithm: cannot reach {base}: {e}");
                return 1;
            }
        };
        if !resp.status().is_success() {
            println!("{}", resp.text().await.unwrap_or_default());
            return 1;
        }
        let mut file = match tokio::fs::File::create(&out).await {
            Ok(f) => f,
            Err(e) => {
                eprintln!(
                    "compox export-algorithm: cannot write {}: {e}",
                    out.display()
                );
                return 1;
            }
        };
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let written = match chunk {
                Ok(c) => file.write_all(&c).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = written {
                eprintln!("compox export-algorithm: download failed: {e}");
                return 1;
            }
        }
        let _ = file.flush().await;
        println!("Saved: {}", out.display());
        0
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn url_normalisation() {
        assert_eq!(
            super::normalize_url("localhost:5481/"),
            "http://localhost:5481"
        );
        assert_eq!(super::normalize_url("https://x"), "https://x");
    }
}
