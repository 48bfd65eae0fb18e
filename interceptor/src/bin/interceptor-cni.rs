//! The CNI plugin binary: the runtime runs it with the CNI environment and the network
//! configuration on stdin (see `interceptor::cni`).

use std::io::Read as _;

use interceptor::cni::{self, Env};

fn main() {
    let mut stdin = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut stdin) {
        stdin.clear();
        eprintln!("interceptor-cni: reading stdin: {e}");
    }
    match cni::run(&Env::from_process(), &stdin) {
        Ok(Some(out)) => println!("{out}"),
        Ok(None) => {}
        Err(e) => {
            println!(
                "{}",
                serde_json::to_string(&e).unwrap_or_else(|_| r#"{"code":999}"#.into())
            );
            std::process::exit(1);
        }
    }
}
