// One connection attempt (PROTOCOL.md §4): open the socket, say `hello`, wait for `welcome`
// or `reject`, within a deadline. What arrives after `welcome` before the session takes the
// socket over is kept for it: Node's WebSocket implementations deliver every message of one
// read at once, and the server may call or subscribe the client right after `welcome`.

import { ConnectError, type ErrorBody } from "./errors.js";
import type { Codec, Frame, Wire } from "./frames.js";

/** The part of the WebSocket API the client uses (browsers' `WebSocket`, Node's `ws`). */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol: string;
  /** Set to `"arraybuffer"` for MessagePack, where the implementation has it. */
  binaryType?: string;
  send(data: Wire): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

/**
 * A WebSocket constructor: the global one, `ws`'s, or your own. A third argument
 * `{headers}` is passed only for a credential in a header (`ws` takes it).
 */
export type WebSocketConstructor = new (
  url: string,
  protocols?: string | string[],
  options?: { headers: Record<string, string> },
) => WebSocketLike;

/** What an attempt says first: a `hello` frame, or (a credential in a header) nothing. */
export interface Greeting {
  hello: Frame | undefined;
  headers: Record<string, string> | undefined;
}

/**
 * An HTTP refusal of the upgrade, where the implementation says which (Node's `ws` reports
 * "Unexpected server response: 401"), as the close code that means the same: 401 as 4001,
 * 403 as 4003. Browsers do not say.
 */
function refusal(event: unknown): number | undefined {
  const message = String((event as { message?: unknown } | null)?.message ?? "");
  const status = /Unexpected server response: (\d{3})/.exec(message)?.[1];
  if (status === "401") return 4001;
  if (status === "403") return 4003;
  return undefined;
}

/** An open session's socket, its `welcome`, and what came after it. */
export interface Opened {
  ws: WebSocketLike;
  welcome: Frame;
  /** Messages after `welcome`, in order, and the close if it came too. */
  early: { data: unknown }[];
  earlyClose: { code: number; reason: string } | undefined;
}

export interface Attempt {
  /** Settles with the session, or a ConnectError. */
  opened: Promise<Opened>;
  /** Gives the attempt up (the client is closing). */
  abandon(): void;
}

export function openSocket(
  WS: WebSocketConstructor,
  codec: Codec,
  url: string,
  greeting: Greeting,
  timeout: number,
): Attempt {
  const { hello, headers } = greeting;
  const ws = headers ? new WS(url, [codec.subprotocol], { headers }) : new WS(url, [codec.subprotocol]);
  if ("binaryType" in ws) ws.binaryType = "arraybuffer";
  let abandon = () => {};
  const opened = new Promise<Opened>((resolve, reject) => {
    let rejectReason: ErrorBody | undefined;
    const fail = (error: ConnectError) => {
      clearTimeout(timer);
      ws.onopen = ws.onmessage = ws.onclose = null;
      reject(error);
    };
    const timer = setTimeout(() => {
      ws.close(1000, "");
      fail(new ConnectError("no welcome within the connect timeout"));
    }, timeout);
    abandon = () => {
      ws.close(1000, "");
      fail(new ConnectError("closed by the application"));
    };
    let refused: number | undefined;
    ws.onerror = (event) => {
      refused ??= refusal(event);
    };
    ws.onopen = () => {
      if (hello) ws.send(codec.encode(hello));
    };
    ws.onmessage = (event) => {
      const frame = codec.decode(event.data);
      if (frame?.t === "welcome") {
        clearTimeout(timer);
        const session: Opened = { ws, welcome: frame, early: [], earlyClose: undefined };
        ws.onmessage = (later) => session.early.push(later);
        ws.onclose = (closed) => (session.earlyClose = closed);
        resolve(session);
      } else if (frame?.t === "reject") {
        rejectReason = frame.e;
      }
    };
    ws.onclose = (event) => {
      if (refused !== undefined) {
        // The same error a refusal in band carries, so callers need not tell the two apart.
        const [status, code] = refused === 4001 ? [401, "NOT_AUTHORIZED"] : [403, "FORBIDDEN"];
        const message = `the upgrade was refused with HTTP ${status}`;
        return fail(new ConnectError(message, refused, { code, message }));
      }
      const reason = rejectReason?.message ?? event.reason;
      fail(new ConnectError(`connection closed (${event.code}) ${reason}`.trim(), event.code, rejectReason));
    };
  });
  return { opened, abandon: () => abandon() };
}
