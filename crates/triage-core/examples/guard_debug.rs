//! Prints what the guard finds in each line of stdin (`\n` in a line stands for a newline):
//! kind, rule, confidence and the matched text. For debugging rules on made-up inputs only.
//! With file arguments, scans each file as one text instead. `GUARD_DEBUG_RAW=1` also prints the
//! entity recogniser's raw spans (before the rules' findings cut them).
#![allow(clippy::print_stdout, missing_docs)]

use std::io::BufRead;

fn show(g: &triage_core::guard::Guard, text: &str) {
    for f in g.scan(text) {
        println!("    {:<14} {:<22} {:.2} {:?}", f.kind.as_str(), f.rule, f.confidence, &text[f.span.clone()]);
    }
    if std::env::var_os("GUARD_DEBUG_RAW").is_some() {
        if let Some(m) = triage_core::guard::ner::Model::builtin() {
            for (k, span, c) in m.find(text) {
                println!("    raw {:<10} {c:.2} {:?}", k.as_str(), &text[span]);
            }
        }
    }
}

fn main() {
    let g = triage_core::guard::Guard::new();
    let files: Vec<String> = std::env::args().skip(1).collect();
    if !files.is_empty() {
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            println!("== {f}");
            show(&g, &text);
        }
        return;
    }
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let text = line.replace("\\n", "\n");
        println!("{text:?}");
        show(&g, &text);
    }
}
