//! Rebuild the eBPF object when bpf-linker changes (it does the final link),
//! and keep the global BPF functions global: bpf-linker internalises every
//! symbol it is not told to export, and an internal function is static in
//! BTF, which the verifier re-checks for every caller state.
const GLOBAL_FUNCTIONS: &[&str] = &["kp_target_of_current", "kp_target_of_skb", "kp_tripwire_rule"];

fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    println!("cargo:rustc-link-arg-bins=--export={}", GLOBAL_FUNCTIONS.join(","));
}
