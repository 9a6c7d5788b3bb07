//! `seqforge-afl TARGET`: the AFL++ persistent-mode harness of one `seqforge-fuzz` target (see
//! `cargo xtask fuzz`). Rust allocations go through [`CappedAlloc`], so a loader that sizes
//! memory from a length field aborts here instead of slowly exhausting the machine.

use seqforge_fuzz::CappedAlloc;

/// No single allocation above 128 MiB, no more than 1 GiB live: inputs are at most 1 MB.
#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc::new(128 << 20, 1 << 30);

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    if name == "--list" {
        for target in seqforge_fuzz::targets() {
            println!("{}", target.name);
        }
        return;
    }
    let target = match seqforge_fuzz::target(&name) {
        Ok(target) => target,
        Err(e) => {
            eprintln!("usage: seqforge-afl TARGET (or --list)\n{e}");
            std::process::exit(2);
        }
    };
    afl::fuzz!(|data: &[u8]| {
        if let Err(e) = target.run(data) {
            panic!("the harness could not set the input up: {e}");
        }
    });
}
