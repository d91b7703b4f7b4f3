//! `--config FILE` for the sentinel and the proxy: a TOML file whose keys are
//! the role's flags in snake_case (`listen_address = "0.0.0.0"`).
//!
//! The keeper has its own typed file (keeper/config.rs) because its config
//! goes through validation anyway. These two roles take their flags straight
//! from clap, so the file is turned into the flags it stands for, before clap
//! parses: every value then meets the same parser, default and error as on
//! the command line, and a flag added to the role is at once a file key too,
//! with no second list to keep in step. Precedence is the keeper's: a flag on
//! the command line wins over its environment variable, which wins over the
//! file.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, Command};

/// The subcommands that take `--config` this way.
const ROLES: [&str; 2] = ["sentinel", "proxy"];

/// Adds `--config FILE` to the sentinel and the proxy, so that parsing, help,
/// completions and man pages know it.
pub fn add_flag(cli: Command) -> Command {
    ROLES.iter().fold(cli, |cli, role| {
        cli.mut_subcommand(*role, |sub| {
            sub.arg(
                Arg::new("config")
                    .long("config")
                    .value_name("FILE")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help("TOML file holding any of these flags (snake_case keys, e.g. listen_address = \"0.0.0.0\"); flags and their environment variables win"),
            )
        })
    })
}

/// A config file that cannot be used; each names the file, the key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: unknown key {key:?}; known keys: {known}")]
    UnknownKey {
        path: PathBuf,
        key: String,
        known: String,
    },
    #[error("config file {path}: {key}: {message}")]
    BadValue {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// Returns `argv` with the settings of the sentinel's or proxy's `--config`
/// file inserted as flags, minus the ones the command line or the
/// environment already sets. Any other command line comes back unchanged.
pub fn expand(argv: Vec<OsString>, cli: &Command) -> Result<Vec<OsString>, ConfigFileError> {
    let Some(role) = argv.get(1).and_then(|a| a.to_str()) else {
        return Ok(argv);
    };
    let Some(sub) = ROLES
        .contains(&role)
        .then(|| cli.find_subcommand(role))
        .flatten()
    else {
        return Ok(argv);
    };
    let given = given_flags(&argv[2..]);
    let Some(path) = config_path(&argv[2..]) else {
        return Ok(argv);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigFileError::Read {
        path: path.clone(),
        source,
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigFileError::Parse {
        path: path.clone(),
        message: e
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    })?;
    let mut inserted = Vec::new();
    for (key, value) in &table {
        let flag = key.replace('_', "-");
        let arg = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(flag.as_str()) && !is_builtin(a))
            .ok_or_else(|| ConfigFileError::UnknownKey {
                path: path.clone(),
                key: key.clone(),
                known: known_keys(sub),
            })?;
        let from_env = arg.get_env().is_some_and(|v| std::env::var_os(v).is_some());
        if given.contains(&flag) || from_env {
            continue;
        }
        let bad = |message: String| ConfigFileError::BadValue {
            path: path.clone(),
            key: key.clone(),
            message,
        };
        inserted.extend(flag_args(arg, &flag, value).map_err(bad)?);
    }
    let mut out = argv[..2].to_vec();
    out.extend(inserted.into_iter().map(OsString::from));
    out.extend_from_slice(&argv[2..]);
    Ok(out)
}

/// `--help`, `--version` and `--config` itself are not settings.
fn is_builtin(arg: &Arg) -> bool {
    matches!(arg.get_id().as_str(), "help" | "version" | "config")
}

fn known_keys(sub: &Command) -> String {
    sub.get_arguments()
        .filter(|a| !is_builtin(a))
        .filter_map(|a| a.get_long())
        .map(|l| l.replace('-', "_"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The long flags the command line itself sets (`--port 1` or `--port=1`).
fn given_flags(args: &[OsString]) -> Vec<String> {
    args.iter()
        .map_while(|a| a.to_str().filter(|a| *a != "--"))
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_string())
        .collect()
}

fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().map_while(|a| a.to_str().filter(|a| *a != "--"));
    while let Some(a) = it.next() {
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(Path::new(p).to_path_buf());
        }
    }
    None
}

/// The command-line form of one file setting, checked by the flag's own parser.
fn flag_args(arg: &Arg, flag: &str, value: &toml::Value) -> Result<Vec<String>, String> {
    let switch = !arg.get_action().takes_values();
    let values: Vec<String> = match value {
        toml::Value::Boolean(on) if switch => {
            return Ok(if *on {
                vec![format!("--{flag}")]
            } else {
                vec![]
            });
        }
        _ if switch => {
            return Err(format!(
                "is a switch: write {} = true",
                flag.replace('-', "_")
            ))
        }
        toml::Value::String(s) => vec![s.clone()],
        toml::Value::Integer(i) => vec![i.to_string()],
        toml::Value::Boolean(b) => vec![b.to_string()],
        toml::Value::Array(items) => {
            if arg.get_value_delimiter().is_none() && !matches!(arg.get_action(), ArgAction::Append)
            {
                return Err("takes one value, not a list".into());
            }
            items
                .iter()
                .map(|item| match item {
                    toml::Value::String(s) => Ok(s.clone()),
                    toml::Value::Integer(i) => Ok(i.to_string()),
                    other => Err(format!("a list of strings, not {}", other.type_str())),
                })
                .collect::<Result<_, _>>()?
        }
        other => return Err(format!("a string or number, not {}", other.type_str())),
    };
    let mut out = Vec::new();
    for v in values {
        check(arg, flag, &v)?;
        out.push(format!("--{flag}={v}"));
    }
    Ok(out)
}

/// Runs one value through the flag's parser, so a bad value is reported
/// against the file's key rather than as a command-line mistake.
fn check(arg: &Arg, flag: &str, value: &str) -> Result<(), String> {
    let probe = Command::new("probe")
        .no_binary_name(true)
        .arg(arg.clone().required(false));
    match probe.try_get_matches_from([format!("--{flag}={value}")]) {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = e.to_string();
            let line = text.lines().next().unwrap_or_default();
            Err(line.strip_prefix("error: ").unwrap_or(line).to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expanded(file: &str, args: &[&str]) -> Result<Vec<String>, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, file).unwrap();
        let mut argv: Vec<OsString> = vec!["pgwarden".into(), "proxy".into()];
        argv.extend(args.iter().map(OsString::from));
        argv.push("--config".into());
        argv.push(path.clone().into());
        let out = expand(argv, &crate::cli_command()).map_err(|e| e.to_string())?;
        let path = path.to_string_lossy().into_owned();
        Ok(out
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .filter(|a| a != "pgwarden" && a != "proxy" && a != "--config" && *a != path)
            .collect())
    }

    #[test]
    fn file_settings_become_flags_and_the_command_line_wins() {
        let out = expanded(
            "listen_address = \"0.0.0.0\"\nport = 5432\nread_only_port = 5433\nstore_endpoints = [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\"]\n",
            &["--port", "6432"],
        )
        .unwrap();
        assert_eq!(
            out,
            [
                "--listen-address=0.0.0.0",
                "--read-only-port=5433",
                "--store-endpoints=http://10.0.0.1:2379",
                "--store-endpoints=http://10.0.0.2:2379",
                "--port",
                "6432"
            ]
        );
    }

    #[test]
    fn an_unknown_key_is_named_with_the_known_ones() {
        let err = expanded("listen_adress = \"0.0.0.0\"\n", &[]).unwrap_err();
        assert!(err.contains("unknown key \"listen_adress\""), "{err}");
        assert!(err.contains("listen_address"), "{err}");
    }

    #[test]
    fn a_bad_value_is_reported_against_its_key() {
        let err = expanded("port = \"fivefourthreetwo\"\n", &[]).unwrap_err();
        assert!(err.contains(": port: invalid value"), "{err}");
        let err = expanded("port = 1.5\n", &[]).unwrap_err();
        assert!(err.contains("port: a string or number, not float"), "{err}");
    }

    #[test]
    fn other_commands_pass_through_untouched() {
        let argv: Vec<OsString> = ["pgwarden", "ctl", "status", "--config", "x"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(expand(argv.clone(), &crate::cli_command()).unwrap(), argv);
    }
}
