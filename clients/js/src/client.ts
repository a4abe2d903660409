// The client: one WebSocket at a time to a plexus server, reconnected with backoff; calls in
// both directions over it, and channels joined again (recovering what was missed) after each
// reconnect.

import { type Backoff, backoff, delay, shouldReconnect } from "./backoff.js";
import { type JoinOptions, type Member, Subscription } from "./channel.js";
import { ConnectError, type ErrorBody, PlexusError } from "./errors.js";
import { type Codec, type Frame, json, msgpack, type Position, type Wire } from "./frames.js";
import {
  type CallContext,
  type Handlers,
  Incoming,
  type NotificationHandler,
  type RequestHandler,
  type StreamHandler,
} from "./incoming.js";
import { type Attempt, type Opened, openSocket, type WebSocketConstructor, type WebSocketLike } from "./open.js";
import type { CallOptions, ClientOptions, StreamOptions } from "./options.js";
import { type ProviderInfo, type ServiceWatchItem, waitForService } from "./mesh.js";
import { type ServerChannelEvent, ServerChannels } from "./server-channels.js";
import { CallStream } from "./stream.js";
import { type Contract, type ContractImplementation, type ContractStub, type MethodTypes, stub } from "./contract.js";

/** Where the client stands. */
export type Status = "connecting" | "connected" | "reconnecting" | "closed";

type Pending =
  | {
      kind: "call";
      wire: Wire;
      sent: boolean;
      resolve: (value: unknown) => void;
      reject: (error: PlexusError) => void;
      done: () => void;
    }
  | { kind: "stream"; wire: Wire; stream: CallStream<unknown> }
  | { kind: "join"; sub: Subscription; since: Position | undefined };

interface Session {
  ws: WebSocketLike;
  incoming: Incoming;
  heartbeat: number;
  lastHeard: number;
  pinged: boolean;
  timer: ReturnType<typeof setInterval> | undefined;
}

const OPEN = 1;

/** Codes that end a refused re-join for good; others (`UNAVAILABLE`, …) are retried. */
const FINAL_REFUSALS = new Set(["FORBIDDEN", "NOT_FOUND", "NOT_AUTHORIZED", "BAD_FRAME"]);

/** Connects to the plexus server at `url`; resolves once the first session is open. */
export async function connect(url: string, options: ClientOptions = {}): Promise<Client> {
  const client = new Client(url, options);
  await client.ready;
  return client;
}

/** A plexus client. Use {@link connect}, or construct it and await {@link Client.ready}. */
export class Client {
  readonly url: string;
  /** Resolves when the first session opens; rejects if the client gives up before. */
  readonly ready: Promise<void>;
  /** The connection id the server gave the current session. */
  conn: string | undefined;
  /** The node holding the current session. */
  node: string | undefined;
  /** Why the client stopped, once `closed`. */
  closeReason: ConnectError | undefined;

  readonly #options: ClientOptions;
  readonly #codec: Codec;
  readonly #backoff: Backoff;
  readonly #handlers: Handlers = { requests: new Map(), notifications: new Map(), streams: new Map() };
  readonly #pending = new Map<number, Pending>();
  readonly #channels = new Map<string, Subscription>();
  readonly #server: ServerChannels;
  readonly #statusListeners = new Set<(status: Status) => void>();
  readonly #errorListeners = new Set<(error: PlexusError) => void>();
  readonly #providedListeners = new Set<(outcome: { node: string } | PlexusError) => void>();
  /** Ids of calls and streams, and encoded notifications, waiting for a session. */
  #offline: (number | Wire)[] = [];
  #session: Session | undefined;
  #status: Status = "connecting";
  #nextId = 1;
  #closing = false;
  #settleReady: { resolve: () => void; reject: (e: unknown) => void } | undefined;
  /** The attempt in progress and the backoff sleep, so that `close()` can stop them. */
  #attempt: Attempt | undefined;
  #sleep: { timer: ReturnType<typeof setTimeout>; wake: () => void } | undefined;

  constructor(url: string, options: ClientOptions = {}) {
    this.url = url;
    if (options.tokenIn === "header" && !options.WebSocket && "WebSocket" in globalThis) {
      // The global WebSocket (browsers, Node 22+) takes no headers: the credential would be
      // dropped on the floor.
      throw new PlexusError(
        "VALIDATION_ERROR",
        'tokenIn: "header" needs a WebSocket that takes headers: pass Node\'s `ws` as options.WebSocket',
      );
    }
    this.#options = options;
    this.#codec = options.msgpack ? msgpack(options.msgpack) : json;
    this.#backoff = backoff(options.reconnect);
    this.#server = new ServerChannels(options.channelBuffer ?? 1024);
    this.#handlers.requests.set("$refresh", () => this.#freshToken());
    this.ready = new Promise((resolve, reject) => (this.#settleReady = { resolve, reject }));
    this.ready.catch(() => {}); // awaited by `connect`; unobserved otherwise
    void this.#supervise();
  }

  /** The current status. */
  get status(): Status {
    return this.#status;
  }

  /** Calls `listener` on every status change; returns a function that stops it. */
  onStatus(listener: (status: Status) => void): () => void {
    this.#statusListeners.add(listener);
    return () => this.#statusListeners.delete(listener);
  }

  /** Calls `listener` with each error the server reports without an id (a notification's). */
  onError(listener: (error: PlexusError) => void): () => void {
    this.#errorListeners.add(listener);
    return () => this.#errorListeners.delete(listener);
  }

  /**
   * With `options.provide`: calls `listener` with the outcome of each `$provide` (after
   * every `welcome`): `{node}`, or the relay's refusal.
   */
  onProvided(listener: (outcome: { node: string } | PlexusError) => void): () => void {
    this.#providedListeners.add(listener);
    return () => this.#providedListeners.delete(listener);
  }

  /** Through a relay: the live providers now. */
  services(): Promise<ProviderInfo[]> {
    return this.request<ProviderInfo[]>("$services");
  }

  /** Through a relay: the providers now (the first item), then each change. */
  watchServices(options: StreamOptions = {}): CallStream<ServiceWatchItem> {
    return this.stream<ServiceWatchItem>("$watch", null, options);
  }

  /** Through a relay: resolves once a provider serves `service` (see {@link waitForService}). */
  waitForService(service: string, options: { timeout?: number; signal?: AbortSignal } = {}): Promise<void> {
    return waitForService(this, service, { timeout: this.#options.callTimeout, ...options });
  }

  /** Serves requests `method` from the server (`$refresh` included, replacing the built-in). */
  handle(method: string, handler: RequestHandler): this {
    this.#handlers.requests.set(method, handler);
    return this;
  }

  /** Serves notifications `method` from the server. */
  onNotification(method: string, handler: NotificationHandler): this {
    this.#handlers.notifications.set(method, handler);
    return this;
  }

  /** Serves streams `method` the server opens: each item the iterable yields is sent. */
  handleStream(method: string, handler: StreamHandler): this {
    this.#handlers.streams.set(method, handler);
    return this;
  }

  /**
   * Typed calls of a contract the server serves, from the descriptor `plexus codegen ts`
   * generates: `client.contract(Chat).send({ text: "hi" })` type-checks the params and the
   * result. A method's own timeout is its calls' default.
   */
  contract<M extends { [method: string]: MethodTypes }>(contract: Contract<M, "server">): ContractStub<M> {
    return stub(this, contract);
  }

  /**
   * Serves a contract the server calls on this client, one typed handler per method (a
   * request's handler answers, a stream's yields its items). Throws, serving none of them,
   * on a method already served (by another contract or a handler): never a silent override.
   */
  serve<M extends { [method: string]: MethodTypes }>(
    contract: Contract<M, "client">,
    implementation: ContractImplementation<M>,
  ): this {
    const { requests, notifications, streams } = this.#handlers;
    const served = Object.entries(contract.methods).map(([key, method]) => {
      const { name, kind } = method as Contract["methods"][string];
      const handler = (implementation as unknown as Record<string, (params: unknown, ctx: CallContext) => never>)[key];
      if (typeof handler !== "function") throw new TypeError(`${contract.name}: no handler for \`${key}\``);
      if (requests.has(name) || notifications.has(name) || streams.has(name)) {
        throw new Error(`\`${name}\` is served already: two contracts (or a handler) serve it`);
      }
      return { name, kind, handler: handler.bind(implementation) };
    });
    for (const { name, kind, handler } of served) {
      if (kind === "request") this.handle(name, handler);
      else if (kind === "notification") this.onNotification(name, handler);
      else this.handleStream(name, handler);
    }
    return this;
  }

  /** Calls `method` and resolves with its result, or rejects with a {@link PlexusError}. */
  request<T = unknown>(method: string, params?: unknown, options: CallOptions = {}): Promise<T> {
    const frame: Frame = { t: "req", id: 0, m: method, d: params ?? null };
    if (options.node !== undefined) frame.node = options.node;
    return this.#call(frame, options) as Promise<T>;
  }

  /**
   * Sends a notification. While disconnected it waits in the offline queue; a full queue
   * throws `QUEUE_FULL`, params JSON cannot encode throw `VALIDATION_ERROR`.
   */
  notify(method: string, params?: unknown, options: { node?: string } = {}): void {
    this.#ensureOpen();
    const frame: Frame = { t: "ntf", m: method, d: params ?? null };
    if (options.node !== undefined) frame.node = options.node;
    const wire = this.#encodeOrThrow(frame);
    if (this.#session) return this.#sendWire(wire);
    if (!this.#enqueue(wire)) throw new PlexusError("QUEUE_FULL", "the offline queue is full");
  }

  /** Opens stream `method`: iterate its items; `break` or the signal cancels it. */
  stream<T = unknown>(method: string, params?: unknown, options: StreamOptions = {}): CallStream<T> {
    this.#ensureOpen();
    const window = Math.max(1, this.#options.streamWindow ?? 64);
    const stream = new CallStream<T>(window);
    const signal = options.signal;
    if (signal?.aborted) {
      stream.finish(new PlexusError("CANCELLED", "cancelled by the application"));
      return stream;
    }
    const id = this.#id();
    const frame: Frame = { t: "sub", id, m: method, d: params ?? null, credit: window };
    if (options.node !== undefined) frame.node = options.node;
    const wire = this.#encodeOrThrow(frame);
    const onAbort = () => stream.cancel();
    this.#pending.set(id, { kind: "stream", wire, stream: stream as CallStream<unknown> });
    stream.attach({
      credit: (n) => this.#session && this.#send({ t: "credit", id, n }),
      cancel: () => {
        if (!this.#pending.delete(id)) return;
        if (!this.#dequeue(id) && this.#session) this.#send({ t: "cancel", id });
      },
      finished: () => signal?.removeEventListener("abort", onAbort),
    });
    signal?.addEventListener("abort", onAbort, { once: true });
    if (this.#session) this.#sendWire(wire);
    else if (!this.#enqueue(id)) {
      this.#pending.delete(id);
      stream.finish(new PlexusError("QUEUE_FULL", "the offline queue is full"));
    }
    return stream;
  }

  /**
   * Joins `channel`; resolves with the subscription once the server has answered (a join made
   * while disconnected is sent when the next session opens).
   */
  join(channel: string, options: JoinOptions = {}): Promise<Subscription> {
    if (this.#status === "closed") return Promise.reject(new PlexusError("CLOSED", "the client is closed"));
    if (this.#channels.has(channel)) {
      return Promise.reject(new PlexusError("CONFLICT", `\`${channel}\` is joined already`));
    }
    const sub: Subscription = new Subscription(channel, options, this.#options.channelBuffer ?? 1024, {
      rejoin: (): void => this.#join(sub),
      leave: (): Promise<void> => this.#leave(sub),
    });
    this.#channels.set(channel, sub);
    return new Promise((resolve, reject) => {
      sub.onFirst = (error) => {
        if (!error) return resolve(sub);
        if (this.#channels.get(channel) === sub) this.#channels.delete(channel);
        reject(error);
      };
      this.#join(sub);
    });
  }

  /** Publishes `data` to `channel`; its position. */
  publish(channel: string, data: unknown, options: CallOptions = {}): Promise<Position> {
    return this.#call({ t: "pub", id: 0, ch: channel, d: data ?? null }, options) as Promise<Position>;
  }

  /** The members of `channel` now. */
  presence(channel: string): Promise<Member[]> {
    return this.request<Member[]>("$presence", { ch: channel });
  }

  /** The publications `channel`'s history holds (after `since`, at most `limit`). */
  history(
    channel: string,
    options: { since?: Position; limit?: number } = {},
  ): Promise<{ epoch: string; offset: number; pubs: { o: number; d: unknown }[] }> {
    return this.request("$history", { ch: channel, ...options });
  }

  /**
   * Channels the server subscribes this connection to itself (`joined`), with their events,
   * as `{channel, event}`; one reader at a time.
   */
  serverSubscriptions(): AsyncIterableIterator<ServerChannelEvent> {
    return this.#server.iterator();
  }

  /** Closes the connection (1000) and stops reconnecting; calls waiting fail with `CLOSED`. */
  close(): void {
    if (this.#closing) return;
    this.#closing = true;
    this.#session?.ws.close(1000, "");
    this.#attempt?.abandon();
    if (this.#sleep) {
      clearTimeout(this.#sleep.timer);
      this.#sleep.wake();
    }
    this.#finish(new ConnectError("closed by the application"));
  }

  // ---------------------------------------------------------------- calls

  #id(): number {
    const id = this.#nextId;
    this.#nextId = id >= Number.MAX_SAFE_INTEGER ? 1 : id + 1;
    return id;
  }

  #ensureOpen(): void {
    if (this.#status === "closed") throw new PlexusError("CLOSED", "the client is closed");
  }

  /** A call answered by one `res` or `err` (request, publication, leave). */
  #call(frame: Frame, options: CallOptions): Promise<unknown> {
    if (this.#status === "closed") {
      return Promise.reject(new PlexusError("CLOSED", "the client is closed"));
    }
    const id = this.#id();
    frame.id = id;
    let wire: Wire;
    try {
      wire = this.#encodeOrThrow(frame);
    } catch (error) {
      return Promise.reject(error);
    }
    return new Promise((resolve, reject) => {
      const timeout = options.timeout ?? this.#options.callTimeout ?? 30_000;
      const timer = setTimeout(() => fail(new PlexusError("TIMEOUT", `no answer within ${timeout} ms`)), timeout);
      const onAbort = () => fail(new PlexusError("CANCELLED", "cancelled by the application"));
      const done = () => {
        clearTimeout(timer);
        options.signal?.removeEventListener("abort", onAbort);
      };
      const fail = (error: PlexusError) => {
        const pending = this.#pending.get(id);
        if (!pending || pending.kind !== "call") return;
        this.#pending.delete(id);
        done();
        if (pending.sent) {
          if (this.#session) this.#send({ t: "cancel", id });
        } else this.#dequeue(id);
        reject(error);
      };
      const pending: Pending = { kind: "call", wire, sent: false, resolve, reject, done };
      this.#pending.set(id, pending);
      if (options.signal?.aborted) return onAbort();
      options.signal?.addEventListener("abort", onAbort, { once: true });
      if (this.#session) {
        pending.sent = true;
        this.#sendWire(wire);
      } else if (!this.#enqueue(id)) {
        fail(new PlexusError("QUEUE_FULL", "the offline queue is full"));
      }
    });
  }

  /** Queues a call id or an encoded notification until a session opens; `false` when full. */
  #enqueue(item: number | Wire): boolean {
    if (this.#offline.length >= (this.#options.offlineQueue ?? 1024)) return false;
    this.#offline.push(item);
    return true;
  }

  /** Takes call `id` out of the offline queue; whether it was there. */
  #dequeue(id: number): boolean {
    const at = this.#offline.indexOf(id);
    if (at >= 0) this.#offline.splice(at, 1);
    return at >= 0;
  }

  #send(frame: Frame): void {
    this.#sendWire(this.#codec.encode(frame));
  }

  #sendWire(wire: Wire): void {
    const ws = this.#session?.ws;
    if (ws && ws.readyState === OPEN) ws.send(wire);
  }

  /** `frame` encoded, or a `VALIDATION_ERROR` for values the codec cannot hold (a cycle…). */
  #encodeOrThrow(frame: Frame): Wire {
    try {
      return this.#codec.encode(frame);
    } catch (error) {
      throw new PlexusError("VALIDATION_ERROR", `the params cannot be encoded: ${String(error)}`);
    }
  }

  // ---------------------------------------------------------------- channels

  /** Sends `join` for `sub`, from its last position when it has one. */
  #join(sub: Subscription): void {
    if (!this.#session || sub.closed) return;
    clearTimeout(sub.retryTimer);
    sub.retryTimer = undefined;
    const id = this.#id();
    const since = sub.position;
    const frame: Frame = { t: "join", id, ch: sub.channel };
    if (since) frame.since = since;
    if (sub.filter !== undefined) frame.filter = sub.filter;
    if (sub.joining) this.#pending.delete(sub.joinId); // its answer is stale now
    sub.joining = true;
    sub.joinId = id;
    this.#pending.set(id, { kind: "join", sub, since });
    this.#send(frame);
  }

  /** The answer to join `id`: joined, or refused. */
  #joinAnswered(sub: Subscription, since: Position | undefined, answer: { ok: unknown } | { error: PlexusError }) {
    sub.joining = false;
    if ("ok" in answer) {
      const d = answer.ok as { epoch: string; offset: number; recovered: boolean };
      sub.joined({ epoch: d.epoch, offset: d.offset }, d.recovered, since);
      const first = sub.onFirst;
      sub.onFirst = undefined;
      first?.();
      return;
    }
    const error = answer.error;
    if (!sub.onFirst && !FINAL_REFUSALS.has(error.code)) {
      // A re-join refused for a while (the server's cluster link, a limit): try again later.
      sub.retries += 1;
      sub.retryTimer = setTimeout(() => this.#join(sub), delay(this.#backoff, sub.retries - 1));
      return;
    }
    const first = sub.onFirst;
    sub.onFirst = undefined;
    first?.(error);
    if (this.#channels.get(sub.channel) === sub) this.#channels.delete(sub.channel);
    sub.close(error);
  }

  async #leave(sub: Subscription): Promise<void> {
    if (this.#channels.get(sub.channel) === sub) this.#channels.delete(sub.channel);
    if (sub.joining) this.#pending.delete(sub.joinId);
    clearTimeout(sub.retryTimer);
    if (this.#session) {
      await this.#call({ t: "leave", id: 0, ch: sub.channel }, {}).catch(() => {});
    }
  }

  /** `left`: the server lost continuity (join again, recovering) or ended it. */
  #left(frame: Frame): void {
    const channel = frame.ch ?? "";
    const error = frame.e ? PlexusError.from(frame.e) : undefined;
    const sub = this.#channels.get(channel);
    if (!sub) return this.#server.left(channel, error);
    // A join in flight answers for the channel's state after this `left`.
    if (sub.joining) return;
    if (error?.code === "UNAVAILABLE") return this.#join(sub);
    this.#channels.delete(channel);
    sub.close(error);
  }

  // ---------------------------------------------------------------- connection

  #setStatus(status: Status): void {
    if (this.#status === status) return;
    this.#status = status;
    for (const listener of this.#statusListeners) {
      try {
        listener(status);
      } catch {
        // A listener's failure is its own; the client goes on.
      }
    }
  }

  async #supervise(): Promise<void> {
    let failures = 0;
    let connectedOnce = false;
    while (!this.#closing) {
      this.#setStatus(connectedOnce ? "reconnecting" : "connecting");
      let ended: ConnectError;
      try {
        const opened = await this.#open();
        connectedOnce = true;
        const since = Date.now();
        ended = await this.#runSession(opened);
        failures = Date.now() - since < this.#backoff.maxDelay ? failures + 1 : 0;
      } catch (error) {
        ended = error instanceof ConnectError ? error : new ConnectError(String(error));
        failures += 1;
      }
      if (this.#closing) break;
      const code = ended.closeCode;
      const refused = code !== undefined && !shouldReconnect(code);
      const retryCredential = code === 4001 && this.#options.credentials !== undefined;
      const giveUp =
        (refused && !retryCredential) ||
        !this.#backoff.enabled ||
        (this.#backoff.maxAttempts !== null ? failures >= this.#backoff.maxAttempts : !connectedOnce);
      if (giveUp) return this.#finish(ended);
      await new Promise<void>((wake) => {
        this.#sleep = { timer: setTimeout(wake, delay(this.#backoff, failures - 1)), wake };
      });
      this.#sleep = undefined;
    }
  }

  /**
   * The WebSocket to open with, and whether it takes headers: Node's `ws` does (known by its
   * `terminate`, which browsers' WebSocket lacks; subclasses included); the global one of
   * browsers and Node 22+, and anything else, are not trusted to.
   */
  async #webSocket(): Promise<{ WS: WebSocketConstructor; takesHeaders: boolean }> {
    const global = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    const given = this.#options.WebSocket;
    if (given) return { WS: given, takesHeaders: typeof given.prototype?.terminate === "function" };
    if (global) return { WS: global, takesHeaders: false };
    const name = "ws"; // Node without a global WebSocket (before 22)
    try {
      const WS = ((await import(name)) as { default: WebSocketConstructor }).default;
      return { WS, takesHeaders: true };
    } catch {
      throw new ConnectError("no WebSocket implementation: install the `ws` package");
    }
  }

  /** One attempt: open, `hello`, `welcome` (or `reject`), within the connect timeout. */
  async #open(): Promise<Opened> {
    const { WS, takesHeaders } = await this.#webSocket();
    const token = this.#options.credentials
      ? ((await this.#options.credentials()) ?? undefined)
      : this.#options.token;
    if (this.#closing) throw new ConnectError("closed by the application");
    let url = this.url;
    const tokenIn = this.#options.tokenIn ?? (takesHeaders ? "header" : "hello");
    let hello: Frame | undefined = { t: "hello" };
    let headers: Record<string, string> | undefined;
    if (token !== undefined && tokenIn === "query") {
      url += `${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
    } else if (token !== undefined && tokenIn === "header" && headerWorthy(token, this.#options)) {
      // The server welcomes a credential in the upgrade at once: no `hello` then.
      headers = { authorization: `Bearer ${token}` };
      hello = undefined;
    } else if (token !== undefined) hello.token = token;
    if (hello && this.#options.helloData !== undefined) hello.data = this.#options.helloData;
    const timeout = this.#options.connectTimeout ?? 10_000;
    const attempt = openSocket(WS, this.#codec, url, { hello, headers }, timeout);
    this.#attempt = attempt;
    try {
      return await attempt.opened;
    } finally {
      this.#attempt = undefined;
    }
  }

  /** Runs an open session until its socket ends; what ended it. */
  #runSession(opened: Opened): Promise<ConnectError> {
    const { ws, welcome } = opened;
    this.conn = welcome.conn;
    this.node = welcome.node;
    const session: Session = {
      ws,
      incoming: new Incoming(this.#handlers, (f) => this.#send(f), this.#options.maxServerCalls ?? 1024),
      heartbeat: welcome.heartbeat ?? 25_000,
      lastHeard: Date.now(),
      pinged: false,
      timer: undefined,
    };
    this.#session = session;
    return new Promise<ConnectError>((ended) => {
      let over = false;
      const end = (error: ConnectError) => {
        if (over) return;
        over = true;
        if (session.timer) clearInterval(session.timer);
        ws.onmessage = null;
        ws.onclose = null;
        if (this.#session === session) this.#session = undefined;
        this.#sessionEnded(session);
        if (!this.#closing) this.#setStatus("reconnecting");
        ended(error);
      };
      const onMessage = (event: { data: unknown }) => {
        session.lastHeard = Date.now();
        session.pinged = false;
        const frame = this.#codec.decode(event.data);
        if (frame) this.#dispatch(session, frame);
        else this.#send({ t: "err", e: { code: "BAD_FRAME", message: "not a frame of this codec" } });
      };
      const onClose = (event: { code: number; reason: string }) =>
        end(new ConnectError(`connection closed (${event.code}) ${event.reason}`.trim(), event.code));
      ws.onmessage = onMessage;
      ws.onclose = onClose;
      if (session.heartbeat > 0) {
        // Browsers hide WebSocket pings: the client asks with an application `ping` when it
        // has heard nothing for a heartbeat, and drops a connection silent past the grace
        // at once (a close handshake with a peer that is gone would wait for nothing).
        const grace = this.#options.heartbeatGrace ?? 10_000;
        session.timer = setInterval(() => {
          const silent = Date.now() - session.lastHeard;
          if (silent >= session.heartbeat + grace) {
            ws.close(4002, "no traffic from the server");
            (ws as { terminate?: () => void }).terminate?.();
            end(new ConnectError("no traffic from the server (half-open)", 4002));
          } else if (silent >= session.heartbeat && !session.pinged) {
            session.pinged = true;
            this.#send({ t: "ping" });
          }
        }, Math.max(100, Math.min(session.heartbeat, grace) / 2));
      }
      this.#setStatus("connected");
      this.#settleReady?.resolve();
      this.#settleReady = undefined;
      if (this.#options.provide) this.#provide(session, 0);
      for (const sub of this.#channels.values()) this.#join(sub);
      const queued = this.#offline;
      this.#offline = [];
      for (const item of queued) {
        if (typeof item !== "number") {
          this.#sendWire(item);
          continue;
        }
        const pending = this.#pending.get(item);
        if (pending?.kind === "call") pending.sent = true;
        if (pending && pending.kind !== "join") this.#sendWire(pending.wire);
      }
      // What came right after `welcome`, then its close if it came too.
      for (const event of opened.early) if (!over) onMessage(event);
      if (opened.earlyClose) onClose(opened.earlyClose);
    });
  }

  /** After a session: what was sent fails (never resent), the server's calls stop. */
  #sessionEnded(session: Session): void {
    session.incoming.abortAll();
    const lost = new PlexusError("UNAVAILABLE", "the connection was lost");
    for (const [id, pending] of this.#pending) {
      if (pending.kind === "call" && pending.sent) {
        this.#pending.delete(id);
        pending.done();
        pending.reject(lost);
      } else if (pending.kind === "stream" && !this.#offline.includes(id)) {
        this.#pending.delete(id);
        pending.stream.finish(lost);
      } else if (pending.kind === "join") {
        // Joined again (with its `onFirst`, if still unanswered) when the next session opens.
        this.#pending.delete(id);
        pending.sub.joining = false;
      }
    }
    this.#server.sessionEnded();
  }

  #finish(reason: ConnectError): void {
    this.closeReason = reason;
    this.#closing = true;
    this.#setStatus("closed");
    this.#settleReady?.reject(reason);
    this.#settleReady = undefined;
    const closed = new PlexusError("CLOSED", "the client is closed");
    for (const pending of this.#pending.values()) {
      if (pending.kind === "call") {
        pending.done();
        pending.reject(closed);
      } else if (pending.kind === "stream") pending.stream.finish(closed);
    }
    this.#pending.clear();
    this.#offline = [];
    for (const sub of this.#channels.values()) {
      const first = sub.onFirst;
      sub.onFirst = undefined;
      first?.(closed);
      sub.close(closed);
    }
    this.#channels.clear();
    this.#server.end();
  }

  // ---------------------------------------------------------------- frames in

  #dispatch(session: Session, frame: Frame): void {
    const { t, id } = frame;
    switch (t) {
      case "res":
      case "err":
        if (id === undefined) {
          if (t === "err") this.#reportError(frame.e);
          return;
        }
        return this.#answer(id, t === "res" ? { ok: frame.d ?? null } : { error: PlexusError.from(frame.e) });
      case "item": {
        const pending = id === undefined ? undefined : this.#pending.get(id);
        if (pending?.kind === "stream") pending.stream.push(frame.d ?? null);
        return;
      }
      case "end": {
        const pending = id === undefined ? undefined : this.#pending.get(id);
        if (pending?.kind === "stream") {
          this.#pending.delete(id as number);
          pending.stream.finish();
        }
        return;
      }
      case "msg": {
        const channel = frame.ch ?? "";
        const sub = this.#channels.get(channel);
        if (sub) return sub.publication(frame.o ?? 0, frame.d ?? null);
        return this.#server.publication(channel, frame.o ?? 0, frame.d ?? null);
      }
      case "pjoin":
      case "pleave": {
        const type = t === "pjoin" ? "join" : "leave";
        const channel = frame.ch ?? "";
        const sub = this.#channels.get(channel);
        if (sub) return sub.presence(type, frame.d as Member);
        return this.#server.presence(channel, type, frame.d as Member);
      }
      case "joined": {
        const d = frame.d as { epoch: string; offset: number; recovered: boolean };
        return this.#server.joined(frame.ch ?? "", { epoch: d.epoch, offset: d.offset }, d.recovered);
      }
      case "left":
        return this.#left(frame);
      case "req":
        return session.incoming.request(id ?? 0, frame.m ?? "", frame.d ?? null);
      case "ntf":
        return session.incoming.notification(frame.m ?? "", frame.d ?? null);
      case "sub":
        return session.incoming.stream(id ?? 0, frame.m ?? "", frame.d ?? null, frame.credit);
      case "cancel":
        return session.incoming.cancel(id ?? 0);
      case "credit":
        return session.incoming.credit(id ?? 0, frame.n ?? 0);
      case "ping":
        return this.#send({ t: "pong" });
      default:
        return; // pong, and frame types this client does not know
    }
  }

  #answer(id: number, answer: { ok: unknown } | { error: PlexusError }): void {
    const pending = this.#pending.get(id);
    if (!pending) return;
    this.#pending.delete(id);
    if (pending.kind === "call") {
      pending.done();
      if ("ok" in answer) pending.resolve(answer.ok);
      else pending.reject(answer.error);
    } else if (pending.kind === "stream") {
      pending.stream.finish("error" in answer ? answer.error : undefined);
    } else if (pending.sub.joinId === id) {
      this.#joinAnswered(pending.sub, pending.since, answer);
    }
  }

  /** `$provide` on `session`; a node id still held (`CONFLICT`) is asked again with backoff. */
  #provide(session: Session, retries: number): void {
    const provide = this.#options.provide;
    if (!provide || this.#session !== session) return;
    this.request<{ node: string }>("$provide", provide).then(
      (provided) => this.#provided(provided),
      (error: PlexusError) => {
        if (error.code === "CONFLICT" && this.#session === session) {
          setTimeout(() => this.#provide(session, retries + 1), delay(this.#backoff, retries));
        }
        this.#provided(error);
      },
    );
  }

  #provided(outcome: { node: string } | PlexusError): void {
    for (const listener of this.#providedListeners) {
      try {
        listener(outcome);
      } catch {
        // A listener's failure is its own.
      }
    }
  }

  /** The server's `$refresh`: a fresh credential from the hook. */
  async #freshToken(): Promise<{ token: string }> {
    const token = this.#options.credentials ? await this.#options.credentials() : undefined;
    if (!token) throw new PlexusError("UNAVAILABLE", "no credential available");
    return { token };
  }

  #reportError(body: ErrorBody | undefined): void {
    const error = PlexusError.from(body);
    for (const listener of this.#errorListeners) {
      try {
        listener(error);
      } catch {
        // A listener's failure is its own.
      }
    }
  }
}

/**
 * Whether `token` goes in a header: one the server reads there (1 to 16 KiB of visible ASCII)
 * and no `helloData` to carry (only a `hello` frame carries it). Otherwise it goes in
 * `hello`, which takes any token.
 */
function headerWorthy(token: string, options: ClientOptions): boolean {
  return options.helloData === undefined && token.length <= 16 * 1024 && /^[\x21-\x7e]+$/.test(token);
}
