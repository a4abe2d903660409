//! `plexus bench storm`: a reconnect storm. N real Rust clients (their own backoff, jitter
//! and recovery) subscribe to one channel while a publisher publishes at a fixed rate; a
//! command then drops them all at once (a server restart, a cut), and the run measures how
//! long until every client is back, what the server spent taking them back, and whether any
//! publication was lost or delivered twice to the application.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use plexus_client::{ChannelEvent, Client, ClientOptions, JoinOptions, Subscription};
use plexus_loadgen::cpu;
use serde_json::{Value, json};

/// Clients connecting (and joining) at once while the storm is set up.
const OPENING: usize = 256;
/// The longest wait for every client to be back, and for the deliveries to drain.
const BACK_WITHIN: Duration = Duration::from_secs(60);
const DRAIN_WITHIN: Duration = Duration::from_secs(20);
const CUT_WITHIN: Duration = Duration::from_secs(30);

/// What the storm is made of.
pub(crate) struct Storm {
    pub(crate) url: String,
    pub(crate) token: Option<String>,
    pub(crate) subscribers: usize,
    pub(crate) channel: String,
    /// Publications per second, throughout.
    pub(crate) rate: f64,
    /// Publishing before the cut, and after every client is back.
    pub(crate) before: Duration,
    pub(crate) after: Duration,
    /// The shell command that drops every connection (restarts the server, cuts the link);
    /// the server must come back with the channel's history (a Redis or NATS engine).
    pub(crate) cut: String,
    /// Where the cut command leaves the server's process id (the new one after a restart),
    /// for its CPU and memory.
    pub(crate) server_pid_file: Option<String>,
}

/// What one subscriber saw.
#[derive(Default)]
struct Tally {
    /// Publications delivered to the application, by offset: once each, or more.
    offsets: Bits,
    duplicate_offsets: u64,
    /// The publisher's sequence numbers delivered: a publication published twice (a retried
    /// publish) arrives as two offsets of one sequence number.
    seqs: Bits,
    duplicate_seqs: u64,
    back_after: Option<Duration>,
    unrecovered: u64,
    lagged: u64,
}

/// A set of numbers from the first one inserted on, at most [`Bits::SPAN`] of them (a run
/// publishes far fewer): what falls outside is not kept, and [`Bits::insert`] says so.
#[derive(Default)]
struct Bits {
    base: Option<u64>,
    words: Vec<u64>,
}

impl Bits {
    const SPAN: u64 = 1 << 24;

    /// Inserts `n`: `Some(false)` when it was there already, `None` when out of range.
    fn insert(&mut self, n: u64) -> Option<bool> {
        let base = *self.base.get_or_insert(n);
        let at = n.checked_sub(base).filter(|at| *at < Self::SPAN)?;
        let (word, bit) = ((at / 64) as usize, at % 64);
        if self.words.len() <= word {
            self.words.resize(word + 1, 0);
        }
        let seen = self.words[word] & (1 << bit) != 0;
        self.words[word] |= 1 << bit;
        Some(!seen)
    }

    /// How many of `from..=to` are in.
    fn count_in(&self, from: u64, to: u64) -> u64 {
        let Some(base) = self.base else { return 0 };
        (from.max(base)..=to)
            .filter(|n| {
                let at = n - base;
                self.words
                    .get((at / 64) as usize)
                    .is_some_and(|w| w & (1 << (at % 64)) != 0)
            })
            .count() as u64
    }
}

/// What the subscribers share with the run.
#[derive(Default)]
struct Shared {
    cut_at: OnceLock<Instant>,
    back: AtomicUsize,
    /// Each subscriber's last offset delivered.
    last: Vec<AtomicU64>,
    stop: AtomicBool,
}

impl Storm {
    pub(crate) async fn run(self) -> anyhow::Result<Value> {
        let n = self.subscribers.max(1);
        let shared = Arc::new(Shared {
            last: (0..n).map(|_| AtomicU64::new(0)).collect(),
            ..Shared::default()
        });
        let options = || {
            let options = ClientOptions::default().connect_timeout(Duration::from_secs(30));
            match &self.token {
                Some(token) => options.token(token.clone()),
                None => options,
            }
        };

        // Everyone subscribes.
        let started = Instant::now();
        let mut clients: Vec<Client> = Vec::with_capacity(n);
        let mut tasks = Vec::with_capacity(n);
        for first in (0..n).step_by(OPENING) {
            let opening = (first..(first + OPENING).min(n)).map(|index| {
                let (url, channel, options) = (&self.url, &self.channel, options());
                async move {
                    let client = plexus_client::connect(url, options).await?;
                    let subscription = client.join(channel, JoinOptions::default()).await?;
                    anyhow::Ok((index, client, subscription))
                }
            });
            for opened in futures_util::future::join_all(opening).await {
                let (index, client, subscription) = opened.context("a subscriber")?;
                clients.push(client);
                tasks.push(tokio::spawn(listen(index, subscription, shared.clone())));
            }
        }
        let subscribed_in = started.elapsed();
        eprintln!("{n} subscribers of {} in {subscribed_in:.1?}", self.channel);

        // The publisher, at the rate, throughout.
        let publisher = plexus_client::connect(&self.url, options()).await?;
        let published = Arc::new(Published::default());
        let publishing = tokio::spawn(publish(
            publisher.clone(),
            self.channel.clone(),
            self.rate,
            published.clone(),
            shared.clone(),
        ));
        let publishing_since = Instant::now();
        tokio::time::sleep(self.before).await;
        anyhow::ensure!(
            published.count.load(Ordering::Acquire) > 0,
            "no publication was accepted before the cut (can these clients publish to {}?)",
            self.channel
        );

        // The cut.
        eprintln!("cutting: {}", self.cut);
        shared.cut_at.set(Instant::now()).ok();
        let mut cut = tokio::process::Command::new("sh")
            .args(["-c", &self.cut])
            .stdin(Stdio::null())
            // Its output must not hold the figures' stdout open.
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot run the cut command")?;
        let status = tokio::time::timeout(CUT_WITHIN, cut.wait())
            .await
            .context("the cut command did not finish within 30 s")??;
        anyhow::ensure!(status.success(), "the cut command failed: {status}");
        let cut_at = *shared.cut_at.get().expect("set");
        let pid = match &self.server_pid_file {
            Some(file) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read {file}"))?
                    .trim()
                    .parse::<u32>()
                    .with_context(|| format!("{file} holds no process id"))?,
            ),
            None => None,
        };

        // Until everyone is back: the server's CPU, sampled every 100 ms.
        let mut peak_cpu_pct: f64 = 0.0;
        let mut sample = pid.and_then(|pid| cpu::cpu_ns(pid).map(|ns| (Instant::now(), ns)));
        let all_back = loop {
            if shared.back.load(Ordering::Acquire) >= n {
                break Some(cut_at.elapsed());
            }
            if cut_at.elapsed() > BACK_WITHIN {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let (Some(pid), Some((at, ns))) = (pid, sample)
                && let Some(now_ns) = cpu::cpu_ns(pid)
            {
                // A thread that ended takes its time with it: never below zero.
                let pct = now_ns.saturating_sub(ns) as f64 / at.elapsed().as_nanos() as f64 * 100.0;
                peak_cpu_pct = peak_cpu_pct.max(pct);
                sample = Some((Instant::now(), now_ns));
            }
        };
        let server_cpu_ms_to_back = pid.and_then(cpu::cpu_ns).map(|ns| ns / 1_000_000);
        eprintln!(
            "back: {} of {n} after {:.1?}",
            shared.back.load(Ordering::Acquire),
            cut_at.elapsed()
        );

        tokio::time::sleep(self.after).await;
        shared.stop.store(true, Ordering::Release);
        let _ = publishing.await;
        let published_for = publishing_since.elapsed();
        let (first, last, count) = (
            published.first.load(Ordering::Acquire),
            published.last.load(Ordering::Acquire),
            published.count.load(Ordering::Acquire),
        );
        anyhow::ensure!(count > 0, "no publication was accepted");
        // Until every subscriber has the last publication (or the wait ends).
        let drained = Instant::now();
        while shared.last.iter().any(|l| l.load(Ordering::Acquire) < last)
            && drained.elapsed() < DRAIN_WITHIN
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let peak_rss_kib = pid.and_then(cpu::peak_rss_kib);
        futures_util::future::join_all(clients.iter().map(Client::close)).await;
        publisher.close().await;

        let mut backs: Vec<u64> = Vec::with_capacity(n);
        let (mut delivered, mut duplicate_offsets, mut duplicate_seqs) = (0, 0, 0);
        let (mut unrecovered, mut lagged, mut not_back) = (0, 0, 0);
        for task in tasks {
            let tally = task.await.context("a subscriber")?;
            delivered += tally.offsets.count_in(first, last);
            duplicate_offsets += tally.duplicate_offsets;
            duplicate_seqs += tally.duplicate_seqs;
            unrecovered += tally.unrecovered;
            lagged += tally.lagged;
            match tally.back_after {
                Some(after) => backs.push(after.as_millis() as u64),
                None => not_back += 1,
            }
        }
        let expected = n as u64 * (last - first + 1);
        backs.sort_unstable();
        let quantile = |q: f64| {
            let at = ((backs.len() as f64 * q).ceil() as usize).clamp(1, backs.len().max(1));
            backs.get(at - 1).copied()
        };
        Ok(json!({
            "subscribers": n,
            "channel": self.channel,
            "rate": self.rate,
            "subscribed_in_ms": subscribed_in.as_millis() as u64,
            "all_back_ms": all_back.map(|d| d.as_millis() as u64),
            "back_p50_ms": quantile(0.5),
            "back_p99_ms": quantile(0.99),
            "back_max_ms": backs.last(),
            "not_back": not_back,
            "resubscribed_unrecovered": unrecovered,
            "lagged": lagged,
            "published": count,
            // Below `rate` when the machine cannot deliver rate × subscribers a second.
            "published_per_s": (count as f64 / published_for.as_secs_f64() * 10.0).round() / 10.0,
            "publish_failed": published.failed.load(Ordering::Acquire),
            "offsets": [first, last],
            "deliveries_expected": expected,
            "deliveries_lost": expected.saturating_sub(delivered),
            "duplicates_offset": duplicate_offsets,
            "duplicates_seq": duplicate_seqs,
            "server_peak_cpu_pct": pid.map(|_| (peak_cpu_pct * 10.0).round() / 10.0),
            "server_cpu_ms_until_all_back": server_cpu_ms_to_back,
            "server_peak_rss_mib": peak_rss_kib.map(|k| (k as f64 / 1024.0 * 10.0).round() / 10.0),
        }))
    }
}

/// What the publisher publishes.
#[derive(serde::Deserialize)]
struct Seq {
    seq: u64,
}

/// One subscriber: what it is delivered, until the run stops.
async fn listen(index: usize, mut subscription: Subscription, shared: Arc<Shared>) -> Tally {
    let mut tally = Tally::default();
    let mut lag_rejoin = false;
    // It ends when the run closes the client.
    loop {
        let event = subscription.next().await;
        match event {
            Some(ChannelEvent::Publication(publication)) => {
                if tally.offsets.insert(publication.offset) == Some(false) {
                    tally.duplicate_offsets += 1;
                }
                if let Ok(Seq { seq }) = publication.decode::<Seq>()
                    && tally.seqs.insert(seq) == Some(false)
                {
                    tally.duplicate_seqs += 1;
                }
                shared.last[index].fetch_max(publication.offset, Ordering::AcqRel);
            }
            Some(ChannelEvent::Resubscribed { recovered, .. }) => {
                if !recovered {
                    tally.unrecovered += 1;
                }
                // The join that follows a lag is not the reconnect.
                let after_lag = std::mem::take(&mut lag_rejoin);
                if let Some(cut) = shared.cut_at.get()
                    && tally.back_after.is_none()
                    && !after_lag
                {
                    tally.back_after = Some(cut.elapsed());
                    shared.back.fetch_add(1, Ordering::AcqRel);
                }
            }
            Some(ChannelEvent::Lagged { .. }) => {
                tally.lagged += 1;
                lag_rejoin = true;
            }
            Some(_) => {}
            None => return tally,
        }
    }
}

/// What the publisher's publications became.
struct Published {
    /// The offsets of the first and last accepted, and how many were.
    first: AtomicU64,
    last: AtomicU64,
    count: AtomicU64,
    /// Refused or unanswered within a second (the server down): never published.
    failed: AtomicU64,
}

impl Default for Published {
    fn default() -> Self {
        Self {
            first: AtomicU64::new(u64::MAX),
            last: AtomicU64::new(0),
            count: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }
}

/// Publishes `{"seq": n}` at `rate` until the run stops, counting into `published`.
async fn publish(
    client: Client,
    channel: String,
    rate: f64,
    published: Arc<Published>,
    shared: Arc<Shared>,
) {
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.01)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut in_flight = tokio::task::JoinSet::new();
    for seq in 0u64.. {
        ticks.tick().await;
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        let (client, channel, published) = (client.clone(), channel.clone(), published.clone());
        in_flight.spawn(async move {
            let sent = client
                .publish(&channel, &json!({ "seq": seq }))
                .timeout(Duration::from_secs(1))
                .await;
            match sent {
                Ok(position) => {
                    published.first.fetch_min(position.offset, Ordering::AcqRel);
                    published.last.fetch_max(position.offset, Ordering::AcqRel);
                    published.count.fetch_add(1, Ordering::AcqRel);
                }
                Err(_) => {
                    published.failed.fetch_add(1, Ordering::AcqRel);
                }
            }
        });
        // Bounded: at most a second's worth in flight (each has a 1 s deadline).
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
}
