//! The `compox` command line (`platform.md` §1). Each command lives in its own file.

pub mod build_algorithm_bundle;
mod bundle_common;
pub mod client;
pub mod debug;
pub mod deploy_algorithms;
pub mod generate_algorithm_bundle_key;
pub mod generate_config;
pub mod import_algorithm_bundle;
pub mod inspect_algorithm_bundle;
pub mod run;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "compox",
    about = "This CLI tool contains commands for running the Compox.",
    version
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the server (settings: --config YAML, then dotted overrides such as --port 6000).
    #[command(disable_help_flag = true)]
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Write a complete, commented configuration file.
    GenerateConfig {
        #[arg(long, default_value = "compox_config.yaml")]
        path: String,
        #[arg(long, overrides_with = "no_overwrite")]
        overwrite: bool,
        #[arg(long = "no-overwrite")]
        no_overwrite: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        extra: Vec<String>,
    },
    /// Deploy algorithm folders into storage (through the running server when there is one).
    DeployAlgorithms {
        #[arg(long)]
        config: Option<String>,
        #[arg(long)]
        path: Option<String>,
        #[arg(long = "name", short = 'n')]
        names: Vec<String>,
        #[arg(long)]
        delete_existing: bool,
        #[arg(long = "no-verbose")]
        no_verbose: bool,
        #[arg(long = "verbose", hide = true)]
        verbose: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        extra: Vec<String>,
    },
    /// Deploy a folder or zip through a running server's /api/v0/deploy/local.
    DeployLocal {
        path: String,
        #[arg(long, default_value = client::DEFAULT_URL)]
        server_url: String,
        #[arg(long)]
        algorithm_name: Option<String>,
        #[arg(long)]
        algorithm_major_version: Option<String>,
        #[arg(long)]
        removable: Option<String>,
        #[arg(long)]
        exportable: Option<String>,
        #[arg(long = "async")]
        is_async: bool,
        #[arg(long = "no-poll")]
        no_poll: bool,
        #[arg(long = "poll", hide = true)]
        poll: bool,
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
        #[arg(long, default_value_t = 0.5)]
        poll_interval_s: f64,
    },
    /// Delete an algorithm (or one minor version) through a running server.
    DeleteAlgorithm {
        name: String,
        major: String,
        #[arg(long, default_value = client::DEFAULT_URL)]
        server_url: String,
        #[arg(long)]
        algorithm_minor_version: Option<String>,
    },
    /// Export an algorithm as <NAME>_<MAJOR>.zip from a running server.
    ExportAlgorithm {
        name: String,
        major: String,
        #[arg(long, default_value = client::DEFAULT_URL)]
        server_url: String,
        #[arg(long)]
        algorithm_minor_version: Option<String>,
        #[arg(long)]
        checkpoint_id: Option<String>,
        #[arg(long)]
        output_dir: Option<String>,
    },
    /// Build an encrypted bundle of every stored algorithm, module, asset and checkpoint.
    BuildAlgorithmBundle {
        #[arg(long)]
        config: String,
        #[arg(long, default_value = "compox_algorithm_bundle.zip")]
        output: String,
        #[arg(long, allow_hyphen_values = true)]
        key: Option<String>,
    },
    /// Print a fresh algorithm bundle key.
    GenerateAlgorithmBundleKey,
    /// Verify a bundle's key and signature and print its manifest summary as JSON.
    InspectAlgorithmBundle {
        #[arg(long)]
        bundle_path: String,
        #[arg(long, allow_hyphen_values = true)]
        key: String,
    },
    /// Import an algorithm bundle into the configured storage (once per bundle file).
    ImportAlgorithmBundle {
        #[arg(long)]
        config: String,
        #[arg(long)]
        bundle_path: Option<String>,
        // Keys are base64url and may start with '-'.
        #[arg(long, allow_hyphen_values = true)]
        key: Option<String>,
    },
    /// Commands for local debugging of algorithms (`debug run --algo DIR --data PATH ...`).
    #[command(disable_help_flag = true)]
    Debug {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Start a Celery worker (not supported by this build; reports the configured executor).
    #[command(disable_help_flag = true)]
    SpawnWorker {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Internal: a worker process embedding Python (started by the server).
    #[command(hide = true)]
    Worker {
        #[arg(long, default_value_t = 0)]
        index: usize,
    },
    /// Internal: Python-side steps of a deployment.
    #[command(hide = true)]
    PythonTool {
        #[command(subcommand)]
        tool: PythonTool,
    },
}

#[derive(Subcommand)]
pub enum PythonTool {
    DeployModule {
        package: String,
        #[arg(long, action = clap::ArgAction::Set)]
        obfuscate: bool,
        #[arg(long = "pyc-only", action = clap::ArgAction::Set)]
        pyc_only: bool,
    },
    /// Imports a built module zip and instantiates its `Runner` (`check_importable`).
    CheckImport { zip: String, module_id: String },
}

/// Runs the parsed command; returns the exit code.
pub fn dispatch(cli: Cli) -> i32 {
    let Some(command) = cli.command else {
        use clap::CommandFactory;
        let _ = Cli::command().print_help();
        return 2;
    };
    match command {
        Command::Run { args } => run::run(&args),
        Command::GenerateConfig {
            path,
            overwrite,
            no_overwrite,
            extra,
        } => {
            let answer = match (overwrite, no_overwrite) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            generate_config::run(&path, answer, &extra)
        }
        Command::DeployAlgorithms {
            config,
            path,
            names,
            delete_existing,
            no_verbose,
            verbose: _,
            extra,
        } => deploy_algorithms::run(deploy_algorithms::Options {
            config,
            path,
            names,
            delete_existing,
            verbose: !no_verbose,
            extra,
        }),
        Command::DeployLocal {
            path,
            server_url,
            algorithm_name,
            algorithm_major_version,
            removable,
            exportable,
            is_async,
            no_poll,
            poll: _,
            timeout_s,
            poll_interval_s,
        } => client::deploy_local(client::DeployLocal {
            path,
            server_url,
            algorithm_name,
            algorithm_major_version,
            removable,
            exportable,
            is_async,
            poll: !no_poll,
            timeout_s,
            poll_interval_s,
        }),
        Command::DeleteAlgorithm {
            name,
            major,
            server_url,
            algorithm_minor_version,
        } => client::delete_algorithm(
            &name,
            &major,
            &server_url,
            algorithm_minor_version.as_deref(),
        ),
        Command::ExportAlgorithm {
            name,
            major,
            server_url,
            algorithm_minor_version,
            checkpoint_id,
            output_dir,
        } => client::export_algorithm(
            &name,
            &major,
            &server_url,
            algorithm_minor_version,
            checkpoint_id,
            output_dir,
        ),
        Command::BuildAlgorithmBundle {
            config,
            output,
            key,
        } => build_algorithm_bundle::run(&config, &output, key.as_deref()),
        Command::GenerateAlgorithmBundleKey => generate_algorithm_bundle_key::run(),
        Command::InspectAlgorithmBundle { bundle_path, key } => {
            inspect_algorithm_bundle::run(&bundle_path, &key)
        }
        Command::ImportAlgorithmBundle {
            config,
            bundle_path,
            key,
        } => import_algorithm_bundle::run(&config, bundle_path, key),
        Command::Debug { args } => debug::run(&args),
        Command::SpawnWorker { args } => debug::spawn_worker(&args),
        Command::Worker { index } => match crate::worker::run(index) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("worker {index}: {e:#}");
                1
            }
        },
        Command::PythonTool {
            tool:
                PythonTool::DeployModule {
                    package,
                    obfuscate,
                    pyc_only,
                },
        } => crate::worker::run_deploy_tool(&package, obfuscate, pyc_only),
        Command::PythonTool {
            tool: PythonTool::CheckImport { zip, module_id },
        } => crate::worker::run_check_import(&zip, &module_id),
    }
}
