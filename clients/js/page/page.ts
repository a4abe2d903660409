// The page `plexus serve` shows at `/`: a dashboard read from the server's own `/metrics`
// (what an operator's Prometheus reads too) and `/health/cluster` (the live nodes), and a
// demo chat on `demo:chat`, built on the TypeScript client.

import { connect, type Client, type Member, type Subscription } from "../src/index.js";

const $ = (id: string) => document.getElementById(id) as HTMLElement;
const wsPath = document.querySelector<HTMLMetaElement>('meta[name="plexus-ws"]')?.content ?? "/ws";
const url = new URL(wsPath, location.href);
url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
const name = `guest-${Math.floor(Math.random() * 9000 + 1000)}`;

/** What the tests drive the page with. */
declare global {
  interface Window {
    plexus: { client?: Client; name: string; ready: Promise<void> };
  }
}

// ---------------------------------------------------------------- dashboard

/** Sums of the samples of each series in a Prometheus text exposition. */
function totals(text: string): Map<string, number> {
  const sums = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const space = line.lastIndexOf(" ");
    const value = Number(line.slice(space + 1));
    const series = line.slice(0, space).split("{")[0];
    if (series && Number.isFinite(value)) sums.set(series, (sums.get(series) ?? 0) + value);
  }
  return sums;
}

const latencies: number[] = [];
let previous: { at: number; sums: Map<string, number> } | undefined;

async function refresh(): Promise<void> {
  const response = await fetch("/metrics");
  if (!response.ok) {
    $("note").textContent = "Metrics are off on this server (metrics = false).";
    return;
  }
  const sums = totals(await response.text());
  const at = performance.now();
  const show = (id: string, value: number | undefined) =>
    ($(id).textContent = value === undefined ? "–" : String(Math.round(value)));
  show("connections", sums.get("plexus_connections_open"));
  show("subscriptions", sums.get("plexus_subscriptions"));
  show("providers", sums.get("plexus_relay_providers") ?? 0);
  if (previous) {
    const seconds = (at - previous.at) / 1000;
    // Never below zero: a restarted server starts its counters again.
    const rate = (series: string) =>
      Math.max(0, (sums.get(series) ?? 0) - (previous?.sums.get(series) ?? 0)) / seconds;
    show("calls", rate("plexus_calls_total"));
    show("publications", rate("plexus_publications_total"));
    const calls = rate("plexus_call_duration_seconds_count");
    const mean = calls > 0 ? (rate("plexus_call_duration_seconds_sum") / calls) * 1e6 : 0;
    $("latency").textContent = calls > 0 ? `${Math.round(mean)} µs` : "–";
    latencies.push(mean);
    if (latencies.length > 60) latencies.shift();
    // The latest second at the right edge, a minute across.
    const top = Math.max(1, ...latencies);
    const right = latencies.length - 1;
    const points = latencies.map((v, i) => `${120 - ((right - i) * 120) / 59},${58 - (v / top) * 54}`).join(" ");
    $("line").setAttribute("points", points);
  }
  previous = { at, sums };
}

interface Cluster {
  node: string;
  nodes: { node: string; relay: boolean; started_at: number }[];
}

/** The live nodes of the cluster, this one marked. */
async function refreshNodes(): Promise<void> {
  const response = await fetch("/health/cluster");
  if (!response.ok) return;
  const cluster = (await response.json()) as Cluster;
  const chips = cluster.nodes.map((node) => {
    const chip = document.createElement("span");
    chip.className = node.node === cluster.node ? "node self" : "node";
    chip.textContent = node.relay ? `${node.node} (relay)` : node.node;
    chip.title = `up since ${new Date(node.started_at).toLocaleString()}`;
    return chip;
  });
  $("nodes").replaceChildren(...chips);
}

// One poll at a time, a second apart: answers never arrive out of order.
async function poll(): Promise<void> {
  await Promise.all([refresh().catch(() => {}), refreshNodes().catch(() => {})]);
  setTimeout(() => void poll(), 1000);
}
void poll();

// ---------------------------------------------------------------- chat

function line(html: string, cls = "msg"): void {
  const messages = $("messages");
  const div = document.createElement("div");
  div.className = cls;
  div.innerHTML = html;
  messages.append(div);
  messages.scrollTop = messages.scrollHeight;
}

const escape = (text: unknown) =>
  String(text ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const members = new Map<string, Member>();
function showMembers(): void {
  const names = [...members.values()].map((m) => m.user ?? `conn ${m.conn.slice(-6)}`);
  $("members").textContent = `Here: ${names.join(", ") || "just you"}`;
}

/** A chat line from whatever anyone published (the channel is open to all). */
function said(offset: number, data: unknown): void {
  const d = typeof data === "object" && data !== null ? (data as { who?: unknown; text?: unknown }) : {};
  const who = typeof d.who === "string" ? d.who : "someone";
  const text = typeof d.text === "string" ? d.text : JSON.stringify(data);
  line(`<span class="o">#${offset}</span><span class="who">${escape(who)}</span>${escape(text)}`);
}

async function follow(room: Subscription): Promise<void> {
  for await (const event of room) {
    if (event.type === "publication") {
      said(event.offset, event.data);
    } else if (event.type === "join") {
      members.set(event.member.conn, event.member);
      showMembers();
    } else if (event.type === "leave") {
      members.delete(event.member.conn);
      showMembers();
    } else if (event.type === "resubscribed" && !event.recovered) {
      line("Some messages could not be recovered; reload to see them.", "sys");
    }
  }
}

let markReady: () => void = () => {};
window.plexus = { name, ready: new Promise((resolve) => (markReady = resolve)) };

async function start(): Promise<void> {
  const client = await connect(url.href);
  window.plexus.client = client;
  const status = $("status");
  const showStatus = (s: string) => {
    status.textContent = s;
    status.className = s;
  };
  showStatus(client.status);
  client.onStatus(showStatus);
  $("node").textContent = client.node ? `node ${client.node}` : "";
  // The history first, then a join from its position: nothing twice, nothing missed.
  const history = await client.history("demo:chat", { limit: 50 });
  for (const pub of history.pubs) said(pub.o, pub.d);
  // An empty history's position names no epoch of the channel: join from now then.
  const since = history.pubs.length > 0 ? { epoch: history.epoch, offset: history.offset } : undefined;
  const room = await client.join("demo:chat", since ? { since } : {});
  for (const member of await client.presence("demo:chat")) members.set(member.conn, member);
  showMembers();
  void follow(room);
  $("say").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("text") as HTMLInputElement;
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    client.publish("demo:chat", { who: name, text }).catch((e: Error) => line(escape(e.message), "sys"));
  });
  line(`You are ${escape(name)}.`, "sys");
  markReady();
}

start().catch((e: Error) => {
  $("status").textContent = "cannot connect";
  line(escape(e.message), "sys");
});
