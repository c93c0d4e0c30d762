//! `compox run`: builds the actors and the HTTP server, serves until Ctrl-C/SIGTERM, then stops
//! the workers.
//!
//! Start-up order (`platform.md` §3.1, §4.2): GPU probe (once), storage gateway and collections,
//! emergency store purge, deployer (loads its index), bundle importer and the start-up bundle
//! import (§3.5; a failure stops here, before any worker exists), stop registry, executor pool
//! (starts the workers), HTTP. The HTTP port answers `GET /` before the workers are ready; `/health` tells
//! when they are.

use crate::actors::bundle_importer::{BundleImporter, RunStartupImport, StartupOutcome};
use crate::actors::checkpoint_store::CheckpointStore;
use crate::actors::deployer::{Deployer, DeployerConfig};
use crate::actors::emergency_writer::{EmergencyWriter, PurgeEmergencyRecords};
use crate::actors::executor::WorkerSpec;
use crate::actors::executor_pool::{ExecutorPool, PoolConfig, ShutdownPool};
use crate::actors::minio_supervisor::{MinioLaunch, MinioSupervisor, StopMinio};
use crate::actors::sample_store::SampleStore;
use crate::actors::stop_registry::StopRegistry;
use crate::actors::storage_gateway::{flatten, BackendFactory, EnsureCollections, StorageGateway};
use crate::config::{BackendSettings, ExecutorSettings, InferenceDevice, Settings};
use crate::deploy::module::PythonTool;
use crate::http::AppState;
use crate::storage::filesystem::{FilesystemBackend, UrlSigner};
use crate::storage::{ExpiryRules, COLLECTIONS};
use crate::worker::protocol::StorageSpec;
use actix::prelude::*;
use anyhow::Context as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The actors a server (or an offline deploy) needs.
pub struct Core {
    pub storage: Addr<StorageGateway>,
    pub emergency: Addr<EmergencyWriter>,
    pub deployer: Addr<Deployer>,
    pub importer: Addr<BundleImporter>,
    /// What the start-up bundle import did (`platform.md` §5.6).
    pub startup_import: StartupOutcome,
    pub signer: UrlSigner,
}

/// Storage gateway, collections, emergency store, deployer, start-up bundle import: everything
/// but executions and HTTP.
pub async fn start_core(
    settings: &Settings,
    base_url: String,
    purge: bool,
) -> anyhow::Result<Core> {
    start_core_with(settings, base_url, purge, None).await
}

/// The storage gateway alone, for commands that only read storage (`build-algorithm-bundle`
/// creates no collections).
pub fn start_storage_gateway(
    settings: &Settings,
    signer: UrlSigner,
) -> anyhow::Result<Addr<StorageGateway>> {
    let factory = backend_factory(settings, signer)?;
    let rules = ExpiryRules::from_settings(&settings.storage);
    Ok(Supervisor::start(move |_| {
        StorageGateway::new(factory, rules)
    }))
}

/// [`start_core`] with a progress callback for the bundle import.
pub async fn start_core_with(
    settings: &Settings,
    base_url: String,
    purge: bool,
    import_progress: Option<crate::bundle::build::Progress>,
) -> anyhow::Result<Core> {
    let signer = UrlSigner::new(base_url);
    let storage = start_storage_gateway(settings, signer.clone())?;
    let created = flatten(
        storage
            .send(EnsureCollections {
                names: COLLECTIONS.to_vec(),
            })
            .await,
    )
    .context("cannot create the storage collections")?;
    if !created.is_empty() {
        tracing::info!("Created new collections: {created:?}");
    }
    let root = settings.emergency_root();
    let emergency = Supervisor::start(move |_| EmergencyWriter::new(root));
    if purge {
        let n = emergency.send(PurgeEmergencyRecords).await.unwrap_or(0);
        if n > 0 {
            tracing::info!(records = n, "purged emergency records of the previous run");
        }
    }
    let config = DeployerConfig {
        python_tool: PythonTool {
            exe: crate::actors::executor::worker_exe(
                &std::env::current_exe().context("cannot find the compox executable")?,
            ),
            python_env: crate::worker::python_env::resolve_env(
                settings.inference.python_env.as_deref(),
            )
            .map(|p| p.display().to_string()),
        },
        allowed_paths: settings
            .effective_deploy_allowed_paths()
            .iter()
            .map(|p| crate::config::absolute(std::path::Path::new(p)))
            .collect(),
        in_process_executor: matches!(
            settings.inference.backend_settings,
            ExecutorSettings::FastapiBackgroundTasks(_)
        ),
    };
    let (s, e) = (storage.clone(), emergency.clone());
    let deployer = Supervisor::start(move |_| Deployer::new(s, e, config));
    let (s, d) = (storage.clone(), deployer.clone());
    let importer = Supervisor::start(move |_| BundleImporter::new(s, d));
    let startup_import = importer
        .send(RunStartupImport {
            path: settings.storage.builtin_storage_bundle_path.clone(),
            key: settings.storage.builtin_storage_bundle_key.clone(),
            progress: import_progress,
        })
        .await
        .context("the bundle importer stopped")?
        .map_err(|e| {
            anyhow::anyhow!(
                "importing the algorithm bundle failed ({}); what it wrote was rolled back: {e}",
                e.code()
            )
        })?;
    Ok(Core {
        storage,
        emergency,
        deployer,
        importer,
        startup_import,
        signer,
    })
}

fn backend_factory(settings: &Settings, signer: UrlSigner) -> anyhow::Result<BackendFactory> {
    match &settings.storage.backend_settings {
        BackendSettings::Filesystem(f) => {
            let root = crate::config::absolute(std::path::Path::new(&f.storage_path));
            std::fs::create_dir_all(&root)
                .with_context(|| format!("cannot create storage_path {}", root.display()))?;
            let prefix = settings.storage.collection_prefix.clone();
            Ok(Arc::new(move || {
                Arc::new(FilesystemBackend::new(
                    root.clone(),
                    prefix.clone(),
                    signer.clone(),
                )) as _
            }))
        }
        BackendSettings::Minio(_) | BackendSettings::Aws(_) => {
            let cfg = crate::storage::s3::S3Config::from_backend(
                &settings.storage.backend_settings,
                &settings.storage.collection_prefix,
                settings.storage.access_key_id.clone(),
                settings.storage.secret_access_key.clone(),
                ExpiryRules::from_settings(&settings.storage),
            )
            .context("S3 settings")?;
            Ok(Arc::new(move || {
                Arc::new(crate::storage::s3::S3Backend::new(cfg.clone())) as _
            }))
        }
    }
}

/// Removes module-cache folders of server processes that no longer exist.
fn clean_dead_module_caches(root: &std::path::Path) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for entry in rd.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("pid_")
            .and_then(|r| r.split('_').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

fn worker_specs(settings: &Settings, gpu: Option<usize>) -> Vec<WorkerSpec> {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("compox"));
    let python_env =
        crate::worker::python_env::resolve_env(settings.inference.python_env.as_deref());
    let storage = StorageSpec {
        backend: settings.storage.backend_settings.clone(),
        collection_prefix: settings.storage.collection_prefix.clone(),
        access_key_id: settings.storage.access_key_id.clone(),
        secret_access_key: settings.storage.secret_access_key.clone(),
    };
    let base = WorkerSpec {
        exe,
        python_env,
        storage,
        cuda_device: None,
        module_cache_root: settings.module_cache_root(),
        stop_grace: Duration::from_secs_f64(settings.inference.stop_grace_period_s.max(0.0)),
    };
    let gpus = settings.cuda_devices();
    if settings.inference.device == InferenceDevice::Cuda && gpu.is_some() && !gpus.is_empty() {
        return gpus
            .into_iter()
            .map(|g| WorkerSpec {
                cuda_device: Some(g),
                ..base.clone()
            })
            .collect();
    }
    let n = match &settings.inference.backend_settings {
        ExecutorSettings::FastapiBackgroundTasks(s) => s.worker_number.max(1) as usize,
        ExecutorSettings::Celery(_) => 1,
    };
    vec![base; n]
}

fn tls_config(settings: &Settings) -> anyhow::Result<rustls::ServerConfig> {
    let key_path = settings
        .ssl
        .ssl_keyfile
        .clone()
        .filter(|p| std::path::Path::new(p).is_file());
    let Some(key_path) = key_path else {
        anyhow::bail!(
            "Cannot find SSL keyfile! (ssl_keyfile_not_found: {:?})",
            settings.ssl.ssl_keyfile
        );
    };
    let cert_path = settings
        .ssl
        .ssl_certfile
        .clone()
        .filter(|p| std::path::Path::new(p).is_file());
    let Some(cert_path) = cert_path else {
        anyhow::bail!(
            "Cannot find SSL certfile! (ssl_certfile_not_found: {:?})",
            settings.ssl.ssl_certfile
        );
    };
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(
        &cert_path,
    )?))
    .collect::<Result<Vec<_>, _>>()
    .context("invalid certificate file")?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(std::fs::File::open(
        &key_path,
    )?))?
    .context("no private key in the key file")?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)?)
}

/// Runs the server until it is told to stop. Returns the process exit code.
pub fn run(settings: Settings) -> anyhow::Result<i32> {
    if let ExecutorSettings::Celery(_) = settings.inference.backend_settings {
        anyhow::bail!("inference.backend_settings.executor 'celery' is not supported by this build; use fastapi_background_tasks");
    }
    let system = actix::System::new();
    system.block_on(serve(settings))
}

async fn serve(settings: Settings) -> anyhow::Result<i32> {
    let tls = if settings.ssl.use_ssl {
        Some(tls_config(&settings)?)
    } else {
        None
    };
    let listener = std::net::TcpListener::bind((settings.host.as_str(), settings.port))
        .with_context(|| format!("cannot listen on {}:{}", settings.host, settings.port))?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let shown_host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    let base_url = format!("{scheme}://{shown_host}:{}", addr.port());

    let gpu_count = crate::config::gpu_probe();
    // MinIO first (`platform.md` §3.1): healthy before the gateway creates its buckets; stopped
    // again if anything later in the start-up fails.
    let minio = start_minio(&settings).await?;
    let core = match start_core(&settings, base_url.clone(), true).await {
        Ok(core) => core,
        Err(e) => {
            stop_minio(minio).await;
            return Err(e);
        }
    };
    let _ = core
        .deployer
        .send(crate::actors::deployer::FailUnfinishedDeploys)
        .await;
    let cache_root = settings.module_cache_root();
    std::fs::create_dir_all(&cache_root).ok();
    clean_dead_module_caches(&cache_root);
    let stops = Supervisor::start({
        let s = core.storage.clone();
        move |_| StopRegistry::new(s)
    });
    let pool_config = PoolConfig {
        workers: worker_specs(&settings, gpu_count),
        cache_maxsize: settings.inference.algorithm_cache_maxsize,
        gpu_available: gpu_count.is_some(),
    };
    tracing::info!(workers = pool_config.workers.len(), gpu = ?gpu_count, "starting workers");
    let pool = Supervisor::start({
        let (s, d, st, e) = (
            core.storage.clone(),
            core.deployer.clone(),
            stops.clone(),
            core.emergency.clone(),
        );
        move |_| ExecutorPool::new(s, d, st, e, pool_config)
    });
    let samples = Supervisor::start({
        let s = core.storage.clone();
        move |_| SampleStore::new(s)
    });
    let checkpoints = Supervisor::start({
        let (s, d) = (core.storage.clone(), core.deployer.clone());
        move |_| CheckpointStore::new(s, d)
    });
    let state = AppState {
        settings: Arc::new(settings.clone()),
        storage: core.storage.clone(),
        deployer: core.deployer.clone(),
        pool: pool.clone(),
        samples,
        checkpoints,
        signer: core.signer.clone(),
        gpu_count,
    };
    let http_workers = std::thread::available_parallelism()
        .map(|n| n.get().clamp(2, 8))
        .unwrap_or(2);
    let server = actix_web::HttpServer::new(move || crate::http::app(state.clone()))
        .workers(http_workers)
        .shutdown_timeout(30);
    let server = match tls {
        Some(cfg) => server.listen_rustls_0_23(listener, cfg)?,
        None => server.listen(listener)?,
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        "compox listening on {base_url}"
    );
    let served = server.run().await;
    tracing::info!("HTTP server stopped; stopping workers");
    let _ = pool.send(ShutdownPool).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_minio(minio).await;
    served?;
    Ok(0)
}

/// The MinIO supervisor, for `provider: minio` with `start_instance: true` (the server and the
/// commands that open the store themselves: `deploy-algorithms` offline and the bundle commands).
pub async fn start_minio(settings: &Settings) -> anyhow::Result<Option<Addr<MinioSupervisor>>> {
    let BackendSettings::Minio(m) = &settings.storage.backend_settings else {
        return Ok(None);
    };
    if !m.start_instance {
        return Ok(None);
    }
    let launch = MinioLaunch::from_settings(
        m,
        settings.storage.access_key_id.as_deref(),
        settings.storage.secret_access_key.as_deref(),
    );
    crate::actors::minio_supervisor::start(launch).await
}

/// Runs `work` with MinIO up when the settings ask for a supervised one, and stops it afterwards
/// whatever `work` returned (`platform.md` §1.9, §1.12: the offline commands start MinIO too).
pub async fn with_minio<T>(
    settings: &Settings,
    work: impl std::future::Future<Output = T>,
) -> anyhow::Result<T> {
    let minio = start_minio(settings).await?;
    let out = work.await;
    stop_minio(minio).await;
    Ok(out)
}

pub async fn stop_minio(minio: Option<Addr<MinioSupervisor>>) {
    if let Some(minio) = minio {
        let _ = minio.send(StopMinio).await;
    }
}
