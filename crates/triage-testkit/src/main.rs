//! `triage-fake-upstream`: the fixed fake OpenAI-compatible upstream as a process, for the SDK
//! client tests and the load benchmark.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// A fast fake OpenAI-compatible upstream on loopback.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:9901")]
    listen: SocketAddr,
    /// Text pieces of a streamed answer.
    #[arg(long, default_value_t = 5)]
    chunks: usize,
    /// Milliseconds between streamed pieces.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Set TCP_NODELAY on accepted connections (off by default). Without it, the first small
    /// streamed event after the headers can wait for a delayed ACK (about 40 ms on Linux
    /// loopback), which puts a floor under the time to first token.
    #[arg(long)]
    tcp_nodelay: bool,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let app = triage_testkit::fixed::app(triage_testkit::fixed::Fixed {
        chunks: args.chunks,
        chunk_delay: Duration::from_millis(args.chunk_delay_ms),
    });
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!("fake upstream listening on http://{}/v1", listener.local_addr()?);
    if args.tcp_nodelay {
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        return axum::serve(listener, app).await;
    }
    axum::serve(listener, app).await
}
