#!/bin/bash
# Runs inside the VM; written into the results directory by `cargo xtask test`.
# Runs each test of the VM tier on its own under a deadline, so that one
# test that hangs costs its deadline, not the whole tier: it is reported
# failed (with what the kernel and the agent were doing) and the next runs.
# Usage: vm-tests.sh EXE PACKAGE_DIR LOG RC_FILE PREFIX DEADLINE_SECONDS
set -u
exe=$1 pkg=$2 log=$3 rc_file=$4 prefix=$5 deadline=$6
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
cd "$pkg" || exit 1
export CARGO_MANIFEST_DIR=$pkg KILLPATH_TEST_STRICT=1 KILLPATH_TEST_ENV=vm
: > "$log"
say() { echo "$*" | tee -a "$log"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }

# What every process is blocked on, and the kernel's view of blocked tasks:
# the clues a hang leaves (a trampoline attach waiting for an RCU grace
# period, a freeze that never completes, a lock).
diagnose() {
    say "---- diagnostics: processes (pid ppid stat wchan etime comm args)"
    ps -eo pid,ppid,stat,wchan:32,etimes,comm,args --sort=pid 2>&1 | grep -v -E ' \[.*\]$' | tee -a "$log"
    for p in $(pgrep -f 'killpath'); do
        for t in /proc/"$p"/task/*; do
            say "---- kernel stack of $p/${t##*/} ($(cat "$t"/comm 2>/dev/null)):"
            cat "$t"/stack 2>/dev/null | tee -a "$log"
        done
    done
    echo w > /proc/sysrq-trigger 2>/dev/null
    say "---- dmesg (last 80 lines, after sysrq-w)"
    dmesg | tail -80 | tee -a "$log"
}

tests=$("$exe" --list "$prefix" 2>/dev/null | sed -n 's/: test$//p')
worst=0
for t in $tests; do
    say "==== $t (VM uptime $(uptime_s) s)"
    "$exe" --test-threads=1 --exact "$t" --nocapture > >(tee -a "$log") 2>&1 &
    pid=$!
    waited=0
    while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt "$deadline" ]; do
        sleep 1
        waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "test $t ... TIMED OUT after ${deadline}s"
        diagnose
        pkill -KILL -P "$pid" 2>/dev/null
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        # The agents the test started: they outlive the test binary.
        pkill -KILL -f 'killpath agent' 2>/dev/null
        # A line the xtask counts like libtest's own.
        say "test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in ${deadline}s"
        worst=1
        continue
    fi
    wait "$pid"
    rc=$?
    [ "$rc" -eq 0 ] || worst=1
    sleep 1 # let tee flush
done
[ -n "$tests" ] || { say "no test matches $prefix"; worst=1; }
echo "$worst" > "$rc_file"
