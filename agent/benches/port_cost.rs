//! What a port costs: a round trip through an external program against a
//! native kernel call, on 1 MB of f64 (131,072 random floats).
//!
//! `cargo bench -p skelpi-agent --bench port_cost`
//!
//! Both sides copy the input (a kernel takes its array by value). The port
//! is a Python program that sends its input back (reading and writing the
//! frames, no arithmetic), so the ratio is the mechanism's cost: framing,
//! two pipe transfers and the program's own reading and writing.
//! Medians of 9 rounds of 20 calls, after a warm-up.

use rand::Rng;
use skelpi_agent::kernels::port::Port;
use skelpi_agent::kernels::{Array, Kernel, Registry};
use skelpi_proto::JobId;
use std::hint::black_box;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

const ECHO: &str = r#"#!/usr/bin/env python3
import struct, sys
inp, out = sys.stdin.buffer, sys.stdout.buffer
while True:
    head = inp.read(4)
    if len(head) < 4:
        break
    (n,) = struct.unpack(">I", head)
    body = inp.read(n)
    (nargs,) = struct.unpack_from("<I", body, 0)
    data = body[12 + 8 * nargs:]
    out.write(struct.pack(">I", 4 + len(data)) + b"\0\0\0\0" + data)
    out.flush()
"#;

fn per_call(calls: usize, mut f: impl FnMut()) -> Duration {
    let started = Instant::now();
    for _ in 0..calls {
        f();
    }
    started.elapsed() / calls as u32
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let dir = std::env::temp_dir().join(format!("skelpi-port-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let program = dir.join("echo.py");
    std::fs::write(&program, ECHO).expect("the echo program");
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let mut rng = rand::rng();
    let input = Array::list((0..131_072).map(|_| rng.random::<f64>()).collect());
    let native = Registry::builtin().get("identity").expect("identity");
    let port = Port::new(program, Duration::from_secs(30));
    let job = JobId(1);
    let mut run_native = || {
        black_box(
            native
                .call_for(job, &[], black_box(input.clone()))
                .expect("native"),
        );
    };
    let mut run_port = || {
        let out = port
            .call_for(job, &[], black_box(input.clone()))
            .expect("port");
        assert_eq!(out.data.len(), input.data.len());
        black_box(out);
    };
    per_call(3, &mut run_native);
    per_call(3, &mut run_port);
    let (mut n, mut p) = (Vec::new(), Vec::new());
    for _ in 0..9 {
        n.push(per_call(20, &mut run_native));
        p.push(per_call(20, &mut run_port));
    }
    let (n, p) = (median(n), median(p));
    println!("1 MB of f64 (131072 floats), medians of 9 rounds of 20 calls");
    println!("native identity call: {n:>12.2?} per call");
    println!("port round trip:      {p:>12.2?} per call (python3 echo)");
    println!(
        "ratio port/native:    {:>12.1}x; port throughput {:.0} MB/s each way",
        p.as_secs_f64() / n.as_secs_f64(),
        1.048576 / p.as_secs_f64()
    );
    port.end_job(job);
    let _ = std::fs::remove_dir_all(&dir);
}
