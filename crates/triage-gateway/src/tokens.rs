//! Exact token counts on the request path, kept off the async workers: the o200k tokenizer's
//! tables are built on a blocking thread the first time a count needs them, and counts run under
//! a permit (one per core). A leaf: it imports no other module of the gateway.

use triage_core::tokens::PromptSize;

/// Counts `size`'s prompt exactly (the first `server.max_tokenize_bytes` of it), once, without
/// stalling the async workers: the tokenizer's tables load on a blocking thread, at most one
/// count per core runs at a time (`slots`, the state's `count_slots`), and the count itself runs in
/// `block_in_place` (inline on a current-thread runtime, where there is no other worker to
/// starve). Returns at once when the prompt is already counted.
pub async fn count_prompt(slots: &tokio::sync::Semaphore, size: &PromptSize<'_>) {
    if size.is_counted() {
        return;
    }
    load_tokenizer().await;
    let _permit = slots.acquire().await;
    if tokio::runtime::Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
        tokio::task::block_in_place(|| {
            size.estimate();
        });
    } else {
        size.estimate();
    }
}

/// Makes sure the o200k tokenizer is loaded before a request counts tokens exactly, building its
/// tables (about 100 ms, once per process) on a blocking thread rather than on an async worker.
/// Returns at once when they are already loaded. If the blocking task fails, the count loads
/// them itself later, on the caller's thread.
pub async fn load_tokenizer() {
    if triage_core::tokens::is_loaded() {
        return;
    }
    if let Err(e) = tokio::task::spawn_blocking(triage_core::tokens::warm_up).await {
        tracing::warn!(error = %e, "loading the tokenizer on a blocking thread failed");
    }
}
