//! `cas ref`: named refs, their listing and their logs.

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::Result;
use cas::Store;
use serde_json::json;

use crate::args::{self, RefCmd};
use crate::hooks;
use crate::render::{self, HashLine, JsonOnly};

pub(crate) fn run(store: &Store, c: RefCmd, json: bool) -> Result<ExitCode> {
    match c {
        RefCmd::Set {
            name,
            hash,
            expect,
            expect_none,
            message,
        } => {
            let exp = args::expect(expect, expect_none);
            let hash = hash.resolve(store)?;
            hooks::barrier();
            let old = store.set_ref_msg(&name, hash, exp, &message)?;
            let v = json!({ "name": name, "hash": hash, "old": old });
            render::print(json, &JsonOnly(v));
        }
        RefCmd::Get { name } => match store.get_ref(&name)? {
            Some(h) => render::print(json, &HashLine(h, json!({ "name": name, "hash": h }))),
            None => return Err(cas::Error::RefNotFound { name }.into()),
        },
        RefCmd::Rm { name, expect } => {
            let exp = args::expect(expect, false);
            let old = store.remove_ref(&name, exp)?;
            let v = json!({ "name": name, "old": old, "removed": true });
            render::print(json, &JsonOnly(v));
        }
        RefCmd::Ls { prefix, nul } => {
            let (refs, damaged) = store.refs_report(&prefix)?;
            let mut out = io::BufWriter::new(io::stdout().lock());
            for (name, hash) in refs {
                let line = render::RefLine {
                    name: &name,
                    hash,
                    nul,
                };
                render::line(&mut out, json, &line)?;
            }
            out.flush()?;
            for p in &damaged {
                eprintln!("cas: error: {}: {}", p.path.display(), p.reason);
            }
            if !damaged.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        RefCmd::Log { name, lines } => {
            // Streamed: one line in memory, whatever the log's size.
            render::stream(json, |emit| {
                store.reflog_each(&name, lines, |line| match line {
                    Ok(e) => emit(&render::RefLog(&e)),
                    Err(p) => {
                        eprintln!("cas: warning: {}: {}", p.path.display(), p.reason);
                        Ok(())
                    }
                })
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
