//! `cargo xtask test`: setup, build, then three tiers: unit tests, the
//! integration tests on the host (everything but `lsm_*`), and the same
//! integration binary's `lsm_*` tests inside the BPF-LSM VM. Closes with the
//! line `N passed, N failed` summed over the tiers.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::{
    build::{self, EBPF_PACKAGE},
    proc::{self, shell_quote},
    setup::{self, Env},
    vm,
};

/// The package whose integration test target runs on the host and in the VM.
const USER_PACKAGE: &str = "killpath-user";
/// The integration test target (tests/integration/main.rs).
const INTEGRATION_TARGET: &str = "integration";
/// Tests with this prefix need BPF LSM and run only in the VM.
const LSM_PREFIX: &str = "lsm_";
/// Runs the VM tier inside the VM, one test at a time under a deadline.
const VM_TESTS_SCRIPT: &str = include_str!("vm_tests.sh");
/// How long one VM test may run before it is reported failed (with the
/// kernel stacks of every killpath task) and the next one starts. The
/// slowest VM test (it loads the fexit programs under software emulation)
/// takes about 3-4 minutes; one hang used to cost the whole tier's 40
/// minutes and every test after it (CI, 2026-12-02).
const VM_TEST_DEADLINE: std::time::Duration = std::time::Duration::from_mins(12);

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("only").multiple(false))]
pub struct Args {
    /// Run only the unit tests.
    #[arg(long, group = "only")]
    unit_only: bool,
    /// Run only the integration tests on the host.
    #[arg(long, group = "only")]
    host_only: bool,
    /// Run only the integration tests in the VM.
    #[arg(long, group = "only")]
    vm_only: bool,
}

/// What one tier reported.
struct Tier {
    name: &'static str,
    passed: u64,
    failed: u64,
    /// Why the tier counts as failed, if it does.
    problem: Option<String>,
}

impl Tier {
    /// Judges a tier from its exit success and its captured libtest output.
    fn judge(name: &'static str, success: bool, output: &str, failure: &str) -> Self {
        match libtest_counts(output) {
            Some((passed, failed)) => Self {
                name,
                passed,
                failed,
                problem: (!success).then(|| failure.to_owned()),
            },
            None => Self {
                name,
                passed: 0,
                failed: 0,
                problem: Some(if success {
                    "printed no `test result:` line".to_owned()
                } else {
                    format!("{failure} before printing any `test result:` line")
                }),
            },
        }
    }

    fn broken(name: &'static str, e: &anyhow::Error) -> Self {
        Self {
            name,
            passed: 0,
            failed: 0,
            problem: Some(format!("{e:#}")),
        }
    }
}

/// Sums `test result: ok. N passed; M failed; ...` lines; `None` when there is none.
fn libtest_counts(output: &str) -> Option<(u64, u64)> {
    let mut found = false;
    let (mut passed, mut failed) = (0, 0);
    for line in output.lines() {
        let Some((_, rest)) = line.split_once("test result: ") else {
            continue;
        };
        found = true;
        for part in rest.split(['.', ';']) {
            let mut words = part.split_whitespace();
            if let (Some(n), Some(what)) = (words.next(), words.next()) {
                match (n.parse::<u64>(), what) {
                    (Ok(n), "passed") => passed += n,
                    (Ok(n), "failed") => failed += n,
                    _ => {}
                }
            }
        }
    }
    found.then_some((passed, failed))
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let all = !(args.unit_only || args.host_only || args.vm_only);
    let env = setup::run()?;
    build::run(&env, false)?;

    let mut tiers = Vec::new();
    if all || args.unit_only {
        header("unit tests");
        tiers.push(unit_tier(&env).unwrap_or_else(|e| Tier::broken("unit", &e)));
    }
    if all || args.host_only || args.vm_only {
        match integration_exe(&env) {
            Ok(exe) => {
                if all || args.host_only {
                    header("integration tests on the host");
                    tiers.push(host_tier(&env, &exe).unwrap_or_else(|e| Tier::broken("host", &e)));
                }
                if all || args.vm_only {
                    header("integration tests in the VM (BPF LSM)");
                    tiers.push(vm_tier(&env, &exe).unwrap_or_else(|e| Tier::broken("vm", &e)));
                }
            }
            Err(e) => tiers.push(Tier::broken("integration", &e)),
        }
    }

    println!();
    for tier in &tiers {
        match &tier.problem {
            None => println!(
                "tier {}: {} passed, {} failed",
                tier.name, tier.passed, tier.failed
            ),
            Some(p) => println!("tier {}: FAILED: {p}", tier.name),
        }
    }
    let passed: u64 = tiers.iter().map(|t| t.passed).sum();
    let failed: u64 = tiers.iter().map(|t| t.failed).sum();
    let ok = tiers.iter().all(|t| t.problem.is_none() && t.failed == 0);
    // The closing line, summed over every tier; nothing is printed after it.
    println!("{passed} passed, {failed} failed");
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn header(title: &str) {
    println!("\n==== {title} ====");
}

fn unit_tier(env: &Env) -> Result<Tier> {
    let mut cmd = env.cargo()?;
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        EBPF_PACKAGE,
        "--lib",
        "--bins",
    ])
    .env("KILLPATH_TEST_STRICT", "1")
    .stdin(Stdio::null());
    println!("test: {}", proc::describe(&cmd));
    let (status, output) = proc::run_tee(&mut cmd)?;
    Ok(Tier::judge(
        "unit",
        status.success(),
        &output,
        "unit tests failed",
    ))
}

/// The integration test executable of killpath-user, from cargo's JSON messages.
fn integration_exe(env: &Env) -> Result<PathBuf> {
    let mut cmd = env.cargo()?;
    cmd.args([
        "test",
        "-p",
        USER_PACKAGE,
        "--test",
        INTEGRATION_TARGET,
        "--no-run",
        "--message-format=json",
    ])
    .stdin(Stdio::null())
    .stderr(Stdio::inherit());
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{}`", proc::describe(&cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({})", proc::describe(&cmd), out.status);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == INTEGRATION_TARGET)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| {
            anyhow!(
                "cargo built no executable for {USER_PACKAGE}'s `{INTEGRATION_TARGET}` test target"
            )
        })
}

fn package_dir(env: &Env) -> PathBuf {
    env.root.join(USER_PACKAGE)
}

fn host_tier(env: &Env, exe: &Path) -> Result<Tier> {
    let mut cmd = Command::new(exe);
    // As under `cargo test`: the package directory is the working directory.
    cmd.args(["--test-threads=1", "--skip", LSM_PREFIX])
        .current_dir(package_dir(env))
        .env("CARGO_MANIFEST_DIR", package_dir(env))
        .env("KILLPATH_TEST_STRICT", "1")
        .env("KILLPATH_TEST_ENV", "host")
        .stdin(Stdio::null());
    println!("test: {}", proc::describe(&cmd));
    let (status, output) = proc::run_tee(&mut cmd)?;
    Ok(Tier::judge(
        "host",
        status.success(),
        &output,
        "host integration tests failed",
    ))
}

fn vm_tier(env: &Env, exe: &Path) -> Result<Tier> {
    let results = vm::fresh_results_dir(env, "test")?;
    let log = results.join("vm-test.log");
    let rc = results.join("vm-test.rc");
    let script = results.join("vm-tests.sh");
    fs::write(&script, VM_TESTS_SCRIPT)
        .with_context(|| format!("writing {}", script.display()))?;
    let q = |p: &Path| shell_quote(&p.to_string_lossy());
    let command = format!(
        "bash {script} {exe} {pkg} {log} {rc} {LSM_PREFIX} {deadline}",
        script = q(&script),
        exe = q(exe),
        pkg = q(&package_dir(env)),
        log = q(&log),
        rc = q(&rc),
        deadline = VM_TEST_DEADLINE.as_secs(),
    );
    let console = results.join("vng-console.log");
    let mut cmd = vm::vng_command(env, &command, &[&results]);
    println!("test: {}", proc::describe(&cmd));
    println!(
        "test: booting the VM (console output: {})",
        console.display()
    );
    let start = Instant::now();
    // A guest that froze writes nothing more, not even the per-test
    // deadline's report (`vm-tests.sh`): seen once in CI on 2026-12-04, the
    // emulated VM's both CPUs busy and its log still for 32 minutes. Given
    // up on once the log has been still for longer than that deadline.
    let stall = VM_TEST_DEADLINE + std::time::Duration::from_mins(3);
    let status = proc::run_until_stalled(&mut cmd, &console, vm::TIMEOUT, Some((&log, stall)))?;
    let took = proc::elapsed(start);
    let output = fs::read_to_string(&log).unwrap_or_default();
    print!("{output}");
    let code = fs::read_to_string(&rc)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    match (status, code) {
        (None, _) => {
            let problem = if start.elapsed() < vm::TIMEOUT {
                format!(
                    "the VM stalled: its test log did not change for {}s",
                    stall.as_secs()
                )
            } else {
                format!("the VM did not finish within {}s", vm::TIMEOUT.as_secs())
            };
            println!("test: {problem} (after {took}); vng was killed");
            println!("{}", proc::tail(&console, 30));
            // The tests that finished before count as they ended.
            let (passed, failed) = libtest_counts(&output).unwrap_or((0, 0));
            Ok(Tier {
                name: "vm",
                passed,
                failed,
                problem: Some(problem),
            })
        }
        (Some(status), None) => {
            println!("test: vng exited with {status} after {took}; last console lines:");
            println!("{}", proc::tail(&console, 30));
            Ok(Tier {
                name: "vm",
                passed: 0,
                failed: 0,
                problem: Some("the VM produced no result".into()),
            })
        }
        (Some(_), Some(code)) => {
            println!("test: VM run finished in {took}, tests exited with {code}");
            Ok(Tier::judge("vm", code == 0, &output, "VM tests failed"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::libtest_counts;

    #[test]
    fn sums_libtest_result_lines() {
        let out = "running 2 tests\n\
                   test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n\
                   test result: FAILED. 3 passed; 1 failed; 1 ignored; 0 measured; 5 filtered out; finished in 1.20s\n";
        assert_eq!(libtest_counts(out), Some((5, 1)));
        assert_eq!(libtest_counts("error: could not compile"), None);
    }
}
