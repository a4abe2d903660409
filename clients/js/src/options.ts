// What a client is told: how it connects, calls and reconnects, and the options of one call.

import type { ReconnectOptions } from "./backoff.js";
import type { MessagePack } from "./frames.js";
import type { WebSocketConstructor } from "./open.js";

/** How a client connects, calls and reconnects. */
export interface ClientOptions {
  /** The WebSocket implementation. Default: the global `WebSocket`, else the `ws` package. */
  WebSocket?: WebSocketConstructor;
  /**
   * Speak `plexus.v1.msgpack` with this MessagePack implementation (e.g.
   * `import { encode, decode } from "@msgpack/msgpack"`). Default: `plexus.v1.json`.
   */
  msgpack?: MessagePack;
  /** A static credential, sent as `tokenIn` says. */
  token?: string;
  /**
   * Fetches a credential before every connection attempt, and to answer the server's
   * `$refresh`; wins over `token`. `null` or `undefined`: connect without one.
   */
  credentials?: () => Promise<string | null | undefined> | string | null | undefined;
  /**
   * Where the credential goes: the `hello` frame (works everywhere), the URL's `?token=`, or
   * an `Authorization: Bearer` header. A header needs a WebSocket that takes headers, as
   * Node's `ws` does (pass it as `WebSocket` where a global one exists: browsers and Node
   * 22+ cannot send headers); a token a header cannot carry, or `helloData`, sends it in
   * `hello` instead. Default: a header where the WebSocket takes one (Node's `ws`, loaded by
   * the client under Node 20 or passed as `WebSocket`), else the `hello`.
   */
  tokenIn?: "hello" | "query" | "header";
  /** Application data for the server's authenticator (the `hello` frame's `data`). */
  helloData?: unknown;
  /** Default deadline of a request or a channel call, in ms (queued time included). Default 30000. */
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
  /** Calls, streams and notifications that may wait while disconnected. Default 1024. */
  offlineQueue?: number;
  /** Items a stream may have in transit (its credit window). Default 64. */
  streamWindow?: number;
  /** Events a subscription holds for a slow reader before it lags. Default 1024. */
  channelBuffer?: number;
  /** Calls from the server served at once. Default 1024. */
  maxServerCalls?: number;
  /**
   * Through a relay: provide these services as this node after every `welcome` (`$provide`;
   * a node id still held by this client's previous, half-open connection is asked again
   * with backoff). Serve their methods with `handle`, `handleStream`, `onNotification`.
   */
  provide?: { node: string; services: string[] };
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

