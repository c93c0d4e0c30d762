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
        /// File to write.
        #[arg(long, default_value = "compox_config.yaml")]
        path: String,
        /// Replace an existing file without asking.
        #[arg(long, overrides_with = "no_overwrite")]
        overwrite: bool,
        /// Leave an existing file alone without asking.
        #[arg(long = "no-overwrite")]
        no_overwrite: bool,
        /// Settings to write instead of the defaults, as dotted overrides (--port 6000).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        extra: Vec<String>,
    },
    /// Deploy algorithm folders into storage (through the running server when there is one).
    DeployAlgorithms {
        /// Settings file (YAML), as written by generate-config.
        #[arg(long)]
        config: Option<String>,
        /// Folder holding one sub-folder per algorithm (default: deploy_algorithms_from).
        #[arg(long)]
        path: Option<String>,
        /// Deploy only this sub-folder of --path; repeat for several.
        #[arg(long = "name", short = 'n')]
        names: Vec<String>,
        /// Delete the stored algorithm of the same name and major version first.
        #[arg(long)]
        delete_existing: bool,
        /// Do not print the settings before deploying.
        #[arg(long = "no-verbose")]
        no_verbose: bool,
        #[arg(long = "verbose", hide = true)]
        verbose: bool,
        /// Settings as dotted overrides (--port 6000 --inference.python_env .venv).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        extra: Vec<String>,
    },
    /// Deploy a folder or zip through a running server's /api/v0/deploy/local.
    DeployLocal {
        /// Algorithm folder or .zip on the server's machine.
        path: String,
        /// Address of the running server (note: the server listens on 5481 by default).
        #[arg(long, default_value = client::DEFAULT_URL)]
        server_url: String,
        /// Store under this name instead of pyproject's [project].name.
        #[arg(long)]
        algorithm_name: Option<String>,
        /// Store under this major version instead of pyproject's.
        #[arg(long)]
        algorithm_major_version: Option<String>,
        /// true/false: whether delete-algorithm may remove it (default: pyproject's, else false).
        #[arg(long)]
        removable: Option<String>,
        /// true/false: whether export-algorithm may export it.
        #[arg(long)]
        exportable: Option<String>,
        /// Deploy in the background (/deploy/local-async) and poll until it ends.
        #[arg(long = "async")]
        is_async: bool,
        /// With --async: print the deploy id and do not poll.
        #[arg(long = "no-poll")]
        no_poll: bool,
        #[arg(long = "poll", hide = true)]
        poll: bool,
        /// With --async: stop polling after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
        /// With --async: seconds between polls.
        #[arg(long, default_value_t = 0.5)]
        poll_interval_s: f64,
    },
    /// Delete an algorithm (or one minor version) through a running server.
    DeleteAlgorithm {
        /// Algorithm name.
        name: String,
        /// Major version.
        major: String,
        /// Address of the running server (note: the server listens on 5481 by default).
        #[arg(long, default_value = client::DEFAULT_URL)]
        server_url: String,
        /// Delete only this minor version.
        #[arg(long)]
        algorithm_minor_version: Option<String>,
    },
    /// Export an algorithm as <NAME>_<MAJOR>.zip from a running server.
    ExportAlgorithm {
        /// Algorithm name.
        name: String,
        /// Major version.
        major: String,
        /// Address of the running server (note: the server listens on 5481 by default).
        #[arg(long, default_value = client::DEFAULT_URL)]
        server_url: String,
        /// Export this minor version (default: the latest).
        #[arg(long)]
        algorithm_minor_version: Option<String>,
        /// Export with this checkpoint's assets.
        #[arg(long)]
        checkpoint_id: Option<String>,
        /// Existing folder to write the zip into (default: the current folder).
        #[arg(long)]
        output_dir: Option<String>,
    },
    /// Build an encrypted bundle of every stored algorithm, module, asset and checkpoint.
    BuildAlgorithmBundle {
        /// Settings file (YAML) naming the store to bundle; write one with generate-config.
        #[arg(long)]
        config: String,
        /// Bundle file to write.
        #[arg(long, default_value = "compox_algorithm_bundle.zip")]
        output: String,
        /// Encryption key (generate-algorithm-bundle-key); without it one is generated and printed.
        #[arg(long, allow_hyphen_values = true)]
        key: Option<String>,
    },
    /// Print a fresh algorithm bundle key.
    GenerateAlgorithmBundleKey,
    /// Verify a bundle's key and signature and print its manifest summary as JSON.
    InspectAlgorithmBundle {
        /// Bundle file.
        #[arg(long)]
        bundle_path: String,
        /// The bundle's key.
        #[arg(long, allow_hyphen_values = true)]
        key: String,
    },
    /// Import an algorithm bundle into the configured storage (once per bundle file).
    ImportAlgorithmBundle {
        /// Settings file (YAML) naming the store to import into; write one with generate-config.
        #[arg(long)]
        config: String,
        /// Bundle file (default: storage.builtin_storage_bundle_path).
        #[arg(long)]
        bundle_path: Option<String>,
        /// The bundle's key (default: storage.builtin_storage_bundle_key).
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
