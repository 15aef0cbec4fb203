//! False alarms on what agent harnesses send every turn (issue 16): generated system prompts in
//! the style of Claude Code and Codex, tool schemas, code, shell output and agent turns, none
//! of which holds personal data. Every generated text must come out of the guard with no
//! personal-data finding; the test prints the false-alarm rate per source and per kind
//! (`cargo test --release -p triage-core --test guard_harness -- --nocapture`).
//!
//! The texts are written for this test in the style of those harnesses (headings, bullet lists,
//! `<env>` blocks with today's date and an OS version, `Co-Authored-By` lines, git status,
//! JSON schemas); the variable parts (project names, paths, dates, versions, commands, file
//! contents) come from a seeded generator, so each run sees the same texts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout, missing_docs)]

use std::collections::BTreeMap;

use triage_core::guard::{Guard, Kind};

mod support;
use support::{Rng, MONTHS};

const PROJECTS: &[&str] = &[
    "triage",
    "acme-billing",
    "widget-service",
    "data-pipeline",
    "mobile-app",
    "infra",
    "docs-site",
    "search-api",
    "payments",
    "ledger-core",
    "image-resizer",
    "chat-ui",
];
const LANGS: &[&str] = &["Rust", "Python", "TypeScript", "Go", "Java", "Kotlin", "C++", "Ruby"];
const OSES: &[&str] = &[
    "Linux 6.8.0-45-generic",
    "Darwin 24.1.0",
    "Linux 5.15.153.1-microsoft-standard-WSL2",
    "macOS 15.1 (24B83)",
    "Ubuntu 24.04.1 LTS",
    "Windows 11 Pro 23H2",
];
const MODELS: &[&str] = &[
    "claude-sonnet-4-5-20250929",
    "claude-opus-4-1-20250805",
    "claude-haiku-4-5-20251001",
    "gpt-5-codex",
    "gpt-4.1-mini",
];
const BRANCHES: &[&str] = &["main", "master", "develop", "feature/retry-budget", "fix/parser-crash", "release/2.3"];
const COMMIT_MSGS: &[&str] = &[
    "Fix off-by-one in the tokenizer",
    "Add retry with jitter to the HTTP client",
    "Bump serde to 1.0.215",
    "Refactor config loading into two stages",
    "Docs: explain the routing table",
    "Remove dead code in the scheduler",
    "Handle empty input in parse_header",
    "Merge pull request #412 from feature/cache",
    "Update CHANGELOG for 2.3.0",
    "Build Steps for Windows",
];
const FILES: &[&str] = &[
    "src/lib.rs",
    "src/main.rs",
    "src/config/mod.rs",
    "app/models/invoice.py",
    "web/src/components/Header.tsx",
    "cmd/server/main.go",
    "internal/store/postgres.go",
    "tests/test_api.py",
    "Cargo.toml",
    "package.json",
    "README.md",
    "docs/ARCHITECTURE.md",
];

fn date(r: &mut Rng) -> (String, String) {
    let (y, m, d) = (r.range(2024, 2027), r.range(1, 12), r.range(1, 28));
    (format!("{y}-{m:02}-{d:02}"), format!("{} {d}, {y}", MONTHS[(m - 1) as usize]))
}

/// A system prompt in the style of Claude Code: identity, rules as headings and bullets,
/// examples, the commit trailer, an `<env>` block and git status.
fn claude_code_like(r: &mut Rng) -> String {
    let (iso, _) = date(r);
    let project = r.pick(PROJECTS);
    let model = r.pick(MODELS);
    let branch = r.pick(BRANCHES);
    let mut commits = String::new();
    for _ in 0..5 {
        commits.push_str(&format!("{:07x} {}\n", r.next() & 0xfff_ffff, r.pick(COMMIT_MSGS)));
    }
    format!(
        "You are Claude Code, Anthropic's official CLI for Claude.\n\
You are an interactive CLI tool that helps users with software engineering tasks. Use the instructions below and the tools available to you to assist the user.\n\n\
IMPORTANT: Assist with defensive security tasks only. Refuse to create, modify, or improve code that may be used maliciously.\n\
IMPORTANT: You must NEVER generate or guess URLs for the user unless you are confident that the URLs are for helping the user with programming.\n\n\
If the user asks for help or wants to give feedback inform them of the following:\n\
- /help: Get help with using Claude Code\n\
- To give feedback, users should report the issue at https://github.com/anthropics/claude-code/issues\n\n\
# Tone and style\n\
You should be concise, direct, and to the point.\n\
Your output will be displayed on a command line interface. Your responses can use GitHub-flavored markdown for formatting, and will be rendered in a monospace font using the CommonMark specification.\n\
Output text to communicate with the user; all text you output outside of tool use is displayed to the user.\n\n\
<example>\nuser: 2 + 2\nassistant: 4\n</example>\n\n\
<example>\nuser: what command should I run to list files in the current directory?\nassistant: ls\n</example>\n\n\
# Proactiveness\n\
You are allowed to be proactive, but only when the user asks you to do something.\n\n\
# Following conventions\n\
When making changes to files, first understand the file's code conventions. Mimic code style, use existing libraries and utilities, and follow existing patterns.\n\
- NEVER assume that a given library is available, even if it is well known.\n\
- When you create a new component, first look at existing components to see how they're written.\n\n\
# Code style\n\
- IMPORTANT: DO NOT ADD ***ANY*** COMMENTS unless asked\n\n\
# Task Management\n\
You have access to the TodoWrite tools to help you manage and plan tasks.\n\n\
# Doing tasks\n\
The user will primarily request you perform software engineering tasks. For these tasks the following steps are recommended:\n\
- Use the TodoWrite tool to plan the task if required\n\
- Implement the solution using all tools available to you\n\
- Verify the solution if possible with the tests.\n\n\
# Tool usage policy\n\
- When doing file search, prefer to use the Task tool in order to reduce context usage.\n\
- You have the capability to call multiple tools in a single response.\n\n\
# Committing changes with git\n\
When the user asks you to create a new git commit, follow these steps carefully:\n\
1. Run a git status command to see all untracked files.\n\
2. Analyze all staged changes and draft a commit message.\n\
3. End the message with:\n\n\
   Generated with [Claude Code](https://claude.com/claude-code)\n\n\
   Co-Authored-By: Claude <noreply@anthropic.com>\n\n\
Servers, hosts and examples in documentation use 203.0.113.5 and user@example.com.\n\n\
Here is useful information about the environment you are running in:\n\
<env>\n\
Working directory: /home/user/src/{project}\n\
Is directory a git repo: Yes\n\
Platform: linux\n\
OS Version: {os}\n\
Today's date: {iso}\n\
</env>\n\
You are powered by the model named {model_short}. The exact model ID is {model}.\n\n\
Assistant knowledge cutoff is January 2025.\n\n\
gitStatus: This is the git status at the start of the conversation.\n\
Current branch: {branch}\n\n\
Main branch (you will usually use this for PRs): main\n\n\
Status:\n M {f1}\n?? {f2}\n\n\
Recent commits:\n{commits}",
        os = r.pick(OSES),
        model_short = r.pick(&["Sonnet 4.5", "Opus 4.1", "Haiku 4.5"]),
        f1 = r.pick(FILES),
        f2 = r.pick(FILES),
    )
}

/// A system prompt in the style of Codex CLI: identity, AGENTS.md rules, planning, sandboxing,
/// the patch grammar and answer formatting.
fn codex_like(r: &mut Rng) -> String {
    let (_, long) = date(r);
    let project = r.pick(PROJECTS);
    format!(
        "You are Codex, based on GPT-5. You are running as a coding agent in the Codex CLI on a user's computer.\n\n\
## General\n\n\
- The arguments to `shell` will be passed to execvp(). Most terminal commands should be prefixed with [\"bash\", \"-lc\"].\n\
- Always set the `workdir` param when using the shell function. Do not use `cd` unless absolutely necessary.\n\
- When searching for text or files, prefer using `rg` or `rg --files` respectively because `rg` is much faster than alternatives like `grep`.\n\n\
## AGENTS.md spec\n\
- Repos often contain AGENTS.md files. These files can appear anywhere within the repository.\n\
- These files are a way for humans to give you (the agent) instructions or tips for working within the container.\n\
- Some examples might be: coding conventions, info about how code is organized, or instructions for how to run or test code.\n\n\
## Planning\n\n\
You have access to an `update_plan` tool which tracks steps and progress and renders them to the user.\n\n\
High-quality plans:\n\n\
1. Add CLI entry with file args\n\
2. Parse Markdown via CommonMark library\n\
3. Apply semantic HTML template\n\
4. Handle code blocks, images, links\n\
5. Add error handling for invalid files\n\n\
## Sandbox and approvals\n\n\
Filesystem sandboxing prevents you from editing files without user approval. The options are:\n\
- **read-only**: You can only read files.\n\
- **workspace-write**: You can read files. You can write to files in your workspace folder, but not outside it.\n\
- **danger-full-access**: No filesystem sandboxing.\n\n\
Approval options are\n\
- **untrusted**: The harness will escalate most commands for user approval.\n\
- **on-request**: Commands will be run in the sandbox by default.\n\
- **never**: This is a non-interactive mode where you may NEVER ask the user for approval.\n\n\
## apply_patch\n\n\
Use the `apply_patch` shell command to edit files:\n\n\
*** Begin Patch\n\
*** Update File: {f1}\n\
@@ fn handle_request(req: Request) -> Response {{\n\
-    let body = req.body();\n\
+    let body = req.body().trim();\n\
*** End Patch\n\n\
## Presenting your work and final message\n\n\
**Section Headers**\n\
- Use only when they improve clarity — they are not mandatory for every answer.\n\
- Keep headers short (1–3 words) and in `**Title Case**`.\n\n\
**Bullets**\n\
- Use `-` followed by a space for every bullet.\n\
- Merge related points when possible; avoid a bullet for every trivial detail.\n\n\
<environment_context>\n\
  <cwd>/Users/dev/code/{project}</cwd>\n\
  <approval_policy>on-request</approval_policy>\n\
  <sandbox_mode>workspace-write</sandbox_mode>\n\
  <network_access>restricted</network_access>\n\
  <shell>zsh</shell>\n\
</environment_context>\n\
Current date: {long}. Knowledge cutoff: {cutoff} 2024.\n\
Build Steps\n\
- Install the toolchain\n\
- Run the {lang} test suite\n",
        f1 = r.pick(FILES),
        cutoff = r.pick(MONTHS),
        lang = r.pick(LANGS),
    )
}

/// Tool definitions as a harness sends them (descriptions and JSON schemas).
fn tool_schemas(r: &mut Rng) -> String {
    let tools = [
        ("Bash", "Executes a given bash command in a persistent shell session with optional timeout.\n\nBefore executing the command, please follow these steps:\n\n1. Directory Verification:\n   - If the command will create new directories or files, first use the LS tool to verify the parent directory exists.\n\n2. Command Execution:\n   - Always quote file paths that contain spaces with double quotes.\n\nUsage notes:\n  - The command argument is required.\n  - You can specify an optional timeout in milliseconds (up to 600000ms / 10 minutes)."),
        ("Read", "Reads a file from the local filesystem.\n\nUsage:\n- The file_path parameter must be an absolute path, not a relative path\n- By default, it reads up to 2000 lines starting from the beginning of the file\n- Results are returned using cat -n format, with line numbers starting at 1"),
        ("Edit", "Performs exact string replacements in files.\n\nUsage:\n- You must use your `Read` tool at least once in the conversation before editing.\n- The edit will FAIL if `old_string` is not unique in the file."),
        ("Glob", "- Fast file pattern matching tool that works with any codebase size\n- Supports glob patterns like \"**/*.js\" or \"src/**/*.ts\"\n- Returns matching file paths sorted by modification time"),
        ("Grep", "A powerful search tool built on ripgrep\n\n  Usage:\n  - ALWAYS use Grep for search tasks.\n  - Supports full regex syntax (e.g., \"log.*Error\", \"function\\s+\\w+\")\n  - Output modes: \"content\" shows matching lines, \"files_with_matches\" shows only file paths (default)"),
        ("WebFetch", "- Fetches content from a specified URL and processes it using an AI model\n- Takes a URL and a prompt as input\n- Fetches the URL content, converts HTML to markdown"),
        ("TodoWrite", "Use this tool to create and manage a structured task list for your current coding session.\n\n## When to Use This Tool\n1. Complex multi-step tasks\n2. User explicitly requests todo list\n\n## Task States\n- pending: Task not yet started\n- in_progress: Currently working on\n- completed: Task finished successfully"),
        ("update_plan", "Updates the task plan.\nProvide an optional explanation and a list of plan items, each with a step and status.\nAt most one step can be in_progress at a time."),
        ("shell", "Runs a shell command and returns its output."),
    ];
    let mut out = String::from("[");
    let n = r.range(3, tools.len() as u64) as usize;
    for (i, (name, desc)) in tools.iter().take(n).enumerate() {
        if i > 0 {
            out.push(',');
        }
        let v = serde_json::json!({
            "name": name,
            "description": desc,
            "input_schema": {"type": "object", "properties": {
                "file_path": {"type": "string", "description": "The absolute path to the file to read"},
                "command": {"type": "string", "description": "The command to execute"},
                "timeout": {"type": "number", "description": "Optional timeout in milliseconds (max 600000)"},
                "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]},
                "output_mode": {"type": "string", "description": "Output mode: \"content\" shows matching lines"}
            }, "required": ["command"], "additionalProperties": false, "$schema": "http://json-schema.org/draft-07/schema#"}
        });
        out.push_str(&v.to_string());
    }
    out.push(']');
    out
}

/// Source files and shell output an agent reads back as tool results.
fn code_and_output(r: &mut Rng) -> String {
    let (iso, long) = date(r);
    let v = format!("{}.{}.{}", r.range(0, 3), r.range(0, 40), r.range(0, 20));
    let samples = [
        String::from(
            "use std::collections::HashMap;\n\n/// Parses the header block.\npub struct Config {\n    pub name: String,\n    pub retries: u32,\n}\n\nimpl Config {\n    pub fn load(path: &Path) -> Result<Config, Error> {\n        let text = std::fs::read_to_string(path)?;\n        let Config { name, retries } = toml::from_str(&text)?;\n        Ok(Config { name, retries })\n    }\n}\n"
        ),
        "import logging\nfrom dataclasses import dataclass\n\nlog = logging.getLogger(__name__)\n\n@dataclass\nclass Invoice:\n    number: str\n    total_cents: int\n    customer_id: int\n\n    def render(self) -> str:\n        \"\"\"Returns the invoice as plain text.\"\"\"\n        return f\"Invoice {self.number}: {self.total_cents / 100:.2f}\"\n".to_owned(),
        "export function Header({ title, onClose }: HeaderProps) {\n  const [open, setOpen] = useState(false);\n  return (\n    <header className=\"flex items-center\">\n      <h1>{title}</h1>\n      <Button variant=\"ghost\" onClick={onClose}>Close</Button>\n    </header>\n  );\n}\n".to_owned(),
        format!(
            "$ cargo test --release\n   Compiling ledger-core v{v} (/home/user/src/ledger-core)\n    Finished `release` profile [optimized] target(s) in 41.27s\n     Running unittests src/lib.rs (target/release/deps/ledger_core-3f2a9c1d)\n\nrunning 42 tests\ntest parse::tests::empty_input_is_an_error ... ok\ntest store::tests::round_trip ... ok\n\ntest result: ok. 42 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.31s\n"
        ),
        format!(
            "$ git log -3 --format='%h %ad %s' --date=short\n4f1c2ab {iso} Fix off-by-one in the tokenizer\n9a8e7d6 {iso} Add retry with jitter\n1b2c3d4 {iso} Update CHANGELOG for {v}\n"
        ),
        format!(
            "# Changelog\n\n## [{v}] - {iso}\n\n### Added\n- Retry with jitter in the HTTP client\n- `--json` flag for `scan`\n\n### Fixed\n- Crash on empty config files\n\n## Release Notes\nReleased {long}. Supported Platforms\n- Linux x86_64\n- macOS arm64\n"
        ),
        "FROM rust:1.83-slim AS build\nWORKDIR /app\nCOPY . .\nRUN cargo build --release\n\nFROM debian:bookworm-slim\nCOPY --from=build /app/target/release/server /usr/local/bin/server\nEXPOSE 8080\nCMD [\"server\", \"--port\", \"8080\"]\n".to_owned(),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: search-api\n  labels:\n    app: search-api\nspec:\n  replicas: 3\n  template:\n    spec:\n      containers:\n        - name: search-api\n          image: registry.local/search-api:2.3.1\n          ports:\n            - containerPort: 8080\n".to_owned(),
        "Traceback (most recent call last):\n  File \"/srv/app/main.py\", line 88, in handle\n    result = service.process(payload)\n  File \"/srv/app/service.py\", line 41, in process\n    raise ValueError(\"Unknown Status\")\nValueError: Unknown Status\n".to_owned(),
        "SELECT o.id, o.created_at, c.country\nFROM orders o\nJOIN customers c ON c.id = o.customer_id\nWHERE o.created_at >= NOW() - INTERVAL '7 days'\nORDER BY o.created_at DESC\nLIMIT 50;\n".to_owned(),
        "total 48\ndrwxr-xr-x  8 root root 4096 Dec  7 09:12 .\ndrwxr-xr-x  3 root root 4096 Dec  1 17:40 ..\n-rw-r--r--  1 root root 1067 Dec  7 09:12 Cargo.toml\ndrwxr-xr-x  4 root root 4096 Dec  7 09:12 src\n".to_owned(),
        "## Installation\n\nRun the installer, then:\n\nGetting Started\n- Clone the Repository\n- Copy `.env.example` to `.env`\n- Start Docker Compose\n\n## Project Structure\nSource Code\nUnit Tests\nIntegration Tests\n".to_owned(),
    ];
    let i = (r.next() % samples.len() as u64) as usize;
    samples[i].clone()
}

/// A user turn and an assistant turn of an agent session about code.
fn agent_turn(r: &mut Rng) -> String {
    let f = r.pick(FILES);
    let lang = r.pick(LANGS);
    let turns = [
        format!("Can you fix the failing test in {f}? It started after the last merge."),
        format!("I'll read {f} first, then run the {lang} tests to see the failure."),
        String::from("The test fails because `parse_header` returns None on empty input. I changed it to return an error and added a regression test named `empty_input_is_an_error`."),
        format!("Summary\n- Fixed the parser in {f}\n- Added Unit Tests\n- Updated Docs\n\nNext Steps\n- Run the Integration Tests\n- Review the Pull Request"),
        String::from("Please refactor the Payment Service so that the Retry Policy is configurable, and update the README."),
        String::from("Deploy to Staging Environment, then ping the On-Call Team in the Release Channel."),
    ];
    turns[(r.next() % turns.len() as u64) as usize].clone()
}

/// A generator of one source of harness text.
type Generator = fn(&mut Rng) -> String;

/// Personal-data kinds (rules and recogniser).
fn personal(k: Kind) -> bool {
    !k.is_secret()
}

#[test]
fn harness_texts_have_no_personal_data_findings() {
    let guard = Guard::new();
    let mut r = Rng(0x5eed_1234_abcd_0001);
    let sources: [(&str, Generator); 5] = [
        ("claude_code_like", claude_code_like),
        ("codex_like", codex_like),
        ("tool_schemas", tool_schemas),
        ("code_and_output", code_and_output),
        ("agent_turn", agent_turn),
    ];
    let per_source = 40;
    let mut flagged_texts = 0;
    let mut total = 0;
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    let mut examples: Vec<String> = Vec::new();
    println!("| source | texts | with a personal-data finding |\n| --- | ---: | ---: |");
    for (name, gen) in sources {
        let mut flagged = 0;
        for _ in 0..per_source {
            let text = gen(&mut r);
            let found: Vec<_> = guard.scan_uncached(&text).into_iter().filter(|f| personal(f.kind)).collect();
            total += 1;
            if !found.is_empty() {
                flagged += 1;
                for f in &found {
                    *by_kind.entry(f.kind.as_str()).or_default() += 1;
                    let e = format!("{name}: {} {:.2} {:?}", f.kind.as_str(), f.confidence, &text[f.span.clone()]);
                    if examples.len() < 200 && !examples.contains(&e) {
                        examples.push(e);
                    }
                }
            }
        }
        flagged_texts += flagged;
        println!("| {name} | {per_source} | {flagged} |");
    }
    println!("| all | {total} | {flagged_texts} ({:.1} %) |", 100.0 * flagged_texts as f64 / total as f64);
    println!("findings by kind: {by_kind:?}");
    for e in &examples {
        println!("  {e}");
    }
    assert_eq!(flagged_texts, 0, "harness texts with personal-data findings (listed above)");
}
