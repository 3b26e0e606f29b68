//! `jwl token --sub ID --scope S…`: print a signed bearer token, and nothing else, on stdout.

use anyhow::Context;

use crate::args::TokenArgs;

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    let keys = args.jwt.load_keys(&args.data_dir.data_dir)?;
    let token = keys
        .issue(&args.sub, &args.scopes, args.ttl)
        .context("issuing the token")?;
    println!("{token}");
    Ok(())
}
