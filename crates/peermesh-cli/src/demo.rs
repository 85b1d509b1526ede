//! `peermesh demo sync`: a host and bot clients over the in-memory network, with figures.

use std::time::Duration;

use anyhow::{bail, Context};

use crate::bench::parse_duration;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use peermesh_sync::demo::{self, Cut, DemoConfig, DemoReport};
use peermesh_sync::SyncConfig;
use serde_json::json;

pub(crate) const LONG_ABOUT: &str = "\
Run demonstrations of peermesh's parts in one process.

`peermesh demo sync` runs a sync session: a host simulating --entities entities at 60 ticks a \
second (half at rest, half walking at up to 10 m/s) and --clients bot clients that each own \
one entity, predict it from deterministic inputs, reconcile it against the host's state and \
interpolate everything else, over an in-memory network with the given round trip, jitter and \
loss, in virtual time. It prints a table per client (bytes per second, mispredictions, \
rollbacks, replayed ticks, input-buffer misses, interpolation error, resumes) and the cost of \
an initial sync of 10,000 entities and of a 15-tick replay. A run is a pure function of its \
flags (figures of CPU time aside).

Example: peermesh demo sync --clients 8 --entities 1000 --rtt 100ms --jitter 20ms --loss 2% --seed 1";

#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    #[command(subcommand)]
    what: DemoWhat,
}

#[derive(Subcommand, Debug)]
enum DemoWhat {
    /// A sync session: host, bot clients, in-memory network; prints a table per client.
    Sync(SyncArgs),
}

#[derive(Args, Debug)]
struct SyncArgs {
    /// Bot clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Host entities (each client adds its own).
    #[arg(long, default_value_t = 1000)]
    entities: u32,
    /// Round-trip time between the host and each client.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    rtt: Duration,
    /// Extra one-way delay, uniform between 0 and this.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    jitter: Duration,
    /// Datagrams lost each way, as a percentage ("2%") or a fraction ("0.02").
    #[arg(long, default_value = "2%", value_parser = parse_fraction)]
    loss: f64,
    /// Seed of everything random.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated time.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Cut client 0 off the network at this time for --cut-length (shows resume or resync).
    #[arg(long, value_parser = parse_duration)]
    cut_at: Option<Duration>,
    /// How long the cut lasts (a cut longer than the 30 s grace window ends in a resync).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    cut_length: Duration,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| format!("invalid loss {s:?}: expected e.g. 2% or 0.02"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("loss {s:?} must be between 0% and 100%"));
    }
    Ok(v)
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    match args.what {
        DemoWhat::Sync(a) => tokio::task::spawn_blocking(move || sync(a))
            .await
            .context("the demo stopped")?,
    }
}

fn sync(a: SyncArgs) -> anyhow::Result<()> {
    if a.clients == 0 || a.clients > 64 {
        bail!("--clients must be between 1 and 64");
    }
    if a.entities > 200_000 {
        bail!("--entities must be at most 200,000 (a full snapshot must fit 1,024 datagrams)");
    }
    let cfg = DemoConfig {
        clients: a.clients,
        entities: a.entities,
        rtt: a.rtt,
        jitter: a.jitter,
        loss: a.loss,
        duplicate: 0.0,
        reorder: 0.0,
        seed: a.seed,
        duration: a.duration,
        cut: a.cut_at.map(|at| Cut {
            client: 0,
            at,
            length: a.cut_length,
        }),
        scope_radius: None,
        sync: SyncConfig::default(),
    };
    let bar = ProgressBar::with_draw_target(
        Some(1000),
        if a.json {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] simulating {bar:30} {percent}%",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let report = demo::run(&cfg, |f| bar.set_position((f * 1000.0) as u64))
        .context("invalid session settings")?;
    bar.finish_and_clear();
    let initial = demo::initial_sync_figures(10_000, 5);
    let replay = demo::replay_figures(100, 15, 20);
    if a.json {
        println!("{}", to_json(&cfg, &report, &initial, replay));
    } else {
        print_table(&cfg, &report, &initial, replay);
    }
    Ok(())
}

fn to_json(
    cfg: &DemoConfig,
    r: &DemoReport,
    initial: &demo::InitialSyncFigures,
    replay: Duration,
) -> serde_json::Value {
    let clients: Vec<_> = r
        .clients
        .iter()
        .map(|c| {
            json!({
                "peer": c.peer,
                "bytes_per_s_down": c.bytes_per_s_down.round(),
                "bytes_per_s_up": c.bytes_per_s_up.round(),
                "bytes_per_entity_update": (c.bytes_per_entity_update * 100.0).round() / 100.0,
                "mispredictions": c.stats.mispredictions,
                "predictions_checked": c.stats.predictions_checked,
                "rollbacks": c.stats.rollbacks,
                "replayed_ticks": c.stats.replayed_ticks,
                "input_buffer_misses": c.host.input_misses,
                "inputs_due": c.host.inputs_due,
                "interp_error_p50_mm": c.interp_error_mm.0,
                "interp_error_p99_mm": c.interp_error_mm.1,
                "stale_frames": c.stale_frames,
                "resumes": c.stats.resumes,
                "resyncs": c.stats.resyncs,
                "full_snapshots": c.stats.full_snapshots,
                "matches_host": c.matches_host,
                "events": c.events,
            })
        })
        .collect();
    json!({
        "clients": clients,
        "entities": cfg.entities,
        "seconds": cfg.duration.as_secs_f64(),
        "host_tick": r.host_tick,
        "datagrams_sent": r.sent,
        "datagrams_lost": r.lost,
        "reference_bytes_per_s": {
            "raw_f32_every_entity": r.reference_bytes_per_s.0.round(),
            "quantised_every_entity": r.reference_bytes_per_s.1.round(),
        },
        "initial_sync": {
            "entities": initial.entities,
            "bytes": initial.bytes,
            "datagrams": initial.datagrams,
            "host_ms": initial.host_time.as_secs_f64() * 1000.0,
        },
        "replay_15_ticks_100_entities_ms": replay.as_secs_f64() * 1000.0,
    })
}

fn print_table(
    cfg: &DemoConfig,
    r: &DemoReport,
    initial: &demo::InitialSyncFigures,
    replay: Duration,
) {
    println!(
        "sync session: {} clients, {} entities, {:.0} s at 60 Hz, rtt {} ms, jitter {} ms, loss {:.1}% ({} of {} datagrams lost)",
        cfg.clients,
        cfg.entities,
        cfg.duration.as_secs_f64(),
        cfg.rtt.as_millis(),
        cfg.jitter.as_millis(),
        cfg.loss * 100.0,
        r.lost,
        r.sent
    );
    println!(
        "{:>4} {:>10} {:>8} {:>8} {:>9} {:>9} {:>8} {:>9} {:>14} {:>8} {:>6}",
        "peer",
        "down B/s",
        "up B/s",
        "B/update",
        "mispred",
        "rollbacks",
        "replayed",
        "inp.miss",
        "interp p50/p99",
        "resumes",
        "state"
    );
    for c in &r.clients {
        println!(
            "{:>4} {:>10.0} {:>8.0} {:>8.2} {:>9} {:>9} {:>8} {:>9} {:>14} {:>8} {:>6}",
            c.peer,
            c.bytes_per_s_down,
            c.bytes_per_s_up,
            c.bytes_per_entity_update,
            format!("{}/{}", c.stats.mispredictions, c.stats.predictions_checked),
            c.stats.rollbacks,
            c.stats.replayed_ticks,
            format!("{}/{}", c.host.input_misses, c.host.inputs_due),
            format!("{:.0}/{:.0} mm", c.interp_error_mm.0, c.interp_error_mm.1),
            format!("{}+{}", c.stats.resumes, c.stats.resyncs),
            if c.matches_host { "=host" } else { "DIFF" },
        );
    }
    let mean_down =
        r.clients.iter().map(|c| c.bytes_per_s_down).sum::<f64>() / r.clients.len().max(1) as f64;
    println!(
        "one client's stream, same states: raw f32 every entity {:.0} B/s, quantised every entity {:.0} B/s, peermesh (delta against the acknowledged state) {:.0} B/s",
        r.reference_bytes_per_s.0, r.reference_bytes_per_s.1, mean_down
    );
    println!(
        "initial sync of {} entities: {} bytes in {} datagrams, {:.2} ms of host CPU ({:.3} ms per 1,000)",
        initial.entities,
        initial.bytes,
        initial.datagrams,
        initial.host_time.as_secs_f64() * 1000.0,
        initial.host_time.as_secs_f64() * 1000.0 * 1000.0 / f64::from(initial.entities.max(1))
    );
    println!(
        "replay of 15 ticks for 100 predicted entities: {:.3} ms",
        replay.as_secs_f64() * 1000.0
    );
    println!("(resumes: resumed+resynced sessions; state: the client's newest state against the host's of that tick)");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_fraction("2%"), Ok(0.02));
        assert_eq!(parse_fraction("0.5"), Ok(0.5));
        assert!(parse_fraction("150%").unwrap_err().contains("between"));
        assert!(parse_fraction("x").is_err());
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert!(parse_duration("5h").unwrap_err().contains("unit"));
    }
}
