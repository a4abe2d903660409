// The client: one WebSocket at a time to a plexus server, reconnected with backoff; calls in
// both directions over it, and channels joined again (recovering what was missed) after each
// reconnect.

import { type Backoff, backoff, delay, type ReconnectOptions, shouldReconnect } from "./backoff.js";
import { type ChannelEvent, type JoinOptions, type Member, Subscription } from "./channel.js";
import { ConnectError, type ErrorBody, PlexusError } from "./errors.js";
import { decode, encode, type Frame, type Position, SUBPROTOCOL } from "./frames.js";
import {
  type Handlers,
  Incoming,
  type NotificationHandler,
  type RequestHandler,
  type StreamHandler,
} from "./incoming.js";
import { CallStream } from "./stream.js";

/** Where the client stands. */
export type Status = "connecting" | "connected" | "reconnecting" | "closed";

/** The part of the WebSocket API the client uses (browsers' `WebSocket`, Node's `ws`). */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol: string;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

/** A WebSocket constructor: the global one, `ws`'s, or your own. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** How a client connects, calls and reconnects. */
export interface ClientOptions {
  /** The WebSocket implementation. Default: the global `WebSocket`, else the `ws` package. */
  WebSocket?: WebSocketConstructor;
  /** A static credential, sent in the `hello` frame (or the URL, see `tokenInQuery`). */
  token?: string;
  /**
   * Fetches a credential before every connection attempt, and to answer the server's
   * `$refresh`; wins over `token`. `null` or `undefined`: connect without one.
   */
  credentials?: () => Promise<string | null | undefined> | string | null | undefined;
  /** Send the credential as `?token=` in the URL instead of in the `hello` frame. */
  tokenInQuery?: boolean;
  /** Application data for the server's authenticator (the `hello` frame's `data`). */
  helloData?: unknown;
  /** Default deadline of a request, in ms (queued time included). Default 30000. */
  callTimeout?: number;
  /** Deadline of one connection attempt (open, hello, welcome), in ms. Default 10000. */
  connectTimeout?: number;
  /** Reconnecting: exponential backoff with full jitter. */
  reconnect?: ReconnectOptions;
  /**
   * How long past the server's heartbeat interval the client waits, hearing nothing, before
   * it treats the connection as half-open and reconnects, in ms. Default 10000.
   */
  heartbeatGrace?: number;
  /** Calls and notifications that may wait while disconnected. Default 1024. */
  offlineQueue?: number;
  /** Items a stream may have in transit (its credit window). Default 64. */
  streamWindow?: number;
  /** Events a subscription holds for a slow reader before it lags. Default 1024. */
  channelBuffer?: number;
  /** Calls from the server served at once. Default 1024. */
  maxServerCalls?: number;
}

/** Per-call options. */
export interface CallOptions {
  /** Deadline in ms (default: the client's `callTimeout`). */
  timeout?: number;
  /** Aborting it cancels the call (`cancel` is sent if it was). */
  signal?: AbortSignal;
  /** Through a relay: the provider node that must take the call. */
  node?: string;
}

/** Options of a stream. */
export interface StreamOptions {
  /** Aborting it cancels the stream. */
  signal?: AbortSignal;
  /** Through a relay: the provider node that must take the call. */
  node?: string;
}

/** What a subscription of the server's own making (`joined`) delivers, by channel. */
export interface ServerChannelEvent {
  channel: string;
  event: ChannelEvent | { type: "subscribed"; position: Position; recovered: boolean };
}

type Pending =
  | {
      kind: "call";
      frame: Frame;
      sent: boolean;
      resolve: (value: unknown) => void;
      reject: (error: PlexusError) => void;
      done: () => void;
    }
  | { kind: "stream"; frame: Frame; stream: CallStream<unknown> }
  | { kind: "join"; sub: Subscription; since: Position | undefined; first: (e?: PlexusError) => void };

interface Session {
  ws: WebSocketLike;
  incoming: Incoming;
  heartbeat: number;
  lastHeard: number;
  pinged: boolean;
  timer: ReturnType<typeof setInterval> | undefined;
}

const OPEN = 1;

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
  readonly #backoff: Backoff;
  readonly #handlers: Handlers = { requests: new Map(), notifications: new Map(), streams: new Map() };
  readonly #pending = new Map<number, Pending>();
  readonly #channels = new Map<string, Subscription>();
  readonly #statusListeners = new Set<(status: Status) => void>();
  /** Ids of calls, and notification frames, waiting for a session. */
  #offline: (number | Frame)[] = [];
  #session: Session | undefined;
  #status: Status = "connecting";
  #nextId = 1;
  #closing = false;
  #settleReady: { resolve: () => void; reject: (e: unknown) => void } | undefined;
  #serverEvents: ServerChannelEvent[] = [];
  #serverWaiter: ((r: IteratorResult<ServerChannelEvent>) => void) | undefined;
  #serverPositions = new Map<string, Position>();

  constructor(url: string, options: ClientOptions = {}) {
    this.url = url;
    this.#options = options;
    this.#backoff = backoff(options.reconnect);
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

  /** Serves requests `method` from the server. */
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

  /** Calls `method` and resolves with its result, or rejects with a {@link PlexusError}. */
  request<T = unknown>(method: string, params?: unknown, options: CallOptions = {}): Promise<T> {
    const frame: Frame = { t: "req", id: 0, m: method, d: params ?? null };
    if (options.node !== undefined) frame.node = options.node;
    return this.#call(frame, options) as Promise<T>;
  }

  /**
   * Sends a notification. While disconnected it waits in the offline queue; a full queue
   * throws `QUEUE_FULL`.
   */
  notify(method: string, params?: unknown, options: { node?: string } = {}): void {
    this.#ensureOpen();
    const frame: Frame = { t: "ntf", m: method, d: params ?? null };
    if (options.node !== undefined) frame.node = options.node;
    if (this.#session) return this.#send(frame);
    this.#enqueue(frame);
  }

  /** Opens stream `method`: iterate its items; `break` or the signal cancels it. */
  stream<T = unknown>(method: string, params?: unknown, options: StreamOptions = {}): CallStream<T> {
    this.#ensureOpen();
    const window = Math.max(1, this.#options.streamWindow ?? 64);
    const stream = new CallStream<T>(window);
    const id = this.#id();
    const frame: Frame = { t: "sub", id, m: method, d: params ?? null, credit: window };
    if (options.node !== undefined) frame.node = options.node;
    this.#pending.set(id, { kind: "stream", frame, stream: stream as CallStream<unknown> });
    stream.attach({
      credit: (n) => this.#session && this.#send({ t: "credit", id, n }),
      cancel: () => {
        if (this.#pending.delete(id) && this.#session) this.#send({ t: "cancel", id });
      },
    });
    const signal = options.signal;
    if (signal?.aborted) stream.cancel();
    signal?.addEventListener("abort", () => stream.cancel(), { once: true });
    if (this.#session) this.#send(frame);
    else if (!this.#enqueue(id, false)) {
      this.#pending.delete(id);
      stream.finish(new PlexusError("QUEUE_FULL", "the offline queue is full"));
    }
    return stream;
  }

  /** Joins `channel`; resolves with the subscription once the server has answered. */
  join(channel: string, options: JoinOptions = {}): Promise<Subscription> {
    this.#ensureOpen();
    if (this.#channels.has(channel)) {
      return Promise.reject(new PlexusError("CONFLICT", `\`${channel}\` is joined already`));
    }
    const sub: Subscription = new Subscription(channel, options, this.#options.channelBuffer ?? 1024, {
      rejoin: (): void => this.#join(sub),
      leave: (): Promise<void> => this.#leave(sub),
    });
    this.#channels.set(channel, sub);
    return new Promise((resolve, reject) => {
      this.#join(sub, (error) => {
        if (!error) return resolve(sub);
        this.#channels.delete(channel);
        reject(error);
      });
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
    const self = this;
    return {
      next(): Promise<IteratorResult<ServerChannelEvent>> {
        const event = self.#serverEvents.shift();
        if (event) return Promise.resolve({ value: event, done: false });
        if (self.#status === "closed") return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => (self.#serverWaiter = resolve));
      },
      return(): Promise<IteratorResult<ServerChannelEvent>> {
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }

  /** Closes the connection (1000) and stops reconnecting; calls waiting fail with `CLOSED`. */
  close(): void {
    if (this.#closing) return;
    this.#closing = true;
    this.#session?.ws.close(1000, "");
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

  /** A call answered by one `res` or `err` (request, publication). */
  #call(frame: Frame, options: CallOptions): Promise<unknown> {
    if (this.#status === "closed") {
      return Promise.reject(new PlexusError("CLOSED", "the client is closed"));
    }
    const id = this.#id();
    frame.id = id;
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
        if (!pending) return;
        this.#pending.delete(id);
        done();
        if (pending.kind === "call" && pending.sent && this.#session) this.#send({ t: "cancel", id });
        reject(error);
      };
      this.#pending.set(id, { kind: "call", frame, sent: false, resolve, reject, done });
      if (options.signal?.aborted) return onAbort();
      options.signal?.addEventListener("abort", onAbort, { once: true });
      if (this.#session) {
        (this.#pending.get(id) as { sent: boolean }).sent = true;
        this.#send(frame);
      } else if (!this.#enqueue(id)) {
        fail(new PlexusError("QUEUE_FULL", "the offline queue is full"));
      }
    });
  }

  /** Queues a call id or a notification until a session opens; `false` when full. */
  #enqueue(item: number | Frame, throwWhenFull = true): boolean {
    if (this.#offline.length >= (this.#options.offlineQueue ?? 1024)) {
      if (typeof item !== "number" && throwWhenFull) {
        throw new PlexusError("QUEUE_FULL", "the offline queue is full");
      }
      return false;
    }
    this.#offline.push(item);
    return true;
  }

  #send(frame: Frame): void {
    const ws = this.#session?.ws;
    if (ws && ws.readyState === OPEN) ws.send(encode(frame));
  }

  // ---------------------------------------------------------------- channels

  /** Sends `join` for `sub`, from its last position when it has one. */
  #join(sub: Subscription, first?: (error?: PlexusError) => void): void {
    if (!this.#session || sub.closed) return;
    const id = this.#id();
    const since = sub.position;
    const frame: Frame = { t: "join", id, ch: sub.channel };
    if (since) frame.since = since;
    if (sub.filter !== undefined) frame.filter = sub.filter;
    sub.joining = true;
    this.#pending.set(id, { kind: "join", sub, since, first: first ?? (() => {}) });
    this.#send(frame);
  }

  async #leave(sub: Subscription): Promise<void> {
    this.#channels.delete(sub.channel);
    if (this.#session) {
      await this.#call({ t: "leave", id: 0, ch: sub.channel }, {}).catch(() => {});
    }
  }

  #serverEvent(event: ServerChannelEvent): void {
    if (this.#serverWaiter) {
      const waiter = this.#serverWaiter;
      this.#serverWaiter = undefined;
      waiter({ value: event, done: false });
    } else if (this.#serverEvents.length < (this.#options.channelBuffer ?? 1024)) {
      this.#serverEvents.push(event);
    }
  }

  // ---------------------------------------------------------------- connection

  #setStatus(status: Status): void {
    if (this.#status === status) return;
    this.#status = status;
    for (const listener of this.#statusListeners) listener(status);
  }

  async #supervise(): Promise<void> {
    let failures = 0;
    let connectedOnce = false;
    while (!this.#closing) {
      this.#setStatus(connectedOnce ? "reconnecting" : "connecting");
      let ended: ConnectError;
      try {
        const ws = await this.#open();
        if (this.#closing) {
          ws.close(1000, "");
          break;
        }
        connectedOnce = true;
        const opened = Date.now();
        ended = await this.#runSession(ws);
        failures = Date.now() - opened < this.#backoff.maxDelay ? failures + 1 : 0;
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
        (this.#backoff.maxAttempts !== null
          ? failures >= this.#backoff.maxAttempts
          : !connectedOnce);
      if (giveUp) {
        this.#finish(ended);
        return;
      }
      await new Promise((wake) => setTimeout(wake, delay(this.#backoff, failures - 1)));
    }
  }

  async #webSocket(): Promise<WebSocketConstructor> {
    if (this.#options.WebSocket) return this.#options.WebSocket;
    const global = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (global) return global;
    const name = "ws"; // Node without a global WebSocket (before 22)
    try {
      return ((await import(name)) as { default: WebSocketConstructor }).default;
    } catch {
      throw new ConnectError("no WebSocket implementation: install the `ws` package");
    }
  }

  /** One attempt: open, `hello`, `welcome` (or `reject`), within the connect timeout. */
  async #open(): Promise<WebSocketLike> {
    const WS = await this.#webSocket();
    const token = this.#options.credentials
      ? ((await this.#options.credentials()) ?? undefined)
      : this.#options.token;
    let url = this.url;
    if (token !== undefined && this.#options.tokenInQuery) {
      url += `${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
    }
    const ws = new WS(url, [SUBPROTOCOL]);
    return await new Promise<WebSocketLike>((resolve, reject) => {
      let rejectReason: ErrorBody | undefined;
      const timer = setTimeout(() => {
        ws.close(1000, "");
        reject(new ConnectError("no welcome within the connect timeout"));
      }, this.#options.connectTimeout ?? 10_000);
      ws.onopen = () => {
        const hello: Frame = { t: "hello" };
        if (token !== undefined && !this.#options.tokenInQuery) hello.token = token;
        if (this.#options.helloData !== undefined) hello.data = this.#options.helloData;
        ws.send(encode(hello));
      };
      ws.onmessage = (event) => {
        const frame = typeof event.data === "string" ? decode(event.data) : undefined;
        if (frame?.t === "welcome") {
          clearTimeout(timer);
          this.conn = frame.conn;
          this.node = frame.node;
          this.#session = {
            ws,
            incoming: new Incoming(this.#handlers, (f) => this.#send(f), this.#options.maxServerCalls ?? 1024),
            heartbeat: frame.heartbeat ?? 0,
            lastHeard: Date.now(),
            pinged: false,
            timer: undefined,
          };
          resolve(ws);
        } else if (frame?.t === "reject") {
          rejectReason = frame.e;
        }
      };
      ws.onerror = () => {};
      ws.onclose = (event) => {
        clearTimeout(timer);
        const reason = rejectReason?.message ?? event.reason;
        reject(new ConnectError(`connection closed (${event.code}) ${reason}`.trim(), event.code, rejectReason));
      };
    });
  }

  /** Runs an open session until its socket ends; what ended it. */
  #runSession(ws: WebSocketLike): Promise<ConnectError> {
    const session = this.#session as Session;
    return new Promise<ConnectError>((ended) => {
      let over = false;
      const end = (error: ConnectError) => {
        if (over) return;
        over = true;
        if (session.timer) clearInterval(session.timer);
        ws.onmessage = null;
        ws.onclose = null;
        // Before the calls it had fail, so that their handlers see the client as it is.
        if (!this.#closing) this.#setStatus("reconnecting");
        this.#sessionEnded(session);
        ended(error);
      };
      ws.onmessage = (event) => {
        session.lastHeard = Date.now();
        session.pinged = false;
        if (typeof event.data !== "string") return;
        const frame = decode(event.data);
        if (frame) this.#dispatch(session, frame);
        else this.#send({ t: "err", e: { code: "BAD_FRAME", message: "not a JSON frame" } });
      };
      ws.onclose = (event) => {
        end(new ConnectError(`connection closed (${event.code}) ${event.reason}`.trim(), event.code));
      };
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
      for (const sub of this.#channels.values()) this.#join(sub);
      const queued = this.#offline;
      this.#offline = [];
      for (const item of queued) {
        if (typeof item !== "number") {
          this.#send(item);
          continue;
        }
        const pending = this.#pending.get(item);
        if (pending?.kind === "call") pending.sent = true;
        if (pending && pending.kind !== "join") this.#send(pending.frame);
      }
    });
  }

  /** After a session: what was sent fails (never resent), the server's calls stop. */
  #sessionEnded(session: Session): void {
    if (this.#session === session) this.#session = undefined;
    session.incoming.abortAll();
    const lost = new PlexusError("UNAVAILABLE", "the connection was lost");
    for (const [id, pending] of this.#pending) {
      if (pending.kind === "call" && pending.sent) {
        this.#pending.delete(id);
        pending.done();
        pending.reject(lost);
      } else if (pending.kind === "stream") {
        this.#pending.delete(id);
        pending.stream.finish(lost);
      } else if (pending.kind === "join") {
        this.#pending.delete(id);
        pending.sub.joining = false;
      }
    }
    for (const channel of this.#serverPositions.keys()) {
      this.#serverEvent({ channel, event: { type: "closed" } });
    }
    this.#serverPositions.clear();
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
    for (const sub of this.#channels.values()) sub.close(closed);
    this.#channels.clear();
    if (this.#serverWaiter) this.#serverWaiter({ value: undefined, done: true });
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
        const sub = this.#channels.get(frame.ch ?? "");
        if (sub) return sub.publication(frame.o ?? 0, frame.d ?? null);
        return this.#serverPublication(frame);
      }
      case "pjoin":
      case "pleave": {
        const event = t === "pjoin" ? "join" : "leave";
        const member = frame.d as Member;
        const sub = this.#channels.get(frame.ch ?? "");
        if (sub) return sub.presence(event, member);
        if (this.#serverPositions.has(frame.ch ?? "")) {
          this.#serverEvent({ channel: frame.ch ?? "", event: { type: event, member } });
        }
        return;
      }
      case "joined": {
        const d = frame.d as { epoch: string; offset: number; recovered: boolean };
        const channel = frame.ch ?? "";
        this.#serverPositions.set(channel, { epoch: d.epoch, offset: d.offset });
        this.#serverEvent({
          channel,
          event: { type: "subscribed", position: { epoch: d.epoch, offset: d.offset }, recovered: d.recovered },
        });
        return;
      }
      case "left":
        return this.#left(frame);
      case "req":
        if (frame.m === "$refresh" && !this.#handlers.requests.has("$refresh")) {
          return this.#refresh(id ?? 0);
        }
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
    } else if ("ok" in answer) {
      const d = answer.ok as { epoch: string; offset: number; recovered: boolean };
      pending.sub.joined({ epoch: d.epoch, offset: d.offset }, d.recovered, pending.since);
      pending.first();
    } else {
      // Refused (a first join, or a later one after the permissions changed): it ends.
      pending.sub.joining = false;
      pending.first(answer.error);
      if (this.#channels.get(pending.sub.channel) === pending.sub) {
        this.#channels.delete(pending.sub.channel);
      }
      pending.sub.close(answer.error);
    }
  }

  /** A publication of a channel the server subscribed this connection to. */
  #serverPublication(frame: Frame): void {
    const channel = frame.ch ?? "";
    const position = this.#serverPositions.get(channel);
    if (!position || (frame.o ?? 0) <= position.offset) return;
    position.offset = frame.o ?? 0;
    this.#serverEvent({ channel, event: { type: "publication", offset: position.offset, data: frame.d ?? null } });
  }

  /** `left`: the server lost continuity (join again, recovering) or ended it. */
  #left(frame: Frame): void {
    const channel = frame.ch ?? "";
    const error = frame.e ? PlexusError.from(frame.e) : undefined;
    const sub = this.#channels.get(channel);
    if (sub) {
      if (error?.code === "UNAVAILABLE") return this.#join(sub);
      this.#channels.delete(channel);
      sub.close(error);
      return;
    }
    if (this.#serverPositions.delete(channel)) {
      this.#serverEvent({ channel, event: error ? { type: "closed", error } : { type: "closed" } });
    }
  }

  /** The server's `$refresh`: a fresh credential from the hook (or the static token). */
  #refresh(id: number): void {
    const fetch = this.#options.credentials ?? (() => this.#options.token);
    Promise.resolve()
      .then(fetch)
      .then(
        (token) =>
          this.#send(
            token
              ? { t: "res", id, d: { token } }
              : { t: "err", id, e: { code: "UNAVAILABLE", message: "no credential available" } },
          ),
        () => this.#send({ t: "err", id, e: { code: "UNAVAILABLE", message: "no credential available" } }),
      );
  }

  #reportError(body: ErrorBody | undefined): void {
    this.#errorListeners.forEach((listener) => listener(PlexusError.from(body)));
  }

  readonly #errorListeners = new Set<(error: PlexusError) => void>();

  /** Calls `listener` with each error the server reports without an id (a notification's). */
  onError(listener: (error: PlexusError) => void): () => void {
    this.#errorListeners.add(listener);
    return () => this.#errorListeners.delete(listener);
  }
}
