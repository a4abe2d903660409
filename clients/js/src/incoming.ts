// Calls the server makes to this client (PROTOCOL.md §5, server → client): requests,
// notifications and streams served by the application's handlers, cancelled by the server's
// `cancel`, streams paced by its `credit`.

import { PlexusError } from "./errors.js";
import type { Frame } from "./frames.js";

/** What a handler of a server call gets besides the params. */
export interface CallContext {
  /** The method called. */
  method: string;
  /** Aborted when the server cancels the call or the connection ends (never, for a notification). */
  signal: AbortSignal;
}

export type RequestHandler = (params: unknown, ctx: CallContext) => unknown | Promise<unknown>;
export type NotificationHandler = (params: unknown, ctx: CallContext) => void | Promise<void>;
export type StreamHandler = (
  params: unknown,
  ctx: CallContext,
) => AsyncIterable<unknown> | Iterable<unknown>;

/** The methods the server may call, by name. */
export interface Handlers {
  requests: Map<string, RequestHandler>;
  notifications: Map<string, NotificationHandler>;
  streams: Map<string, StreamHandler>;
}

/** A server call being served. */
interface Serving {
  abort: AbortController;
  /** Items the server still allows (streams with `credit`); `null`: no flow control. */
  allowed: number | null;
  /** Wakes a stream waiting for credit. */
  wake: (() => void) | undefined;
}

/** The server's calls in flight on one session. */
export class Incoming {
  readonly #serving = new Map<number, Serving>();
  readonly #handlers: Handlers;
  readonly #send: (frame: Frame) => void;
  readonly #limit: number;

  constructor(handlers: Handlers, send: (frame: Frame) => void, limit: number) {
    this.#handlers = handlers;
    this.#send = send;
    this.#limit = limit;
  }

  request(id: number, method: string, params: unknown): void {
    const handler = this.#handlers.requests.get(method);
    if (!handler) return this.#refuse(id, "NOT_FOUND", `unknown method \`${method}\``);
    const serving = this.#start(id);
    if (!serving) return;
    const ctx = { method, signal: serving.abort.signal };
    Promise.resolve()
      .then(() => handler(params, ctx))
      .then(
        (result) => this.#finish(id, serving, { t: "res", id, d: result ?? null }),
        (error: unknown) => this.#finish(id, serving, { t: "err", id, e: bodyOf(error) }),
      );
  }

  notification(method: string, params: unknown): void {
    const handler = this.#handlers.notifications.get(method);
    if (!handler) {
      this.#send({ t: "err", e: { code: "NOT_FOUND", message: `unknown method \`${method}\`` } });
      return;
    }
    const ctx = { method, signal: new AbortController().signal };
    Promise.resolve()
      .then(() => handler(params, ctx))
      .catch(() => {}); // notifications report nothing
  }

  stream(id: number, method: string, params: unknown, credit: number | undefined): void {
    const handler = this.#handlers.streams.get(method);
    if (!handler) return this.#refuse(id, "NOT_FOUND", `unknown method \`${method}\``);
    const serving = this.#start(id, credit ?? null);
    if (!serving) return;
    const ctx = { method, signal: serving.abort.signal };
    void (async () => {
      try {
        for await (const item of handler(params, ctx)) {
          while (serving.allowed === 0 && !serving.abort.signal.aborted) {
            await new Promise<void>((wake) => (serving.wake = wake));
          }
          if (serving.abort.signal.aborted) return;
          if (serving.allowed !== null) serving.allowed -= 1;
          if (!this.#sendOrFail(id, { t: "item", id, d: item ?? null })) {
            this.#serving.delete(id);
            return;
          }
        }
        this.#finish(id, serving, { t: "end", id });
      } catch (error) {
        this.#finish(id, serving, { t: "err", id, e: bodyOf(error) });
      }
    })();
  }

  cancel(id: number): void {
    const serving = this.#serving.get(id);
    if (!serving) return;
    this.#serving.delete(id);
    serving.abort.abort(new PlexusError("CANCELLED", "cancelled by the server"));
    serving.wake?.();
  }

  credit(id: number, n: number): void {
    const serving = this.#serving.get(id);
    if (!serving || serving.allowed === null) return;
    serving.allowed += n;
    const wake = serving.wake;
    serving.wake = undefined;
    wake?.();
  }

  /** The session ended: every call stops, and nothing more is sent for them. */
  abortAll(): void {
    for (const serving of this.#serving.values()) {
      serving.abort.abort(new PlexusError("UNAVAILABLE", "the connection ended"));
      serving.wake?.();
    }
    this.#serving.clear();
  }

  #start(id: number, allowed: number | null = null): Serving | undefined {
    if (this.#serving.has(id)) {
      this.#refuse(id, "BAD_FRAME", `call ${id} is already in flight`);
      return undefined;
    }
    if (this.#serving.size >= this.#limit) {
      this.#refuse(id, "RATE_LIMITED", "too many calls from the server in flight");
      return undefined;
    }
    const serving: Serving = { abort: new AbortController(), allowed, wake: undefined };
    this.#serving.set(id, serving);
    return serving;
  }

  /** Sends a call's last frame, unless it was cancelled meanwhile. */
  #finish(id: number, serving: Serving, frame: Frame): void {
    if (this.#serving.get(id) !== serving) return;
    this.#serving.delete(id);
    this.#sendOrFail(id, frame);
  }

  /** Sends `frame`; one that cannot be encoded (a BigInt, a cycle) answers `INTERNAL`. */
  #sendOrFail(id: number, frame: Frame): boolean {
    try {
      this.#send(frame);
      return true;
    } catch {
      this.#send({ t: "err", id, e: { code: "INTERNAL", message: "the client's answer cannot be encoded" } });
      return false;
    }
  }

  #refuse(id: number, code: string, message: string): void {
    this.#send({ t: "err", id, e: { code, message } });
  }
}

/** A handler's failure as the wire's `e`: a PlexusError as it is, anything else INTERNAL. */
function bodyOf(error: unknown) {
  if (error instanceof PlexusError) return error.toBody();
  return { code: "INTERNAL", message: "the client's handler failed" };
}
