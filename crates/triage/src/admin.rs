//! `triage keys`, `triage spend` and `triage budgets`: administration on the ledger database.

use clap::{Args, Subcommand};
use triage_core::catalog::{BudgetPeriod, BudgetScope, Catalog};
use triage_core::cost::NanoUsd;
use triage_store::{BudgetStatus, GroupBy, NewKey, Report, Store};

/// `triage keys ...`.
#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a virtual key and print it (once: only its hash is stored).
    Create(CreateKey),
    /// List keys (ids, owners, limits; never the secrets).
    List,
    /// Revoke a key by id.
    Revoke {
        /// The key id (`key_...`), as `triage keys list` shows it.
        id: String,
    },
}

/// `triage keys create`.
#[derive(Args)]
pub struct CreateKey {
    /// The user the key belongs to.
    #[arg(long)]
    user: String,
    /// The user's team.
    #[arg(long, default_value = "default")]
    team: String,
    /// Budget of this key: `USD/day` or `USD/month`, e.g. `5/day`; repeatable.
    #[arg(long = "budget", value_name = "USD/PERIOD")]
    budgets: Vec<String>,
    /// Tiers the key may use, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    tiers: Vec<String>,
    /// Models the key may use, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// May read the spend report (`GET /v1/spend`).
    #[arg(long)]
    admin: bool,
}

/// `triage spend`.
#[derive(Args)]
pub struct SpendArgs {
    /// Group by day, user, team, tier or model.
    #[arg(long, default_value = "day")]
    by: String,
    /// Only requests since this date (YYYY-MM-DD) or time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// table, csv or json.
    #[arg(long, default_value = "table")]
    format: String,
}

async fn open(catalog: &Catalog) -> Result<Store, String> {
    let url = catalog.spend().database.as_deref().ok_or("no ledger database: set [spend] database in the config")?;
    Store::connect(url).await.map_err(|e| format!("{}: {e}", triage_store::redact_url(url)))
}

/// `triage budgets ...`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BudgetsArgs {
    /// What to do (default: show every budget of the current day and month).
    #[command(subcommand)]
    action: Option<BudgetsAction>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `triage budgets release`.
#[derive(Subcommand)]
pub enum BudgetsAction {
    /// Release a key's stale reservations: those held by gateways whose lease has expired (the
    /// running gateways' sweep does this too, within a lease); with `--all`, also those of
    /// requests still running (they settle their real cost when they end).
    Release {
        /// The key id (`key_...`), as `triage keys list` shows it.
        key: String,
        /// Also release reservations of live gateways.
        #[arg(long)]
        all: bool,
    },
}

/// The limit of a budget counter, from the config (`[[budgets]]`, `[evals]`) or the key.
fn limit_of(catalog: &Catalog, keys: &[triage_store::KeyRecord], s: &BudgetStatus) -> Option<NanoUsd> {
    let day = s.period == "day";
    match s.scope.as_str() {
        "key" => keys.iter().find(|k| k.id == s.subject).and_then(|k| if day { k.budget_day } else { k.budget_month }),
        "evals" => Some(catalog.evals().max_usd_per_day),
        scope => catalog
            .budgets()
            .iter()
            .filter(|b| matches!(b.period, BudgetPeriod::Day) == day)
            .filter(|b| b.tier.map(|t| catalog.tiers()[t].as_str()) == s.tier.as_deref())
            .find(|b| match &b.scope {
                BudgetScope::Global => scope == "global",
                BudgetScope::User(u) => scope == "user" && *u == s.subject,
                BudgetScope::Team(t) => scope == "team" && *t == s.subject,
            })
            .map(|b| b.limit),
    }
}

fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// Runs `triage budgets`.
///
/// Errors: a message for the user.
pub async fn budgets(catalog: &Catalog, a: BudgetsArgs) -> Result<(), String> {
    let store = open(catalog).await?;
    let now = triage_store::now_ms();
    match a.action {
        Some(BudgetsAction::Release { key, all }) => {
            let r = store.release_key(&key, all, now).await.map_err(|e| e.to_string())?;
            let what = if all { "reservations" } else { "stale reservations (held by stopped gateways)" };
            println!("released {} {what} of {key}: {} budget line(s), ${} in total", r.reservations, r.rows, r.amount);
            if r.reservations == 0 && !all {
                eprintln!("nothing stale; `--all` also releases reservations of requests still running");
            }
        }
        None => {
            let keys = store.list_keys().await.map_err(|e| e.to_string())?;
            let rows = store.budget_status(now).await.map_err(|e| e.to_string())?;
            if a.json {
                let v: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "scope": s.scope,
                            "subject": s.subject,
                            "tier": s.tier,
                            "period": s.period,
                            "period_start": s.period_start,
                            "limit_usd": limit_of(catalog, &keys, s).map(|l| l.to_string()),
                            "spent_usd": s.spent.to_string(),
                            "reserved_usd": s.reserved.to_string(),
                            "reservations": s.reservations,
                            "stale": s.stale,
                            "oldest_age_secs": s.oldest_ms.map(|t| now.saturating_sub(t) / 1000),
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
                return Ok(());
            }
            println!(
                "{:<7} {:<24} {:<9} {:<6} {:<10} {:>12} {:>12} {:>12} {:>5} {:>6} {:>5}",
                "SCOPE",
                "SUBJECT",
                "TIER",
                "PERIOD",
                "START",
                "LIMIT $",
                "SPENT $",
                "RESERVED $",
                "HELD",
                "OLDEST",
                "STALE"
            );
            for s in &rows {
                println!(
                    "{:<7} {:<24} {:<9} {:<6} {:<10} {:>12} {:>12} {:>12} {:>5} {:>6} {:>5}",
                    s.scope,
                    s.subject,
                    s.tier.as_deref().unwrap_or("-"),
                    s.period,
                    s.period_start,
                    limit_of(catalog, &keys, s).map_or("-".to_owned(), |l| l.to_string()),
                    s.spent.to_string(),
                    s.reserved.to_string(),
                    s.reservations,
                    s.oldest_ms.map_or("-".to_owned(), |t| age(now.saturating_sub(t))),
                    s.stale
                );
            }
        }
    }
    Ok(())
}

fn parse_budget(s: &str) -> Result<(NanoUsd, &str), String> {
    let (usd, period) = s.split_once('/').ok_or_else(|| format!("budget \"{s}\" must be USD/day or USD/month"))?;
    let usd: f64 =
        usd.trim_start_matches('$').parse().map_err(|_| format!("budget \"{s}\": \"{usd}\" is not an amount"))?;
    if !usd.is_finite() || usd < 0.0 {
        return Err(format!("budget \"{s}\" must be a non-negative amount"));
    }
    Ok((NanoUsd((usd * 1e9).round() as u64), period))
}

/// Runs a `triage keys` command.
///
/// Errors: a message for the user.
pub async fn keys(catalog: &Catalog, cmd: KeysCommand) -> Result<(), String> {
    let store = open(catalog).await?;
    match cmd {
        KeysCommand::Create(c) => {
            for t in &c.tiers {
                if catalog.tier_by_name(t).is_none() {
                    return Err(format!("unknown tier \"{t}\" (tiers: {})", catalog.tiers().join(", ")));
                }
            }
            for m in &c.models {
                if catalog.model_by_id(m).is_none() {
                    return Err(format!("unknown model \"{m}\""));
                }
            }
            let mut k = NewKey {
                user: c.user,
                team: c.team,
                tiers: c.tiers,
                models: c.models,
                admin: c.admin,
                ..Default::default()
            };
            for b in &c.budgets {
                match parse_budget(b)? {
                    (n, "day") => k.budget_day = Some(n),
                    (n, "month") => k.budget_month = Some(n),
                    (_, p) => return Err(format!("budget period \"{p}\" must be day or month")),
                }
            }
            let (rec, secret) = store.create_key(&k).await.map_err(|e| e.to_string())?;
            eprintln!("created {} for user {} (team {}); the key is shown once:", rec.id, rec.user, rec.team);
            println!("{secret}");
        }
        KeysCommand::List => {
            println!(
                "{:<22}  {:<16}  {:<12}  {:<14}  {:<14}  {:<5}  STATE",
                "ID", "USER", "TEAM", "DAY $", "MONTH $", "ADMIN"
            );
            for k in store.list_keys().await.map_err(|e| e.to_string())? {
                let money = |n: Option<NanoUsd>| n.map_or("-".to_owned(), |n| n.to_string());
                let state = if k.revoked { "revoked" } else { "active" };
                println!(
                    "{:<22}  {:<16}  {:<12}  {:<14}  {:<14}  {:<5}  {state}",
                    k.id,
                    k.user,
                    k.team,
                    money(k.budget_day),
                    money(k.budget_month),
                    k.admin
                );
            }
        }
        KeysCommand::Revoke { id } => {
            if !store.revoke_key(&id).await.map_err(|e| e.to_string())? {
                return Err(format!("no active key {id}"));
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}

/// Runs `triage spend`.
///
/// Errors: a message for the user.
pub async fn spend(catalog: &Catalog, a: SpendArgs) -> Result<(), String> {
    let by = GroupBy::parse(&a.by).ok_or_else(|| format!("--by {}: use day, user, team, tier or model", a.by))?;
    let store = open(catalog).await?;
    let report = Report::build(&store, by, a.since.as_deref()).await.map_err(|e| e.to_string())?;
    match a.format.as_str() {
        "table" => print!("{}", report.to_table()),
        "csv" => print!("{}", report.to_csv()),
        "json" => println!("{}", report.to_json()),
        f => return Err(format!("--format {f}: use table, csv or json")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_parse() {
        assert_eq!(parse_budget("5/day").unwrap(), (NanoUsd(5_000_000_000), "day"));
        assert_eq!(parse_budget("$0.25/month").unwrap(), (NanoUsd(250_000_000), "month"));
        assert!(parse_budget("5").is_err());
        assert!(parse_budget("-1/day").is_err());
    }
}
