//! Settings from flags and environment (clap), read the same way by every
//! binary.

use std::ops::RangeBounds;
use std::time::Duration;

use clap::builder::TypedValueParser;

/// The settings `T` from the command line and the environment, as
/// [`clap::Parser::parse`] reads them, except that each setting's value is
/// named by its environment variable (`--bcrypt-cost <AUTH_BCRYPT_COST>`),
/// in `--help` and in the error a bad value gives at start, since
/// deployments mostly set the variables. Exits (status 2) on a bad value,
/// and (status 0) after `--help` or `--version`.
pub fn from_args_and_env<T: clap::Parser>() -> T {
    let command = T::command().mut_args(|arg| match arg.get_env() {
        Some(env) => {
            let name = env.to_string_lossy().into_owned();
            arg.value_name(name)
        }
        None => arg,
    });
    T::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit())
}

/// A value parser of whole seconds within `range`, as a [`Duration`]: a
/// duration setting is parsed once, at start, and its unit is in its name
/// (`*_SECS`).
pub fn seconds(range: impl RangeBounds<u64>) -> impl TypedValueParser<Value = Duration> {
    clap::value_parser!(u64)
        .range(range)
        .map(Duration::from_secs)
}

/// A value parser of whole milliseconds within `range`, as a [`Duration`]
/// (settings named `*_MS`).
pub fn millis(range: impl RangeBounds<u64>) -> impl TypedValueParser<Value = Duration> {
    clap::value_parser!(u64)
        .range(range)
        .map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Example {
        /// A timeout.
        #[arg(long, env = "EXAMPLE_TIMEOUT_SECS", default_value = "30",
              value_parser = super::seconds(1..=600))]
        timeout: Duration,
        /// A poll interval.
        #[arg(long, default_value = "250", value_parser = super::millis(1..=1000))]
        poll: Duration,
    }

    #[test]
    fn durations_parse_once_and_out_of_range_is_refused() {
        let example = Example::try_parse_from(["example"]).unwrap();
        assert_eq!(example.timeout, Duration::from_secs(30));
        assert_eq!(example.poll, Duration::from_millis(250));
        for (flag, value) in [("--timeout", "0"), ("--timeout", "601"), ("--poll", "x")] {
            let error = Example::try_parse_from(["example", flag, value])
                .err()
                .unwrap_or_else(|| panic!("{flag} {value} was accepted"));
            assert!(error.to_string().contains(flag), "{error}");
        }
    }
}
