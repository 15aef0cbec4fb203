//! Prints what the guard finds in each line of stdin (`\n` in a line stands for a newline):
//! kind, rule, confidence and the matched text. For debugging rules on made-up inputs only.
#![allow(clippy::print_stdout, missing_docs)]

use std::io::BufRead;

fn main() {
    let g = triage_core::guard::Guard::new();
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let text = line.replace("\\n", "\n");
        println!("{text:?}");
        for f in g.scan(&text) {
            println!("    {:<14} {:<22} {:.2} {:?}", f.kind.as_str(), f.rule, f.confidence, &text[f.span.clone()]);
        }
    }
}
