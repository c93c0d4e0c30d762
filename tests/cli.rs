//! The command line and configuration (`platform.md` §1, §2): help and exit codes, precedence of
//! CLI overrides over YAML over environment, rejection of unknown keys, generate-config output
//! that `run --config` accepts.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn compox() -> Command {
    let mut c = Command::new(common::EXE);
    c.env_remove("VIRTUAL_ENV");
    c
}

/// Starts `compox run` with `args` in `dir`, waits for `GET /` on `port`; returns the child.
fn run_until_up(
    dir: &std::path::Path,
    args: &[String],
    env: &[(&str, String)],
    port: u16,
) -> std::process::Child {
    let mut cmd = compox();
    cmd.arg("run")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return child;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("compox run exited early with {status}");
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("server never listened on {port}");
}

fn base_yaml(dir: &std::path::Path) -> String {
    format!(
        "log_path: {}/logs/compox.log\nstorage:\n  backend_settings:\n    provider: filesystem\n    storage_path: {}/store\ninference:\n  device: cpu\n  python_env: {}\n",
        dir.display(),
        dir.display(),
        common::venv().display()
    )
}

#[test]
fn help_and_usage_exit_codes() {
    let out = compox().arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("run")
            && text.contains("deploy-algorithms")
            && text.contains("generate-config")
    );
    let commands: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(commands.contains(&"spawn-worker"));
    assert!(
        !commands.contains(&"worker") && !commands.contains(&"python-tool"),
        "internal commands are hidden: {text}"
    );
    assert_eq!(compox().output().unwrap().status.code(), Some(2));
    let out = compox().args(["run", "--prot", "1"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "unknown option is a usage error"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--prot"));
}

#[test]
fn unknown_yaml_key_names_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.yaml");
    std::fs::write(&cfg, "storage:\n  colection_prefix: x\n").unwrap();
    let out = compox()
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("storage.colection_prefix"), "{err}");
    assert!(err.contains("bad.yaml"), "{err}");
}

#[test]
fn cli_beats_yaml_beats_environment() {
    let dir = tempfile::tempdir().unwrap();
    let (p_cli, p_yaml, p_env) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, format!("port: {p_yaml}\n{}", base_yaml(dir.path()))).unwrap();
    let env = [("COMPOX_PORT", p_env.to_string())];
    let args = vec![
        "--config".into(),
        cfg.display().to_string(),
        "--port".into(),
        p_cli.to_string(),
    ];
    let mut c = run_until_up(dir.path(), &args, &env, p_cli);
    c.kill().unwrap();
    c.wait().unwrap();
    let args = vec!["--config".into(), cfg.display().to_string()];
    let mut c = run_until_up(dir.path(), &args, &env, p_yaml);
    c.kill().unwrap();
    c.wait().unwrap();
    std::fs::write(&cfg, base_yaml(dir.path())).unwrap();
    let mut c = run_until_up(dir.path(), &args, &env, p_env);
    c.kill().unwrap();
    c.wait().unwrap();
    // The nested environment spelling with a double underscore after the prefix works too.
    let p2 = common::free_port();
    let mut c = run_until_up(dir.path(), &args, &[("COMPOX__PORT", p2.to_string())], p2);
    c.kill().unwrap();
    c.wait().unwrap();
}

#[test]
fn generate_config_output_is_accepted_by_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gen.yaml");
    let port = common::free_port();
    let out = compox()
        .args(["generate-config", "--path"])
        .arg(&path)
        .args([
            "--port",
            &port.to_string(),
            "--storage.backend_settings.provider",
            "filesystem",
            "--storage.backend_settings.storage_path",
        ])
        .arg(dir.path().join("store"))
        .args(["--inference.device", "cpu", "--log_path"])
        .arg(dir.path().join("log/compox.log"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Generating configuration file at"),
        "{stdout}"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains(&format!("port: {port}"))
            && text.contains("provider: filesystem")
            && text.contains("\n# ")
    );
    // Existing file, --no-overwrite: untouched.
    let out = compox()
        .args(["generate-config", "--no-overwrite", "--path"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Keeping existing file"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    let mut c = run_until_up(
        dir.path(),
        &["--config".into(), path.display().to_string()],
        &[(
            "COMPOX_INFERENCE__PYTHON_ENV",
            common::venv().display().to_string(),
        )],
        port,
    );
    c.kill().unwrap();
    c.wait().unwrap();
}

#[test]
fn debug_run_uses_the_python_environment_and_spawn_worker_reports_the_executor() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img.npy");
    let ok = Command::new(common::venv_python())
        .args(["-c", "import sys, numpy as np; np.save(sys.argv[1], np.arange(16, dtype=np.uint8).reshape(4, 4))"])
        .arg(&img)
        .status()
        .unwrap();
    assert!(ok.success());
    let out = compox()
        .args(["debug", "run", "--algo"])
        .arg(common::algorithms_dir().join("all_params"))
        .arg("--data")
        .arg(&img)
        .args(["-p", "label=hi"])
        .env("COMPOX_INFERENCE__PYTHON_ENV", common::venv())
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("Output dataset ids"), "{all}");
    // Without either variable, a `.venv` in the current folder is the environment.
    let here = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(common::venv(), here.path().join(".venv")).unwrap();
    let bare = |cwd: &std::path::Path| {
        compox()
            .args(["debug", "run", "--algo"])
            .arg(common::algorithms_dir().join("all_params"))
            .arg("--data")
            .arg(&img)
            .current_dir(cwd)
            .env_remove("COMPOX_INFERENCE__PYTHON_ENV")
            .env_remove("VIRTUAL_ENV")
            .output()
            .unwrap()
    };
    let out = bare(here.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An interpreter without the compox package gets a hint, not a bare ModuleNotFoundError.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = bare(elsewhere.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot import the compox package"),
        "{stderr}"
    );
    let out = compox().arg("spawn-worker").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Unsupported executor: fastapi_background_tasks"
    );
}
